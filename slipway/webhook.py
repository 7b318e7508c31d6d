"""Push webhooks in, signed Prefect events out: what ``slipway webhook`` serves.

The open-source Prefect server has no inbound webhooks, so a git host cannot start a
pipeline by itself. This receiver sits in between: a small HTTP server (stdlib
``http.server``, 127.0.0.1 by default; put a TLS proxy in front of it to reach it
from outside) that takes the git host's push webhook, checks it came from the host,
and emits a Prefect event. A deployment trigger in ``prefect.yaml`` (``expect:
[slipway.push]``) turns the event into a pipeline run with the pushed branch and
commit, so what runs, on which pool and with which other parameters stays in the
deployment, not in the receiver.

A request goes through, in order (the first that fails answers)::

    a free connection slot (max_connections)     503 at once, nothing read
    the whole request within request_deadline   connection dropped
    POST only (GET /healthz answers "ok")        405
    Content-Length given, at most max_body       411 / 413 (the body is never read)
    X-Hub-Signature-256 = sha256=HMAC(secret, raw body), compared in constant time
                                                  401, nothing emitted
    X-GitHub-Event: ping -> 200; other than push -> 202 ignored
    JSON body, ref refs/heads/<branch> (a tag or a deleted branch -> 202 ignored),
    branch by git's ref rules, after a full SHA, repository.name a plain name
                                                  400 / 415 / 422, nothing emitted
    X-GitHub-Delivery given                       400
    delivery id and body digest not seen within the TTL (SQLite under $SLIPWAY_HOME)
                                                  200 duplicate, nothing emitted
    event slipway.push emitted, signed            202 (503 if Prefect has no API)

Deduplication. GitHub redelivers with the same delivery id and body, so either one
seen before (and kept ``dedupe_ttl`` seconds, across restarts) is a duplicate. The
body digest matters as much as the id: the signature covers the body only, so a
captured delivery posted again under a new id is still caught. An event that could
not be emitted releases its id, so the host's redelivery goes through.

The event: resource ``slipway.repo.<repository name>`` (what a trigger ``match``es),
payload ``branch``, ``commit``, ``before``, ``repository`` (owner/name), ``pusher``,
``delivery``, ``issued_at``, ``nonce`` and ``signature`` (``slipway.push_proof``:
HMAC under a key derived from the webhook secret). The pipeline verifies it before it
runs anything, so an unsigned ``slipway.push`` sent straight to the Prefect API, or a
signed one emitted again, starts nothing.

Audit. Every delivery, and every connection turned away, is one JSON line (time,
client, delivery, event, repo, ref, verdict, status, reason) on stderr and in
``$SLIPWAY_HOME/webhook/audit.log``, written directly (Prefect's logging set-up
cannot silence it). Never the secret, a signature or a body.

The secret comes from a Prefect ``Secret`` block or the ``SLIPWAY_WEBHOOK_SECRET``
environment variable; the receiver refuses to start without one.

Example:
    ```sh
    prefect block create secret   # or: Secret(value="...").save("github-webhook")
    slipway webhook --secret-block github-webhook --port 8787
    ```
    On GitHub: Settings > Webhooks, payload URL of the proxy in front of it, content
    type ``application/json``, the same secret, "Just the push event".
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from slipway.exceptions import ConfigError, UnsafeInputError
from slipway.push_proof import event_key, sign_payload

logger = logging.getLogger("slipway.webhook")

EVENT_NAME = "slipway.push"
RESOURCE_PREFIX = "slipway.repo."
SECRET_ENV = "SLIPWAY_WEBHOOK_SECRET"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 5 * 1024 * 1024  # bytes; GitHub caps push payloads at 25 MB
READ_TIMEOUT_SECONDS = 5.0  # one read that stalls this long drops the connection
DEFAULT_REQUEST_DEADLINE = 15.0  # seconds for a whole request, however it trickles in
DEFAULT_MAX_CONNECTIONS = 16  # requests served at once; more get 503 without a thread
DEFAULT_DEDUPE_TTL = 7 * 24 * 3600.0  # seconds a delivery id is remembered (GitHub: 3 days)

_SIGNATURE_PREFIX = "sha256="
_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # SHA-1 and SHA-256 repositories
_REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ZERO_SHA = re.compile(r"^0+$")


@dataclass(frozen=True)
class PushEvent:
    """A push to a branch, as the receiver emits it."""

    repository: str  # the repository's name: the event's resource is slipway.repo.<name>
    full_name: str  # owner/name, for people
    branch: str
    commit: str  # the full SHA the branch points at after the push
    before: str | None  # what it pointed at before (None for a new branch)
    pusher: str | None
    delivery: str | None  # the git host's delivery id
    issued_at: float = field(default_factory=time.time)  # when the receiver accepted it
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))  # one run per event

    @property
    def resource_id(self) -> str:
        return f"{RESOURCE_PREFIX}{self.repository}"

    def payload(self, key: bytes) -> dict[str, Any]:
        """The event payload, signed with ``key`` (``push_proof.event_key``)."""
        return sign_payload(
            key,
            {
                "repository_name": self.repository,
                "repository": self.full_name,
                "branch": self.branch,
                "commit": self.commit,
                "before": self.before,
                "pusher": self.pusher,
                "delivery": self.delivery,
                "issued_at": round(self.issued_at, 3),
                "nonce": self.nonce,
            },
        )


class Refused(Exception):
    """A request the receiver answers with ``status`` and emits nothing for."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Ignored(Exception):
    """A well-formed delivery that starts nothing (a tag push, a deleted branch)."""


