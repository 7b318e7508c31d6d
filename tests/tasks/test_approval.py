"""Approval gates against Prefect for real: a flow pauses, a script answers through the API.

The gated flow runs in a background thread (as it would in a worker) while the test
plays the approver with ``approve_run``. A few tests build a paused run by hand
through the API to hold it in the windows a real flow passes through in
milliseconds (paused but form not saved yet; pause expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import get_run_context
from prefect.exceptions import Pause, PrefectHTTPStatusError
from prefect.flow_engine import run_flow_async, run_flow_in_subprocess
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state
from prefect.states import Paused, Running, State

from slipway.blocks.approval import EnvironmentApproval
from slipway.exceptions import ConfigError, PermanentError
from slipway.tasks.approval import (
    MAX_REASON_LENGTH,
    ApprovalClosed,
    ApprovalDecision,
    ApprovalInputRefused,
    ApprovalNotDelivered,
    ApprovalRecord,
    BranchNotAllowed,
    SuspendNotSupported,
    approval_markdown,
    approve_run,
    check_branch_allowed,
    request_approval,
    request_approval_suspended,
)
from tests.approvers import approver, code_for, decision

pytestmark = pytest.mark.usefixtures("flow_env")

SUMMARY = "### example-app `3f2c1ab` to **production**\n\nimage `registry/app@sha256:abc`"


def policy(timeout_seconds: int = 30) -> EnvironmentApproval:
    """The environment's rules, with this test's approver secrets (tests/approvers.py)."""
    return EnvironmentApproval(
        approvers=[approver("alice@example.com"), approver("bob")],
        timeout_seconds=timeout_seconds,
    )


# --- the gated flow, run in a background thread ------------------------------------------


@dataclass
class Probe:
    """What the flow tells the test: its run id, and when it went on after the gate."""

    run_ids: queue.Queue[UUID] = field(default_factory=queue.Queue)
    continued_at: float | None = None
    after_gate: str | None = None


_PROBES: dict[str, Probe] = {}


@task
async def deploy_step(decision: str) -> str:
    """Stands for the production deploy: a task must be able to start after the gate."""
    return f"ran after {decision}"


@flow(name="approval-gate")
async def gated(token: str, timeout_seconds: int, delay: float = 0.0) -> ApprovalRecord:
    probe = _PROBES[token]
    probe.run_ids.put(get_run_context().flow_run.id)  # type: ignore[union-attr]
    if delay:
        await asyncio.sleep(delay)  # the staging smoke test, say
    record = await request_approval(
        environment="production",
        policy=policy(timeout_seconds),
        summary_markdown=SUMMARY,
        poll_interval=1.0,
        log=get_run_logger(),
    )
    probe.continued_at = time.monotonic()
    probe.after_gate = await deploy_step(record.decision)
    return record


@task(persist_result=True)
async def build_image(counter: str) -> str:
    """Expensive work before the gate: counts how often it really runs."""
    path = Path(counter)
    path.write_text(str(int(path.read_text() or "0") + 1))
    return "image@sha256:abc"


@flow(name="approval-gate-suspended", persist_result=True)
async def gated_suspended(counter: str = "") -> ApprovalRecord:
    if counter:
        await build_image(counter)
    return await request_approval_suspended(
        environment="production", policy=policy(), summary_markdown=SUMMARY, log=get_run_logger()
    )


class Started:
    """A flow run in a background thread, with the test's Prefect settings."""

    def __init__(self, timeout_seconds: int = 30, delay: float = 0.0) -> None:
        self.probe = Probe()
        token = uuid4().hex
        _PROBES[token] = self.probe
        self.state: State | None = None
        context = contextvars.copy_context()  # Prefect's settings live in contextvars
        self._thread = threading.Thread(
            target=context.run,
            args=(self._run, token, timeout_seconds, delay),
            daemon=True,
        )
        self._thread.start()
        self.run_id = self.probe.run_ids.get(timeout=30)

    def _run(self, token: str, timeout_seconds: int, delay: float) -> None:
        self.state = asyncio.run(
            gated(token=token, timeout_seconds=timeout_seconds, delay=delay, return_state=True)
        )

    def record(self, timeout: float = 30) -> ApprovalRecord:
        self._thread.join(timeout)
        assert self.state is not None, "the flow did not finish"
        assert self.state.is_completed(), self.state
        return self.state.result()  # type: ignore[return-value]


