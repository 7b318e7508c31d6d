"""The push webhook receiver over real HTTP: what it accepts, refuses and ignores.

The receiver runs in a thread on loopback; what it would hand to Prefect is recorded
by the ``emit`` seam (the one place it talks to Prefect), so every refusal can be
shown to emit nothing. Emitting for real, and the trigger that turns the event into
a pipeline run on a real server, is tests/flows/test_triggers.py.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from uuid import UUID, uuid4

import httpx
import pytest

from slipway.cli import main
from slipway.exceptions import ConfigError
from slipway.webhook import (
    SECRET_ENV,
    PushEvent,
    WebhookServer,
    load_secret,
    sign,
    verify_signature,
)

SECRET = b"shared-with-the-git-host"
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"


class Receiver:
    def __init__(self, server: WebhookServer, emitted: list[PushEvent]) -> None:
        self.server = server
        self.emitted = emitted

    def post(
        self,
        document: object | bytes,
        *,
        event: str = "push",
        secret: bytes = SECRET,
        signature: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        sent: dict[str, str | bytes] = {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "X-Hub-Signature-256": signature if signature is not None else sign(secret, body),
            **(headers or {}),
        }
        return httpx.post(self.server.url, content=body, headers=sent, timeout=10)


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    emitted: list[PushEvent] = []

    def record(push: PushEvent) -> UUID:
        emitted.append(push)
        return uuid4()

    max_body = getattr(request, "param", 64 * 1024)
    server = WebhookServer(secret=SECRET, port=0, max_body=max_body, emit=record)
    server.serve_in_thread()
    try:
        yield Receiver(server, emitted)
    finally:
        server.shutdown()
        server.server_close()


def push(ref: str = "refs/heads/main", after: str = SHA, **extra: object) -> dict:
    return {
        "ref": ref,
        "before": "0" * 40,  # a new branch
        "after": after,
        "deleted": False,
        "repository": {"name": "example-app", "full_name": "team/example-app"},
        "pusher": {"name": "alice"},
        **extra,
    }


def test_a_signed_push_to_a_branch_is_emitted_with_branch_and_commit(receiver) -> None:
    answer = receiver.post(push("refs/heads/release/1.4"))
    assert answer.status_code == 202 and answer.json()["status"] == "emitted"
    (event,) = receiver.emitted
    assert (event.branch, event.commit, event.before) == ("release/1.4", SHA, None)
    assert event.resource_id == "slipway.repo.example-app"
    assert event.payload()["repository"] == "team/example-app"
    assert event.delivery == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_a_branch_name_is_data_shell_syntax_included(receiver) -> None:
    """Git allows ``$( )`` and ``;`` in branch names; they are passed on as they are,
    and nothing downstream hands them to a shell (checkout uses GitPython argv)."""
    assert receiver.post(push("refs/heads/fix/$(id);x")).status_code == 202
    assert receiver.emitted[0].branch == "fix/$(id);x"


@pytest.mark.parametrize(
    "signature",
    [
        "",  # missing
        "sha256=" + "0" * 64,
        sign(b"guessed", json.dumps(push()).encode()),
        "sha1=" + "0" * 40,  # GitHub's older header format is not accepted
        sign(SECRET, b"another body"),
        "sha256=ü".encode("latin-1"),
    ],
    ids=["missing", "zeros", "other-secret", "sha1", "other-body", "non-ascii"],
)
def test_a_bad_signature_is_refused_logged_and_never_emitted(receiver, caplog, signature) -> None:
    body = json.dumps(push()).encode()
    with caplog.at_level(logging.INFO, logger="slipway.webhook"):
        answer = receiver.post(body, signature=signature)
    assert answer.status_code == 401
    assert receiver.emitted == []
    (record,) = [r for r in caplog.records if r.name == "slipway.webhook"]
    assert record.levelno == logging.WARNING
    assert "refused delivery" in record.getMessage() and "401" in record.getMessage()
    assert SECRET.decode() not in caplog.text and sign(SECRET, body) not in caplog.text


def test_an_unsigned_ping_or_other_event_is_refused_too(receiver) -> None:
    assert receiver.post({"zen": "hi"}, event="ping", signature="").status_code == 401
    assert receiver.post(push(), event="issues", signature="").status_code == 401


@pytest.mark.parametrize(
    ("document", "event", "expected"),
    [
        ({"zen": "Design for failure."}, "ping", 200),
        (push(), "pull_request", 202),
        (push("refs/tags/v1.4.2"), "push", 202),
        (push(deleted=True, after="0" * 40), "push", 202),
    ],
    ids=["ping", "not-a-push", "tag", "deleted-branch"],
)
def test_deliveries_that_start_no_pipeline_are_answered_and_ignored(
    receiver, document, event, expected
) -> None:
    answer = receiver.post(document, event=event)
    assert answer.status_code == expected, answer.text
    assert receiver.emitted == []


@pytest.mark.parametrize(
    "document",
    [
        push("refs/heads/-rf"),
        push("refs/heads/a..b"),
        push("refs/heads/x.lock"),
        push("refs/heads/with space"),
        push("refs/heads/ctl\x07"),
        push("refs/heads/a@{1}"),
        push("refs/heads/"),
        push(after="HEAD"),
        push(after=SHA[:12]),
        push(after="0" * 40),
        push(repository={"name": "../../etc"}),
        push(repository="example-app"),
        {"ref": 7},
    ],
    ids=[
        "option", "dotdot", "lock", "space", "control", "reflog", "empty",
        "after-symbolic", "after-short", "after-zero", "repo-path", "repo-not-object", "ref-int",
    ],
)  # fmt: skip
def test_a_signed_but_unsafe_push_is_refused(receiver, document) -> None:
    answer = receiver.post(document)
    assert answer.status_code == 422, answer.text
    assert receiver.emitted == []


def test_not_json_and_not_application_json_are_refused(receiver) -> None:
    assert receiver.post(b"ref=refs/heads/main").status_code == 400
    assert receiver.post(b"[1, 2]").status_code == 400
    form = receiver.post(
        b"payload=%7B%7D", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
    assert receiver.emitted == []


@pytest.mark.parametrize("receiver", [1024], indirect=True)
def test_a_body_over_the_limit_is_refused_before_it_is_read(receiver) -> None:
    big = json.dumps(push(padding="x" * 2000)).encode()
    assert receiver.post(big).status_code == 413
    # the size is judged from Content-Length: a client announcing 1 GB gets its
    # answer at once, without the receiver waiting for (or reading) the body
    host, port = receiver.server.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-GitHub-Event: push\r\nContent-Length: 1000000000\r\n\r\n{"
        )
        assert sock.recv(200).startswith(b"HTTP/1.1 413")
    assert receiver.emitted == []


def test_a_body_without_length_is_refused(receiver) -> None:
    def chunks() -> Iterator[bytes]:
        yield json.dumps(push()).encode()

    answer = httpx.post(
        receiver.server.url,
        content=chunks(),
        headers={"X-GitHub-Event": "push", "Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 411
    assert receiver.emitted == []


def test_health_and_a_failing_emit() -> None:
    def broken(_push: PushEvent) -> UUID:
        raise RuntimeError("websocket closed: token=abc")

    server = WebhookServer(secret=SECRET, port=0, emit=broken)
    server.serve_in_thread()
    try:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        # the git host shows the delivery as failed and can redeliver it
        answer = Receiver(server, []).post(push())
        assert answer.status_code == 503 and "token" not in answer.text
    finally:
        server.shutdown()
        server.server_close()


def test_signatures_are_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"ref": "refs/heads/main"}'
    # the example in GitHub's "Validating webhook deliveries"
    assert verify_signature(
        b"It's a Secret to Everybody",
        b"Hello, World!",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )
    assert verify_signature(SECRET, body, sign(SECRET, body))
    assert not verify_signature(SECRET, body + b" ", sign(SECRET, body))
    assert not verify_signature(b"", body, sign(b"", body))  # no secret: nothing passes
    assert not verify_signature(SECRET, body, None)


def test_the_secret_comes_from_a_block_or_the_environment_and_is_required(
    monkeypatch, capsys
) -> None:
    assert load_secret(env={SECRET_ENV: "from-env"}) == b"from-env"
    with pytest.raises(ConfigError, match=SECRET_ENV):
        load_secret(env={})
    with pytest.raises(ConfigError, match="empty"):
        WebhookServer(secret=b"", port=0)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert main(["webhook", "--port", "0"]) == 2  # refuses to start, before any server
    assert "no webhook secret" in capsys.readouterr().err
