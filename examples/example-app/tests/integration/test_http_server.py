"""The real server in a thread, spoken to over HTTP with urllib."""

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


def get(server, path, method="GET"):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(server.base_url + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def request_counts(server):
    """{(method, path, code): count} from the server's own /metrics."""
    status, _, body = get(server, "/metrics")
    assert status == 200
    return {
        (s.labels["method"], s.labels["path"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "http_requests_total"
    }


def test_healthz(start_server):
    server = start_server(version="4.5.6")

    status, headers, body = get(server, "/healthz")

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Server"] == "example-app"
    assert json.loads(body) == {"status": "ok", "version": "4.5.6"}


def test_root_and_readyz(start_server):
    server = start_server(version="4.5.6")

    assert json.loads(get(server, "/")[2])["version"] == "4.5.6"
    assert get(server, "/readyz")[0] == 200


def test_unknown_path_is_404(start_server):
    status, _, body = get(start_server(), "/does-not-exist")

    assert status == 404
    assert json.loads(body)["path"] == "/does-not-exist"


def test_post_is_405_and_head_has_no_body(start_server):
    server = start_server()

    status, headers, _ = get(server, "/", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")

    status, headers, body = get(server, "/healthz", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0


def test_metrics_count_every_request(start_server):
    server = start_server()
    for _ in range(3):
        get(server, "/")
    get(server, "/healthz")
    get(server, "/nowhere/1")
    get(server, "/nowhere/2")
    get(server, "/", method="DELETE")

    counts = request_counts(server)

    assert counts == {
        ("GET", "/", "200"): 3,
        ("GET", "/healthz", "200"): 1,
        ("GET", "unmatched", "404"): 2,
        ("DELETE", "/", "405"): 1,
    }
    # The scrape itself is counted once it has been answered.
    assert request_counts(server)[("GET", "/metrics", "200")] == 1


def test_metrics_histogram_and_build_info(start_server):
    server = start_server(version="7.0.0")
    get(server, "/")

    _, headers, body = get(server, "/metrics")

    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'http_request_duration_seconds_count{path="/"} 1.0' in text
    assert 'example_app_build_info{version="7.0.0"} 1.0' in text


def test_error_rate_one_answers_500(start_server):
    server = start_server(error_rate=1)

    statuses = [get(server, "/")[0] for _ in range(5)]

    assert statuses == [500] * 5
    assert get(server, "/healthz")[0] == 200  # probes stay green: only traffic fails
    assert request_counts(server)[("GET", "/", "500")] == 5


def test_error_rate_half_fails_every_second_request(start_server):
    server = start_server(error_rate=0.5)

    assert [get(server, "/")[0] for _ in range(6)] == [200, 500] * 3


def test_servers_have_separate_registries(start_server):
    first, second = start_server(), start_server()
    get(first, "/")

    assert ("GET", "/", "200") in request_counts(first)
    assert ("GET", "/", "200") not in request_counts(second)


def test_framework_errors_are_counted_too(start_server):
    server = start_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(b"BREW / HTTP/1.0\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.0 501")

    assert request_counts(server)[("OTHER", "/", "501")] == 1


def test_one_access_log_line_per_request(start_server, caplog):
    server = start_server()
    with caplog.at_level(logging.INFO, logger="example_app.access"):
        body = get(server, "/healthz")[2]
        get(server, "/missing")

    lines = [r.getMessage() for r in caplog.records if r.name == "example_app.access"]
    assert len(lines) == 2
    assert lines[0].startswith(f'127.0.0.1 "GET /healthz HTTP/1.1" 200 {len(body)} ')
    assert lines[0].endswith("ms")
    assert " 404 " in lines[1]


def test_shutdown_drains_requests_in_flight(start_server):
    server = start_server()
    threads_before = set(threading.enumerate())
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    # Half a request: a worker thread accepts it and waits for the rest.
    conn.sendall(b"GET /healthz HTTP/1.0\r\n")
    deadline = time.monotonic() + 5
    while not any(
        "process_request" in thread.name for thread in set(threading.enumerate()) - threads_before
    ):
        assert time.monotonic() < deadline, "the connection was never accepted"
        time.sleep(0.01)

    # What main() does on SIGTERM: begin_shutdown(), serve_forever() returns,
    # then server_close() waits for the worker.
    server.begin_shutdown()
    server.serving_thread.join(timeout=5)
    assert not server.serving_thread.is_alive()
    assert not server.app.ready.is_set()
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (server.server_close(), closed.set()))
    closer.start()
    time.sleep(0.2)
    assert not closed.is_set(), "server_close() must wait for the request in flight"

    conn.sendall(b"\r\n")
    with conn:
        reply = conn.makefile("rb").read()
    closer.join(timeout=5)

    assert reply.startswith(b"HTTP/1.0 200")
    assert closed.is_set()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
