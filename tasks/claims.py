"""Claim-once records on the Prefect server: what may be used only once, across runs.

A signed push event may start one run (its nonce), and an approver's TOTP code may be
used once (its time step). Both are checked by pipeline runs that may execute on
different workers, so the record lives on the Prefect server, as a Variable whose
*name* is the claim: creating a Variable whose name exists fails (409) atomically on
the server, so two runs racing for one claim cannot both win. The Variable's value
is the holder (a flow run and input key), so a run that executes again (resumed
after a suspend) finds its own claim and keeps it.

The server's API has to be protected for this to mean anything (stage commands get
no API URL or key); whoever holds an API key could delete a claim.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import VariableCreate
from prefect.exceptions import ObjectAlreadyExists

logger = logging.getLogger("slipway.claims")

CLAIM_TAG = "slipway-claim"


async def claim_once(name: str, holder: str) -> str | None:
    """Take the claim ``name`` for ``holder``.

    Returns:
        None when the claim is now ``holder``'s (new, or taken by it before); else the
        holder that has it.
    """
    async with get_client() as client:
        for _attempt in range(3):  # a claim pruned between create and read: try again
            try:
                await client.create_variable(
                    VariableCreate(name=name, value=holder, tags=[CLAIM_TAG])
                )
                return None
            except ObjectAlreadyExists:
                existing = await client.read_variable_by_name(name)
            if existing is not None:
                return None if existing.value == holder else str(existing.value)
    raise RuntimeError(f"claim {name!r} could not be taken or read")


async def holders(names: list[str]) -> dict[str, str]:
    """The holders of those of ``names`` that are claimed."""
    found: dict[str, str] = {}
    async with get_client() as client:
        for name in names:
            existing = await client.read_variable_by_name(name)
            if existing is not None:
                found[name] = str(existing.value)
    return found


async def prune_claims(prefix: str, older_than: timedelta) -> int:
    """Delete claims named ``prefix...`` made more than ``older_than`` ago (they can no
    longer matter: their event or code has expired); how many. Best effort."""
    cutoff = datetime.now(UTC) - older_than
    removed = 0
    try:
        async with get_client() as client:
            response = await client.request(
                "POST",
                "/variables/filter",
                json={
                    "variables": {"name": {"like_": prefix}, "tags": {"all_": [CLAIM_TAG]}},
                    "limit": 200,
                },
            )
            response.raise_for_status()
            for variable in response.json():
                created = datetime.fromisoformat(variable["created"])
                if variable["name"].startswith(prefix) and created < cutoff:
                    await client.delete_variable_by_name(variable["name"])
                    removed += 1
    except Exception as exc:  # noqa: BLE001 - pruning is housekeeping, never a failure
        logger.debug("pruning claims %s* failed: %s", prefix, type(exc).__name__)
    return removed
