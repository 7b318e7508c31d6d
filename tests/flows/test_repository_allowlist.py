"""Runs of a deployment build only blocks, the deployment's default or allowlisted URLs.

On a real ``prefect server`` (API auth on): each test applies the pipeline as a
deployment, starts a run of it as the UI or ``prefect deployment run`` would (parameters
and job variables chosen by the starter), and executes that run here, as a process
worker's flow process would; the last test has a real ``prefect worker`` take the runs,
with the allowlist in the deployment's job variables. The repository's one stage
appends to a file outside the workspace, so a stage that ran shows there; a refused run
leaves no workspace either.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow_async
from prefect.states import State

from slipway.blocks.git import AppRepository
from slipway.flows.pipeline import pipeline, run_pipeline
from slipway.repository_policy import ALLOWLIST_ENV
from tests.flows.prefect_api import ROOT, start_process_worker

pytestmark = pytest.mark.usefixtures("on_server")

SPEC = 'version: 1\napp: allowlist-app\nstages:\n  - name: mark\n    run: echo ran >> "$MARKER"\n'


class Attempt:
    """One repository and the file its stage marks."""

    def __init__(self, git_remote: Any, tmp_path: Path, slipway_home: Path) -> None:  # noqa: ANN401
        self.bare, self.url = git_remote({"slipway.yaml": SPEC}, name="allowlist-app.git")
        self.marker = tmp_path / "marker"
        self.workspaces = slipway_home / "workspaces"

    def deployment(self, **defaults: Any) -> UUID:  # noqa: ANN401
        name = f"allowlist-{uuid4().hex[:8]}"
        return pipeline.to_deployment(name=name, parameters=defaults).apply()  # type: ignore[return-value]

    def start(
        self, deployment_id: UUID, job_variables: dict[str, Any] | None = None, **parameters: Any
    ) -> FlowRun:
        parameters = {"env": {"MARKER": str(self.marker)}, **parameters}
        with get_client(sync_client=True) as client:
            return client.create_flow_run_from_deployment(
                deployment_id, parameters=parameters, job_variables=job_variables
            )

    def execute(self, run: FlowRun) -> State:
        """As a worker's flow process does: the run as the server stored it."""
        return asyncio.run(
            run_flow_async(pipeline, run, parameters=run.parameters, return_type="state")
        )  # type: ignore[return-value]

    def ran(self) -> int:
        return self.marker.read_text().count("ran") if self.marker.exists() else 0


@pytest.fixture
def attempt(git_remote: Any, tmp_path: Path, slipway_home: Path) -> Attempt:  # noqa: ANN401
    return Attempt(git_remote, tmp_path, slipway_home)


def _refused(state: State) -> str:
    assert state.is_failed(), state
    return state.message or ""


def test_an_unlisted_url_is_refused_before_checkout_and_no_stage_runs(
    attempt: Attempt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOWLIST_ENV, "https://git.example.com/team/*")
    run = attempt.start(attempt.deployment(), repository=attempt.url)

    message = _refused(attempt.execute(run))

    assert f"repository {attempt.bare.with_suffix('')} is not allowed" in message, message
    assert "AppRepository block" in message and ALLOWLIST_ENV in message
    assert "worker's process: https://git.example.com/team/*" in message
    assert attempt.ran() == 0
    assert not attempt.workspaces.exists()  # the refusal came before the checkout


def test_a_block_name_runs_with_no_allowlist_at_all(
    attempt: Attempt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOWLIST_ENV, raising=False)
    block = f"allowlist-{uuid4().hex[:8]}"
    AppRepository(url=attempt.url).save(block)
    run = attempt.start(attempt.deployment(), repository=block)

    state = attempt.execute(run)

    assert state.is_completed(), state
    assert attempt.ran() == 1


