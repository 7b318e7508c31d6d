"""Approvers for tests, with TOTP secrets, and the codes their authenticators show.

A secret is derived from the approver's name and a seed that every test gets afresh
(``approver_seed`` in tests/conftest.py, through the environment so flow processes
the test spawns derive the same one): codes one test used, which the Prefect server
remembers, never refuse another test's. :func:`code_for` hands out each code once,
as a person waiting for the next code would: a test approving twice within one 30 s
step gets the next step's code (still valid), a third time waits for the clock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

import pyotp

from slipway.blocks.approval import Approver, canonical_name
from slipway.tasks.approval import ApprovalDecision

SEED_ENV = "SLIPWAY_TEST_APPROVER_SEED"
_last_step: dict[tuple[str, str], int] = {}


def _secret(name: str) -> str:
    seed = os.environ.get(SEED_ENV, "slipway-tests")
    digest = hashlib.sha256(f"{seed}\0{canonical_name(name)}".encode()).digest()
    return base64.b32encode(digest[:20]).decode()  # 160 bits, as RFC 4226 recommends


def approver(name: str) -> Approver:
    """The policy entry for ``name``, with this test's secret for it."""
    return Approver(name=name, totp_secret=_secret(name))


def code_for(name: str, *, steps_ahead: int | None = None) -> str:
    """A code of ``name``'s secret not handed out before (or the one ``steps_ahead``
    30 s steps from now, used or not)."""
    totp = pyotp.TOTP(_secret(name))
    if steps_ahead is not None:
        return totp.at(time.time() + 30 * steps_ahead)
    key = (os.environ.get(SEED_ENV, ""), canonical_name(name))
    while True:
        current = totp.timecode(time.time())
        step = max(current, _last_step.get(key, current - 1) + 1)
        if step <= current + 1:
            _last_step[key] = step
            return totp.generate_otp(step)
        time.sleep(30 - time.time() % 30 + 0.05)  # the next step starts


def decision(
    name: str, approve: bool = True, reason: str = "smoke tests green", code: str | None = None
) -> ApprovalDecision:
    """What ``name`` sends through the form: with a fresh code of theirs unless given one."""
    return ApprovalDecision(
        approve=approve, approver=name, reason=reason, code=code or code_for(name)
    )
