"""ApprovalPolicy: Prefect's block standards, approvers that must be named, branch globs."""

from __future__ import annotations

import pydantic
import pytest

from slipway.blocks.approval import ApprovalPolicy, EnvironmentApproval
from slipway.exceptions import ConfigError
from tests.blocks.block_suite import OfflineBlockTestSuite


class TestApprovalPolicyStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[ApprovalPolicy]:
        return ApprovalPolicy


def test_defaults() -> None:
    rules = EnvironmentApproval(approvers=["alice"])

    assert rules.timeout_seconds == 3600
    assert rules.branches == ["main"]


@pytest.mark.parametrize("approvers", [[], [""], ["alice", "  "]])
def test_approvers_are_required_and_named(approvers: list[str]) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        EnvironmentApproval(approvers=approvers)

    assert caught.value.errors()[0]["loc"][0] == "approvers"


def test_approvers_missing_is_named() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        EnvironmentApproval()  # type: ignore[call-arg]

    assert [e["loc"] for e in caught.value.errors()] == [("approvers",)]


@pytest.mark.parametrize("timeout", [0, -5])
def test_timeout_must_be_positive(timeout: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="timeout_seconds"):
        EnvironmentApproval(approvers=["alice"], timeout_seconds=timeout)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="approver"):
        EnvironmentApproval.model_validate({"approvers": ["a"], "approver": ["b"]})


def test_approvers_match_case_and_blank_insensitively() -> None:
    rules = EnvironmentApproval(approvers=["Alice@Example.com", " bob "])

    assert rules.may_approve("alice@example.com")
    assert rules.may_approve("BOB")
    assert not rules.may_approve("mallory")
    assert not rules.may_approve("  ")


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
    rules = EnvironmentApproval(approvers=["a"], branches=["main", "release/*", "hotfix/**"])

    assert rules.allows_branch(branch) is allowed


def test_for_environment() -> None:
    policy = ApprovalPolicy(environments={"production": {"approvers": ["alice"]}})

    assert policy.for_environment("production").approvers == ["alice"]
    with pytest.raises(ConfigError, match=r"no environment 'prod' \(it has: production\)"):
        policy.for_environment("prod")


def test_a_nested_error_names_the_path() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        ApprovalPolicy(environments={"production": {"approvers": ["a"], "timeout_seconds": 0}})

    assert "environments.production.timeout_seconds" in str(caught.value)


def test_saved_and_loaded_through_the_prefect_api(prefect_harness: None) -> None:
    ApprovalPolicy(
        environments={
            "production": EnvironmentApproval(
                approvers=["alice@example.com"], timeout_seconds=600, branches=["release/*"]
            )
        }
    ).save("approval-round-trip", overwrite=True)

    loaded = ApprovalPolicy.load("approval-round-trip").for_environment("production")

    assert loaded.approvers == ["alice@example.com"]
    assert loaded.timeout_seconds == 600
    assert loaded.allows_branch("release/2.0")
