"""Finding or starting the Prefect server that runs are recorded on.

Prefect's ephemeral API (no ``PREFECT_API_URL``) costs seconds per process and
keeps only part of a run's history once the process exits, so commands that a
person will look at afterwards use a real ``prefect server``: the one configured,
else one already answering on 127.0.0.1:4200, else one started here in the
background (SQLite under ``$SLIPWAY_HOME/prefect``) and left running for the UI.

The open-source server asks for no credentials unless it is told to, and stage
commands run on the same machine: an open API would hand any branch's code every
block's secrets (``POST /api/block_documents/filter`` with ``include_secrets``). So
a server slipway starts always has Prefect's API authentication on
(``PREFECT_SERVER_API_AUTH_STRING``, a ``user:password`` basic-auth string made once
and kept in ``$SLIPWAY_HOME/prefect/api-auth-string``, mode 0600), clients send it
(``PREFECT_API_AUTH_STRING``), and a server found answering without credentials is
refused rather than used.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

from slipway.exceptions import RemoteUnavailable
from slipway.workspace import slipway_home

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
START_TIMEOUT_SECONDS = 90.0
AUTH_STRING_FILE = "api-auth-string"
AUTH_USER = "slipway"


@dataclass(frozen=True)
class ServerAccess:
    """Where the Prefect API is and the basic-auth string its clients send."""

    api_url: str
    auth_string: str | None

    def settings(self) -> dict[Any, Any]:
        """For ``prefect.settings.temporary_settings``."""
        return {PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string}

    def where_to_find(self) -> str:
        """Where a person finds the auth string (never the string itself)."""
        local = slipway_home() / "prefect" / AUTH_STRING_FILE
        if local.exists() and local.read_text().strip() == self.auth_string:
            return str(local)
        return "$PREFECT_API_AUTH_STRING"

    def environment(self) -> dict[str, str]:
        """For a child process (a worker, ``prefect`` commands)."""
        env = {"PREFECT_API_URL": self.api_url}
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env


def local_auth_string(home: Path) -> str:
    """The auth string of the server kept under ``home``: read, or made once (0600)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / AUTH_STRING_FILE
    if not path.exists():
        value = f"{AUTH_USER}:{secrets.token_urlsafe(32)}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(value + "\n")
    return path.read_text().strip()


def api_status(api_url: str, auth_string: str | None = None, timeout: float = 5.0) -> int:
    """The HTTP status of an API call that needs credentials when auth is on
    (``GET /admin/version``); 0 when nothing answers."""
    request = urllib.request.Request(f"{api_url.rstrip('/')}/admin/version")
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def check_access(access: ServerAccess) -> None:
    """Refuse a server that answers without credentials, or refuses ours."""
    anonymous = api_status(access.api_url)
    if anonymous == 200:
        raise RemoteUnavailable(
            f"the Prefect server at {access.api_url} answers API calls without credentials: "
            "any stage running next to it could read every block's secrets. Restart it with "
            "PREFECT_SERVER_API_AUTH_STRING=user:password (or stop it and let slipway start "
            "one) and give clients PREFECT_API_AUTH_STRING"
        )
    if api_status(access.api_url, access.auth_string) != 200:
        raise RemoteUnavailable(
            f"the Prefect server at {access.api_url} refuses slipway's credentials: set "
            "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING"
        )


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def configured_api_url() -> str | None:
    return PREFECT_API_URL.value() or None


def start_server(
    host: str, port: int, home: Path, *, auth_string: str | None = None
) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` detached, logging to ``home/server.log``, with API
    authentication on: ``auth_string``, default :func:`local_auth_string` of ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_SERVER_API_AUTH_STRING": auth_string or local_auth_string(home),
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


def ensure_server(*, log: bool = True) -> ServerAccess:
    """A healthy Prefect server with API authentication on, and how to reach it;
    starting one if none is there.

    Raises:
        RemoteUnavailable: nothing answers where configured, or the server answers
            without credentials, or refuses the ones slipway has.
    """
    configured = configured_api_url()
    if configured:
        if not healthy(configured, timeout=5):
            raise RemoteUnavailable(
                f"PREFECT_API_URL is {configured} but no Prefect server answers there"
            )
        access = ServerAccess(configured, PREFECT_API_AUTH_STRING.value())
        check_access(access)
        return access
    api_url = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/api"
    home = slipway_home() / "prefect"
    access = ServerAccess(api_url, PREFECT_API_AUTH_STRING.value() or local_auth_string(home))
    if healthy(api_url):
        check_access(access)
        if log:
            print(f"using the Prefect server already running at {api_url}")
        return access
    if log:
        print(
            f"starting a local Prefect server at {api_url} (data in {home}, log in server.log; "
            f"API auth on, its string in {home / AUTH_STRING_FILE})"
        )
    proc = start_server(DEFAULT_HOST, DEFAULT_PORT, home, auth_string=access.auth_string)
    wait_healthy(api_url, START_TIMEOUT_SECONDS, proc)
    check_access(access)
    return access
