"""Smoke checks against the real example app (a child process), and against silence."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydantic
import pytest
from prefect import flow

from slipway.exceptions import ConfigError
from slipway.tasks.smoke import (
    SmokeCheck,
    SmokeResult,
    _judge,
    run_smoke_checks,
    smoke_rows,
    smoke_test,
)
from tests.servers import prometheus as servers
from tests.servers.prometheus import ExampleApp, unused_port

start_example_app = servers.start_example_app  # the fixture: real app processes

StartApp = Callable[..., ExampleApp]


def _run(checks: list[SmokeCheck], base_url: str | None) -> tuple[SmokeResult, list[str]]:
    lines: list[str] = []
    return run_smoke_checks(checks, base_url=base_url, log=lines.append), lines


def test_a_healthy_release_passes_every_kind_of_check(start_example_app: StartApp) -> None:
    app = start_example_app(traffic=0)

    result, lines = _run(
        [
            SmokeCheck(url="{base_url}/healthz", json_field="status", json_equals="ok"),
            SmokeCheck(url="{base_url}/", body_contains="Hello from example-app"),
            SmokeCheck(url="{base_url}/readyz", json_field="version", json_equals="1.0.0"),
            SmokeCheck(url=f"{app.base_url}/no-such-page", expect_status=404),
        ],
        base_url=app.base_url + "/",  # a trailing slash does not double up
    )

    assert result.phase == "Successful", result.message
    assert [c.status_code for c in result.checks] == [200, 200, 200, 404]
    assert all(c.attempts == 1 and c.reason is None and c.elapsed_ms > 0 for c in result.checks)
    assert result.checks[0].url == f"{app.base_url}/healthz"
    assert len(lines) == 4 and "passed" in lines[0]
    assert smoke_rows(result)[0]["result"] == "passed"


def test_a_wrong_json_value_or_missing_text_fails_with_the_reason(
    start_example_app: StartApp,
) -> None:
    app = start_example_app(traffic=0)

    result, _ = _run(
        [
            SmokeCheck(
                url="{base_url}/healthz", json_field="status", json_equals="down", retries=0
            ),
            SmokeCheck(url="{base_url}/healthz", json_field="build.sha", json_equals=1, retries=0),
            SmokeCheck(url="{base_url}/metrics", json_field="status", json_equals="ok", retries=0),
            SmokeCheck(url="{base_url}/healthz", body_contains="Goodbye", retries=0),
        ],
        base_url=app.base_url,
    )

    assert result.phase == "Failed"
    assert [c.reason for c in result.checks] == [
        "JSON field 'status' is \"ok\", expected 'down'",
        "JSON field 'build.sha' is missing",
        "body is not JSON, so it has no field 'status'",
        "body does not contain 'Goodbye'",
    ]
    assert result.message.startswith("4 of 4 smoke check(s) failed")


def test_a_release_answering_500_fails_after_its_retries(start_example_app: StartApp) -> None:
    app = start_example_app(error_rate=1.0, traffic=0)

    result, lines = _run(
        [
            SmokeCheck(url="{base_url}/", retries=2, retry_delay=0.05),
            SmokeCheck(url="{base_url}/", expect_status=500, retries=0),
            SmokeCheck(url="{base_url}/healthz", retries=0),  # probes stay healthy
        ],
        base_url=app.base_url,
    )

    assert result.phase == "Failed"
    bad, expected_500, healthz = result.checks
    assert (bad.passed, bad.status_code, bad.attempts) == (False, 500, 3)
    assert bad.reason == "expected HTTP 200, got 500"
    assert expected_500.passed and healthz.passed
    assert result.failed_checks == (bad,)
    assert sum("retrying in 0.05 s" in line for line in lines) == 2


def test_a_closed_port_fails_after_the_retries_without_hanging() -> None:
    url = f"http://127.0.0.1:{unused_port()}/healthz"
    started = time.monotonic()

    result, _ = _run([SmokeCheck(url=url, retries=2, retry_delay=0.1, timeout=1)], base_url=None)

    assert time.monotonic() - started < 3
    (check,) = result.checks
    assert result.phase == "Failed"
    assert (check.status_code, check.attempts) == (None, 3)
    assert check.reason == "connection refused or host unreachable"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_server_that_never_answers_times_out_per_attempt(silent_server: str) -> None:
    started = time.monotonic()

    result, _ = _run(
        [SmokeCheck(url="{base_url}/healthz", retries=1, retry_delay=0, timeout=0.3)],
        base_url=silent_server,
    )

    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 2.5
    assert result.phase == "Failed"
    assert result.checks[0].reason == "no answer within 0.3 s"
    assert result.checks[0].attempts == 2


def test_retries_wait_for_a_release_that_starts_late() -> None:
    app = ExampleApp()  # its port is chosen now; the process starts 0.5 s later
    starter = threading.Timer(0.5, app.start)
    starter.start()
    try:
        result, _ = _run(
            [SmokeCheck(url="{base_url}/healthz", retries=20, retry_delay=0.1)],
            base_url=app.base_url,
        )
    finally:
        starter.join()
        app.stop()

    assert result.phase == "Successful", result.message
    assert result.checks[0].attempts > 1


def test_json_types_are_compared_as_json(start_example_app: StartApp) -> None:
    """A JSON string is not a number: version "1" does not equal 1."""
    app = start_example_app(traffic=0, version="1")

    result, _ = _run(
        [
            SmokeCheck(url="{base_url}/healthz", json_field="version", json_equals="1"),
            SmokeCheck(url="{base_url}/healthz", json_field="version", json_equals=1, retries=0),
        ],
        base_url=app.base_url,
    )

    assert [c.passed for c in result.checks] == [True, False]


def test_json_booleans_are_not_numbers() -> None:
    """Python says ``True == 1``; JSON does not, and neither does a smoke check."""
    check = SmokeCheck(url="{base_url}/", json_field="ok", json_equals=1)

    assert _judge(check, 200, b'{"ok": true}') == "JSON field 'ok' is true, expected 1"
    assert _judge(check, 200, b'{"ok": 1.0}') is None


# ------------------------------------------------------------------ configuration


def test_defaults() -> None:
    check = SmokeCheck(url="https://example.com/healthz")

    assert (check.method, check.expect_status, check.retries) == ("GET", 200, 3)
    assert (check.retry_delay, check.timeout) == (2, 5)
    assert check.body_contains is None and check.json_field is None


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"url": "ftp://example.com/"}, "http:// or https://"),
        ({"url": "/healthz"}, "http:// or https://"),
        ({"url": "https://ci:secret@example.com/"}, "credentials"),
        ({"url": "{base_url}/{path}"}, "only placeholder is {base_url}"),
        ({"url": "https://example.com/?next={base_url}"}, "may only start the URL"),
        ({"url": "{base_url}/", "method": "POST"}, "method"),
        ({"url": "{base_url}/", "expect_status": 999}, "expect_status"),
        ({"url": "{base_url}/", "json_equals": "ok"}, "json_equals needs json_field"),
        ({"url": "{base_url}/", "json_field": "status"}, "json_field needs json_equals"),
        ({"url": "{base_url}/", "json_field": "a..b", "json_equals": 1}, "json_field"),
        ({"url": "{base_url}/", "timeout": 0}, "timeout"),
        ({"url": "{base_url}/", "retries": -1}, "retries"),
        ({"url": "{base_url}/", "expect": 200}, "Extra inputs are not permitted"),
    ],
)
def test_bad_checks_are_refused(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem):
        SmokeCheck.model_validate(fields)


def test_configuration_errors_raise_before_any_request() -> None:
    with pytest.raises(ConfigError, match="needs a base_url"):
        _run([SmokeCheck(url="{base_url}/healthz")], base_url=None)
    with pytest.raises(ConfigError, match="no checks"):
        _run([], base_url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="base_url must be an absolute"):
        _run([SmokeCheck(url="{base_url}/healthz")], base_url="example-app.staging")


# ------------------------------------------------------------------ the Prefect task


def test_smoke_test_task_in_a_flow(flow_env: Path, start_example_app: StartApp) -> None:
    app = start_example_app(traffic=0)
    checks = [SmokeCheck(url="{base_url}/healthz", json_field="status", json_equals="ok")]

    @flow
    def smoke_flow() -> SmokeResult:
        return smoke_test(checks, base_url=app.base_url)

    result = smoke_flow()

    assert result.phase == "Successful", result.message
