"""Signed push events: what the pipeline's check accepts and what it refuses, and why."""

from __future__ import annotations

import pytest

from slipway.exceptions import PermanentError, TriggerRefused
from slipway.push_proof import (
    CLOCK_SKEW_SECONDS,
    DEFAULT_MAX_AGE_SECONDS,
    event_key,
    sign_payload,
    verify_payload,
)

KEY = event_key(b"webhook secret")
ISSUED = 1_900_000_000.0
FIELDS = {
    "repository_name": "example-app",
    "repository": "team/example-app",
    "branch": "main",
    "commit": "3f786850e387550fdab836ed7e6dc881de23001b",
    "before": None,
    "pusher": "alice",
    "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    "issued_at": ISSUED,
    "nonce": "0123456789abcdef0123456789abcdef",
}


def test_a_signed_payload_verifies_within_its_age() -> None:
    payload = sign_payload(KEY, FIELDS)
    verified = verify_payload(KEY, payload, created=ISSUED + 2)
    assert (verified.branch, verified.commit, verified.nonce) == (
        "main",
        FIELDS["commit"],
        FIELDS["nonce"],
    )
    # extra fields a trigger or Prefect may add are not signed and change nothing
    assert (
        verify_payload(KEY, {**payload, "note": "x"}, created=ISSUED).delivery == FIELDS["delivery"]
    )


@pytest.mark.parametrize("field", sorted(set(FIELDS) - {"issued_at"}))
def test_changing_any_signed_field_breaks_the_signature(field: str) -> None:
    payload = sign_payload(KEY, FIELDS)
    payload[field] = "changed"
    with pytest.raises(TriggerRefused, match="signature does not match"):
        verify_payload(KEY, payload, created=ISSUED)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({k: v for k, v in FIELDS.items()}, "is not signed"),
        ("not an object", "not an object"),
        (sign_payload(event_key(b"another secret"), FIELDS), "signature does not match"),
        (sign_payload(b"webhook secret", FIELDS), "signature does not match"),  # raw secret
    ],
    ids=["unsigned", "not-object", "other-secret", "underived-key"],
)
def test_unsigned_or_foreign_payloads_are_refused(payload: object, message: str) -> None:
    with pytest.raises(TriggerRefused, match=message) as caught:
        verify_payload(KEY, payload, created=ISSUED)
    assert isinstance(caught.value, PermanentError)


def test_stale_and_future_events_are_refused() -> None:
    payload = sign_payload(KEY, FIELDS)
    with pytest.raises(TriggerRefused, match="stale"):
        verify_payload(KEY, payload, created=ISSUED + DEFAULT_MAX_AGE_SECONDS + 1)
    with pytest.raises(TriggerRefused, match="from the future"):
        verify_payload(KEY, payload, created=ISSUED - CLOCK_SKEW_SECONDS - 1)
    assert verify_payload(KEY, payload, created=ISSUED - CLOCK_SKEW_SECONDS + 1)
    with pytest.raises(TriggerRefused, match="stale"):
        verify_payload(KEY, payload, created=ISSUED + 11, max_age=10)


def test_malformed_signed_fields_are_refused_by_name() -> None:
    bad_nonce = sign_payload(KEY, {**FIELDS, "nonce": "short"})
    with pytest.raises(TriggerRefused, match="nonce"):
        verify_payload(KEY, bad_nonce, created=ISSUED)
    no_branch = sign_payload(KEY, {**FIELDS, "branch": ""})
    with pytest.raises(TriggerRefused, match="branch is missing"):
        verify_payload(KEY, no_branch, created=ISSUED)
    text_time = sign_payload(KEY, {**FIELDS, "issued_at": "now"})
    with pytest.raises(TriggerRefused, match="issued_at"):
        verify_payload(KEY, text_time, created=ISSUED)
    with pytest.raises(ValueError, match="without nonce"):
        sign_payload(KEY, {k: v for k, v in FIELDS.items() if k != "nonce"})
