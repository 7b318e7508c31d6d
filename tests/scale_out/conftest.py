"""The scaled-out set-up, for real: PostgreSQL, a Prefect server on it, process workers.

What deployments/README.md ("Scale-out") describes, started once for this folder:
a throwaway PostgreSQL cluster, ``prefect server start`` with
``PREFECT_API_DATABASE_CONNECTION_URL`` pointing at it (API authentication on; the
workers inherit the session's ``PREFECT_API_AUTH_STRING``), and three
``prefect worker start --type process`` processes: two on the ``pipelines`` pool
(two pipeline runs each at most, so a burst of runs has to spread over both) and
one on ``e2e-runner`` (the "agent" for ``work_pool:`` stages). Every worker has its
own ``SLIPWAY_HOME`` and ``PREFECT_HOME``, as separate machines would: nothing is
shared but the Prefect API and the git remotes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, temporary_settings

from slipway.local_server import start_server, wait_healthy
from tests.conftest import API_AUTH_STRING, _restart_event_and_log_workers
from tests.servers.ports import free_port
from tests.servers.postgres import postgres_url  # noqa: F401  (a fixture of this folder)

PIPELINE_POOL = "pipelines"
RUNNER_POOL = "e2e-runner"
WORKER_LIMIT = 2  # pipeline runs at once per pipeline worker
WORKER_START_SECONDS = 60.0
_ID = "[0-9a-f-]{36}"


@dataclass
class Worker:
    name: str
    pool: str
    home: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.home / "worker.log"

    def flow_runs_taken(self) -> set[str]:
        """The flow runs this worker started, from its own log. Two workers may both try
        to submit one run; the server lets one through and tells the other to abort."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        tried = re.findall(rf"Worker '{re.escape(self.name)}' submitting flow run '({_ID})'", text)
        aborted = re.findall(rf"Aborted submission of flow run '({_ID})'", text)
        return set(tried) - set(aborted)


@dataclass
class ScaleOut:
    api_url: str
    workers: list[Worker] = field(default_factory=list)

    def on(self, pool: str) -> list[Worker]:
        return [w for w in self.workers if w.pool == pool]


def _stop(*processes: subprocess.Popen[bytes]) -> None:
    """Terminate all at once, then wait for each (a worker takes seconds to shut down)."""
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_worker(api_url: str, pool: str, name: str, home: Path, **env: str) -> Worker:
    home.mkdir(parents=True)
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
    environment = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home / "prefect"),
        "SLIPWAY_HOME": str(home / "slipway"),
        # poll every second (default 10 s), so a test does not wait for the next poll
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **env,
    }
    environment.pop("PREFECT_RESULTS_LOCAL_STORAGE_PATH", None)
    log = (home / "worker.log").open("ab")
    process = subprocess.Popen(
        [*command, "worker", "start", "--pool", pool, "--type", "process", "--name", name,
         "--limit", str(WORKER_LIMIT)],
        env=environment,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    return Worker(name, pool, home, process)


def _wait_online(workers: list[Worker]) -> None:
    deadline = time.monotonic() + WORKER_START_SECONDS
    waiting = {w.name for w in workers}
    while waiting:
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited: {worker.log.read_text()[-2000:]}")
        with get_client(sync_client=True) as client:
            for pool in {w.pool for w in workers}:
                online = client.read_workers_for_work_pool(pool)
                waiting -= {w.name for w in online if w.status == "ONLINE"}
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not online after {WORKER_START_SECONDS:.0f} s: {waiting}")
        time.sleep(0.5)


@pytest.fixture(scope="package")
def scale_out(
    postgres_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ScaleOut]:
    """Prefect server on PostgreSQL and its workers; the test process talks to it."""
    home = tmp_path_factory.mktemp("scale-out")
    port = free_port()
    # the server process takes its database from the environment it is started with
    with mock.patch.dict(os.environ, {"PREFECT_API_DATABASE_CONNECTION_URL": postgres_url}):
        server = start_server("127.0.0.1", port, home / "server", auth_string=API_AUTH_STRING)
    api_url = f"http://127.0.0.1:{port}/api"
    setup = ScaleOut(api_url)
    _restart_event_and_log_workers()
    try:
        wait_healthy(api_url, 120, server)
        with temporary_settings({PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as client:
                for pool in (PIPELINE_POOL, RUNNER_POOL):
                    client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            # the pipeline workers build the tests' repositories (git_remote, under the
            # session's temporary folder): runs of a deployment need them allowlisted
            allowed = {"SLIPWAY_ALLOWED_REPOSITORIES": f"{tmp_path_factory.getbasetemp()}/**"}
            setup.workers = [
                _start_worker(api_url, PIPELINE_POOL, "ci-a", home / "ci-a", **allowed),
                _start_worker(api_url, PIPELINE_POOL, "ci-b", home / "ci-b", **allowed),
                _start_worker(
                    api_url,
                    RUNNER_POOL,
                    "e2e-box",
                    home / "e2e-box",
                    SLIPWAY_TEST_MACHINE="e2e-box",
                    # stages see only an allowlist of the worker's variables; an
                    # operator passes more by name
                    SLIPWAY_STAGE_PASS_ENV="SLIPWAY_TEST_MACHINE",
                ),  # fmt: skip
            ]
            _wait_online(setup.workers)
        yield setup
    finally:
        _stop(*(w.process for w in setup.workers))
        _stop(server)
        _restart_event_and_log_workers()


@pytest.fixture
def on_scale_out(scale_out: ScaleOut, isolated_results: Path) -> Iterator[ScaleOut]:
    """Point this test's Prefect client at the scaled-out server."""
    _restart_event_and_log_workers()
    with temporary_settings({PREFECT_API_URL: scale_out.api_url}):
        yield scale_out
        _restart_event_and_log_workers()
