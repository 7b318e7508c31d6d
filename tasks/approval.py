"""Approval before a release reaches a gated environment: pause, ask, check, record.

The flow calls :func:`request_approval` where the release waits for a person. It
pauses the flow run with Prefect's ``pause_flow_run(wait_for_input=...)``, so the
Prefect UI shows the run as *Paused* with a form (:class:`ApprovalDecision`: approve
or reject, who, why) under a Markdown description of what is being approved. A
script or a test answers with :func:`approve_run`. Whatever happens ends as a frozen
:class:`ApprovalRecord` (who, when, why) that the flow publishes
(:func:`approval_markdown`) and writes into the manifests commit.

Decisions, in the order they are made:

- **Branch.** :func:`check_branch_allowed` is called before anything is deployed
  or paused: production is reached only from the branches the environment's
  :class:`~slipway.blocks.approval.EnvironmentApproval` allows.
- **Who.** A decision (approve *or* reject) counts only from an approver of the
  environment with that approver's current TOTP code, not used before
  (``slipway.tasks.approver_identity``); the record names the policy's entry, not
  the typed text. Anything else is *refused*: logged, kept in the record's
  ``refusals``, and the run pauses again, with the refusal shown in the new form's
  description, for a valid decision until the one overall deadline
  (``timeout_seconds`` from the first pause; a refusal never buys more time).
  Rejections are held to the same rule, so a stranger can neither stop a release
  nor sign for it. A reason is at most :data:`MAX_REASON_LENGTH` characters (the
  server refuses a longer one when it is sent).
- **Silence.** No valid decision by the deadline counts as a rejection: the
  record says ``timed-out``. Prefect leaves a timed-out pause *Paused* (and its
  pause-expiry service may mark the run *Failed*), where no task may start; the
  run is put back to *Running* so the flow can still notify, roll staging back
  and end as it decides.

Each pause has a fresh key: a blocking pause must fire again when the run is
retried or rescheduled, never hand back an earlier attempt's answer.

The race. Prefect's server refuses run input that reaches a run before it is
paused, or after it is paused but before it has saved its input schema (``Run
input schema not found``), and ``prefect.flow_runs.resume_flow_run`` raises on
both. :func:`approve_run` therefore reads the run first and sends the decision
only to a paused run whose form is saved, waiting and retrying otherwise until
its own timeout; a run that has ended or whose pause has expired fails at once
(:class:`ApprovalClosed`) instead of waiting for nothing.

Long waits. A paused run keeps its process (and its worker slot) for as long as
it waits. :func:`request_approval_suspended` suspends instead: the process exits,
and on approval Prefect schedules the run again, the flow starts over from the top
and every task with a persisted result is reused (Prefect's default cache key
includes the flow run id). It only works for runs started from a deployment, and
only saves work when results are persisted (``persist_result=True``).

Identity. An approval proves that whoever decided held the approver's TOTP secret
at that time; not who typed it (see ``slipway.tasks.approver_identity``).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any, Literal
from uuid import UUID, uuid4

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound, PrefectHTTPStatusError
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import Field
from pydantic.fields import FieldInfo

from slipway.blocks.approval import MAX_NAME_LENGTH, EnvironmentApproval
from slipway.exceptions import (
    ApprovalClosed,
    ApprovalInputRefused,
    ApprovalNotDelivered,
    BranchNotAllowed,
    SuspendNotSupported,
)
from slipway.tasks.approver_identity import verify_identity

Logger = logging.Logger | logging.LoggerAdapter[Any]
DecisionName = Literal["approved", "rejected", "timed-out", "refused"]

# How often approve_run looks again while the run is not ready for its decision.
_APPROVE_RETRY_SECONDS = 0.2
# A deadline closer than this is treated as reached: a pause needs time to be set up.
_MIN_PAUSE_SECONDS = 0.5
# The server's words when input arrives before the paused run saved its form.
_SCHEMA_NOT_SAVED = "schema not found"
# Characters of a decision's reason: it is logged, recorded and put into a commit.
MAX_REASON_LENGTH = 2000


# --- errors ----------------------------------------------------------------------


# --- the form and the record -------------------------------------------------------


class ApprovalDecision(RunInput):
    """The form a person fills in to let a release through (or stop it)."""

    approve: bool = Field(
        default=False,
        description="Tick to release to the environment; leave unticked to reject the release.",
    )
    approver: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description="Your user name or email; it must be one of the environment's approvers.",
    )
    code: str = Field(
        min_length=6,
        max_length=12,
        description=(
            "The current 6-digit code of your authenticator app for slipway (TOTP); "
            "it proves you are that approver, and counts once."
        ),
    )
    reason: str = Field(
        default="",
        max_length=MAX_REASON_LENGTH,
        description=(
            f"Why you decided so (at most {MAX_REASON_LENGTH} characters); recorded with "
            "the release and in the manifests commit."
        ),
    )


@dataclass(frozen=True)
class ApprovalRecord:
    """One decision about a release, as it is recorded.

    ``decision`` is ``approved`` or ``rejected`` (by an approver), ``timed-out`` (no
    valid decision by the deadline: a rejection) or ``refused`` (a decision from
    someone not allowed; ``refused_reason`` says why). ``at`` is UTC ISO 8601.
    ``refusals`` holds the refused decisions that came before this one.
    """

    environment: str
    decision: DecisionName
    approver: str | None
    reason: str
    at: str
    refused_reason: str | None = None
    refusals: tuple[ApprovalRecord, ...] = ()

    @property
    def approved(self) -> bool:
        """True only for a valid approval."""
        return self.decision == "approved"


_ICONS = {"approved": "✅", "rejected": "⛔", "timed-out": "⌛", "refused": "🚫"}


def _md(text: str | None) -> str:
    """User text in a Markdown table cell: one line, no pipes or backticks to break it."""
    if not text:
        return "-"
    return " ".join(text.split()).replace("|", "\\|").replace("`", "'")


def approval_markdown(record: ApprovalRecord) -> str:
    """The decision as a Markdown artifact: what, who, when, why, and any refusals."""
    lines = [
        f"## Approval for `{_md(record.environment)}`: {_ICONS[record.decision]} {record.decision}",
        "",
        "| decision | by | at (UTC) | reason |",
        "|---|---|---|---|",
        f"| {record.decision} | {_md(record.approver)} | {record.at} | {_md(record.reason)} |",
    ]
    if record.refusals:
        lines += ["", "Refused decisions (not counted):", ""]
        lines += ["| by | at (UTC) | wanted | refused because |", "|---|---|---|---|"]
        for refused in record.refusals:
            lines.append(
                f"| {_md(refused.approver)} | {refused.at} | {_md(refused.reason)} "
                f"| {_md(refused.refused_reason)} |"
            )
    return "\n".join(lines) + "\n"


# --- the branch rule ---------------------------------------------------------------


def check_branch_allowed(
    branch: str | None, policy: EnvironmentApproval, *, environment: str | None = None
) -> None:
    """Raise :class:`BranchNotAllowed` unless ``branch`` matches one of the policy's globs."""
    if policy.allows_branch(branch):
        return
    where = f"environment {environment!r}" if environment else "this environment"
    allowed = ", ".join(policy.branches)
    what = f"branch {branch!r}" if branch else "a build that is not on a branch"
    raise BranchNotAllowed(f"{what} may not be released to {where} (allowed branches: {allowed})")


