"""The push webhook receiver over real HTTP: what it accepts, refuses and ignores.

The receiver runs in a thread on loopback; what it would hand to Prefect is recorded
by the ``emit`` seam (the one place it talks to Prefect), so every refusal can be
shown to emit nothing. Emitting for real, and the trigger that turns the event into
a pipeline run on a real server, is tests/flows/test_triggers.py. Every test reads
the receiver's audit file, one JSON line per delivery.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from slipway.cli import main
from slipway.exceptions import ConfigError
from slipway.push_proof import event_key, verify_payload
from slipway.webhook import (
    SECRET_ENV,
    DeliveryLog,
    PushEvent,
    WebhookServer,
    load_secret,
    sign,
    verify_signature,
)

SECRET = b"shared-with-the-git-host"
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


class Receiver:
    def __init__(
        self, server: WebhookServer, emitted: list[PushEvent], payloads: list[dict[str, Any]]
    ) -> None:
        self.server = server
        self.emitted = emitted
        self.payloads = payloads

    def post(
        self,
        document: object | bytes,
        *,
        event: str = "push",
        secret: bytes = SECRET,
        signature: str | bytes | None = None,
        delivery: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        sent: dict[str, str | bytes] = {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid4()),  # GitHub: a new id per delivery
            "X-Hub-Signature-256": signature if signature is not None else sign(secret, body),
            **(headers or {}),
        }
        return httpx.post(self.server.url, content=body, headers=sent, timeout=10)

    def audit(self) -> list[dict[str, Any]]:
        """The receiver's audit file, one JSON object per line."""
        return audit_lines(self.server.audit.path)


def audit_lines(path: Path | None) -> list[dict[str, Any]]:
    assert path is not None
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def start_receiver(state_dir: Path, **options: Any) -> Receiver:
    """A receiver on a free port that records what it would emit."""
    emitted: list[PushEvent] = []
    payloads: list[dict[str, Any]] = []

    def record(push: PushEvent, payload: dict[str, Any]) -> UUID:
        emitted.append(push)
        payloads.append(payload)
        return uuid4()

    server = WebhookServer(
        secret=SECRET, port=0, state_dir=state_dir, audit_stream=None, emit=record, **options
    )
    server.serve_in_thread()
    return Receiver(server, emitted, payloads)


def stop(receiver: Receiver) -> None:
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    started = start_receiver(tmp_path / "webhook", max_body=getattr(request, "param", 64 * 1024))
    try:
        yield started
    finally:
        stop(started)


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
    answer = receiver.post(push("refs/heads/release/1.4"), delivery=DELIVERY)
    assert answer.status_code == 202 and answer.json()["status"] == "emitted"
    (event,) = receiver.emitted
    assert (event.branch, event.commit, event.before) == ("release/1.4", SHA, None)
    assert event.resource_id == "slipway.repo.example-app"
    (payload,) = receiver.payloads
    assert payload["repository"] == "team/example-app"
    # signed with the key the pipeline derives from the same secret
    verified = verify_payload(event_key(SECRET), payload, created=time.time())
    assert (verified.branch, verified.commit) == ("release/1.4", SHA)
    assert verified.delivery == event.delivery and verified.nonce == event.nonce
    assert event.delivery == DELIVERY


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
def test_a_bad_signature_is_refused_logged_and_never_emitted(receiver, signature) -> None:
    body = json.dumps(push()).encode()
    answer = receiver.post(body, signature=signature, delivery="d-forged")
    assert answer.status_code == 401
    assert receiver.emitted == []
    (line,) = receiver.audit()
    assert line["delivery"] == "d-forged" and line["event"] == "push"
    assert (line["verdict"], line["status"]) == ("refused", 401)
    assert line["reason"] == "signature missing or wrong"
    assert line["repo"] is None and line["ref"] is None  # an unsigned body is not read
    text = receiver.server.audit.path.read_text()  # type: ignore[union-attr]
    assert SECRET.decode() not in text and sign(SECRET, body) not in text


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