def paused_keyset(run_id: UUID, timeout: float = 15) -> dict[str, str]:
    """Wait until the run is paused with its form saved; its input keyset."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            keyset = state.state_details.run_input_keyset if state else None
            if state and state.is_paused() and keyset:
                try:
                    client.read_flow_run_input(run_id, keyset["schema"])
                    return keyset
                except PrefectHTTPStatusError:
                    pass  # 404: not saved yet
            time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not pause for approval within {timeout} s")


def run_input(run_id: UUID, key: str) -> Any:
    with get_client(sync_client=True) as client:
        return json.loads(client.read_flow_run_input(run_id, key))


# --- through the engine ---------------------------------------------------------------


def test_an_approval_continues_the_run_within_seconds_and_is_recorded() -> None:
    started = Started()
    keyset = paused_keyset(started.run_id)

    # What the person sees in the UI: the summary above a form that explains itself.
    description = run_input(started.run_id, keyset["description"])
    assert SUMMARY in description
    assert "`alice@example.com`, `bob`" in description
    schema = run_input(started.run_id, keyset["schema"])
    assert set(schema["properties"]) == {"approve", "approver", "code", "reason"}
    assert schema["properties"]["reason"]["maxLength"] == MAX_REASON_LENGTH
    assert all(p.get("description") for p in schema["properties"].values()), schema
    assert schema["properties"]["approve"]["default"] is False

    sent = time.monotonic()
    approve_run(started.run_id, decision("  ALICE@Example.com "))
    record = started.record()

    latency = started.probe.continued_at - sent  # type: ignore[operator]
    print(f"approval-to-continue latency: {latency:.2f} s")
    assert latency < 5
    assert record.decision == "approved" and record.approved
    assert record.approver == "alice@example.com"  # the policy's entry, not what was typed
    assert record.reason == "smoke tests green"
    assert record.at.endswith("+00:00")
    assert record.refusals == ()
    assert started.probe.after_gate == "ran after approved"


def test_a_rejection_is_recorded() -> None:
    started = Started()
    paused_keyset(started.run_id)

    approve_run(started.run_id, decision("bob", approve=False, reason="error budget spent"))
    record = started.record()

    assert (record.decision, record.approver, record.reason) == (
        "rejected",
        "bob",
        "error budget spent",
    )
    assert not record.approved


def test_a_decision_from_someone_not_allowed_is_refused_and_the_run_waits_again() -> None:
    started = Started()
    first = paused_keyset(started.run_id)

    approve_run(started.run_id, decision("mallory", reason="trust me"))
    # Sent at once, while the run is between the refusal and its next pause: it waits.
    approve_run(started.run_id, decision("bob", reason="checked the canary"))
    record = started.record()

    assert (record.decision, record.approver, record.reason) == (
        "approved",
        "bob",
        "checked the canary",
    )
    [refused] = record.refusals
    assert (refused.decision, refused.approver, refused.reason) == (
        "refused",
        "mallory",
        "trust me",
    )
    assert refused.refused_reason == "'mallory' is not an approver of production"
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(started.run_id)
    keys = [s.state_details.run_input_keyset for s in states if s.is_paused()]
    assert len(keys) == 2 and keys[0] == first  # paused twice, each with its own form
    second_description = run_input(started.run_id, keys[1]["description"])
    assert "A decision by `mallory` was refused" in second_description
    assert "mallory" in approval_markdown(record)


def test_no_decision_in_time_is_a_rejection_and_the_run_carries_on() -> None:
    started = Started(timeout_seconds=3)

    record = started.record()

    assert record.decision == "timed-out" and not record.approved
    assert record.approver is None
    assert "within 3 s" in record.reason
    assert started.probe.after_gate == "ran after timed-out"  # tasks may start again
    with pytest.raises(ApprovalClosed, match="already ended"):
        approve_run(started.run_id, decision("alice@example.com"), timeout=2)


def test_an_approval_sent_before_the_run_has_paused_is_not_lost() -> None:
    started = Started(delay=1.0)
    with get_client(sync_client=True) as client:
        assert not client.read_flow_run(started.run_id).state.is_paused()  # type: ignore[union-attr]

    sent = time.monotonic()
    approve_run(started.run_id, decision("bob", reason="raced the pause"))
    waited = time.monotonic() - sent
    record = started.record()

    assert waited >= 0.5  # approve_run held the decision until the form was there
    assert (record.decision, record.approver, record.reason) == (
        "approved",
        "bob",
        "raced the pause",
    )


def test_suspending_outside_a_deployment_fails_clearly() -> None:
    state = asyncio.run(gated_suspended(return_state=True))

    assert state.is_failed()
    with pytest.raises(SuspendNotSupported, match="not started from a deployment"):
        state.result()


def run_in_new_process(flow_run: FlowRun) -> FlowRun:
    """Execute the run as a fresh worker would: in a new process, until it exits."""
    process = run_flow_in_subprocess(gated_suspended, flow_run, parameters=flow_run.parameters)
    process.join(60)
    assert process.exitcode is not None, "the flow process did not exit"
    return read_run(flow_run.id)


def run_in_this_process(flow_run: FlowRun) -> FlowRun:
    """Execute the run here (cheaper than a process); a suspend ends the execution."""
    with contextlib.suppress(Pause):
        asyncio.run(run_flow_async(gated_suspended, flow_run, parameters=flow_run.parameters))
    return read_run(flow_run.id)


def read_run(run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def test_a_suspended_approval_frees_the_process_and_resumes_without_redoing_work(
    tmp_path: Path,
) -> None:
    counter = tmp_path / "builds"
    counter.write_text("0")
    deployment_id = gated_suspended.to_deployment(name="suspended-approval").apply()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id, parameters={"counter": str(counter)}
        )

    first = run_in_this_process(flow_run)  # suspends: the execution ends, nothing waits
    assert first.state is not None and first.state.name == "Suspended", first.state
    keyset = first.state.state_details.run_input_keyset
    assert SUMMARY in run_input(flow_run.id, keyset["description"])
    approve_run(flow_run.id, decision("mallory"))  # refused: suspends again
    second = run_in_this_process(first)
    assert second.state is not None and second.state.name == "Suspended", second.state
    approve_run(flow_run.id, decision("bob", reason="after a restart"))
    third = run_in_new_process(second)  # nothing of the first executions is left in memory

    assert third.state is not None and third.state.is_completed(), third.state
    record: ApprovalRecord = third.state.result()  # type: ignore[assignment]
    assert (record.decision, record.approver, record.reason) == (
        "approved",
        "bob",
        "after a restart",
    )
    assert [r.approver for r in record.refusals] == ["mallory"]
    assert counter.read_text() == "1"  # three executions, one build: its result was reused


# --- a paused run held by hand in the windows a flow passes through quickly ------------


def paused_by_hand(*, timeout_seconds: float = 60, save_form: bool = True) -> dict[str, Any]:
    """A flow run paused for approval through the API, without a flow process."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(gated, name=f"by-hand-{uuid4().hex[:6]}", state=Running())
        paused = Paused(timeout_seconds=timeout_seconds, pause_key=f"k-{uuid4().hex[:8]}")  # type: ignore[arg-type]
        keyset = keyset_from_paused_state(paused)
        paused.state_details.run_input_keyset = keyset
        client.set_flow_run_state(run.id, paused)
    if save_form:
        ApprovalDecision.save(keyset, flow_run_id=run.id)
    return {"id": run.id, "keyset": keyset}