# --- asking, in the flow -------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    """Prefect input keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "env"


def _decision_form(description: str) -> type[ApprovalDecision]:
    """The form with its Markdown description, ``approve`` unticked.

    ``with_initial_data`` rebuilds a field from its annotation and the new default
    only, dropping the field's description; passing a copy of the original field
    with the new default keeps it, so the UI still explains every field.
    """
    approve = FieldInfo.merge_field_infos(ApprovalDecision.model_fields["approve"], default=False)
    return ApprovalDecision.with_initial_data(description=description, approve=approve)


def _form_description(
    summary_markdown: str,
    environment: str,
    policy: EnvironmentApproval,
    deadline: datetime,
    refusals: list[ApprovalRecord],
) -> str:
    parts = [summary_markdown.rstrip(), "", "---", ""]
    parts.append(
        f"**Release to `{environment}`?** Approvers: "
        + ", ".join(f"`{_md(a)}`" for a in policy.approver_names)
        + f". No decision by {deadline.isoformat(timespec='seconds')} UTC counts as a rejection."
    )
    for refused in refusals:
        parts += [
            "",
            f"> A decision by `{_md(refused.approver)}` was refused: "
            f"{_md(refused.refused_reason)}.",
        ]
    return "\n".join(parts) + "\n"


async def _judge(
    decision: ApprovalDecision,
    environment: str,
    policy: EnvironmentApproval,
    flow_run_id: UUID,
) -> ApprovalRecord:
    """Turn a decision into a record: approved, rejected, or refused (not an approver,
    wrong or used code, a reason over the limit)."""
    received = await _input_created_at(flow_run_id, decision.metadata.key)
    at = received.isoformat(timespec="seconds")
    typed = decision.approver.strip()[:MAX_NAME_LENGTH]
    reason = decision.reason
    if len(reason) > MAX_REASON_LENGTH:  # the server's schema check was bypassed
        return ApprovalRecord(
            environment=environment,
            decision="refused",
            approver=typed,
            reason=reason[:MAX_REASON_LENGTH],
            at=at,
            refused_reason=f"the reason is over {MAX_REASON_LENGTH} characters",
        )
    verdict = await verify_identity(
        typed,
        decision.code,
        policy,
        environment=environment,
        at=received,
        holder=f"{flow_run_id}/{decision.metadata.key}",
        flow_run_id=flow_run_id,
    )
    if verdict.approver is None:
        return ApprovalRecord(
            environment=environment,
            decision="refused",
            approver=typed,
            reason=reason,
            at=at,
            refused_reason=verdict.refused_reason,
        )
    return ApprovalRecord(
        environment=environment,
        decision="approved" if decision.approve else "rejected",
        approver=verdict.approver.name,  # the policy's entry, not the typed text
        reason=reason,
        at=at,
    )


