"""Reading what a run left on the Prefect API, as a person in the UI would see it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import TaskRun
from prefect.logging.handlers import APILogHandler

from tests.conftest import API_AUTH_STRING

ROOT = Path(__file__).resolve().parents[2]


def api_auth() -> httpx.BasicAuth:
    """For raw HTTP calls to the tests' servers, which run with API authentication."""
    user, password = API_AUTH_STRING.split(":", 1)
    return httpx.BasicAuth(user, password)


def _has(runs: dict[str, TaskRun], name: str) -> bool:
    """``name`` is there in a final state; ``prefix*`` matches Prefect's suffixed names."""
    if name.endswith("*"):
        found = [r for n, r in runs.items() if n.startswith(name[:-1])]
    else:
        found = [runs[name]] if name in runs else []
    return any(r.state is not None and r.state.is_final() for r in found)


def task_runs(
    flow_run_id: UUID, expect: Iterable[str] = (), timeout: float = 30.0
) -> dict[str, TaskRun]:
    """The flow run's task runs by name, once every ``expect``ed one is recorded.

    Prefect 3 reports task runs to the server through events that it records
    asynchronously, so right after a flow ends they may not all be readable yet.
    """
    wanted = list(expect)
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            found = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        runs = {run.name: run for run in found}
        if all(_has(runs, name) for name in wanted) or time.monotonic() > deadline:
            return runs
        time.sleep(0.25)


def artifacts(flow_run_id: UUID) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key or a.id: a for a in found}


def logs(flow_run_id: UUID) -> str:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        records = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(r.message for r in records)


def start_process_worker(
    pool: str, api_url: str, log: Path, **env: str | None
) -> subprocess.Popen[bytes]:
    """``prefect worker start --pool POOL`` from the project root, as an operator runs it.

    It polls every second (a test need not wait 10 s) and runs in a session of its own,
    so its process group can be ended with it. ``env`` adds variables to the worker's
    environment (the test process's); ``None`` removes one.
    """
    environment = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
