"""Finding or starting the Prefect server that runs are recorded on.

Prefect's ephemeral API (no ``PREFECT_API_URL``) costs seconds per process and
keeps only part of a run's history once the process exits, so commands that a
person will look at afterwards use a real ``prefect server``: the one configured,
else one already answering on 127.0.0.1:4200, else one started here in the
background (SQLite under ``$SLIPWAY_HOME/prefect``) and left running for the UI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from slipway.exceptions import RemoteUnavailable
from slipway.workspace import slipway_home

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
START_TIMEOUT_SECONDS = 90.0


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def configured_api_url() -> str | None:
    return PREFECT_API_URL.value() or None


def start_server(host: str, port: int, home: Path) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` detached, logging to ``home/server.log``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        # `--port` alone does not reach the UI: it asks /ui-settings for the API URL,
        # which Prefect derives from these settings (else http://127.0.0.1:4200/api),
        # so a server on any other port would serve a UI talking to the wrong API.
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("ab")
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
    return subprocess.Popen(
        [*command, "server", "start", "--host", host, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_healthy(api_url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(api_url):
            return
        if proc is not None and proc.poll() is not None:
            raise RemoteUnavailable(f"prefect server exited with status {proc.returncode}")
        time.sleep(0.5)
    raise RemoteUnavailable(f"prefect server at {api_url} did not answer within {timeout:.0f} s")


def ensure_server(*, log: bool = True) -> str:
    """The API URL of a healthy Prefect server, starting one if none is there."""
    configured = configured_api_url()
    if configured:
        if not healthy(configured, timeout=5):
            raise RemoteUnavailable(
                f"PREFECT_API_URL is {configured} but no Prefect server answers there"
            )
        return configured
    api_url = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/api"
    if healthy(api_url):
        if log:
            print(f"using the Prefect server already running at {api_url}")
        return api_url
    home = slipway_home() / "prefect"
    if log:
        print(f"starting a local Prefect server at {api_url} (data in {home}, log in server.log)")
    proc = start_server(DEFAULT_HOST, DEFAULT_PORT, home)
    wait_healthy(api_url, START_TIMEOUT_SECONDS, proc)
    return api_url