def test_an_approval_while_the_form_is_not_saved_yet_waits_for_it() -> None:
    run = paused_by_hand(save_form=False)
    payload = decision("alice@example.com")
    with pytest.raises(RuntimeError, match="schema not found"):  # what Prefect alone does
        resume_flow_run(run["id"], run_input=payload.model_dump())
    errors: list[BaseException] = []

    def approve() -> None:
        try:
            approve_run(run["id"], payload, timeout=10)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    sender = threading.Thread(target=contextvars.copy_context().run, args=(approve,))
    sender.start()
    time.sleep(0.6)
    assert sender.is_alive(), errors  # still holding the decision
    ApprovalDecision.save(run["keyset"], flow_run_id=run["id"])  # the run saves its form
    sender.join(10)

    assert not sender.is_alive() and errors == []
    assert run_input(run["id"], run["keyset"]["response"]) == payload.model_dump()
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run["id"]).state.is_running()  # type: ignore[union-attr]


def test_an_approval_after_the_pause_expired_is_closed() -> None:
    run = paused_by_hand(timeout_seconds=1)
    time.sleep(1.2)

    with pytest.raises(ApprovalClosed, match="timed out") as caught:
        approve_run(run["id"], decision("alice@example.com"))

    assert isinstance(caught.value, PermanentError)


