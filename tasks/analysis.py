"""Metric analysis: decide from Prometheus whether a release is healthy.

Modelled on Argo Rollouts' AnalysisTemplate. An :class:`AnalysisSpec` names a PromQL
query, how often to run it (``interval``, ``count``, ``initial_delay``) and a
``success_condition`` over its value. Each run of the query is a
:class:`Measurement` with a phase:

- ``Successful``: the value meets the condition;
- ``Failed``: the value does not;
- ``Inconclusive``: there is no value (an empty vector, NaN such as 0/0 when there
  was no traffic). Missing data is never success;
- ``Error``: the measurement could not be taken (Prometheus unreachable, an HTTP
  error, a query Prometheus rejects, an answer of the wrong shape). Errors are
  recorded, never raised, and do not count towards ``count``: the query is simply
  asked again after ``interval``, as Argo does.

After every measurement the analysis is assessed, in Argo's order, and stops early
as soon as one rule decides:

1. more than ``failure_limit`` failed measurements -> ``Failed``;
2. more than ``inconclusive_limit`` inconclusive ones -> ``Inconclusive``;
3. more than ``consecutive_error_limit`` errors in a row -> ``Error``;
4. ``count`` measurements taken (errors aside) -> ``Successful``, with one deliberate
   difference from Argo: a run in which no measurement succeeded is never
   ``Successful`` (``Failed`` if any failed, else ``Inconclusive``), whatever the
   limits allow.

Gates return data: :func:`run_analysis` returns a frozen :class:`AnalysisResult` and
the flow decides what its phase means (promote, roll back, or, for
``Inconclusive``, whatever ``on_inconclusive`` says). It raises only for
configuration errors (:class:`~slipway.exceptions.ConfigError`): an unsafe or
missing placeholder value.

Nothing user-controlled is pasted into PromQL as free text: the query template's
only placeholders are ``{app}``, ``{namespace}`` and ``{version}``, filled from
explicit arguments that must match :data:`SAFE_VALUE` (letters, digits, ``_ . : -``;
no quotes, braces, spaces or operators). The success condition is a tiny language
parsed here, never ``eval``'d::

    condition  := or_expr
    or_expr    := and_expr (("or" | "||") and_expr)*
    and_expr   := not_expr (("and" | "&&") not_expr)*
    not_expr   := "not" not_expr | "(" condition ")" | comparison
    comparison := "result" OP NUMBER | NUMBER OP "result"
    OP         := "<" | "<=" | ">" | ">=" | "==" | "!="

The Prometheus provider is :func:`query_prometheus` (``/api/v1/query``, an instant
query): a scalar, or a vector of at most one sample. :func:`assess_measurements`
holds the phase logic behind a one-function seam, so it can be tested with a fake
query and an injected ``sleep``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import httpx
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field, field_validator

from slipway.blocks.prometheus import PrometheusServer
from slipway.exceptions import ConfigError, UnsafeInputError
from slipway.spec_types import Name, StrictModel

MeasurementPhase = Literal["Successful", "Failed", "Inconclusive", "Error"]
AnalysisPhase = Literal["Successful", "Failed", "Inconclusive", "Error"]

PLACEHOLDERS = ("app", "namespace", "version")
SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MESSAGE_CHARS = 300
MAX_CONDITION_CHARS = 500
MAX_CONDITION_DEPTH = 20

# ------------------------------------------------------------------ success condition


class MeasurementError(Exception):
    """A measurement could not be taken. Recorded as an ``Error`` measurement, never raised
    out of :func:`run_analysis`; the message is short and holds no secret."""


_TOKEN = re.compile(
    r"\s*(?:(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<op><=|>=|==|!=|<|>|&&|\|\|)"
    r"|(?P<paren>[()])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_ALIASES = {"&&": "and", "||": "or"}


@dataclass(frozen=True)
class _Compare:
    op: str  # normalised to ``result OP number``
    number: float

    def holds(self, result: float) -> bool:
        return _COMPARE[self.op](result, self.number)


@dataclass(frozen=True)
class _Not:
    item: _Node

    def holds(self, result: float) -> bool:
        return not self.item.holds(result)


@dataclass(frozen=True)
class _All:
    items: tuple[_Node, ...]

    def holds(self, result: float) -> bool:
        return all(item.holds(result) for item in self.items)


@dataclass(frozen=True)
class _Any:
    items: tuple[_Node, ...]

    def holds(self, result: float) -> bool:
        return any(item.holds(result) for item in self.items)


_Node = _Compare | _Not | _All | _Any


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, column) triples; ``&&``/``||`` are read as ``and``/``or``."""
    tokens: list[tuple[str, str, int]] = []
    position = 0
    while text[position:].strip():
        match = _TOKEN.match(text, position)
        if match is None:
            column = position + len(text[position:]) - len(text[position:].lstrip())
            raise ConfigError(
                f"success condition {text!r}: unexpected {text[column]!r} at column {column + 1}"
            )
        kind = match.lastgroup or ""
        value = match.group(kind)
        tokens.append((kind, _ALIASES.get(value, value), match.start(kind)))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(f"success condition {self.text!r}: {problem}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise self.fail("ends too early")
        self.index += 1
        return token

    def parse(self) -> _Node:
        if not self.tokens:
            raise self.fail("is empty")
        node = self.or_expr(0)
        token = self.peek()
        if token is not None:
            raise self.fail(f"unexpected {token[1]!r} at column {token[2] + 1}")
        return node

    def or_expr(self, depth: int) -> _Node:
        items = [self.and_expr(depth)]
        while (token := self.peek()) is not None and token[1] == "or":
            self.take()
            items.append(self.and_expr(depth))
        return items[0] if len(items) == 1 else _Any(tuple(items))

    def and_expr(self, depth: int) -> _Node:
        items = [self.not_expr(depth)]
        while (token := self.peek()) is not None and token[1] == "and":
            self.take()
            items.append(self.not_expr(depth))
        return items[0] if len(items) == 1 else _All(tuple(items))

    def not_expr(self, depth: int) -> _Node:
        if depth > MAX_CONDITION_DEPTH:
            raise self.fail(f"nests deeper than {MAX_CONDITION_DEPTH} levels")
        token = self.peek()
        if token is not None and token[1] == "not":
            self.take()
            return _Not(self.not_expr(depth + 1))
        if token is not None and token[1] == "(":
            self.take()
            node = self.or_expr(depth + 1)
            closing = self.take()
            if closing[1] != ")":
                raise self.fail(f"expected ')' at column {closing[2] + 1}")
            return node
        return self.comparison()

    def operand(self) -> tuple[str, float | None]:
        kind, value, column = self.take()
        if kind == "number":
            number = float(value)
            if not math.isfinite(number):
                raise self.fail(f"number {value!r} is out of range")
            return "number", number
        if kind == "word" and value == "result":
            return "result", None
        if kind == "word":
            raise self.fail(f"unknown name {value!r} at column {column + 1} (only 'result')")
        raise self.fail(f"expected 'result' or a number at column {column + 1}, got {value!r}")

    def comparison(self) -> _Compare:
        left_kind, left = self.operand()
        kind, op, column = self.take()
        if kind != "op" or op not in _COMPARE:
            raise self.fail(f"expected a comparison (<, <=, >, >=, ==, !=) at column {column + 1}")
        right_kind, right = self.operand()
        if left_kind == "result" and right_kind == "number" and right is not None:
            return _Compare(op, right)
        if left_kind == "number" and right_kind == "result" and left is not None:
            return _Compare(_FLIP[op], left)
        raise self.fail("each comparison needs 'result' on one side and a number on the other")


@dataclass(frozen=True)
class SuccessCondition:
    """A parsed success condition; ``holds(value)`` says whether a value passes."""

    text: str
    _tree: _Node

    def holds(self, result: float) -> bool:
        return self._tree.holds(result)


@lru_cache(maxsize=256)
def parse_condition(text: str) -> SuccessCondition:
    """Parse a success condition (grammar in the module docstring).

    Raises:
        ConfigError: anything outside the grammar: other names, calls, attributes,
            strings, operators, or a condition longer than 500 characters.
    """
    if len(text) > MAX_CONDITION_CHARS:
        raise ConfigError(f"success condition is longer than {MAX_CONDITION_CHARS} characters")
    return SuccessCondition(text, _Parser(text).parse())


# ------------------------------------------------------------------------------ spec


class AnalysisSpec(StrictModel):
    """One metric to watch, like an Argo Rollouts AnalysisTemplate metric."""

    name: Name = Field(
        default="analysis",
        description="Name shown in logs, results and artifacts. Default: analysis.",
    )
    query: str = Field(
        min_length=1,
        max_length=10_000,
        description=(
            "PromQL instant query returning one number (a scalar, or a vector of at most "
            "one sample). Placeholders {app}, {namespace}, {version} are filled from the "
            'deploy, e.g. \'sum(rate(http_requests_total{app="{app}",code=~"5.."}[1m])) '
            '/ sum(rate(http_requests_total{app="{app}"}[1m]))\'. No default.'
        ),
    )
    success_condition: str = Field(
        description=(
            "When a measurement is Successful, over the query's value 'result': "
            "comparisons (<, <=, >, >=, ==, !=) with numbers, and/or/not, parentheses, "
            "e.g. 'result < 0.05'. No default."
        )
    )
    interval: float = Field(
        default=60,
        gt=0,
        le=3600,
        description="Seconds from the end of one measurement to the next. Default: 60.",
    )
    count: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Measurements to take (errors not counted) before Successful. Default: 5.",
    )
    initial_delay: float = Field(
        default=0,
        ge=0,
        le=3600,
        description="Seconds to wait before the first measurement. Default: 0.",
    )
    failure_limit: int = Field(
        default=0,
        ge=0,
        description="Failed measurements tolerated; one more makes it Failed. Default: 0.",
    )
    inconclusive_limit: int = Field(
        default=0,
        ge=0,
        description=(
            "Inconclusive measurements (no data) tolerated; one more makes it "
            "Inconclusive. Default: 0."
        ),
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        description="Errors in a row tolerated; one more makes it Error. Default: 4.",
    )
    on_inconclusive: Literal["pause", "rollback"] = Field(
        default="rollback",
        description=(
            "What the pipeline does with an Inconclusive (or Error) analysis: pause for a "
            "person to decide, or roll back. Never promote. Default: rollback."
        ),
    )

    @field_validator("query")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        unknown = sorted({m for m in _PLACEHOLDER.findall(value) if m not in PLACEHOLDERS})
        if unknown:
            names = ", ".join("{" + name + "}" for name in unknown)
            raise ValueError(
                f"unknown placeholder(s) {names}; known: {{app}}, {{namespace}}, {{version}}"
            )
        return value

    @field_validator("success_condition")
    @classmethod
    def _parsable_condition(cls, value: str) -> str:
        parse_condition(value)  # ConfigError is a ValueError: pydantic reports it
        return value


