"""The HTTP service: routing, the request handler and the server factory.

Three layers, so each can be tested on its own:

- :class:`App` is the service without sockets: ``App.handle(method, path,
  accept)`` returns a :class:`Response`. Unit tests call it directly.
- :class:`RequestHandler` is the thin :mod:`http.server` adapter: it feeds the
  request to the app and writes the response. For *every* answered request
  (including the 400/501 errors :mod:`http.server` sends by itself) it records
  the metrics and logs one access line to the ``example_app.access`` logger,
  just before the response headers are sent.
- :class:`AppServer` / :func:`make_server` bind a ``ThreadingHTTPServer`` to one
  ``App`` and its own metrics registry.

Routes (``GET`` and ``HEAD``; any other method on them is 405):

- ``/``: JSON greeting with the version; subject to ``ERROR_RATE``.
- ``/healthz``: liveness, always 200 while the process serves.
- ``/readyz``: readiness, 200 until shutdown starts, then 503 so load
  balancers stop sending traffic while in-flight requests finish.
- ``/metrics``: Prometheus exposition of this server's registry.
- anything else: 404.

Responses are HTTP/1.0 (one request per connection): no idle keep-alive
connection can hold a worker thread and delay a graceful shutdown.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from example_app.error_injection import ErrorInjector
from example_app.metrics import AppMetrics

access_log = logging.getLogger("example_app.access")
logger = logging.getLogger("example_app")

ROUTES = ("/", "/healthz", "/readyz", "/metrics")
UNMATCHED_ROUTE = "unmatched"
JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Response:
    """What to send back for one request.

    Attributes:
        status: HTTP status code.
        body: Encoded body (sent for GET, not for HEAD).
        content_type: Value of the ``Content-Type`` header.
        headers: Extra headers, e.g. ``{"Allow": "GET, HEAD"}``.
    """

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: dict[str, object], **headers: str) -> Response:
        """A JSON response; ``payload`` is serialised with a trailing newline."""
        body = (json.dumps(payload, sort_keys=True) + "\n").encode()
        return cls(status=status, body=body, headers=headers)


def route_label(raw_path: str | None) -> str:
    """The ``path`` metric label for a request target: a known route or ``"unmatched"``.

    The query string is ignored, so ``/healthz?probe=1`` is ``/healthz``.
    """
    if not raw_path:
        return UNMATCHED_ROUTE
    path = urlsplit(raw_path).path
    return path if path in ROUTES else UNMATCHED_ROUTE


class App:
    """The service logic, free of sockets.

    Args:
        version: Release string reported by the endpoints.
        error_rate: Share of ``/`` requests to fail with 500 (see
            :mod:`example_app.error_injection`).
        registry: Prometheus registry for this instance; a new one by default.
    """

    def __init__(
        self,
        *,
        version: str = "dev",
        error_rate: float | Fraction = 0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.version = version
        self.errors = ErrorInjector(error_rate)
        self.metrics = AppMetrics(version, registry)
        # Set while the app should receive traffic; cleared when shutdown starts.
        self.ready = threading.Event()
        self.ready.set()

    def handle(self, method: str, raw_path: str, accept: str | None = None) -> Response:
        """Answer one request.

        Args:
            method: HTTP method, e.g. ``"GET"``.
            raw_path: Request target as sent, possibly with a query string.
            accept: The ``Accept`` header, used to pick the metrics format.
        """
        route = route_label(raw_path)
        if route == UNMATCHED_ROUTE:
            return Response.json(404, {"error": "not found", "path": urlsplit(raw_path).path})
        if method not in ("GET", "HEAD"):
            return Response.json(405, {"error": "method not allowed"}, Allow="GET, HEAD")
        if route == "/":
            if self.errors.should_fail():
                return Response.json(500, {"error": "injected failure", "version": self.version})
            return Response.json(
                200, {"message": "Hello from example-app", "version": self.version}
            )
        if route == "/healthz":
            return Response.json(200, {"status": "ok", "version": self.version})
        if route == "/readyz":
            if self.ready.is_set():
                return Response.json(200, {"status": "ready", "version": self.version})
            return Response.json(503, {"status": "shutting down", "version": self.version})
        body, content_type = self.metrics.render(accept)
        return Response(status=200, body=body, content_type=content_type)


class RequestHandler(BaseHTTPRequestHandler):
    """Adapts :mod:`http.server` to :class:`App`; one instance per connection."""

    server: AppServer
    server_version = "example-app"  # the whole Server header: no Python version
    # Seconds a client may stay silent before its connection is dropped, so a
    # stuck client cannot hold a thread (and a graceful shutdown) forever.
    timeout = 10

    def handle_one_request(self) -> None:
        self._started = time.perf_counter()
        self._status: int | None = None
        self._content_length = 0
        super().handle_one_request()

    def parse_request(self) -> bool:
        # Time from the parsed request line: waiting for the client is not handling time.
        self._started = time.perf_counter()
        return super().parse_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "content-length":
            self._content_length = int(value)
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        # Record before the first byte leaves: once a client has its answer, a
        # scrape it makes next already counts that request (no race in tests
        # or in a smoke test that reads /metrics right after calling /).
        if self._status is not None:
            self._record()
        super().end_headers()

    def _dispatch(self) -> None:
        response = self.server.app.handle(self.command, self.path, self.headers.get("Accept"))
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def _record(self) -> None:
        """Count the response in the metrics and write its access-log line."""
        seconds = time.perf_counter() - self._started
        command = getattr(self, "command", None)
        route = route_label(getattr(self, "path", None))
        self.server.app.metrics.observe(command, route, self._status, seconds)
        access_log.info(
            '%s "%s" %d %d %.2fms',
            self.client_address[0],
            _printable(getattr(self, "requestline", "")),
            self._status,
            0 if command == "HEAD" else self._content_length,
            seconds * 1000,
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: :meth:`_record` logs one line per request with its duration."""

    def version_string(self) -> str:
        return self.server_version

    def log_error(self, format: str, *args: object) -> None:
        if format.startswith("code %d"):
            return  # from send_error(): the access line already has the status
        super().log_error(format, *args)

    def log_message(self, format: str, *args: object) -> None:
        # Framework messages (bad request lines, timeouts) go to logging, not bare stderr.
        logger.warning("%s %s", self.client_address[0], _printable(format % args))


class AppServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one :class:`App`.

    Worker threads are not daemons, so :meth:`server_close` waits for requests
    in flight: that is the "drain" half of a graceful shutdown.
    """

    daemon_threads = False

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, RequestHandler)

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return self.server_address[1]

    def begin_shutdown(self) -> None:
        """Stop being ready and stop accepting; safe to call from a signal handler.

        ``shutdown()`` blocks until ``serve_forever()`` returns, so it runs in a
        helper thread: called from the thread that serves, it would deadlock.
        """
        self.app.ready.clear()
        threading.Thread(target=self.shutdown, name="example-app-shutdown", daemon=True).start()

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            # A client that hangs up mid-response is routine: one line, no traceback.
            logger.info("client %s went away: %s", client_address[0], error)
            return
        logger.error("error while serving %s", client_address[0], exc_info=True)


def make_server(
    host: str,
    port: int,
    *,
    version: str = "dev",
    error_rate: float | Fraction = 0,
    registry: CollectorRegistry | None = None,
) -> AppServer:
    """Bind a ready-to-serve example-app server (call ``serve_forever()`` next).

    Args:
        host: Address to listen on, e.g. ``"0.0.0.0"`` or ``"127.0.0.1"``.
        port: TCP port; 0 picks a free one (read it back from ``server.port``).
        version: Release string reported by the endpoints. Default ``"dev"``.
        error_rate: Share of ``/`` requests answered with 500, 0 to 1. Default 0.
        registry: Prometheus registry; a fresh one per server by default.

    Raises:
        OSError: The address cannot be bound (in use, unknown host, ...).

    Example:
        >>> server = make_server("127.0.0.1", 0)
        >>> server.port > 0
        True
        >>> server.server_close()
    """
    app = App(version=version, error_rate=error_rate, registry=registry)
    return AppServer((host, port), app)


def _printable(text: str) -> str:
    """Escape control characters so a crafted request line cannot forge log lines."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
