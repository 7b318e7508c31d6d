"""The Prefect server slipway uses has its API authentication on, and an open one is
refused. Real servers: the session's ``prefect server`` (auth on) and Prefect's test
harness (a real API server without auth: what an unprotected server answers)."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from slipway.exceptions import RemoteUnavailable
from slipway.local_server import (
    AUTH_STRING_FILE,
    ServerAccess,
    api_status,
    check_access,
    ensure_server,
    healthy,
    local_auth_string,
)
from tests.conftest import API_AUTH_STRING


def test_the_auth_string_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = local_auth_string(tmp_path / "prefect")

    assert first.startswith("slipway:") and len(first) > 40
    assert local_auth_string(tmp_path / "prefect") == first
    path = tmp_path / "prefect" / AUTH_STRING_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_person_is_told_where_the_string_is_never_the_string(slipway_home: Path) -> None:
    local = local_auth_string(slipway_home / "prefect")

    assert ServerAccess("http://x/api", local).where_to_find() == str(
        slipway_home / "prefect" / AUTH_STRING_FILE
    )
    assert ServerAccess("http://x/api", "ops:other").where_to_find() == "$PREFECT_API_AUTH_STRING"


def test_the_server_refuses_calls_without_the_auth_string(prefect_server: str) -> None:
    user, password = API_AUTH_STRING.split(":", 1)

    assert healthy(prefect_server)  # probes stay open
    assert api_status(prefect_server) == 401
    assert api_status(prefect_server, f"{user}:wrong") == 401
    assert api_status(prefect_server, API_AUTH_STRING) == 200
    secrets = httpx.post(
        f"{prefect_server}/block_documents/filter", json={"include_secrets": True}, timeout=10
    )
    assert secrets.status_code == 401 and secrets.json() == {"exception_message": "Unauthorized"}


def test_a_configured_server_is_used_with_the_configured_auth_string(prefect_server: str) -> None:
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        access = ensure_server(log=False)
    assert access == ServerAccess(prefect_server, API_AUTH_STRING)
    assert access.environment() == {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_API_AUTH_STRING": API_AUTH_STRING,
    }

    with (
        temporary_settings({PREFECT_API_URL: prefect_server, PREFECT_API_AUTH_STRING: "x:y"}),
        pytest.raises(RemoteUnavailable, match="refuses slipway's credentials"),
    ):
        ensure_server(log=False)


def test_a_server_answering_without_credentials_is_refused(prefect_harness: None) -> None:
    open_api = PREFECT_API_URL.value()
    assert api_status(open_api) == 200  # the harness runs without API authentication

    with pytest.raises(RemoteUnavailable, match="answers API calls without credentials"):
        check_access(ServerAccess(open_api, API_AUTH_STRING))
