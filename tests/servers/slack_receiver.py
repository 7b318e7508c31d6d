"""A local stand-in for Slack's HTTP endpoints (Slack itself is unreachable here).

It speaks the two protocols slipway posts with, as Slack documents them, so the
product code runs the real slack-sdk clients over real HTTP against it:

- Incoming webhooks: ``POST /services/<T>/<B>/<secret>`` with a JSON body. Webhooks
  report errors with HTTP status codes and a short plain-text body: ``200 ok``,
  ``400 invalid_payload`` (unparsable, or neither ``text`` nor ``blocks``),
  ``404 no_service`` (unknown or revoked URL), ``500 rollup_error``.
- Web API: ``POST /api/chat.postMessage`` with a JSON body and an
  ``Authorization: Bearer <token>`` header (or a form body carrying ``token``).
  The Web API answers HTTP 200 with ``{"ok": false, "error": ...}`` for application
  errors: ``not_authed`` (no token), ``invalid_auth`` (wrong token),
  ``channel_not_found``, ``no_text``; success is
  ``{"ok": true, "channel": "<channel id>", "ts": "<seconds.micro>", "message": {...}}``.

Failure modes for the unhappy paths: ``mode = "error_500"`` answers every request
with HTTP 500 (Slack's ``rollup_error`` for webhooks, a gateway's HTML page for the
Web API), ``mode = "hang"`` reads and records the request, then holds the connection
for ``hang_seconds`` without answering (closing the receiver releases it at once),
``mode = "trickle"`` starts an answer and then sends one byte of headers every
0.2 s, which no per-read socket timeout ever trips.
"Slack is down" is simply a closed port: see :func:`unused_port`.

Every request is recorded in :attr:`SlackReceiver.received` before it is answered.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl

from tests.servers.ports import unused_port  # noqa: F401  (re-exported)

Mode = Literal["normal", "error_500", "hang", "trickle"]


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as it arrived; ``headers`` keys are lower-cased for lookups."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (or form fields as a dict); None when unparsable
    raw: bytes = field(repr=False)


class SlackReceiver:
    """Context manager running the stand-in on ``127.0.0.1`` on a free port.

    Args:
        webhook_path: the one incoming-webhook path that exists
            (``/services/<T>/<B>/<secret>``); any other path under ``/services/`` is
            ``no_service``.
        bot_token: the one bot token the Web API accepts.
        channels: channel names (with or without ``#``) and IDs that exist, mapped to
            their IDs, the way Slack answers with the ID whichever was posted to.
        hang_seconds: how long ``mode="hang"`` holds a request before answering.

    Example:
        ```python
        with SlackReceiver() as slack:
            WebhookClient(slack.webhook_url).send(text="hi")
            assert slack.received[0].body == {"text": "hi"}
        ```
    """

    def __init__(
        self,
        *,
        webhook_path: str = "/services/T0SLIPWAY/B0SLIPWAY/a1b2c3d4e5f6a7b8c9d0e1f2",
        bot_token: str = "xoxb-0000-0000-slipwaytesttoken",
        channels: dict[str, str] | None = None,
        hang_seconds: float = 30.0,
    ) -> None:
        self.webhook_path = webhook_path
        self.bot_token = bot_token
        self.channels = channels if channels is not None else {"#deploys": "C0DEPLOYS01"}
        self.hang_seconds = hang_seconds
        self.mode: Mode = "normal"
        self.received: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> SlackReceiver:
        handler = type("_BoundHandler", (_Handler,), {"receiver": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True  # a hung request never blocks shutdown
        self._thread = threading.Thread(
            # a short poll keeps shutdown (once per test) from costing 0.5 s each time
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="slack-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()  # releases requests held by mode="hang"
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- addresses -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None, "use SlackReceiver as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def webhook_url(self) -> str:
        return self.base_url + self.webhook_path

    @property
    def api_url(self) -> str:
        """Web API base URL, the value for ``SlackNotifier.api_url``."""
        return self.base_url + "/api/"

    # --- inspection ------------------------------------------------------------------

    def record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self.received.append(request)

    def next_ts(self) -> str:
        """A message timestamp in Slack's ``<unix seconds>.<6 digits>`` form, unique."""
        return f"{int(time.time())}.{next(self._ts):06d}"


class _Handler(BaseHTTPRequestHandler):
    receiver: SlackReceiver  # set on the per-server subclass
    server_version = "slack-receiver/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence the access log: it would print webhook secrets to stderr."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._record(b"")
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"invalid_method")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = self._record(raw)
        receiver = self.receiver

        if receiver.mode == "hang":
            receiver._closing.wait(receiver.hang_seconds)
            if receiver._closing.is_set():
                return  # connection dropped without an answer
        elif receiver.mode == "trickle":
            self._trickle()
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/services/"):
            self._webhook(path, body)
        elif path.startswith("/api/"):
            self._web_api(path.removeprefix("/api/"), body)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"Not Found")

    # --- protocols -------------------------------------------------------------------

    def _webhook(self, path: str, body: Any) -> None:
        if self.receiver.mode == "error_500":
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/html", b"rollup_error")
        elif path != self.receiver.webhook_path:
            self._send(HTTPStatus.NOT_FOUND, "text/html", b"no_service")
        elif not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            self._send(HTTPStatus.BAD_REQUEST, "text/html", b"invalid_payload")
        else:
            self._send(HTTPStatus.OK, "text/html", b"ok")

    def _web_api(self, method: str, body: Any) -> None:
        if self.receiver.mode == "error_500":
            page = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/html", page)
            return
        if method != "chat.postMessage":
            self._json({"ok": False, "error": "unknown_method", "req_method": method})
            return
        args = body if isinstance(body, dict) else {}
        token = _bearer(self.headers.get("Authorization")) or args.get("token")
        if not token:
            self._json({"ok": False, "error": "not_authed"})
            return
        if token != self.receiver.bot_token:
            self._json({"ok": False, "error": "invalid_auth"})
            return
        channel = str(args.get("channel") or "")
        channel_id = self._channel_id(channel)
        if channel_id is None:
            self._json({"ok": False, "error": "channel_not_found"})
            return
        if not (args.get("text") or args.get("blocks")):
            self._json({"ok": False, "error": "no_text"})
            return
        ts = self.receiver.next_ts()
        message = {
            "type": "message",
            "subtype": "bot_message",
            "ts": ts,
            "text": args.get("text", ""),
            "bot_id": "B0SLIPWAY01",
        }
        if "blocks" in args:
            message["blocks"] = args["blocks"]
        self._json({"ok": True, "channel": channel_id, "ts": ts, "message": message})

    def _channel_id(self, channel: str) -> str | None:
        channels = self.receiver.channels
        if channel in channels.values():
            return channel
        for name, channel_id in channels.items():
            if channel.lstrip("#") == name.lstrip("#"):
                return channel_id
        return None

    def _trickle(self) -> None:
        deadline = time.monotonic() + self.receiver.hang_seconds
        data = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * 10_000
        try:
            for byte in data:
                if self.receiver._closing.wait(0.2) or time.monotonic() > deadline:
                    break
                self.wfile.write(bytes([byte]))
        except OSError:
            pass  # the client gave up and closed the connection
        self.close_connection = True

    # --- plumbing --------------------------------------------------------------------

    def _record(self, raw: bytes) -> Any:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        body: Any = None
        try:
            if content_type == "application/x-www-form-urlencoded":
                body = dict(parse_qsl(raw.decode("utf-8")))
                # form posts send blocks as a JSON string
                if isinstance(body.get("blocks"), str):
                    body["blocks"] = json.loads(body["blocks"])
            elif raw:
                body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            body = None
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.receiver.record(ReceivedRequest(self.command, self.path, headers, body, raw))
        return body

    def _json(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self._send(HTTPStatus.OK, "application/json; charset=utf-8", data)

    def _send(self, status: HTTPStatus, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[len("bearer ") :].strip()
    return None
