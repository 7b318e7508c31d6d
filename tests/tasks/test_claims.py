"""Claim-once records on the Prefect API (harness): one winner, idempotent for its
holder, old ones pruned."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client

from slipway.tasks.claims import claim_once, holders, prune_claims

pytestmark = pytest.mark.usefixtures("flow_env")


def test_a_claim_has_one_holder_who_may_take_it_again() -> None:
    name = f"slipway-test-claim-{uuid4().hex}"

    async def race() -> list[str | None]:
        return await asyncio.gather(*(claim_once(name, f"run-{i}") for i in range(6)))

    results = asyncio.run(race())
    winners = [f"run-{i}" for i, other in enumerate(results) if other is None]
    assert len(winners) == 1
    assert {other for other in results if other is not None} == set(winners)
    assert asyncio.run(claim_once(name, winners[0])) is None  # its own claim, read again
    assert asyncio.run(holders([name, f"{name}-unclaimed"])) == {name: winners[0]}


def test_old_claims_are_pruned_and_others_kept() -> None:
    prefix = f"slipway-test-prune-{uuid4().hex[:8]}-"
    asyncio.run(claim_once(f"{prefix}a", "run-1"))
    other = f"slipway-test-keep-{uuid4().hex[:8]}"
    asyncio.run(claim_once(other, "run-2"))

    assert asyncio.run(prune_claims(prefix, timedelta(hours=1))) == 0  # too young
    assert asyncio.run(prune_claims(prefix, timedelta(seconds=-1))) == 1

    async def names() -> set[str]:
        async with get_client() as client:
            return {v.name for v in await client.read_variables(limit=200)}

    left = asyncio.run(names())
    assert f"{prefix}a" not in left and other in left
