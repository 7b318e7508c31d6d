from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from example_app.metrics import AppMetrics


def samples(metrics, name):
    """{labels as sorted tuple: value} for every sample called ``name``."""
    body, _ = metrics.render(None)
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    }


def test_counts_requests_by_method_path_and_code():
    metrics = AppMetrics("1.0")
    metrics.observe("GET", "/", 200, 0.01)
    metrics.observe("GET", "/", 200, 0.02)
    metrics.observe("GET", "/", 500, 0.01)

    assert samples(metrics, "http_requests_total") == {
        (("code", "200"), ("method", "GET"), ("path", "/")): 2.0,
        (("code", "500"), ("method", "GET"), ("path", "/")): 1.0,
    }


def test_histogram_observes_durations_by_path():
    metrics = AppMetrics("1.0")
    metrics.observe("GET", "/healthz", 200, 0.003)
    metrics.observe("GET", "/healthz", 200, 0.2)

    assert samples(metrics, "http_request_duration_seconds_count") == {(("path", "/healthz"),): 2}
    [total] = samples(metrics, "http_request_duration_seconds_sum").values()
    assert abs(total - 0.203) < 1e-9
    buckets = samples(metrics, "http_request_duration_seconds_bucket")
    assert buckets[(("le", "0.005"), ("path", "/healthz"))] == 1
    assert buckets[(("le", "+Inf"), ("path", "/healthz"))] == 2


def test_unknown_methods_share_one_label():
    metrics = AppMetrics("1.0")
    metrics.observe("BREW", "/", 501, 0.001)
    metrics.observe(None, "unmatched", 400, 0.001)

    assert set(samples(metrics, "http_requests_total")) == {
        (("code", "501"), ("method", "OTHER"), ("path", "/")),
        (("code", "400"), ("method", "OTHER"), ("path", "unmatched")),
    }


def test_build_info_reports_the_version():
    assert samples(AppMetrics("2.3.4"), "example_app_build_info") == {(("version", "2.3.4"),): 1}


def test_each_instance_has_its_own_registry():
    first, second = AppMetrics("a"), AppMetrics("b")
    first.observe("GET", "/", 200, 0.01)

    assert first.registry is not second.registry
    assert samples(second, "http_requests_total") == {}


def test_uses_a_given_registry():
    registry = CollectorRegistry()

    assert AppMetrics("a", registry).registry is registry


def test_text_format_by_default_and_openmetrics_on_request():
    metrics = AppMetrics("a")

    body, content_type = metrics.render(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE http_requests_total counter" in body

    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