# ----------------------------------------------------------------------------- checks


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value a git host sends for ``body``."""
    return _SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the HMAC-SHA256 of the raw ``body`` under ``secret``.

    The comparison takes the same time wherever the first wrong character is, so the
    answer says nothing about how close a forged signature came.
    """
    if not secret or not header:
        return False
    given = header.strip().encode("utf-8", "replace")
    return hmac.compare_digest(sign(secret, body).encode("ascii"), given)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"{what} missing or not a string")
    return value


def parse_push(body: bytes, *, delivery: str | None = None) -> PushEvent:
    """The push a GitHub-style ``push`` payload describes.

    Raises:
        Refused: the body is not JSON or a field is missing or unsafe (a branch git
            would refuse, a commit that is not a full SHA, an odd repository name).
        Ignored: a push that starts no pipeline: a tag, or a deleted branch.
    """
    from slipway.tasks.checkout import validate_ref  # the rules checkout applies

    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
    if not isinstance(data, Mapping):
        raise Refused(HTTPStatus.BAD_REQUEST, "body is not a JSON object")
    ref = _text(data.get("ref"), "ref")
    if not ref.startswith("refs/heads/"):
        raise Ignored(f"not a branch: {ref[:100]!r}")
    if data.get("deleted") is True:
        raise Ignored(f"branch deleted: {ref[:100]!r}")
    branch = ref.removeprefix("refs/heads/")
    try:
        validate_ref(ref)
        validate_ref(branch)
    except UnsafeInputError:
        raise Refused(
            HTTPStatus.UNPROCESSABLE_ENTITY, f"not a valid branch name: {branch[:100]!r}"
        ) from None
    commit = _text(data.get("after"), "after")
    if not _SHA_RE.match(commit) or _ZERO_SHA.match(commit):
        raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"after is not a commit: {commit[:80]!r}")
    before = data.get("before")
    if not isinstance(before, str) or not _SHA_RE.match(before) or _ZERO_SHA.match(before):
        before = None
    repo = data.get("repository")
    if not isinstance(repo, Mapping):
        raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, "repository missing")
    name = _text(repo.get("name"), "repository.name")
    if not _REPO_NAME_RE.match(name):
        raise Refused(HTTPStatus.UNPROCESSABLE_ENTITY, f"not a repository name: {name[:100]!r}")
    full_name = repo.get("full_name")
    full_name = full_name if isinstance(full_name, str) and len(full_name) <= 200 else name
    pusher = data.get("pusher")
    pusher_name = pusher.get("name") if isinstance(pusher, Mapping) else None
    return PushEvent(
        repository=name,
        full_name=full_name,
        branch=branch,
        commit=commit,
        before=before,
        pusher=pusher_name[:100] if isinstance(pusher_name, str) else None,
        delivery=delivery,
    )


