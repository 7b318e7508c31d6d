"""A repository URL with credentials in it is refused before a run exists.

A run's parameters are stored on the server and shown in the UI, so a token typed
into ``repository`` would stay there. Tried on a real ``prefect server``: the CLI,
``run_pipeline`` and a run of a deployment (the server checks the parameter's schema
before it creates the run). Each leaves no run and no token behind.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import PrefectHTTPStatusError

from slipway.exceptions import ConfigError
from slipway.flows.pipeline import pipeline, run_pipeline
from slipway.urls import check_repository_reference

pytestmark = pytest.mark.usefixtures("on_server")

TOKEN = "glpat-run-param-token-5d2c"
WITH_CREDENTIALS = [
    f"https://ci:{TOKEN}@git.example.com/team/app.git",
    f"https://{TOKEN}@git.example.com/team/app.git",
    f"http://ci:{TOKEN}@127.0.0.1:8080/app.git",
]


def _runs_holding_the_token() -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    return [str(r.id) for r in runs if TOKEN in str(r.parameters)]


@pytest.mark.parametrize("url", WITH_CREDENTIALS)
def test_the_check_refuses_userinfo_without_repeating_it(url: str) -> None:
    with pytest.raises(ValueError, match="carries credentials") as refused:
        check_repository_reference(url)
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize(
    "reference", ["example-app", "/srv/git/app.git", "https://git.example.com/a@b", "file:///x"]
)
def test_names_paths_and_plain_urls_pass(reference: str) -> None:
    assert check_repository_reference(reference) == reference


def test_the_cli_refuses_before_any_run(on_server: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "slipway", "run", WITH_CREDENTIALS[0]],
        env={**os.environ, "PREFECT_API_URL": on_server},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode != 0
    assert "carries credentials" in done.stderr and "AppRepository" in done.stderr
    assert TOKEN not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert _runs_holding_the_token() == []


def test_run_pipeline_refuses_before_any_run() -> None:
    with pytest.raises(ConfigError, match="carries credentials"):
        run_pipeline(repository=WITH_CREDENTIALS[1])

    assert _runs_holding_the_token() == []


def test_the_server_refuses_a_deployment_run_with_credentials_in_the_url() -> None:
    async def scenario() -> tuple[str, UUID]:
        deployment = await pipeline.ato_deployment(name="credentials-check")
        deployment_id = await deployment.aapply()
        async with get_client() as client:
            with pytest.raises(PrefectHTTPStatusError) as refused:
                await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"repository": WITH_CREDENTIALS[0]}
                )
            # the control: a block name goes through
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"repository": "example-app"}
            )
            await client.delete_flow_run(run.id)
            left = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            assert left == []
        return refused.value.response.text, deployment_id

    answer, _ = asyncio.run(scenario())

    # Prefect's answer repeats the value to the caller who sent it; it stores nothing
    assert "Validation failed for field 'repository'" in answer, answer
    assert _runs_holding_the_token() == []