def test_health_and_a_failing_emit_that_a_redelivery_repairs(tmp_path: Path) -> None:
    calls: list[PushEvent] = []

    def broken_once(push: PushEvent, _payload: dict[str, Any]) -> UUID:
        calls.append(push)
        if len(calls) == 1:
            raise RuntimeError("websocket closed: token=abc")
        return uuid4()

    server = WebhookServer(
        secret=SECRET, port=0, state_dir=tmp_path, audit_stream=None, emit=broken_once
    )
    server.serve_in_thread()
    try:
        receiver = Receiver(server, [], [])
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        # the git host shows the delivery as failed and redelivers it (same id, same body)
        answer = receiver.post(push(), delivery="d-1")
        assert answer.status_code == 503 and "token" not in answer.text
        again = receiver.post(push(), delivery="d-1")
        assert again.status_code == 202 and again.json()["status"] == "emitted"
        assert [line["verdict"] for line in receiver.audit()] == ["failed", "emitted"]
        assert "token" not in server.audit.path.read_text()  # type: ignore[union-attr]
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


# ----------------------------------------------------------------------------- replays


def test_one_delivery_posted_three_times_is_emitted_once_even_after_a_restart(
    tmp_path: Path,
) -> None:
    state = tmp_path / "webhook"
    body = json.dumps(push()).encode()
    first = start_receiver(state)
    try:
        answers = [first.post(body, delivery=DELIVERY) for _ in range(3)]
    finally:
        stop(first)
    assert [a.status_code for a in answers] == [202, 200, 200]
    assert [a.json()["status"] for a in answers] == ["emitted", "duplicate", "duplicate"]
    assert len(first.emitted) == 1
    assert "delivery id already received" in answers[1].json()["reason"]

    restarted = start_receiver(state)  # the ids are on disk, not in memory
    try:
        redelivered = restarted.post(body, delivery=DELIVERY)
        # the signature covers the body only: a captured body under a fresh id is a replay
        new_id = restarted.post(body, delivery=str(uuid4()))
        other_push = restarted.post(push(after="a" * 40), delivery=str(uuid4()))
    finally:
        stop(restarted)
    assert redelivered.status_code == 200 and redelivered.json()["status"] == "duplicate"
    assert new_id.status_code == 200 and "a replay under a new id" in new_id.json()["reason"]
    assert other_push.json()["status"] == "emitted"
    assert [e.commit for e in restarted.emitted] == ["a" * 40]
    verdicts = [(line["delivery"], line["verdict"]) for line in audit_lines(state / "audit.log")]
    assert [v for _d, v in verdicts] == ["emitted"] + ["duplicate"] * 4 + ["emitted"]
    assert verdicts[0] == (DELIVERY, "emitted")


def test_a_push_without_a_delivery_id_is_refused(receiver) -> None:
    answer = receiver.post(push(), headers={"X-GitHub-Delivery": ""})
    assert answer.status_code == 400 and "X-GitHub-Delivery" in answer.text
    assert receiver.emitted == []


def test_delivery_ids_expire_after_their_ttl(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "d.sqlite3", ttl=3600)
    assert log.claim("d-1", b"body", now=1_000_000.0) is None
    assert "already received" in (log.claim("d-1", b"body", now=1_003_599.0) or "")
    assert log.claim("d-1", b"body", now=1_003_601.0) is None  # GitHub keeps ids 3 days
    with pytest.raises(ConfigError, match="dedupe_ttl"):
        DeliveryLog(tmp_path / "d.sqlite3", ttl=0)