# ----------------------------------------------------------------------------- emitting

Emit = Callable[[PushEvent, dict[str, Any]], UUID]


def emit_push(push: PushEvent, payload: dict[str, Any]) -> UUID:
    """Hand the push to Prefect as a ``slipway.push`` event with its signed ``payload``;
    the event's id.

    Prefect's events worker sends it to the API in the background (reconnecting as
    needed), so this returns once the event is queued.

    Raises:
        RuntimeError: events cannot be sent (no Prefect API configured).
    """
    from prefect.events import emit_event

    event = emit_event(
        event=EVENT_NAME,
        resource={
            "prefect.resource.id": push.resource_id,
            "prefect.resource.name": push.full_name,
        },
        payload=payload,
    )
    if event is None:
        raise RuntimeError("Prefect events are not enabled here (is PREFECT_API_URL set?)")
    return event.id


# ----------------------------------------------------------------------------- dedupe


class DeliveryLog:
    """Deliveries already accepted, by the host's id and by body digest, for ``ttl``
    seconds; in SQLite so a restarted receiver still knows them.

    Each call opens its own connection and takes the write lock first (``BEGIN
    IMMEDIATE``), so two threads (or two receivers on one file) never both accept one
    delivery.
    """

    def __init__(self, path: Path, *, ttl: float = DEFAULT_DEDUPE_TTL) -> None:
        if ttl <= 0:
            raise ConfigError(f"dedupe_ttl must be positive seconds, got {ttl}")
        self.path = path
        self.ttl = ttl
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS deliveries ("
                " id TEXT PRIMARY KEY, digest TEXT NOT NULL, seen REAL NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS deliveries_digest ON deliveries (digest)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def claim(self, delivery: str, body: bytes, *, now: float | None = None) -> str | None:
        """Record the delivery; None when it is new, else why it is a duplicate."""
        now = time.time() if now is None else now
        digest = hashlib.sha256(body).hexdigest()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM deliveries WHERE seen < ?", (now - self.ttl,))
            seen = db.execute(
                "SELECT id, seen FROM deliveries WHERE id = ? OR digest = ? LIMIT 1",
                (delivery, digest),
            ).fetchone()
            if seen is None:
                db.execute("INSERT INTO deliveries VALUES (?, ?, ?)", (delivery, digest, now))
            db.execute("COMMIT")
        finally:
            db.close()
        if seen is None:
            return None
        when = datetime.fromtimestamp(seen[1], UTC).isoformat(timespec="seconds")
        if seen[0] == delivery:
            return f"delivery id already received at {when}"
        return f"same body as delivery {seen[0]!r} received at {when} (a replay under a new id)"

    def release(self, delivery: str) -> None:
        """Forget a delivery whose event was not emitted, so a redelivery goes through."""
        with self._connect() as db:
            db.execute("DELETE FROM deliveries WHERE id = ?", (delivery,))


# ----------------------------------------------------------------------------- audit


class AuditLog:
    """One JSON line per delivery, to a stream (stderr) and a file, written directly:
    Prefect configures ``logging`` when it is imported and would decide what shows."""

    def __init__(self, path: Path | None, stream: IO[str] | None = None) -> None:
        self.path = path
        self.stream = stream
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, **fields: Any) -> None:
        entry = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields}
        line = json.dumps(entry, ensure_ascii=True) + "\n"  # one line, whatever was sent
        with self._lock:
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(line)
            if self.stream is not None:
                try:
                    self.stream.write(line)
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stderr closed: the file still has it


