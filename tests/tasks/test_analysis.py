"""Metric analysis: a real Prometheus scraping the real example app, plus the phase rules.

The headline tests run the analysis against Debian's Prometheus scraping two releases
of the example app under generated traffic (``metrics_stack``): a good one passes, a
bad one (half of ``GET /`` answered 500) fails after ``failure_limit + 1``
measurements, a metric that does not exist is Inconclusive, a stopped or unreachable
Prometheus is Error. The phase rules are also checked one by one through the
provider seam (a fake ``fetch`` and a recorded ``sleep``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pydantic
import pytest
from prefect import flow
from prefect.artifacts import Artifact

from slipway.blocks.prometheus import PrometheusServer
from slipway.exceptions import ConfigError, UnsafeInputError
from slipway.tasks.analysis import (
    AnalysisResult,
    AnalysisSpec,
    MeasurementError,
    analysis_rows,
    assess_measurements,
    metric_analysis,
    parse_condition,
    render_query,
    run_analysis,
)
from tests.servers import prometheus as servers
from tests.servers.prometheus import MetricsStack, PrometheusProcess, unused_port

metrics_stack = servers.metrics_stack  # the fixture: real Prometheus + two app releases
start_prometheus = servers.start_prometheus

# 0 when there are no errors (``or vector(0)``), empty when there is no traffic at all
ERROR_RATIO = (
    '(sum(rate(http_requests_total{app="{app}",namespace="{namespace}",code=~"5..",path="/"}'
    "[15s])) or vector(0))"
    ' / sum(rate(http_requests_total{app="{app}",namespace="{namespace}",path="/"}[15s]))'
)


def _block(stack: MetricsStack, **fields: object) -> PrometheusServer:
    return PrometheusServer(
        url=stack.prometheus.url,
        **{"username": stack.user, "password": stack.password, **fields},  # type: ignore[arg-type]
    )


def _analyse(
    prometheus: PrometheusServer, spec: AnalysisSpec, **values: str
) -> tuple[AnalysisResult, list[str]]:
    lines: list[str] = []
    values.setdefault("app", "good-app")
    result = run_analysis(prometheus, spec, log=lines.append, **values)  # type: ignore[arg-type]
    return result, lines


# ------------------------------------------------------------- real Prometheus, real app


def test_a_good_release_passes(metrics_stack: MetricsStack) -> None:
    spec = AnalysisSpec(
        name="error-rate",
        query=ERROR_RATIO,
        success_condition="result < 0.05",
        interval=0.5,
        count=3,
    )

    result, lines = _analyse(_block(metrics_stack), spec, app="good-app", namespace="staging")

    assert result.phase == "Successful", result.message
    assert [m.phase for m in result.measurements] == ["Successful"] * 3
    assert result.values == (0.0, 0.0, 0.0)
    assert (result.successful, result.failed, result.inconclusive, result.errors) == (3, 0, 0, 0)
    assert 'app="good-app",namespace="staging"' in result.query and "{app}" not in result.query
    assert result.message == "error-rate: 3 of 3 measurement(s) met result < 0.05 (last result=0)"
    assert len(lines) == 5  # the query, three measurements, the verdict
    assert metrics_stack.good.traffic is not None and metrics_stack.good.traffic.statuses[200]


def test_a_bad_release_fails_after_failure_limit_plus_one(metrics_stack: MetricsStack) -> None:
    spec = AnalysisSpec(
        name="error-rate",
        query=ERROR_RATIO,
        success_condition="result < 0.05",
        interval=0.3,
        count=10,
        failure_limit=1,
    )
    started = time.monotonic()

    result, _ = _analyse(_block(metrics_stack), spec, app="bad-app", namespace="staging")

    assert time.monotonic() - started < 2  # stopped early: 2 of 10 measurements
    assert result.phase == "Failed"
    assert [m.phase for m in result.measurements] == ["Failed", "Failed"]
    assert all(0.3 < value < 0.7 for value in result.values)  # every 2nd request fails
    assert result.message.startswith(
        "error-rate: 2 measurement(s) failed result < 0.05 (failure limit 1): "
    )
    rows = analysis_rows(result)
    assert [row["phase"] for row in rows] == ["Failed", "Failed"] and rows[0]["#"] == 1


def test_a_metric_that_does_not_exist_is_inconclusive(metrics_stack: MetricsStack) -> None:
    spec = AnalysisSpec(
        query='sum(rate(http_requests_missing_total{app="{app}"}[15s]))',
        success_condition="result < 0.05",
        interval=0.1,
        count=5,
    )

    result, _ = _analyse(_block(metrics_stack), spec)

    assert result.phase == "Inconclusive"
    (only,) = result.measurements
    assert (only.phase, only.value, only.error) == ("Inconclusive", None, None)
    assert only.message == "no data: the query returned nothing"


def test_the_version_placeholder_selects_the_release(metrics_stack: MetricsStack) -> None:
    spec = AnalysisSpec(
        query='max(example_app_build_info{app="{app}",version="{version}"})',
        success_condition="result == 1",
        count=1,
    )

    serving, _ = _analyse(_block(metrics_stack), spec, app="bad-app", version="2.0.0")
    other, _ = _analyse(_block(metrics_stack), spec, app="bad-app", version="1.0.0")

    assert serving.phase == "Successful" and serving.values == (1.0,)
    assert other.phase == "Inconclusive"  # that release is not serving: no data, no pass


@pytest.mark.parametrize(
    ("query", "phase", "message"),
    [
        ("scalar(vector(0.01))", "Successful", "result=0.01 meets result < 0.05"),
        ("0/0", "Inconclusive", "no data: the query returned NaN"),
        ("1/0", "Failed", "result=inf fails result < 0.05"),
        ('sum by (app) (http_requests_total{namespace="{namespace}"})', "Error", "2 series"),
        ('http_requests_total{app="{app}"}[15s]', "Error", "returned a matrix"),
        ('"text"', "Error", "returned a string"),
        ("sum(rate(http_requests_total[15s]", "Error", "bad_data"),
    ],
)
def test_answers_of_every_shape(
    metrics_stack: MetricsStack, query: str, phase: str, message: str
) -> None:
    spec = AnalysisSpec(
        query=query, success_condition="result < 0.05", count=1, consecutive_error_limit=0
    )

    result, _ = _analyse(_block(metrics_stack), spec, namespace="staging")

    assert result.phase == phase
    assert message in result.measurements[0].message
    json.dumps(analysis_rows(result), allow_nan=False)  # a table artifact is JSON


def test_wrong_credentials_are_an_error_not_a_crash(metrics_stack: MetricsStack) -> None:
    spec = AnalysisSpec(
        query="vector(0)", success_condition="result < 1", interval=0.01, consecutive_error_limit=1
    )

    result, _ = _analyse(_block(metrics_stack, password="wrong-password"), spec)
    anonymous, _ = _analyse(PrometheusServer(url=metrics_stack.prometheus.url), spec)

    for outcome in (result, anonymous):
        assert outcome.phase == "Error"
        assert [m.phase for m in outcome.measurements] == ["Error", "Error"]
        assert outcome.measurements[-1].error == "Prometheus refused the credentials (HTTP 401)"
    assert "wrong-password" not in repr(result) and metrics_stack.password not in repr(result)


def test_an_unreachable_prometheus_is_an_error_after_the_consecutive_limit() -> None:
    spec = AnalysisSpec(
        query="vector(0)", success_condition="result < 1", interval=0.01, consecutive_error_limit=3
    )

    result, lines = _analyse(PrometheusServer(url=f"http://127.0.0.1:{unused_port()}"), spec)

    assert result.phase == "Error"
    assert [m.phase for m in result.measurements] == ["Error"] * 4
    assert result.consecutive_errors == 4 and result.errors == 4
    assert result.measurements[0].error == "Prometheus unreachable: ConnectError"
    assert result.message.startswith("analysis: 4 consecutive errors (limit 3)")
    assert lines[-1] == f"analysis {result.message}"


def test_prometheus_stopping_mid_analysis(
    start_prometheus: Callable[..., PrometheusProcess],
) -> None:
    """Good measurements, then Prometheus goes away: errors, then Error, not Successful."""
    prometheus = start_prometheus()
    spec = AnalysisSpec(
        query="vector(0)",
        success_condition="result < 1",
        interval=0.01,
        count=10,
        consecutive_error_limit=2,
    )
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            prometheus.stop()

    result = run_analysis(
        PrometheusServer(url=prometheus.url), spec, app="shop", log=lambda _: None, sleep=sleep
    )

    assert [m.phase for m in result.measurements] == ["Successful"] * 2 + ["Error"] * 3
    assert result.phase == "Error"


def test_unsafe_values_never_reach_promql(metrics_stack: MetricsStack) -> None:
    spec = AnalysisSpec(query=ERROR_RATIO, success_condition="result < 0.05", count=1)
    injection = 'good-app"} or vector(0) or up{app="'

    with pytest.raises(UnsafeInputError, match="app .* is not a safe query value"):
        _analyse(_block(metrics_stack), spec, app=injection, namespace="staging")
    with pytest.raises(ConfigError, match="uses {namespace} but no value was given"):
        _analyse(_block(metrics_stack), spec, app="good-app")


# ------------------------------------------------------------------ the Prefect task


def test_metric_analysis_task_publishes_a_table(
    flow_env: Path, metrics_stack: MetricsStack
) -> None:
    spec = AnalysisSpec(
        name="error-rate", query=ERROR_RATIO, success_condition="result < 0.05", count=1
    )
    block = _block(metrics_stack)

    @flow
    def analysis_flow() -> AnalysisResult:
        return metric_analysis(
            block, spec, app="bad-app", namespace="staging", artifact_key="Example App-staging"
        )

    result = analysis_flow()

    assert result.phase == "Failed"
    artifact = Artifact.get("example-app-staging-error-rate")
    assert artifact is not None and "Failed" in str(artifact.data)
    assert metrics_stack.password not in str(artifact.data)


# ------------------------------------------------------ phase rules (the provider seam)

G, B, N = 0.01, 0.5, None  # good value, bad value, no data; E: an error
E = MeasurementError("Prometheus unreachable: ConnectError")
Outcome = float | None | MeasurementError


def _fake(outcomes: Sequence[Outcome]) -> Callable[[], float | None]:
    remaining: Iterator[Outcome] = iter(outcomes)

    def fetch() -> float | None:
        outcome = next(remaining)  # StopIteration: the analysis asked once too often
        if isinstance(outcome, MeasurementError):
            raise outcome
        return outcome

    return fetch


def _assess(outcomes: Sequence[Outcome], **spec: object) -> tuple[AnalysisResult, list[float]]:
    sleeps: list[float] = []
    fields = {"query": "q", "success_condition": "result < 0.05", "interval": 7, **spec}
    result = assess_measurements(
        _fake(outcomes),
        AnalysisSpec.model_validate(fields),
        query="q",
        log=lambda _: None,
        sleep=sleeps.append,
    )
    return result, sleeps


@pytest.mark.parametrize(
    ("outcomes", "limits", "phase", "taken"),
    [
        ([G, G, G], {"count": 3}, "Successful", 3),
        ([B, G, G], {"count": 3}, "Failed", 1),
        ([G, B, G, B, G], {"count": 5, "failure_limit": 1}, "Failed", 4),
        ([B, G, G], {"count": 3, "failure_limit": 1}, "Successful", 3),
        ([N, G, G], {"count": 3}, "Inconclusive", 1),
        ([math.nan, G], {"count": 2}, "Inconclusive", 1),
        ([N, G, G], {"count": 3, "inconclusive_limit": 1}, "Successful", 3),
        ([G, N, N, G, G], {"count": 5, "inconclusive_limit": 1}, "Inconclusive", 3),
        ([E, E, E, E, E, G], {"count": 3}, "Error", 5),  # default limit: 4 in a row
        ([E, E, E, G], {"count": 3, "consecutive_error_limit": 2}, "Error", 3),
        ([E, G, E, E, G, G], {"count": 3, "consecutive_error_limit": 2}, "Successful", 6),
        ([E, G], {"count": 1, "consecutive_error_limit": 0}, "Error", 1),
        # the limits may tolerate everything, but no good measurement is never Successful
        ([N, N, N], {"count": 3, "inconclusive_limit": 5}, "Inconclusive", 3),
        ([B, B], {"count": 2, "failure_limit": 5}, "Failed", 2),
        ([B, N], {"count": 2, "failure_limit": 1, "inconclusive_limit": 1}, "Failed", 2),
    ],
)
def test_phase_rules(
    outcomes: list[Outcome], limits: dict[str, int], phase: str, taken: int
) -> None:
    result, _ = _assess(outcomes, **limits)

    assert result.phase == phase, result.message
    assert len(result.measurements) == taken


def test_stops_at_the_first_deciding_measurement_and_sleeps_between() -> None:
    result, sleeps = _assess([G, B, G, B, G], count=5, failure_limit=1, initial_delay=30)

    assert result.phase == "Failed" and len(result.measurements) == 4
    assert sleeps == [30, 7, 7, 7]  # the initial delay, then an interval between measurements
    assert (result.successful, result.failed) == (2, 2)


def test_errors_do_not_count_towards_count() -> None:
    result, sleeps = _assess([E, G, E, G], count=2)

    assert result.phase == "Successful"
    assert [m.phase for m in result.measurements] == ["Error", "Successful"] * 2
    assert (result.errors, result.consecutive_errors) == (2, 0)
    assert sleeps == [7, 7, 7]  # no sleep after the last one


def test_error_measurements_record_the_reason() -> None:
    result, _ = _assess([E], consecutive_error_limit=0)

    (measurement,) = result.measurements
    assert measurement.error == "Prometheus unreachable: ConnectError"
    assert measurement.value is None and measurement.at.tzinfo is not None


# ------------------------------------------------------------ the condition language


@pytest.mark.parametrize(
    ("condition", "passes", "fails"),
    [
        ("result < 0.05", [0, 0.049, -1], [0.05, 1]),
        ("result<=0.05", [0.05], [0.0501]),
        ("0.05 > result", [0.01], [0.05]),
        ("result >= 10 and result < 20", [10, 19.9], [9, 20]),
        ("result < 1 or result > 99", [0, 100], [50]),
        ("result > 1 && (result < 5 || result == 10)", [2, 10], [1, 7]),
        ("not (result == 0)", [1], [0]),
        ("result != 0", [-1e-3], [0]),
        ("result >= -1.5e2", [-150], [-151]),
    ],
)
def test_conditions_evaluate(condition: str, passes: list[float], fails: list[float]) -> None:
    parsed = parse_condition(condition)

    assert all(parsed.holds(value) for value in passes)
    assert not any(parsed.holds(value) for value in fails)


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ("__import__('os').system('true')", 'unexpected "\'" at column 12'),
        ("result.__class__ == 1", "unexpected '.'"),
        ("len(result) > 0", "unknown name 'len'"),
        ("foo < 1", "unknown name 'foo' at column 1 (only 'result')"),
        ("result < threshold", "unknown name 'threshold'"),
        ("result[0] < 0.05", "unexpected '['"),
        ("result < '1'", 'unexpected "\'"'),
        ("result < 1; result > 0", "unexpected ';'"),
        ("result + 1 < 2", "unexpected '+'"),
        ("1 < 2", "'result' on one side and a number on the other"),
        ("result < result", "'result' on one side"),
        ("result", "ends too early"),
        ("result < 1 and", "ends too early"),
        ("(result < 1", "ends too early"),
        ("result < 1)", "unexpected ')'"),
        ("result = 1", "unexpected '='"),
        ("result < 1e999", "out of range"),
        ("", "is empty"),
        ("(" * 30 + "result < 1" + ")" * 30, "nests deeper than 20"),
        ("result < 1 or " * 50 + "result < 1", "longer than 500"),
    ],
)
def test_unsafe_or_malformed_conditions_are_refused(condition: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_condition(condition)
    assert problem in str(caught.value)

    with pytest.raises(pydantic.ValidationError, match="success_condition"):
        AnalysisSpec(query="vector(0)", success_condition=condition)


# ------------------------------------------------------------------ spec and template


def test_spec_defaults_follow_argo() -> None:
    spec = AnalysisSpec(query="vector(0)", success_condition="result < 1")

    assert (spec.failure_limit, spec.inconclusive_limit, spec.consecutive_error_limit) == (0, 0, 4)
    assert (spec.interval, spec.count, spec.initial_delay) == (60, 5, 0)
    assert spec.on_inconclusive == "rollback"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"query": 'up{job="{job}"}'}, "unknown placeholder(s) {job}"),
        ({"query": ""}, "query"),
        ({"count": 0}, "count"),
        ({"interval": 0}, "interval"),
        ({"failure_limit": -1}, "failure_limit"),
        ({"on_inconclusive": "promote"}, "on_inconclusive"),
        ({"successCondition": "result < 1"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_specs_are_refused(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(problem)):
        AnalysisSpec.model_validate(
            {"query": "vector(0)", "success_condition": "result < 1", **fields}
        )


def test_render_query_fills_only_the_known_placeholders() -> None:
    query = render_query(
        'x{app="{app}",ns="{namespace}",v=~"{version}"} / y{job="api"}',
        app="shop",
        namespace="prod-eu",
        version="sha256:ab12.3",
    )

    assert query == 'x{app="shop",ns="prod-eu",v=~"sha256:ab12.3"} / y{job="api"}'


@pytest.mark.parametrize(
    "value", ['a"}', "a b", "", "-leading", "a\nb", "a{b}", "x" * 129, 'a\\"', "a,b=c"]
)
def test_render_query_refuses_unsafe_values(value: str) -> None:
    with pytest.raises(UnsafeInputError, match="version"):
        render_query('x{v="{version}"}', app="shop", version=value)