def test_a_decision_that_does_not_fit_the_form_is_refused_by_the_server() -> None:
    run = paused_by_hand()
    blank = ApprovalDecision.model_construct(approve=True, approver="", reason="", code="")

    with pytest.raises(ApprovalInputRefused, match="refused the decision"):
        approve_run(run["id"], blank, timeout=5)


def test_a_reason_over_the_limit_is_refused_by_the_server() -> None:
    run = paused_by_hand()
    huge = ApprovalDecision.model_construct(
        approve=True, approver="bob", reason="x" * (5 * 1024 * 1024), code=code_for("bob")
    )

    with pytest.raises(ApprovalInputRefused, match="refused the decision"):
        approve_run(run["id"], huge, timeout=5)
    with pytest.raises(ValueError, match="at most 2000 characters"):
        decision("bob", reason="x" * (MAX_REASON_LENGTH + 1))


def test_approve_run_gives_up_when_nothing_waits_for_a_decision() -> None:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(gated, state=Running())

    started = time.monotonic()
    with pytest.raises(ApprovalNotDelivered, match="Running, not paused"):
        approve_run(run.id, decision("bob"), timeout=0.5)
    assert time.monotonic() - started < 3
    with pytest.raises(ApprovalClosed, match="no flow run"):
        approve_run(uuid4(), decision("bob"), timeout=0.5)


# --- plain functions ------------------------------------------------------------------


def test_only_allowed_branches_reach_the_environment() -> None:
    policy = EnvironmentApproval(approvers=[approver("bob")], branches=["main", "release/*"])

    check_branch_allowed("main", policy)
    check_branch_allowed("release/2.1", policy)
    with pytest.raises(BranchNotAllowed) as caught:
        check_branch_allowed("feature/login", policy, environment="production")
    assert str(caught.value) == (
        "branch 'feature/login' may not be released to environment 'production' "
        "(allowed branches: main, release/*)"
    )
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)
    with pytest.raises(BranchNotAllowed, match="not on a branch"):
        check_branch_allowed(None, policy)


def test_approval_markdown() -> None:
    refused = ApprovalRecord(
        "production",
        "refused",
        "mallory",
        "ok | go",
        "2031-01-31T10:00:00+00:00",
        refused_reason="'mallory' is not an approver of production",
    )
    record = ApprovalRecord(
        "production",
        "approved",
        "bob",
        "canary `clean`",
        "2031-01-31T10:05:00+00:00",
        refusals=(refused,),
    )

    text = approval_markdown(record)

    assert "## Approval for `production`: ✅ approved" in text
    assert "| approved | bob | 2031-01-31T10:05:00+00:00 | canary 'clean' |" in text
    assert "| mallory | 2031-01-31T10:00:00+00:00 | ok \\| go |" in text
    assert "not an approver" in text
    timed_out = ApprovalRecord("production", "timed-out", None, "no decision", "t")
    assert "⌛ timed-out" in approval_markdown(timed_out)
    assert "| timed-out | - | t | no decision |" in approval_markdown(timed_out)