def render_query(
    template: str, *, app: str | None, namespace: str | None = None, version: str | None = None
) -> str:
    """Fill ``{app}``, ``{namespace}``, ``{version}``; every value must match SAFE_VALUE.

    Raises:
        UnsafeInputError: a value with characters that could change the query.
        ConfigError: the template uses a placeholder that was given no value.
    """
    values = {"app": app, "namespace": namespace, "version": version}
    for key, value in values.items():
        if value is not None and not SAFE_VALUE.match(value):
            raise UnsafeInputError(
                f"analysis {key} {value[:80]!r} is not a safe query value "
                "(letters, digits, '_', '.', ':', '-'; up to 128 characters)"
            )

    def fill(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None:
            raise ConfigError(f"the analysis query uses {match.group(0)} but no value was given")
        return value

    return _PLACEHOLDER.sub(fill, template)


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Measurement:
    """One run of the query.

    Attributes:
        phase: Successful / Failed (value vs condition), Inconclusive (no value),
            Error (no measurement could be taken).
        value: the query's value; None when there was none (or it was NaN).
        at: when the measurement finished (UTC).
        error: why it is an Error; None otherwise.
        message: one line for people, e.g. ``result=0.5 fails result < 0.05``.
    """

    phase: MeasurementPhase
    value: float | None
    at: datetime
    error: str | None
    message: str


@dataclass(frozen=True)
class AnalysisResult:
    """The verdict of one analysis run; ``message`` is short and safe to show."""

    name: str
    phase: AnalysisPhase
    measurements: tuple[Measurement, ...]
    successful: int
    failed: int
    inconclusive: int
    errors: int
    consecutive_errors: int
    query: str
    condition: str
    message: str

    @property
    def values(self) -> tuple[float, ...]:
        """The measured values, in order (inconclusive and errors have none)."""
        return tuple(m.value for m in self.measurements if m.value is not None)


# --------------------------------------------------------------------------- provider


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def _sample_value(pair: Any) -> float:
    """``[<unix time>, "<value>"]`` -> float (NaN and ±Inf included, as Prometheus sends)."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise MeasurementError("Prometheus answered a sample of an unknown shape")
    try:
        return float(pair[1])
    except ValueError:
        raise MeasurementError(f"Prometheus answered a non-number {pair[1][:40]!r}") from None


def query_prometheus(client: httpx.Client, query: str) -> float | None:
    """Run an instant query; its one value, or None when the result is an empty vector.

    Raises:
        MeasurementError: no usable answer: unreachable, timed out, an HTTP error,
            Prometheus' own error (bad query, timeout), more than one series, or a
            result type other than scalar / vector. The message names the cause,
            never a credential.
    """
    try:
        answer = client.get("/api/v1/query", params={"query": query})
    except httpx.TimeoutException:
        raise MeasurementError("Prometheus did not answer in time") from None
    except httpx.HTTPError as exc:
        # the text can name the URL (never credentials: the block refuses them in it)
        raise MeasurementError(f"Prometheus unreachable: {type(exc).__name__}") from None
    if answer.status_code in (401, 403):
        raise MeasurementError(f"Prometheus refused the credentials (HTTP {answer.status_code})")
    try:
        payload = answer.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise MeasurementError(f"Prometheus answered HTTP {answer.status_code} without JSON")
    if payload.get("status") != "success":
        kind = payload.get("errorType", "error")
        raise MeasurementError(
            _short(f"query refused (HTTP {answer.status_code}, {kind}): {payload.get('error')}")
        )
    data = payload.get("data")
    if not isinstance(data, dict):
        raise MeasurementError("Prometheus answered without data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _sample_value(result)
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise MeasurementError(
                f"the query returned {len(result)} series; aggregate it to one "
                "(e.g. sum(...) or max(...))"
            )
        sample = result[0]
        return _sample_value(sample.get("value") if isinstance(sample, dict) else None)
    raise MeasurementError(f"the query returned a {kind}; it must be a scalar or a vector")


# ----------------------------------------------------------------------- phase logic


def _measure(fetch: Callable[[], float | None], condition: SuccessCondition) -> Measurement:
    try:
        value = fetch()
    except MeasurementError as exc:
        reason = _short(str(exc))
        return Measurement("Error", None, datetime.now(UTC), reason, f"error: {reason}")
    at = datetime.now(UTC)
    if value is None:
        return Measurement("Inconclusive", None, at, None, "no data: the query returned nothing")
    if math.isnan(value):
        return Measurement("Inconclusive", None, at, None, "no data: the query returned NaN")
    if condition.holds(value):
        return Measurement(
            "Successful", value, at, None, f"result={value:g} meets {condition.text}"
        )
    return Measurement("Failed", value, at, None, f"result={value:g} fails {condition.text}")


def assess_measurements(
    fetch: Callable[[], float | None],
    spec: AnalysisSpec,
    *,
    query: str,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> AnalysisResult:
    """Take measurements with ``fetch`` and assess them (rules in the module docstring).

    Args:
        fetch: one measurement: the value, None for no data; raises MeasurementError
            when none could be taken (the provider seam; tests pass a fake).
        spec: timing, condition and limits.
        query: the rendered query, for the result and the logs.
        log: receives one line per measurement.
        sleep: waits ``initial_delay`` and ``interval`` (injectable for tests).
    """
    condition = parse_condition(spec.success_condition)
    measurements: list[Measurement] = []
    counts = {"Successful": 0, "Failed": 0, "Inconclusive": 0, "Error": 0}
    consecutive_errors = 0

    def finish(phase: AnalysisPhase, message: str) -> AnalysisResult:
        message = _short(f"{spec.name}: {message}")
        log(f"analysis {message}")
        return AnalysisResult(
            name=spec.name,
            phase=phase,
            measurements=tuple(measurements),
            successful=counts["Successful"],
            failed=counts["Failed"],
            inconclusive=counts["Inconclusive"],
            errors=counts["Error"],
            consecutive_errors=consecutive_errors,
            query=query,
            condition=spec.success_condition,
            message=message,
        )

    if spec.initial_delay:
        sleep(spec.initial_delay)
    while True:
        measurement = _measure(fetch, condition)
        measurements.append(measurement)
        counts[measurement.phase] += 1
        consecutive_errors = consecutive_errors + 1 if measurement.phase == "Error" else 0
        taken = len(measurements) - counts["Error"]
        log(
            f"analysis {spec.name}: measurement {len(measurements)} "
            f"({taken}/{spec.count} counted) {measurement.phase}: {measurement.message}"
        )
        if counts["Failed"] > spec.failure_limit:
            values = ", ".join(f"{m.value:g}" for m in measurements if m.phase == "Failed")
            return finish(
                "Failed",
                f"{counts['Failed']} measurement(s) failed {condition.text} "
                f"(failure limit {spec.failure_limit}): {values}",
            )
        if counts["Inconclusive"] > spec.inconclusive_limit:
            return finish(  # only an Inconclusive measurement gets here
                "Inconclusive",
                f"{counts['Inconclusive']} inconclusive measurement(s) "
                f"(limit {spec.inconclusive_limit}): {measurement.message}",
            )
        if consecutive_errors > spec.consecutive_error_limit:
            return finish(
                "Error",
                f"{consecutive_errors} consecutive errors "
                f"(limit {spec.consecutive_error_limit}): {measurement.error}",
            )
        if taken >= spec.count:
            if counts["Successful"] == 0:  # never Successful without one good measurement
                phase: AnalysisPhase = "Failed" if counts["Failed"] else "Inconclusive"
                return finish(phase, f"no measurement of {taken} met {condition.text}")
            last = next(m.value for m in reversed(measurements) if m.value is not None)
            return finish(
                "Successful",
                f"{counts['Successful']} of {taken} measurement(s) met {condition.text} "
                f"(last result={last:g})",
            )
        sleep(spec.interval)


def run_analysis(
    prometheus: PrometheusServer,
    spec: AnalysisSpec,
    *,
    app: str,
    namespace: str | None = None,
    version: str | None = None,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> AnalysisResult:
    """Run an analysis against Prometheus; never raises for Prometheus trouble.

    Args:
        prometheus: the server block (URL, credentials, request timeout).
        spec: query template, timing, condition and limits.
        app, namespace, version: fill the query's placeholders; each must match
            :data:`SAFE_VALUE`. ``namespace`` and ``version`` may be omitted when the
            query does not use them.
        log: receives one line per measurement and the verdict.
        sleep: waits between measurements (injectable for tests).

    Returns:
        The :class:`AnalysisResult`; a Prometheus that cannot be reached makes
        ``Error`` measurements and, past ``consecutive_error_limit``, an ``Error`` phase.

    Raises:
        UnsafeInputError, ConfigError: see :func:`render_query`.

    Example:
        ```python
        spec = AnalysisSpec(
            query='sum(rate(http_requests_total{app="{app}",code=~"5.."}[1m]))',
            success_condition="result < 0.05",
            interval=30,
            count=4,
            failure_limit=1,
        )
        result = run_analysis(PrometheusServer.load("prometheus"), spec, app="shop", log=print)
        ```
    """
    query = render_query(spec.query, app=app, namespace=namespace, version=version)
    log(f"analysis {spec.name}: {spec.count} x every {spec.interval:g} s: {query}")
    with prometheus.get_client() as client:
        return assess_measurements(
            lambda: query_prometheus(client, query), spec, query=query, log=log, sleep=sleep
        )


def analysis_rows(result: AnalysisResult) -> list[dict[str, Any]]:
    """One row per measurement, for ``create_table_artifact``."""
    return [
        {
            "#": index,
            "at": m.at.isoformat(timespec="seconds"),
            "phase": m.phase,
            # JSON has no Infinity: a non-finite value (x/0) is shown as text
            "value": m.value if m.value is None or math.isfinite(m.value) else str(m.value),
            "message": m.message,
        }
        for index, m in enumerate(result.measurements, start=1)
    ]


def _artifact_key(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


@task(name="metric-analysis", cache_policy=NO_CACHE)  # a measurement is about now
def metric_analysis(
    prometheus: PrometheusServer,
    spec: AnalysisSpec,
    *,
    app: str,
    namespace: str | None = None,
    version: str | None = None,
    artifact_key: str | None = None,
) -> AnalysisResult:
    """Run :func:`run_analysis` and publish its measurements as a table artifact.

    ``artifact_key`` (e.g. ``"<app>-<environment>"``) keys the artifact so the
    Prefect UI keeps its history; default none (it then belongs to this run only).
    """
    result = run_analysis(
        prometheus,
        spec,
        app=app,
        namespace=namespace,
        version=version,
        log=get_run_logger().info,
    )
    key = _artifact_key(f"{artifact_key}-{spec.name}") if artifact_key else None
    create_table_artifact(
        key=key,
        table=analysis_rows(result),
        description=f"Analysis {result.phase}: {result.message}",
    )
    return result
