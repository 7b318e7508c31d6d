import json

import pytest

from example_app.app import App, Response, _printable, route_label


def payload(response):
    assert response.content_type == "application/json"
    return json.loads(response.body)


@pytest.fixture
def app():
    return App(version="1.2.3")


def test_root_greets_with_the_version(app):
    response = app.handle("GET", "/")

    assert response.status == 200
    assert payload(response) == {"message": "Hello from example-app", "version": "1.2.3"}


def test_healthz_is_ok(app):
    response = app.handle("GET", "/healthz")

    assert (response.status, payload(response)) == (200, {"status": "ok", "version": "1.2.3"})


def test_readyz_is_ready_until_shutdown_starts(app):
    assert app.handle("GET", "/readyz").status == 200

    app.ready.clear()
    response = app.handle("GET", "/readyz")

    assert response.status == 503
    assert payload(response)["status"] == "shutting down"
    assert app.handle("GET", "/healthz").status == 200  # still alive while draining


def test_query_string_is_ignored_for_routing(app):
    assert app.handle("GET", "/healthz?probe=kubelet").status == 200


@pytest.mark.parametrize("path", ["/nope", "/healthz/", "//", "/metrics/x", "*"])
def test_unknown_paths_are_404(app, path):
    response = app.handle("GET", path)

    assert response.status == 404
    assert payload(response)["error"] == "not found"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_on_a_route_are_405(app, method):
    response = app.handle(method, "/")

    assert response.status == 405
    assert response.headers == {"Allow": "GET, HEAD"}


def test_head_is_answered_like_get(app):
    assert app.handle("HEAD", "/healthz") == app.handle("GET", "/healthz")


def test_metrics_renders_the_registry(app):
    app.metrics.observe("GET", "/", 200, 0.01)

    response = app.handle("GET", "/metrics")

    assert response.status == 200
    assert response.content_type.startswith("text/plain")
    assert b'http_requests_total{code="200",method="GET",path="/"} 1.0' in response.body
    assert b'example_app_build_info{version="1.2.3"} 1.0' in response.body


def test_error_rate_one_fails_every_root_request():
    app = App(error_rate=1)

    responses = [app.handle("GET", "/") for _ in range(3)]

    assert [r.status for r in responses] == [500, 500, 500]
    assert payload(responses[0]) == {"error": "injected failure", "version": "dev"}


def test_error_rate_spares_health_and_metrics_endpoints():
    app = App(error_rate=1)

    assert app.handle("GET", "/healthz").status == 200
    assert app.handle("GET", "/readyz").status == 200
    assert app.handle("GET", "/metrics").status == 200


def test_error_rate_half_alternates():
    app = App(error_rate=0.5)

    assert [app.handle("GET", "/").status for _ in range(4)] == [200, 500, 200, 500]


def test_only_root_requests_consume_the_error_sequence():
    app = App(error_rate=0.5)

    app.handle("GET", "/")  # 1st root request: ok
    app.handle("GET", "/healthz")
    app.handle("GET", "/nope")

    assert app.handle("GET", "/").status == 500  # 2nd root request


@pytest.mark.parametrize(
    "path, label",
    [
        ("/", "/"),
        ("/healthz", "/healthz"),
        ("/readyz?x=1", "/readyz"),
        ("/metrics", "/metrics"),
        ("/random/123", "unmatched"),
        ("", "unmatched"),
        (None, "unmatched"),
    ],
)
def test_route_label_is_bounded(path, label):
    assert route_label(path) == label


def test_json_response_has_a_trailing_newline():
    assert Response.json(200, {"b": 1, "a": 2}).body == b'{"a": 2, "b": 1}\n'


def test_printable_escapes_control_characters():
    assert _printable('GET /\r\nforged "line"') == 'GET /\\x0d\\x0aforged "line"'
