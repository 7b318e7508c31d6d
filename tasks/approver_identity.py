"""Is the person deciding the approver they name? A TOTP code, counted once.

The open-source Prefect UI has no logins, so the approval form asks for the name
*and* the current TOTP code (RFC 6238) of that approver's secret in the
:class:`~slipway.blocks.approval.ApprovalPolicy`. :func:`verify_identity` decides:

1. **Name.** Normalised (NFKC, stripped, case-folded) it must equal one policy entry;
   the verdict carries the entry, so records name ``alice@example.com`` as the policy
   spells it, whatever was typed.
2. **Code.** Six digits equal to the entry's code for the time step the decision
   reached the Prefect server, or one step either side (a code typed as its 30 s ran
   out, or a phone clock a little off). Compared in constant time.
3. **Once.** The step is claimed on the Prefect server for this decision
   (``slipway.tasks.claims``), and a step at or before the last one used is refused:
   a code read from a run's input (anyone with API read access can) cannot approve
   another run, nor the same run twice. The same decision read again (a suspended run
   executing again) keeps its claim.
4. **Prefect Cloud.** Where the API is Prefect Cloud and the entry names a
   ``prefect_cloud_user``, the user Cloud recorded as resuming the run (the actor on
   the run's resume event) must be that user too. Not testable here (no Cloud); on a
   self-hosted server the field is ignored and the log says so.

What an approval proves: that whoever decided held the approver's TOTP secret (their
authenticator) within that minute. Not who typed it, nor that they read the form.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from slipway.blocks.approval import Approver, EnvironmentApproval, canonical_name
from slipway.tasks.claims import claim_once, holders, prune_claims

logger = logging.getLogger("slipway.approval")

VALID_WINDOW = 1  # steps either side of the current one that still count
CLAIM_PREFIX = "slipway-totp-"
_CODE_RE = re.compile(r"^[0-9]{6}$")
_CLOUD_HOST = "api.prefect.cloud"
_ACTOR_LABELS = ("prefect-cloud.email", "prefect-cloud.handle", "prefect.resource.name")


@dataclass(frozen=True)
class IdentityVerdict:
    """The policy entry a decision proved to be, or why it proved nothing."""

    approver: Approver | None
    refused_reason: str | None = None


def matching_step(approver: Approver, code: str, at: datetime) -> int | None:
    """The time step whose code ``code`` is (within :data:`VALID_WINDOW` of ``at``)."""
    code = code.strip()
    if not _CODE_RE.match(code):
        return None
    totp = approver.totp()
    current = totp.timecode(at)
    found = None
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):  # every step compared
            found = step
    return found


def _claim_name(approver: Approver, step: int) -> str:
    """The claim of one approver's step: keyed by name and secret (a new secret starts
    a new ledger), hashed so the claim shows neither."""
    secret = approver.totp_secret.get_secret_value()
    ident = hashlib.sha256(f"{canonical_name(approver.name)}\0{secret}".encode()).hexdigest()
    return f"{CLAIM_PREFIX}{ident[:24]}-{step}"


def actor_names(event: Any) -> set[str]:
    """The normalised names of the actor a Prefect Cloud event records (email, handle,
    name of its related resource with role ``actor``)."""
    names: set[str] = set()
    for related in getattr(event, "related", []) or []:
        if related.get("prefect.resource.role") != "actor":
            continue
        names.update(
            canonical_name(str(related[label])) for label in _ACTOR_LABELS if related.get(label)
        )
    return names


async def _cloud_resumer(flow_run_id: UUID, since: datetime) -> set[str] | None:
    """Who Prefect Cloud says resumed the run (None off Cloud or when it says nothing)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_URL

    if _CLOUD_HOST not in (PREFECT_API_URL.value() or ""):
        return None
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                occurred=EventOccurredFilter(since=since),
            ),
            limit=50,
        )
    with_actor = [e for e in page.events if actor_names(e)]
    return actor_names(max(with_actor, key=lambda e: e.occurred)) if with_actor else set()


async def verify_identity(
    typed_name: str,
    code: str,
    policy: EnvironmentApproval,
    *,
    environment: str,
    at: datetime,
    holder: str,
    flow_run_id: UUID | None = None,
) -> IdentityVerdict:
    """Check a decision's name and code; the entry it proves, or why it is refused.

    Args:
        typed_name: what the form says.
        code: the TOTP code the form says.
        policy: the environment's rules.
        environment: for messages.
        at: when the decision reached the server (its codes are judged at that time).
        holder: this decision (flow run and input key), the owner of the claim.
        flow_run_id: the run, for the Prefect Cloud actor check.
    """
    entry = policy.approver_named(typed_name)
    if entry is None:
        return IdentityVerdict(None, f"{typed_name.strip()!r} is not an approver of {environment}")
    step = matching_step(entry, code, at)
    if step is None:
        return IdentityVerdict(
            None, f"wrong or expired code for {entry.name!r} (give the current 6-digit code)"
        )
    later = [_claim_name(entry, s) for s in range(step + 1, step + 2 * VALID_WINDOW + 1)]
    if any(h != holder for h in (await holders(later)).values()):
        return IdentityVerdict(None, f"a newer code of {entry.name!r} was already used")
    other = await claim_once(_claim_name(entry, step), holder)
    if other is not None:
        return IdentityVerdict(
            None, f"that code of {entry.name!r} was already used; wait for the next one"
        )
    await prune_claims(CLAIM_PREFIX, timedelta(minutes=10))
    if entry.prefect_cloud_user and flow_run_id is not None:
        resumer = await _cloud_resumer(flow_run_id, at - timedelta(minutes=5))
        if resumer is None:
            logger.info(
                "prefect_cloud_user of %r not checked: the API is not Prefect Cloud", entry.name
            )
        elif canonical_name(entry.prefect_cloud_user) not in resumer:
            who = ", ".join(sorted(resumer)) or "nobody Cloud named"
            return IdentityVerdict(
                None,
                f"the run was resumed by {who} on Prefect Cloud, not {entry.prefect_cloud_user!r}",
            )
    return IdentityVerdict(entry)
