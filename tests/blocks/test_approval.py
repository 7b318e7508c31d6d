"""ApprovalPolicy: Prefect's block standards, approvers named and holding a TOTP secret,
names matched after normalising, branch globs."""

from __future__ import annotations

import pydantic
import pyotp
import pytest

from slipway.blocks.approval import ApprovalPolicy, Approver, EnvironmentApproval
from slipway.exceptions import ConfigError
from tests.approvers import approver
from tests.blocks.block_suite import OfflineBlockTestSuite


class TestApprovalPolicyStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[ApprovalPolicy]:
        return ApprovalPolicy


def test_defaults() -> None:
    rules = EnvironmentApproval(approvers=[approver("alice")])

    assert rules.timeout_seconds == 3600
    assert rules.branches == ["main"]


SECRET = pyotp.random_base32()


@pytest.mark.parametrize(
    "approvers",
    [
        [],
        [{"name": "", "totp_secret": SECRET}],
        [{"name": "alice", "totp_secret": SECRET}, {"name": "  ", "totp_secret": SECRET}],
        [{"name": "alice"}],  # a name alone proves nothing
        ["alice"],
        [{"name": "alice", "totp_secret": SECRET}, {"name": " ALICE", "totp_secret": SECRET}],
    ],
    ids=["none", "empty-name", "blank-name", "no-secret", "bare-name", "listed-twice"],
)
def test_approvers_are_required_named_once_and_hold_a_secret(approvers: list) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        EnvironmentApproval(approvers=approvers)

    assert caught.value.errors()[0]["loc"][0] == "approvers"


@pytest.mark.parametrize(
    ("secret", "message"),
    [("not base32!", "not base32"), ("JBSWY3DPEHPK3PXP", "holds 80 bits; at least 128")],
)
def test_a_secret_must_be_base32_and_long_enough(secret: str, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message) as caught:
        Approver(name="alice", totp_secret=secret)
    assert secret not in str(caught.value)  # a refused secret is not quoted


def test_approvers_missing_is_named() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        EnvironmentApproval()  # type: ignore[call-arg]

    assert [e["loc"] for e in caught.value.errors()] == [("approvers",)]


@pytest.mark.parametrize("timeout", [0, -5])
def test_timeout_must_be_positive(timeout: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="timeout_seconds"):
        EnvironmentApproval(approvers=[approver("alice")], timeout_seconds=timeout)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="approver"):
        EnvironmentApproval.model_validate({"approvers": [approver("a")], "approver": ["b"]})


def test_names_match_exactly_after_normalising_and_give_the_policy_entry() -> None:
    rules = EnvironmentApproval(approvers=[approver("Alice@Example.com"), approver(" bob ")])

    def entry(typed: str) -> str | None:
        found = rules.approver_named(typed)
        return found.name if found else None

    assert entry("  ALICE@example.com ") == "Alice@Example.com"  # as the policy spells it
    assert entry("ＡＬＩＣＥ@example.com") == "Alice@Example.com"  # fullwidth: NFKC
    assert entry("BOB") == "bob"
    assert rules.approver_names == ["Alice@Example.com", "bob"]
    for stranger in ("mallory", "  ", "alice", "alice@example.com.evil", "alice\u200b@example.com"):
        assert entry(stranger) is None, stranger


@pytest.mark.parametrize(
    ("branch", "allowed"),
    [
        ("main", True),
        ("release/1.4", True),
        ("release/1.4/hotfix", False),  # '*' stays inside a segment
        ("hotfix/a/b", True),  # '**' crosses them
        ("feature/x", False),
        (None, False),
    ],
)
def test_branch_globs(branch: str | None, allowed: bool) -> None:
    rules = EnvironmentApproval(
        approvers=[approver("a")], branches=["main", "release/*", "hotfix/**"]
    )

    assert rules.allows_branch(branch) is allowed


def test_for_environment() -> None:
    policy = ApprovalPolicy(
        environments={"production": {"approvers": [{"name": "alice", "totp_secret": SECRET}]}}
    )

    assert policy.for_environment("production").approver_names == ["alice"]
    with pytest.raises(ConfigError, match=r"no environment 'prod' \(it has: production\)"):
        policy.for_environment("prod")


def test_a_nested_error_names_the_path() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        ApprovalPolicy(
            environments={"production": {"approvers": [approver("a")], "timeout_seconds": 0}}
        )

    assert "environments.production.timeout_seconds" in str(caught.value)


def test_saved_and_loaded_through_the_prefect_api(prefect_harness: None) -> None:
    alice = approver("alice@example.com")
    ApprovalPolicy(
        environments={
            "production": EnvironmentApproval(
                approvers=[alice], timeout_seconds=600, branches=["release/*"]
            )
        }
    ).save("approval-round-trip", overwrite=True)

    loaded = ApprovalPolicy.load("approval-round-trip").for_environment("production")

    assert loaded.approver_names == ["alice@example.com"]
    # the secret survives the round trip (a masked one would make every code wrong)
    (entry,) = loaded.approvers
    assert entry.totp().now() == alice.totp().now()
    assert "otpauth://totp/slipway:alice%40example.com?secret=" in entry.provisioning_uri()
    assert loaded.timeout_seconds == 600
    assert loaded.allows_branch("release/2.0")
