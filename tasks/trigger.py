"""Is this run's push event the receiver's? Checked before the pipeline runs anything.

The deployment's trigger (``prefect.yaml``) passes the whole ``slipway.push`` event
payload to the run as the ``push`` parameter, with the name of the Secret block that
holds the webhook secret. :func:`verify_push_trigger` then refuses the run, with
:class:`~slipway.exceptions.TriggerRefused` and before any checkout, when the event:

- carries no signature, or one that is not the receiver's (``slipway.push_proof``):
  someone emitted ``slipway.push`` straight to the Prefect API;
- was issued more than ``max_age`` seconds before the server created the run;
- names another branch or commit than the run's parameters;
- has started a run before (its nonce is claimed on the Prefect server,
  ``slipway.tasks.claims``): the same signed event emitted again.

A run that executes again (resumed after its approval suspended it) verifies again
and finds the nonce claimed by itself, which is fine; the freshness check uses the
run's creation time, which does not move.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.blocks.system import Secret
from prefect.client.schemas.objects import FlowRun
from pydantic import BaseModel, ConfigDict, Field

from slipway.exceptions import ConfigError, TriggerRefused
from slipway.push_proof import DEFAULT_MAX_AGE_SECONDS, VerifiedPush, event_key, verify_payload
from slipway.tasks.claims import claim_once, prune_claims

NONCE_CLAIM_PREFIX = "slipway-push-nonce-"


class PushTrigger(BaseModel):
    """What the deployment's push trigger hands the run (``push`` parameter)."""

    model_config = ConfigDict(extra="forbid")

    secret_block: str = Field(
        min_length=1,
        description="Prefect Secret block holding the webhook secret the receiver uses.",
    )
    event: Any = Field(
        description="The slipway.push event's payload, as the trigger rendered it "
        "('{{ event.payload }}'); verified before anything runs."
    )


async def _event_key(block: str) -> bytes:
    try:
        secret = await Secret.aload(block)
    except ValueError as exc:
        raise ConfigError(f"push.secret_block: Secret block {block!r} not found: {exc}") from None
    value = secret.get()
    if not isinstance(value, str) or not value:
        raise ConfigError(f"push.secret_block: Secret block {block!r} holds no string")
    return event_key(value.encode())


async def verify_push_trigger(
    push: PushTrigger,
    *,
    flow_run: FlowRun,
    branch: str | None,
    commit: str | None,
    max_age: float = DEFAULT_MAX_AGE_SECONDS,
) -> VerifiedPush:
    """The verified push, or :class:`TriggerRefused` saying why the run must not go on.

    Raises:
        TriggerRefused: unsigned, forged, stale, replayed, or not this run's branch/commit.
        ConfigError: the Secret block named by the trigger cannot be read.
    """
    if flow_run.created is None:
        raise TriggerRefused("push event: the run has no creation time to judge freshness by")
    key = await _event_key(push.secret_block)
    verified = verify_payload(
        key, push.event, created=flow_run.created.timestamp(), max_age=max_age
    )
    if branch != verified.branch or (commit is not None and commit != verified.commit):
        raise TriggerRefused(
            f"push event is for {verified.branch!r} at {verified.commit[:12]}, but the run "
            f"was asked for {branch!r} at {(commit or 'its head')[:12]}"
        )
    holder = await claim_once(f"{NONCE_CLAIM_PREFIX}{verified.nonce}", str(flow_run.id))
    if holder is not None:
        raise TriggerRefused(
            f"push event (delivery {verified.delivery!r}) already started flow run {holder}: "
            "a replayed event starts nothing"
        )
    await prune_claims(NONCE_CLAIM_PREFIX, timedelta(seconds=2 * max_age))
    return verified