def _with_refusals(record: ApprovalRecord, refusals: list[ApprovalRecord]) -> ApprovalRecord:
    return replace(record, refusals=tuple(refusals))


def _timed_out(environment: str, timeout_seconds: int) -> ApprovalRecord:
    reason = f"no valid decision within {timeout_seconds} s"
    return ApprovalRecord(environment, "timed-out", None, reason, _now())


async def _run_again(flow_run_id: UUID, log: Logger) -> None:
    """Put a run whose pause timed out back to Running, so its flow can go on.

    Prefect leaves it Paused (no task may start then) or its pause-expiry service
    marks it Failed; a cancellation is left alone.
    """
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        state = run.state
        if state is None or state.type not in (StateType.PAUSED, StateType.FAILED):
            return
        await client.set_flow_run_state(
            flow_run_id, Running(message="approval timed out; carrying on"), force=True
        )
    log.info("approval timed out: the run is running again to handle the rejection")


async def request_approval(
    *,
    environment: str,
    policy: EnvironmentApproval,
    summary_markdown: str,
    poll_interval: float = 1.0,
    log: Logger,
) -> ApprovalRecord:
    """Pause the current flow run until an approver decides, or the deadline passes.

    Returns the record of the valid decision (``approved`` / ``rejected``) or a
    ``timed-out`` one, with any refused decisions in ``refusals``. A person sees
    ``summary_markdown`` above the form in the Prefect UI. ``poll_interval`` is how
    often the paused run looks for a decision (seconds): the latency of an approval.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("request_approval must be called inside a flow run")
    flow_run_id = context.flow_run.id
    started = datetime.now(UTC)
    deadline_clock = time.monotonic() + policy.timeout_seconds
    deadline = started + timedelta(seconds=policy.timeout_seconds)
    refusals: list[ApprovalRecord] = []
    log.info(
        "waiting for approval to release to %s (approvers: %s; timeout %d s)",
        environment,
        ", ".join(policy.approver_names),
        policy.timeout_seconds,
    )
    while True:
        remaining = deadline_clock - time.monotonic()
        if remaining < _MIN_PAUSE_SECONDS:
            record = _timed_out(environment, policy.timeout_seconds)
            break
        form = _decision_form(
            _form_description(summary_markdown, environment, policy, deadline, refusals)
        )
        try:
            decision = await apause_flow_run(
                wait_for_input=form,
                timeout=remaining,  # type: ignore[arg-type]  # seconds; a float works
                poll_interval=poll_interval,  # type: ignore[arg-type]
                key=f"approval-{_slug(environment)}-{uuid4().hex[:12]}",
            )
        except FlowPauseTimeout:
            await _run_again(flow_run_id, log)
            record = _timed_out(environment, policy.timeout_seconds)
            break
        record = await _judge(decision, environment, policy, flow_run_id)
        if record.decision != "refused":
            break
        log.warning(
            "approval for %s refused: %s; waiting again for an approver",
            environment,
            record.refused_reason,
        )
        refusals.append(record)
    record = _with_refusals(record, refusals)
    _log_outcome(record, log)
    return record


def _log_outcome(record: ApprovalRecord, log: Logger) -> None:
    if record.decision == "approved":
        log.info(
            "release to %s approved by %s: %s",
            record.environment,
            record.approver,
            record.reason or "(no reason given)",
        )
    elif record.decision == "rejected":
        log.warning(
            "release to %s rejected by %s: %s",
            record.environment,
            record.approver,
            record.reason or "(no reason given)",
        )
    else:
        log.warning("release to %s rejected: %s", record.environment, record.reason)


async def _input_created_at(flow_run_id: UUID, key: str) -> datetime:
    """When a decision reached the server (a re-executed flow must not say 'now'): the
    time its record shows and its code is judged at."""
    async with get_client() as client:
        found = await client.filter_flow_run_input(
            flow_run_id, key_prefix=key, limit=1, exclude_keys=set()
        )
    created = found[0].created if found and found[0].created else None
    return created.astimezone(UTC) if created else datetime.now(UTC)


async def _first_suspend_at(flow_run_id: UUID, pause_key: str) -> datetime | None:
    """When the first suspend of this approval happened, from the run's state history."""
    async with get_client() as client:
        states = await client.read_flow_run_states(flow_run_id)
    times = [s.timestamp for s in states if s.state_details.pause_key == pause_key]
    return min(times) if times else None


