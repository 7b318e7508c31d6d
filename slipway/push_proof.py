"""Signed ``slipway.push`` events: the receiver signs, the pipeline verifies.

Anyone who can reach the Prefect API can emit an event named ``slipway.push``, and a
deployment trigger cannot tell who emitted it. So the receiver (``slipway webhook``)
signs what it emits, and the pipeline refuses a push run whose event it cannot
verify, before it checks anything out:

- **Key.** HMAC-SHA256 under a key derived from the webhook secret
  (:func:`event_key`), which only the receiver and the pipeline's verifying code load
  (a Prefect ``Secret`` block). Stage commands never see it: they get an explicit
  environment, not the worker's, and the key is masked in the run's output.
- **What is signed.** Every field the run uses (:data:`SIGNED_FIELDS`, canonical JSON):
  the repository, branch, commit, the git host's delivery id, when it was issued and a
  random nonce. A changed field, a missing signature or a signature by another key is
  refused.
- **Freshness.** ``issued_at`` must be within ``max_age`` seconds before the run was
  *created* (the server's time, which does not move while a run waits for a worker or
  is suspended for an approval), and not after it beyond a small clock skew.
- **Once.** The nonce may start one run: the caller claims it
  (``slipway.tasks.trigger``), so the same signed event emitted again is refused.

Example:
    ```python
    key = event_key(b"webhook secret")
    payload = sign_payload(key, {"repository_name": "app", "branch": "main", ...})
    verify_payload(key, payload, created=run.created)  # VerifiedPush, or TriggerRefused
    ```
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slipway.exceptions import TriggerRefused

SIGNATURE_FIELD = "signature"
_SIGNATURE_PREFIX = "v1="
_KEY_LABEL = b"slipway.push event signing key v1"
SIGNED_FIELDS = (
    "repository_name",  # the event's resource is slipway.repo.<repository_name>
    "repository",  # owner/name
    "branch",
    "commit",
    "before",
    "pusher",
    "delivery",
    "issued_at",  # Unix seconds, when the receiver signed it
    "nonce",  # 32 random hex digits: one run per event
)
DEFAULT_MAX_AGE_SECONDS = 300.0  # an automation creates the run within seconds
CLOCK_SKEW_SECONDS = 60.0  # receiver and Prefect server clocks may differ this much
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")


def event_key(webhook_secret: bytes) -> bytes:
    """The event-signing key: derived from the webhook secret, so one Secret block holds
    both and a signature over an event never doubles as a webhook signature."""
    return hmac.new(webhook_secret, _KEY_LABEL, hashlib.sha256).digest()


def _canonical(payload: Mapping[str, Any]) -> bytes:
    signed = {name: payload.get(name) for name in SIGNED_FIELDS}
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _signature(key: bytes, payload: Mapping[str, Any]) -> str:
    return _SIGNATURE_PREFIX + hmac.new(key, _canonical(payload), hashlib.sha256).hexdigest()


def sign_payload(key: bytes, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` (the :data:`SIGNED_FIELDS`) with their ``signature`` added."""
    missing = [name for name in SIGNED_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"cannot sign a push event without {', '.join(missing)}")
    return {
        **{name: fields[name] for name in SIGNED_FIELDS},
        SIGNATURE_FIELD: _signature(key, fields),
    }


@dataclass(frozen=True)
class VerifiedPush:
    """A push event whose signature, freshness and fields checked out."""

    repository_name: str
    repository: str
    branch: str
    commit: str
    delivery: str
    issued_at: float
    nonce: str


def _field(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise TriggerRefused(f"push event: {name} is missing or not a string")
    return value


def verify_payload(
    key: bytes,
    payload: Mapping[str, Any] | Any,
    *,
    created: float,
    max_age: float = DEFAULT_MAX_AGE_SECONDS,
) -> VerifiedPush:
    """Check a ``slipway.push`` event payload as a trigger passed it to a run.

    Args:
        key: :func:`event_key` of the webhook secret.
        payload: the event's payload (``{{ event.payload }}`` in the trigger).
        created: when the run was created, Unix seconds (the server's clock).
        max_age: how much older than the run the event may be, in seconds.

    Raises:
        TriggerRefused: unsigned, signed by another key, altered, stale, from the future
            or malformed. The message names which, never the key or signature.
    """
    if not isinstance(payload, Mapping):
        raise TriggerRefused("push event: the payload is not an object (not from slipway webhook)")
    given = payload.get(SIGNATURE_FIELD)
    if not isinstance(given, str) or not given:
        raise TriggerRefused(
            "push event is not signed: it was not emitted by slipway webhook (an event "
            "sent straight to the Prefect API starts nothing)"
        )
    if not hmac.compare_digest(_signature(key, payload).encode(), given.encode("utf-8", "replace")):
        raise TriggerRefused(
            "push event signature does not match: forged, altered, or signed with another "
            "webhook secret"
        )
    issued_at = payload.get("issued_at")
    if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
        raise TriggerRefused("push event: issued_at is missing or not a number")
    age = created - float(issued_at)
    if age > max_age:
        raise TriggerRefused(
            f"push event is stale: issued {age:.0f} s before the run was created "
            f"(at most {max_age:.0f} s): a replayed event"
        )
    if age < -CLOCK_SKEW_SECONDS:
        raise TriggerRefused(
            f"push event is from the future: issued {-age:.0f} s after the run was created"
        )
    nonce = _field(payload, "nonce")
    if not _NONCE_RE.match(nonce):
        raise TriggerRefused("push event: nonce is not 32 hex digits")
    return VerifiedPush(
        repository_name=_field(payload, "repository_name"),
        repository=_field(payload, "repository"),
        branch=_field(payload, "branch"),
        commit=_field(payload, "commit"),
        delivery=_field(payload, "delivery"),
        issued_at=float(issued_at),
        nonce=nonce,
    )
