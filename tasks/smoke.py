"""The smoke test: a few HTTP checks against a freshly deployed environment.

Each :class:`SmokeCheck` asks one URL and passes when the answer has the expected
status and, optionally, contains a text or a JSON field with a given value. A check
is retried (``retries`` times, ``retry_delay`` apart) on any failure, since a new
release often needs a moment before it answers; every attempt has its own
``timeout``, so a silent server costs at most ``(retries + 1) * (timeout +
retry_delay)`` seconds and never hangs the pipeline.

Gates return data: :func:`run_smoke_checks` never raises for an HTTP failure (refused
connection, timeout, wrong status, wrong body). It returns a frozen
:class:`SmokeResult` whose phase is ``Successful`` only when every check passed, and
the flow decides what ``Failed`` means (for staging: roll back). What does raise is a
configuration error (:class:`~slipway.exceptions.ConfigError`): a ``{base_url}``
placeholder with no base URL to fill it with.

URLs come from the pipeline file, written by the repository's owner. The only
placeholder is ``{base_url}`` (the environment's address, e.g.
``http://example-app.staging.svc``), filled by the caller; URLs with credentials in
them are refused, and failure reasons name the status and the check, never a header.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field, field_validator, model_validator

from slipway.exceptions import ConfigError
from slipway.spec_types import StrictModel

SmokePhase = Literal["Successful", "Failed"]

BASE_URL_PLACEHOLDER = "{base_url}"
MAX_BODY_BYTES = 1024 * 1024  # what a check reads of an answer; smoke pages are small
_REASON_CHARS = 200
_DOTTED_PATH = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


def _check_http_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an absolute http:// or https:// URL, got {url!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{what} must not carry credentials")


class SmokeCheck(StrictModel):
    """One HTTP check: what to ask and what the answer must look like."""

    url: str = Field(
        description=(
            "URL to request, http:// or https://; may start with {base_url}, which the "
            "pipeline fills with the environment's address, e.g. '{base_url}/healthz'. "
            "No default."
        )
    )
    method: Literal["GET"] = Field(default="GET", description="HTTP method. Default: GET.")
    expect_status: int = Field(
        default=200, ge=100, le=599, description="HTTP status the answer must have. Default: 200."
    )
    body_contains: str | None = Field(
        default=None,
        min_length=1,
        description="Text the body must contain (case-sensitive). Default: none.",
    )
    json_field: str | None = Field(
        default=None,
        pattern=_DOTTED_PATH,
        description=(
            "Dotted path of a field in the JSON body, e.g. 'status' or 'build.version' "
            "(a number selects a list item); compared with json_equals. Default: none."
        ),
    )
    json_equals: Any = Field(
        default=None,
        description=(
            "Value json_field must have, compared as JSON (1 is not true; null is a value). "
            "Required with json_field. Default: none."
        ),
    )
    retries: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Retries after a failed attempt, so at most retries + 1 requests. Default: 3.",
    )
    retry_delay: float = Field(
        default=2, ge=0, le=600, description="Seconds between two attempts. Default: 2."
    )
    timeout: float = Field(
        default=5,
        gt=0,
        le=300,
        description="Seconds one attempt may take (connect, send, read). Default: 5.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        rest = value.replace(BASE_URL_PLACEHOLDER, "http://base.invalid")
        if "{" in rest or "}" in rest:
            raise ValueError("url: the only placeholder is {base_url}")
        if BASE_URL_PLACEHOLDER in value and not value.startswith(BASE_URL_PLACEHOLDER):
            raise ValueError("url: {base_url} may only start the URL")
        _check_http_url(rest, "url")
        return value

    @model_validator(mode="after")
    def _json_field_and_value_together(self) -> SmokeCheck:
        has_value = "json_equals" in self.model_fields_set
        if has_value and self.json_field is None:
            raise ValueError("json_equals needs json_field (the dotted path to compare)")
        if self.json_field is not None and not has_value:
            raise ValueError("json_field needs json_equals (null to expect a JSON null)")
        return self

    def resolve_url(self, base_url: str | None) -> str:
        """The URL with ``{base_url}`` filled in; a missing base URL is a ConfigError."""
        if BASE_URL_PLACEHOLDER not in self.url:
            return self.url
        if base_url is None:
            raise ConfigError(f"smoke check {self.url!r} needs a base_url and none was given")
        return self.url.replace(BASE_URL_PLACEHOLDER, base_url.rstrip("/"))


@dataclass(frozen=True)
class SmokeCheckResult:
    """How one check went, on its last attempt.

    Attributes:
        url: the URL asked (placeholder filled).
        passed: the answer met every expectation.
        status_code: the HTTP status of the last answer; None when there was none.
        elapsed_ms: milliseconds the last attempt took.
        attempts: requests made (1 + retries used).
        reason: why the last attempt failed; None when it passed.
    """

    url: str
    passed: bool
    status_code: int | None
    elapsed_ms: float
    attempts: int
    reason: str | None = None


@dataclass(frozen=True)
class SmokeResult:
    """The smoke test's verdict: ``Successful`` only when every check passed."""

    phase: SmokePhase
    checks: tuple[SmokeCheckResult, ...]
    message: str

    @property
    def failed_checks(self) -> tuple[SmokeCheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def _read_body(answer: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in answer.iter_bytes():
        body += chunk
        if len(body) >= MAX_BODY_BYTES:
            break
    return bytes(body[:MAX_BODY_BYTES])


_MISSING = object()


def _dig(document: Any, path: str) -> Any:
    """The value at a dotted path (``a.b.0``), or ``_MISSING``."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _judge(check: SmokeCheck, status: int, body: bytes) -> str | None:
    """Why the answer fails the check, or None when it passes."""
    if status != check.expect_status:
        return f"expected HTTP {check.expect_status}, got {status}"
    if check.body_contains is not None:
        text = body.decode("utf-8", errors="replace")
        if check.body_contains not in text:
            return f"body does not contain {_short(check.body_contains)!r}"
    if check.json_field is not None:
        try:
            document = json.loads(body)
        except ValueError:
            return f"body is not JSON, so it has no field {check.json_field!r}"
        value = _dig(document, check.json_field)
        if value is _MISSING:
            return f"JSON field {check.json_field!r} is missing"
        # 1 == True in Python; a smoke check comparing JSON means JSON's own types
        if value != check.json_equals or isinstance(value, bool) != isinstance(
            check.json_equals, bool
        ):
            shown = _short(json.dumps(value, default=str))
            return f"JSON field {check.json_field!r} is {shown}, expected {check.json_equals!r}"
    return None


def _attempt(client: httpx.Client, check: SmokeCheck, url: str) -> tuple[int | None, str | None]:
    """One request: (status, failure reason or None). Never raises for HTTP trouble."""
    try:
        with client.stream(check.method, url, timeout=check.timeout) as answer:
            body = _read_body(answer)
            return answer.status_code, _judge(check, answer.status_code, body)
    except httpx.TimeoutException:
        return None, f"no answer within {check.timeout:g} s"
    except httpx.ConnectError:
        return None, "connection refused or host unreachable"
    except httpx.HTTPError as exc:
        # the exception text can hold the URL, never a header; the type is enough
        return None, f"request failed: {type(exc).__name__}"


def run_check(
    client: httpx.Client,
    check: SmokeCheck,
    *,
    base_url: str | None,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> SmokeCheckResult:
    """Run one check with its retries; returns how its last attempt went."""
    url = check.resolve_url(base_url)
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        status, reason = _attempt(client, check, url)
        elapsed_ms = (time.monotonic() - started) * 1000
        if reason is None:
            log(f"smoke: {check.method} {url}: HTTP {status} in {elapsed_ms:.0f} ms, passed")
            return SmokeCheckResult(url, True, status, elapsed_ms, attempts)
        if attempts > check.retries:
            log(f"smoke: {check.method} {url}: failed after {attempts} attempt(s): {reason}")
            return SmokeCheckResult(url, False, status, elapsed_ms, attempts, reason)
        log(
            f"smoke: {check.method} {url}: attempt {attempts} failed ({reason}); "
            f"retrying in {check.retry_delay:g} s"
        )
        sleep(check.retry_delay)


def run_smoke_checks(
    checks: Sequence[SmokeCheck],
    *,
    base_url: str | None,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    headers: Mapping[str, str] | None = None,
) -> SmokeResult:
    """Run every check in order (each with its retries) and sum them up.

    Args:
        checks: the checks from the environment's spec; none is a ConfigError (a
            smoke test that checks nothing must not pass).
        base_url: fills ``{base_url}`` in the checks' URLs, e.g. the staging
            Service's address; None when no check uses it.
        log: receives one line per attempt.
        sleep: waits between retries (injectable for tests).
        headers: sent with every request, e.g. the cluster's bearer token when the
            checks go through the Kubernetes API server's service proxy; never logged.

    Returns:
        ``Successful`` when every check passed, else ``Failed`` naming the checks.

    Raises:
        ConfigError: no checks, a bad ``base_url``, or ``{base_url}`` without one.

    Example:
        ```python
        result = run_smoke_checks(
            [SmokeCheck(url="{base_url}/healthz", json_field="status", json_equals="ok")],
            base_url="http://127.0.0.1:8080",
            log=print,
        )
        assert result.phase == "Successful"
        ```
    """
    if not checks:
        raise ConfigError("smoke test has no checks: nothing would be tested")
    if base_url is not None:
        try:
            _check_http_url(base_url, "base_url")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for check in checks:  # configuration errors before the first request
        check.resolve_url(base_url)
    with httpx.Client(follow_redirects=False, headers=dict(headers or {})) as client:
        results = tuple(
            run_check(client, check, base_url=base_url, log=log, sleep=sleep) for check in checks
        )
    failed = [r for r in results if not r.passed]
    if not failed:
        return SmokeResult("Successful", results, f"{len(results)} smoke check(s) passed")
    summary = "; ".join(f"{r.url}: {r.reason}" for r in failed)
    message = f"{len(failed)} of {len(results)} smoke check(s) failed: {summary}"
    return SmokeResult("Failed", results, message)


def smoke_rows(result: SmokeResult) -> list[dict[str, Any]]:
    """One row per check, for ``create_table_artifact``."""
    return [
        {
            "url": c.url,
            "result": "passed" if c.passed else "failed",
            "status": c.status_code,
            "elapsed_ms": round(c.elapsed_ms, 1),
            "attempts": c.attempts,
            "reason": c.reason or "",
        }
        for c in result.checks
    ]


@task(name="smoke-test", cache_policy=NO_CACHE)  # a smoke test is about now, never cached
def smoke_test(
    checks: Sequence[SmokeCheck],
    base_url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> SmokeResult:
    """Run the smoke checks against an environment; see :func:`run_smoke_checks`."""
    return run_smoke_checks(checks, base_url=base_url, log=get_run_logger().info, headers=headers)