async def request_approval_suspended(
    *,
    environment: str,
    policy: EnvironmentApproval,
    summary_markdown: str,
    log: Logger,
    key: str | None = None,
) -> ApprovalRecord:
    """Like :func:`request_approval`, but the process exits while it waits.

    For runs started from a deployment, with results persisted: the run is
    *Suspended* and its process ends; the decision schedules it again, the flow runs
    from the top (persisted task results are reused) and this call returns the
    decision. Pause keys are deterministic (``key``, default
    ``approval-<environment>``, plus the attempt number) so the re-executed flow
    finds the answers it already has. The deadline runs from the first suspend.
    When it passes, Prefect's server fails the run (``paused and never resumed``):
    no process is left to write a ``timed-out`` record.

    Raises:
        SuspendNotSupported: the run was not started from a deployment.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise SuspendNotSupported("request_approval_suspended must be called inside a flow run")
    flow_run = context.flow_run
    if flow_run.deployment_id is None:
        raise SuspendNotSupported(
            f"flow run {flow_run.name!r} was not started from a deployment, so it cannot be "
            "suspended while it waits for approval (Prefect reschedules a suspended run "
            "through its deployment); use request_approval, which keeps the process waiting"
        )
    base = _slug(key or f"approval-{environment}")
    first_at = await _first_suspend_at(flow_run.id, f"{base}-1")
    deadline = (first_at or datetime.now(UTC)) + timedelta(seconds=policy.timeout_seconds)
    refusals: list[ApprovalRecord] = []
    for attempt in count(1):
        remaining = (deadline - datetime.now(UTC)).total_seconds()
        if attempt > 1 and remaining < _MIN_PAUSE_SECONDS:
            record = _timed_out(environment, policy.timeout_seconds)
            break
        form = _decision_form(
            _form_description(summary_markdown, environment, policy, deadline, refusals)
        )
        try:
            # Raises prefect's Pause signal (a BaseException) when it suspends: the
            # engine ends the process; the next execution gets the answer here.
            decision = await asuspend_flow_run(
                wait_for_input=form, timeout=max(1, round(remaining)), key=f"{base}-{attempt}"
            )
        except RuntimeError as exc:
            raise SuspendNotSupported(f"flow run {flow_run.name!r}: {exc}") from exc
        record = await _judge(decision, environment, policy, flow_run.id)
        if record.decision != "refused":
            break
        log.warning("approval for %s refused: %s", environment, record.refused_reason)
        refusals.append(record)
    record = _with_refusals(record, refusals)
    _log_outcome(record, log)
    return record


# --- answering, from a script ---------------------------------------------------------


def approve_run(
    flow_run_id: UUID | str, decision: ApprovalDecision, *, timeout: float = 30
) -> None:
    """Send ``decision`` to a run waiting for approval and resume it.

    Waits (up to ``timeout`` seconds) for a run that has not paused yet or has not
    saved its form yet, instead of losing the decision: the server would refuse it.

    Raises:
        ApprovalClosed: the run has ended, or its pause timed out.
        ApprovalInputRefused: the server says the decision does not fit the form.
        ApprovalNotDelivered: the run was not waiting for a decision within ``timeout``.
    """
    run_id = UUID(str(flow_run_id))
    payload = decision.model_dump(mode="json")
    deadline = time.monotonic() + timeout
    waiting = "it was not read"
    with get_client(sync_client=True) as client:
        while True:
            waiting = _try_resume(client, run_id, payload)
            if waiting is None:
                return
            if time.monotonic() >= deadline:
                raise ApprovalNotDelivered(
                    f"flow run {run_id} was not waiting for a decision within {timeout:g} s "
                    f"({waiting}); the decision was not delivered"
                )
            time.sleep(_APPROVE_RETRY_SECONDS)


def _has_input(client: Any, run_id: UUID, key: str) -> bool:
    """True when the run has saved input under ``key`` (the API answers 404 if not)."""
    try:
        client.read_flow_run_input(run_id, key)
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:
            return False
        raise
    return True


def _try_resume(client: Any, run_id: UUID, payload: dict[str, Any]) -> str | None:
    """One attempt: None when delivered, else why the run is not ready yet."""
    try:
        run = client.read_flow_run(run_id)
    except ObjectNotFound:
        raise ApprovalClosed(f"there is no flow run {run_id}") from None
    state = run.state
    if state is None:
        return "it has no state yet"
    if state.is_final() or state.type in (StateType.CANCELLING,):
        raise ApprovalClosed(
            f"flow run {run_id} has already ended ({state.name}); nothing is waiting for approval"
        )
    if not state.is_paused():
        return f"it is {state.name}, not paused"
    keyset = state.state_details.run_input_keyset
    if not keyset:
        raise ApprovalClosed(f"flow run {run_id} is paused but not waiting for a decision")
    if not _has_input(client, run_id, keyset["schema"]):
        return "it is paused but has not saved its approval form yet"
    result = client.resume_flow_run(run_id, run_input=payload)
    if result.status == SetStateStatus.ACCEPT:
        return None
    reason = getattr(result.details, "reason", None) or ""
    if result.status == SetStateStatus.ABORT:
        return f"it stopped being paused ({reason})"  # resumed by someone else meanwhile
    if result.state is not None and result.state.type == StateType.FAILED:
        raise ApprovalClosed(f"flow run {run_id}: the approval timed out ({reason})")
    if _SCHEMA_NOT_SAVED in reason.lower():
        return "it paused again and has not saved its new form yet"
    raise ApprovalInputRefused(f"flow run {run_id} refused the decision: {reason}")