def test_a_url_the_workers_allowlist_matches_runs_in_another_spelling(
    attempt: Attempt, monkeypatch: pytest.MonkeyPatch
) -> None:
    remotes = attempt.bare.parent
    # a glob over the remotes' folder, spelled with '..' and a trailing '/': the same place
    monkeypatch.setenv(ALLOWLIST_ENV, f"https://other.example/x,\n{remotes}/../{remotes.name}/*/")
    # the run names the repository as a file:// URL with a trailing '/'
    run = attempt.start(attempt.deployment(), repository=f"{attempt.url}/")

    state = attempt.execute(run)

    assert state.is_completed(), state
    assert attempt.ran() == 1


def test_the_deployments_own_default_runs_and_another_url_does_not(
    attempt: Attempt, git_remote: Any, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN401
    monkeypatch.delenv(ALLOWLIST_ENV, raising=False)
    deployment_id = attempt.deployment(repository=attempt.url)
    _other_bare, other = git_remote({"slipway.yaml": SPEC}, name="other.git")

    default_state = attempt.execute(attempt.start(deployment_id))
    other_message = _refused(attempt.execute(attempt.start(deployment_id, repository=other)))

    assert default_state.is_completed(), default_state
    assert "other is not allowed" in other_message and "empty" in other_message
    assert attempt.ran() == 1


def test_a_run_cannot_bring_its_own_allowlist_in_its_job_variables(
    attempt: Attempt, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as if the worker's flow process had the starter's value (a process worker puts a
    # run's job variables into the flow process's environment)
    monkeypatch.setenv(ALLOWLIST_ENV, "/**")
    run = attempt.start(
        attempt.deployment(),
        job_variables={"env": {ALLOWLIST_ENV: "/**"}},
        repository=attempt.url,
    )

    message = _refused(attempt.execute(run))

    assert f"the run's own job variables set {ALLOWLIST_ENV}" in message, message
    assert attempt.ran() == 0


def test_a_run_from_the_users_own_shell_is_not_restricted(
    attempt: Attempt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOWLIST_ENV, "https://git.example.com/team/*")

    state = run_pipeline(repository=attempt.url, env={"MARKER": str(attempt.marker)})

    assert state.is_completed(), state
    assert attempt.ran() == 1


def _final(run_id: UUID, timeout: float = 180) -> FlowRun:
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"run {run_id} not final: {run.state}"
        time.sleep(0.5)


def test_a_real_worker_takes_the_allowlist_from_the_deployments_job_variables(
    attempt: Attempt, git_remote: Any, on_server: str, tmp_path: Path
) -> None:  # noqa: ANN401
    pool = f"allowlist-{uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    listed = f"{attempt.bare.parent}/allowlist-*"  # allowlist-app.git, not other.git
    _bare, other = git_remote({"slipway.yaml": SPEC}, name="other.git")
    deployment_id = pipeline.from_source(
        source=str(ROOT), entrypoint="flows/pipeline.py:pipeline"
    ).deploy(
        name="allowlist",
        work_pool_name=pool,
        job_variables={"env": {ALLOWLIST_ENV: listed}},
        print_next_steps=False,
        ignore_warnings=True,
    )
    allowed = attempt.start(deployment_id, repository=attempt.url)
    unlisted = attempt.start(deployment_id, repository=other)
    overridden = attempt.start(
        deployment_id, job_variables={"env": {ALLOWLIST_ENV: "/**"}}, repository=other
    )
    worker = start_process_worker(
        pool,
        on_server,
        tmp_path / "worker.log",
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / "results"),
        SLIPWAY_ALLOWED_REPOSITORIES=None,  # the worker itself allows nothing
    )
    try:
        runs = {
            name: _final(run.id)
            for name, run in (
                ("allowed", allowed),
                ("unlisted", unlisted),
                ("overridden", overridden),
            )
        }
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)

    states = {name: run.state for name, run in runs.items()}
    assert states["allowed"] is not None and states["allowed"].is_completed(), states
    assert states["unlisted"] is not None and states["unlisted"].is_failed(), states
    assert "remotes/other is not allowed" in (states["unlisted"].message or ""), states
    assert listed in (states["unlisted"].message or "")
    assert states["overridden"] is not None and states["overridden"].is_failed(), states
    assert "own job variables" in (states["overridden"].message or ""), states
    assert attempt.ran() == 1  # the allowed run's stage, and only it
