"""Small application repositories, the pipeline deployment, and waiting for runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.deployments.runner import EntrypointType

from slipway.flows.pipeline import pipeline
from tests.servers.git_http import commit_files

PIPELINE_DEPLOYMENT = "pipeline/scale-out"


def junit_command(path: str, suite: str, passed: int, failed: int = 0) -> str:
    """A shell command writing a JUnit report with ``passed`` + ``failed`` cases."""
    cases = [f'<testcase classname="{suite}" name="case_{i}" time="0.01"/>' for i in range(passed)]
    cases += [
        f'<testcase classname="{suite}" name="broken_{i}" time="0.01">'
        f'<failure message="expected 1, got 2">assert 1 == 2</failure></testcase>'
        for i in range(failed)
    ]
    xml = (
        f'<testsuite name="{suite}" tests="{passed + failed}" failures="{failed}">'
        + "".join(cases)
        + "</testsuite>"
    )
    folder = str(Path(path).parent)
    return f"mkdir -p {folder} && cat > {path} <<'XML'\n{xml}\nXML"


def app_repo(
    git_remote: Callable[..., tuple[Path, str]], app: str, stages: Sequence[dict[str, Any]]
) -> str:
    """A bare repository of ``app`` whose slipway.yaml has ``stages``; its file:// URL.
    Two commits, so checkouts (the pipeline's and a stage runner's) have a parent."""
    spec = {"app": app, "defaults": {"timeout": 120}, "stages": list(stages)}
    bare, url = git_remote({"README.md": f"# {app}\n"}, name=f"{app}.git")
    commit_files(bare, {"slipway.yaml": yaml.safe_dump(spec, sort_keys=False)}, "pipeline file")
    return url


def deploy_pipeline(pool: str) -> None:
    """The pipeline flow as a deployment on ``pool`` (module entrypoint: no pull step)."""
    pipeline.to_deployment(
        name="scale-out", work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH
    ).apply()


def start_pipeline(repository: str) -> FlowRun:
    return run_deployment(  # type: ignore[return-value]
        PIPELINE_DEPLOYMENT,
        parameters={"repository": repository, "branch": "main"},
        timeout=0,
        as_subflow=False,
    )


def wait_final(run_ids: Sequence[UUID], timeout: float) -> dict[UUID, FlowRun]:
    """The runs once every one is final (or the timeout passed: then as they are)."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = {run_id: client.read_flow_run(run_id) for run_id in run_ids}
        if all(r.state is not None and r.state.is_final() for r in runs.values()):
            return runs
        if time.monotonic() > deadline:
            return runs
        time.sleep(1)


def subflow_runs(parent: UUID) -> list[FlowRun]:
    """Flow runs started from the task runs of ``parent`` (e.g. stage runners)."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