def _audit_fields(body: bytes) -> dict[str, str | None]:
    """Repository and ref of a signed body, for the audit line (None when absent)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, Mapping):
        return {}
    repo = data.get("repository")
    name = repo.get("full_name") or repo.get("name") if isinstance(repo, Mapping) else None
    ref = data.get("ref")
    return {
        "repo": name[:200] if isinstance(name, str) else None,
        "ref": ref[:200] if isinstance(ref, str) else None,
    }


# ----------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    server_version = "slipway-webhook"
    sys_version = ""
    timeout = READ_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "POST push webhooks here"})

    def do_POST(self) -> None:
        delivery = (self.headers.get("X-GitHub-Delivery") or "")[:100] or None
        kind = self.headers.get("X-GitHub-Event", "")[:50]
        audit: dict[str, Any] = {"delivery": delivery, "event": kind, "repo": None, "ref": None}
        push: PushEvent | None = None
        try:
            body = self._read_body()
            if not verify_signature(
                self.server.secret, body, self.headers.get("X-Hub-Signature-256")
            ):
                raise Refused(HTTPStatus.UNAUTHORIZED, "signature missing or wrong")
            audit.update(_audit_fields(body))
            if kind == "ping":
                self._done(audit, HTTPStatus.OK, "ping", "pong", {"status": "pong"})
                return
            if kind != "push":
                raise Ignored(f"event {kind!r} is not a push")
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != "application/json":
                raise Refused(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    "send the webhook as application/json",
                )
            push = parse_push(body, delivery=delivery)
            if delivery is None:
                raise Refused(HTTPStatus.BAD_REQUEST, "X-GitHub-Delivery missing")
            duplicate = self.server.deliveries.claim(delivery, body)
            if duplicate is not None:
                self._done(
                    audit, HTTPStatus.OK, "duplicate", duplicate,
                    {"status": "duplicate", "reason": duplicate},
                )  # fmt: skip
                return
        except Refused as refused:
            self._done(audit, refused.status, "refused", refused.reason, {"error": refused.reason})
            return
        except Ignored as ignored:
            self._done(
                audit, HTTPStatus.ACCEPTED, "ignored", str(ignored),
                {"status": "ignored", "reason": str(ignored)},
            )  # fmt: skip
            return
        try:
            event_id = self.server.emit(push, push.payload(self.server.event_key))
        except Exception as exc:  # the git host shows a failed delivery and can redeliver
            self.server.deliveries.release(push.delivery or "")
            reason = f"event not emitted: {type(exc).__name__}"
            self._done(audit, HTTPStatus.SERVICE_UNAVAILABLE, "failed", reason, {"error": reason})
            return
        self._done(
            audit, HTTPStatus.ACCEPTED, "emitted",
            f"{EVENT_NAME} {event_id}: {push.branch} at {push.commit[:12]}",
            {"status": "emitted", "event": str(event_id)},
        )  # fmt: skip

    def _done(
        self,
        audit: dict[str, Any],
        status: HTTPStatus,
        verdict: str,
        reason: str,
        document: dict[str, str],
    ) -> None:
        self.server.audit.record(
            client=self.client_address[0],
            **audit,
            verdict=verdict,
            status=status.value,
            reason=reason,
        )
        self._answer(status, document)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if int(length) > self.server.max_body:
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {int(length)} bytes is over the limit of {self.server.max_body}",
            )
        return self.rfile.read(int(length))

    def _answer(self, status: HTTPStatus, document: dict[str, str]) -> None:
        data = json.dumps(document).encode()
        self.close_connection = True  # one request per connection: the deadline is per request
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)


_BUSY_BODY = b'{"error": "receiver is busy"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 5\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


class WebhookServer(HTTPServer):
    """The receiver: at most ``max_connections`` requests at once on a fixed pool of
    threads, each in a copy of the creator's context (so Prefect settings set around
    it, such as the API URL, hold in every request).

    A connection beyond the limit gets a 503 at once and costs no thread; one that
    has not finished its request ``request_deadline`` seconds after it was accepted is
    shut down by a watchdog, however slowly it keeps sending (slowloris), and a single
    read that stalls ``READ_TIMEOUT_SECONDS`` ends it sooner.
    """

    request_queue_size = 128  # the accept backlog: a burst is answered (503), not SYN-dropped

    def __init__(
        self,
        *,
        secret: bytes,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_body: int = DEFAULT_MAX_BODY,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_deadline: float = DEFAULT_REQUEST_DEADLINE,
        state_dir: Path | None = None,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
        audit_stream: IO[str] | None = sys.stderr,
        emit: Emit = emit_push,
    ) -> None:
        if not secret:
            raise ConfigError("the webhook secret is empty: every delivery would be refused")
        if max_body <= 0:
            raise ConfigError(f"max_body must be positive, got {max_body}")
        if max_connections <= 0:
            raise ConfigError(f"max_connections must be positive, got {max_connections}")
        if request_deadline <= 0:
            raise ConfigError(f"request_deadline must be positive seconds, got {request_deadline}")
        if state_dir is None:
            from slipway.workspace import slipway_home

            state_dir = slipway_home() / "webhook"
        self.secret = secret
        self.event_key = event_key(secret)
        self.max_body = max_body
        self.request_deadline = request_deadline
        self.emit = emit
        self.deliveries = DeliveryLog(state_dir / "deliveries.sqlite3", ttl=dedupe_ttl)
        self.audit = AuditLog(state_dir / "audit.log", audit_stream)
        self._context = contextvars.copy_context()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._pool = ThreadPoolExecutor(max_connections, thread_name_prefix="slipway-webhook")
        self._deadlines: dict[socket.socket, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        super().__init__((host, port), _Handler)
        self._watchdog = threading.Thread(
            target=self._watch, name="slipway-webhook-watchdog", daemon=True
        )
        self._watchdog.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._turn_away(request, client_address[0])
            return
        with self._lock:
            self._deadlines[request] = (
                time.monotonic() + self.request_deadline,
                client_address[0],
            )
        self._pool.submit(self._context.copy().run, self._serve, request, client_address)

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a broken connection ends only itself
            logger.debug("connection from %s ended with an error", client_address[0])
        finally:
            with self._lock:
                self._deadlines.pop(request, None)
            self.shutdown_request(request)
            self._slots.release()

    def _turn_away(self, request: socket.socket, client: str) -> None:
        self.audit.record(
            client=client, delivery=None, event=None, repo=None, ref=None,
            verdict="busy", status=503, reason="every connection slot is taken",
        )  # fmt: skip
        try:
            request.settimeout(1)
            request.sendall(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def _watch(self) -> None:
        while not self._closing.wait(0.2):
            now = time.monotonic()
            with self._lock:
                late = [(s, c) for s, (due, c) in self._deadlines.items() if due <= now]
                for sock, _client in late:
                    del self._deadlines[sock]
            for sock, client in late:
                self.audit.record(
                    client=client, delivery=None, event=None, repo=None, ref=None,
                    verdict="dropped", status=None,
                    reason=f"request not complete within {self.request_deadline:g} s",
                )  # fmt: skip
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the handler's read returns; it ends
                except OSError:
                    pass

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(
            target=self.serve_forever, args=(0.1,), name="slipway-webhook", daemon=True
        )
        thread.start()
        return thread


def load_secret(block: str | None = None, env: Mapping[str, str] | None = None) -> bytes:
    """The shared secret: from the Prefect ``Secret`` block ``block`` if given, else
    from ``$SLIPWAY_WEBHOOK_SECRET``.

    Raises:
        ConfigError: neither is set, or the block does not hold a string.
    """
    if block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(block).get()
        except ValueError as exc:
            raise ConfigError(f"Secret block {block!r} could not be loaded: {exc}") from None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"Secret block {block!r} does not hold a non-empty string")
        return value.encode()
    value = (env if env is not None else os.environ).get(SECRET_ENV, "")
    if not value:
        raise ConfigError(
            f"no webhook secret: pass --secret-block NAME (a Prefect Secret block) "
            f"or set {SECRET_ENV}"
        )
    return value.encode()
