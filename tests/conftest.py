"""Shared fixtures: isolated homes, real git remotes, Prefect (harness and real server).

Nothing here is a stand-in: git remotes are real bare repositories, the Prefect API
is Prefect's own test harness or a real ``prefect server`` process.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from uuid import uuid4

# Keep the whole session away from the developer's ~/.prefect before prefect loads.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="slipway-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)
# Every real server the tests start has Prefect's API authentication on, as slipway's
# own does (slipway.local_server); every client and child process here sends this.
# Prefect's test harness runs without it and ignores the header.
API_AUTH_STRING = f"slipway-tests:{secrets.token_urlsafe(24)}"
os.environ["PREFECT_API_AUTH_STRING"] = API_AUTH_STRING
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

import pytest  # noqa: E402
from prefect.settings import (  # noqa: E402
    PREFECT_API_URL,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from tests.servers.git_http import commit_files, make_bare_repo  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

pytest_plugins = [
    "tests.servers.docker_engine",
    "tests.servers.kube_api",
    "tests.servers.pod_runner",
    "tests.servers.prometheus",
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def approver_seed(monkeypatch: pytest.MonkeyPatch) -> str:
    """Fresh TOTP secrets for the approvers of every test (tests/approvers.py): the
    Prefect server remembers used codes, and one test's must never refuse another's."""
    seed = uuid4().hex
    monkeypatch.setenv("SLIPWAY_TEST_APPROVER_SEED", seed)
    return seed


@pytest.fixture(autouse=True)
def slipway_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own workspaces and artifact store."""
    home = tmp_path / "slipway-home"
    monkeypatch.setenv("SLIPWAY_HOME", str(home))
    return home


@pytest.fixture
def git_remote(tmp_path: Path) -> Callable[..., tuple[Path, str]]:
    """Make a bare repo with one commit of ``files``; returns (bare path, file:// URL)."""

    def make(
        files: Mapping[str, str | bytes | None],
        *,
        name: str = "app.git",
        message: str = "initial",
        branch: str = "main",
    ) -> tuple[Path, str]:
        bare = make_bare_repo(tmp_path / "remotes", name, initial_branch=branch)
        commit_files(bare, files, message, branch=branch)
        return bare, bare.as_uri()

    return make


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's own test harness: a temporary API server and database for the session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def isolated_results(tmp_path: Path) -> Iterator[Path]:
    """A result store per test, so one test's cached stages never satisfy another's."""
    path = tmp_path / "prefect-results"
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: path}):
        yield path


@pytest.fixture
def flow_env(prefect_harness: None, isolated_results: Path) -> Path:
    """What a flow test needs: the harness API and its own result store."""
    return isolated_results


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``prefect server start`` process (SQLite) on a free port, API authentication
    on (:data:`API_AUTH_STRING`); yields the API URL."""
    from slipway.local_server import start_server, wait_healthy

    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env_backup = os.environ.get("PREFECT_HOME")
    # leases of dead holders (a killed worker's deploy slot) are reclaimed within 2 s of
    # expiring instead of 15 s: a shorter test, the same behaviour
    os.environ["PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS"] = "2"
    proc = start_server("127.0.0.1", port, home, auth_string=API_AUTH_STRING)
    del os.environ["PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS"]
    if env_backup is not None:
        os.environ["PREFECT_HOME"] = env_backup
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api_url, 120, proc)
        yield api_url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _restart_event_and_log_workers() -> None:
    """Prefect's events and log workers are per-process singletons bound to the API URL
    they first saw; a test switching APIs (harness -> real server) drains them so the
    next ones bind to the current URL. A production process talks to one API only."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all()
    APILogWorker.drain_all()


@pytest.fixture
def on_server(prefect_server: str, isolated_results: Path) -> Iterator[str]:
    """Point this test's Prefect client at the real server."""
    _restart_event_and_log_workers()
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server
        _restart_event_and_log_workers()


PYTHON = sys.executable
