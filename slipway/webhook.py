"""Push webhooks in, Prefect events out: what ``slipway webhook`` serves.

The open-source Prefect server has no inbound webhooks, so a git host cannot start a
pipeline by itself. This receiver sits in between: a small HTTP server (stdlib
``http.server``, 127.0.0.1 by default; put a TLS proxy in front of it to reach it
from outside) that takes the git host's push webhook, checks it came from the host,
and emits a Prefect event. A deployment trigger in ``prefect.yaml`` (``expect:
[slipway.push]``) turns the event into a pipeline run with the pushed branch and
commit, so what runs, on which pool and with which other parameters stays in the
deployment, not in the receiver.

A request goes through, in order (the first that fails answers)::

    POST only (GET /healthz answers "ok")        405
    Content-Length given, at most max_body       411 / 413 (the body is never read)
    X-Hub-Signature-256 = sha256=HMAC(secret, raw body), compared in constant time
                                                  401, logged, nothing emitted
    X-GitHub-Event: ping -> 200; other than push -> 202 ignored
    JSON body, ref refs/heads/<branch> (a tag or a deleted branch -> 202 ignored),
    branch by git's ref rules, after a full SHA, repository.name a plain name
                                                  400 / 415 / 422, nothing emitted
    event slipway.push emitted                    202 (503 if Prefect has no API)

The event: resource ``slipway.repo.<repository name>`` (what a trigger ``match``es),
payload ``branch``, ``commit``, ``before``, ``repository`` (owner/name), ``pusher``
and ``delivery`` (the host's delivery id, to find a delivery in both UIs). The
secret comes from a Prefect ``Secret`` block or the ``SLIPWAY_WEBHOOK_SECRET``
environment variable; the receiver refuses to start without one, and never logs
it, a signature or a body.

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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

from slipway.exceptions import ConfigError, UnsafeInputError

logger = logging.getLogger("slipway.webhook")

EVENT_NAME = "slipway.push"
RESOURCE_PREFIX = "slipway.repo."
SECRET_ENV = "SLIPWAY_WEBHOOK_SECRET"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 5 * 1024 * 1024  # bytes; GitHub caps push payloads at 25 MB
REQUEST_TIMEOUT_SECONDS = 10.0  # a client that stalls mid-request is dropped

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

    @property
    def resource_id(self) -> str:
        return f"{RESOURCE_PREFIX}{self.repository}"

    def payload(self) -> dict[str, str | None]:
        return {
            "branch": self.branch,
            "commit": self.commit,
            "before": self.before,
            "repository": self.full_name,
            "pusher": self.pusher,
            "delivery": self.delivery,
        }


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

Emit = Callable[[PushEvent], UUID]


def emit_push(push: PushEvent) -> UUID:
    """Hand the push to Prefect as a ``slipway.push`` event; its id.

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
        payload=push.payload(),
    )
    if event is None:
        raise RuntimeError("Prefect events are not enabled here (is PREFECT_API_URL set?)")
    return event.id


# ----------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    server_version = "slipway-webhook"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "POST push webhooks here"})

    def do_POST(self) -> None:
        delivery = (self.headers.get("X-GitHub-Delivery") or "")[:100] or None
        try:
            body = self._read_body()
            if not verify_signature(
                self.server.secret, body, self.headers.get("X-Hub-Signature-256")
            ):
                raise Refused(HTTPStatus.UNAUTHORIZED, "signature missing or wrong")
            kind = self.headers.get("X-GitHub-Event", "")
            if kind == "ping":
                self._answer(HTTPStatus.OK, {"status": "pong"})
                return
            if kind != "push":
                raise Ignored(f"event {kind[:50]!r} is not a push")
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != "application/json":
                raise Refused(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                    "send the webhook as application/json",
                )
            push = parse_push(body, delivery=delivery)
        except Refused as refused:
            logger.warning(
                "refused delivery %r from %s: %s %s",
                delivery,
                self.client_address[0],
                refused.status.value,
                refused.reason,
            )
            self._answer(refused.status, {"error": refused.reason})
            return
        except Ignored as ignored:
            logger.info("ignored delivery %r: %s", delivery, ignored)
            self._answer(HTTPStatus.ACCEPTED, {"status": "ignored", "reason": str(ignored)})
            return
        try:
            event_id = self.server.emit(push)
        except Exception as exc:  # the git host shows a failed delivery and can redeliver
            logger.error("delivery %r: event not emitted: %s", delivery, type(exc).__name__)
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "event not emitted"})
            return
        logger.info(
            "push to %s %s at %s (delivery %r): event %s %s",
            push.full_name,
            push.branch,
            push.commit[:12],
            delivery,
            EVENT_NAME,
            event_id,
        )
        self._answer(HTTPStatus.ACCEPTED, {"status": "emitted", "event": str(event_id)})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # where the body ends is unknown
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if int(length) > self.server.max_body:
            self.close_connection = True  # the body stays unread
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {int(length)} bytes is over the limit of {self.server.max_body}",
            )
        return self.rfile.read(int(length))

    def _answer(self, status: HTTPStatus, document: dict[str, str]) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)


class WebhookServer(ThreadingHTTPServer):
    """The receiver: one thread per request, each in a copy of the creator's context
    (so Prefect settings set around it, such as the API URL, hold in every request)."""

    daemon_threads = True

    def __init__(
        self,
        *,
        secret: bytes,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_body: int = DEFAULT_MAX_BODY,
        emit: Emit = emit_push,
    ) -> None:
        if not secret:
            raise ConfigError("the webhook secret is empty: every delivery would be refused")
        if max_body <= 0:
            raise ConfigError(f"max_body must be positive, got {max_body}")
        self.secret = secret
        self.max_body = max_body
        self.emit = emit
        self._context = contextvars.copy_context()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        self._context.copy().run(super().process_request_thread, request, client_address)

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