def test_two_threads_racing_one_delivery_emit_it_once(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "d.sqlite3")
    results: list[str | None] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(log.claim("d-race", b"same body"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results.count(None) == 1 and len(results) == 8


# ----------------------------------------------------------------------------- audit


def test_every_delivery_is_one_audit_line_with_its_verdict(receiver) -> None:
    receiver.post(push(), delivery="d-emitted")
    receiver.post(push(), delivery="d-emitted")
    receiver.post(push("refs/tags/v1"), delivery="d-tag")
    receiver.post(push("refs/heads/a\nverdict: emitted"), delivery="d-newline")
    receiver.post(push(), delivery="d-unsigned", signature="")
    receiver.post({"zen": "hi"}, event="ping", delivery="d-ping")

    lines = receiver.audit()
    got = [(x["delivery"], x["verdict"], x["status"]) for x in lines]
    assert got == [
        ("d-emitted", "emitted", 202),
        ("d-emitted", "duplicate", 200),
        ("d-tag", "ignored", 202),
        ("d-newline", "refused", 422),
        ("d-unsigned", "refused", 401),
        ("d-ping", "ping", 200),
    ]
    emitted = lines[0]
    assert (emitted["event"], emitted["repo"], emitted["ref"]) == (
        "push",
        "team/example-app",
        "refs/heads/main",
    )
    assert emitted["reason"].startswith("slipway.push ") and emitted["client"] == "127.0.0.1"
    assert lines[2]["reason"] == "not a branch: 'refs/tags/v1'"
    assert lines[3]["ref"] == "refs/heads/a\nverdict: emitted"  # escaped: still one line


def test_the_audit_line_goes_to_the_stream_and_the_file(tmp_path: Path) -> None:
    """Written past ``logging`` (which Prefect configures); the webhook command's stderr
    is checked in tests/flows/test_triggers.py."""
    import io

    stream = io.StringIO()
    server = WebhookServer(secret=SECRET, port=0, state_dir=tmp_path, audit_stream=stream)
    server.serve_in_thread()
    try:
        Receiver(server, [], []).post(push(), delivery="d-stderr", signature="")
    finally:
        server.shutdown()
        server.server_close()
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["delivery"] == "d-stderr"
    assert audit_lines(tmp_path / "audit.log") == [json.loads(line)]


# ----------------------------------------------------------------------------- slow clients


def _slow_client(host: str, port: int, stop_sending: threading.Event, out: dict[str, Any]) -> None:
    """A slowloris: a request header trickling in, one byte at a time, never finished."""
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
            sock.setblocking(False)
            while not stop_sending.is_set():
                try:
                    answer = sock.recv(200)
                except BlockingIOError:
                    answer = None
                if answer is not None:
                    out["answer"] = answer
                    break
                try:
                    sock.sendall(b"X")  # one more header byte: each read stays under its timeout
                except OSError:
                    out["answer"] = b""
                    break
                time.sleep(0.2)
    except OSError as exc:
        out["answer"] = f"error {exc.__class__.__name__}".encode()
    out["seconds"] = time.monotonic() - started


def test_slow_clients_hold_at_most_the_slots_and_only_until_the_deadline(tmp_path: Path) -> None:
    receiver = start_receiver(tmp_path, max_connections=4, request_deadline=2.0)
    host, port = receiver.server.server_address[:2]
    stop_sending = threading.Event()
    outcomes: list[dict[str, Any]] = [{} for _ in range(30)]
    clients = [
        threading.Thread(target=_slow_client, args=(host, port, stop_sending, out), daemon=True)
        for out in outcomes
    ]
    try:
        for client in clients:
            client.start()
        peak = 0
        deadline = time.monotonic() + 20
        while any(c.is_alive() for c in clients) and time.monotonic() < deadline:
            workers = [t for t in threading.enumerate() if t.name.startswith("slipway-webhook_")]
            peak = max(peak, len(workers))
            time.sleep(0.05)
        stop_sending.set()
        for client in clients:
            client.join(5)

        busy = [o for o in outcomes if o.get("answer", b"").startswith(b"HTTP/1.1 503")]
        dropped = [o for o in outcomes if o.get("answer") == b""]
        print(
            f"30 slow clients: {len(busy)} answered 503 in at most "
            f"{max(o['seconds'] for o in busy):.2f} s, {len(dropped)} dropped after "
            f"{min(o['seconds'] for o in dropped):.2f}-{max(o['seconds'] for o in dropped):.2f} s"
            f"; at most {peak} handler threads"
        )
        # every client got an answer or was cut off: none was left hanging
        assert len(busy) + len(dropped) == 30, outcomes
        assert peak <= 4
        # the ones that got a slot were cut off while still sending, at the whole-request
        # deadline; the rest were turned away at once (503, or on a loaded machine a reset
        # from the kernel's full accept queue before any thread saw them)
        held = [o for o in dropped if o["seconds"] >= 2.0]
        assert 1 <= len(held) <= 4, outcomes
        assert all(o["seconds"] < 1.0 for o in busy + dropped if o not in held), outcomes
        # and the receiver serves a real delivery again
        assert receiver.post(push()).json()["status"] == "emitted"
        verdicts = [line["verdict"] for line in receiver.audit()]
        assert verdicts.count("busy") == 26 and verdicts.count("dropped") == 4
        assert verdicts[-1] == "emitted"
    finally:
        stop_sending.set()
        stop(receiver)


def test_receiver_limits_must_be_positive(tmp_path: Path) -> None:
    for option in ("max_connections", "request_deadline", "max_body"):
        with pytest.raises(ConfigError, match=option):
            WebhookServer(secret=SECRET, port=0, state_dir=tmp_path, **{option: 0})