# --- identity: a name proves nothing without its code, and a code counts once ---------


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_name_without_its_code_proves_nothing_and_a_used_code_counts_once() -> None:
    started = Started()
    paused_keyset(started.run_id)
    alice_code = code_for("alice@example.com")

    approve_run(started.run_id, decision("mallory", reason="trust me"))
    # the same client, now typing an approver's name: without her code it is refused
    approve_run(started.run_id, decision("  ALICE@example.com ", code=wrong(alice_code)))
    approve_run(started.run_id, decision("bob", code=alice_code))  # her code is not his
    approve_run(started.run_id, decision("  ALICE@example.com ", code=alice_code))
    record = started.record()

    assert (record.decision, record.approver) == ("approved", "alice@example.com")
    assert [(r.approver, r.refused_reason) for r in record.refusals] == [
        ("mallory", "'mallory' is not an approver of production"),
        ("ALICE@example.com", "wrong or expired code for 'alice@example.com' (give the "
         "current 6-digit code)"),
        ("bob", "wrong or expired code for 'bob' (give the current 6-digit code)"),
    ]  # fmt: skip
    assert alice_code not in approval_markdown(record)

    # her code, read from the first run's input, sent to another run: refused
    again = Started()
    paused_keyset(again.run_id)
    approve_run(again.run_id, decision("alice@example.com", code=alice_code))
    approve_run(again.run_id, decision("bob", reason="fresh code"))
    second = again.record()
    assert (second.decision, second.approver) == ("approved", "bob")
    [replayed] = second.refusals
    assert replayed.refused_reason in (
        "that code of 'alice@example.com' was already used; wait for the next one",
        "a newer code of 'alice@example.com' was already used",
    )


def test_codes_are_judged_at_arrival_and_only_forward() -> None:
    from datetime import UTC, datetime

    from slipway.tasks.approver_identity import verify_identity

    policy = EnvironmentApproval(approvers=[approver("carol")])
    now = datetime.now(UTC)

    def check(code: str, holder: str, at: datetime = now) -> str | None:
        verdict = asyncio.run(
            verify_identity("Carol", code, policy, environment="prod", at=at, holder=holder)
        )
        assert verdict.approver is None or verdict.approver.name == "carol"
        return verdict.refused_reason

    assert check(code_for("carol", steps_ahead=1), "run-1/a") is None  # the next code
    assert check(code_for("carol", steps_ahead=1), "run-1/a") is None  # same decision re-read
    assert check(code_for("carol"), "run-2/a") == "a newer code of 'carol' was already used"
    assert "already used" in (check(code_for("carol", steps_ahead=1), "run-3/a") or "")
    assert "wrong or expired" in (check(code_for("carol", steps_ahead=3), "run-4/a") or "")
    assert "wrong or expired" in (check("12345a", "run-5/a") or "")
    later = datetime.fromtimestamp(now.timestamp() + 90, UTC)  # three steps on: a fresh code
    assert check(code_for("carol", steps_ahead=3), "run-6/a", at=later) is None


def test_the_prefect_cloud_actor_is_read_from_the_event_s_related_actor() -> None:
    """Only the reading of Cloud's event is tested: no Prefect Cloud can be reached here."""
    from prefect.events.schemas.events import Event

    from slipway.tasks.approver_identity import actor_names

    resumed = Event(
        event="prefect.flow-run.Running",
        resource={"prefect.resource.id": f"prefect.flow-run.{uuid4()}"},
        related=[
            {"prefect.resource.id": f"prefect.flow.{uuid4()}", "prefect.resource.role": "flow"},
            {
                "prefect.resource.id": f"prefect-cloud.actor.{uuid4()}",
                "prefect.resource.role": "actor",
                "prefect.resource.name": "Alice Example",
                "prefect-cloud.email": "Alice@Example.com",
                "prefect-cloud.handle": "alice",
            },
        ],
    )
    assert actor_names(resumed) == {"alice example", "alice@example.com", "alice"}
    by_nobody = Event(
        event="prefect.flow-run.Running",
        resource={"prefect.resource.id": f"prefect.flow-run.{uuid4()}"},
    )
    assert actor_names(by_nobody) == set()
