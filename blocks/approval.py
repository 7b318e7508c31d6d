"""Who may let a release into an environment, from which branches, and how long they have.

A team saves one :class:`ApprovalPolicy` block; each gated environment (usually
``production``) has an :class:`EnvironmentApproval`: the people allowed to approve,
the branches allowed to reach it at all, and how long the pipeline waits for a
decision before treating the silence as a rejection.

The block holds configuration only. Pausing the run, checking the person who
answered and recording the decision live in ``slipway.tasks.approval``.

Approvers are compared case-insensitively and without surrounding blanks
(``Alice@Example.com`` and ``alice@example.com`` are the same person). In
self-hosted Prefect the name in the approval form is typed by the person resuming
the run, not taken from a login: the list guards against mistakes and records
accountability; authentication is the job of whatever protects the Prefect UI.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, field_validator
from wcmatch import glob

from slipway.exceptions import ConfigError
from slipway.spec_types import StrictModel

# The same globs as `when.branch`: `*` stays inside a segment, `**` crosses `/`.
_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.BRACE


class EnvironmentApproval(StrictModel):
    """The approval rules of one environment."""

    approvers: list[str] = Field(
        min_length=1,
        description=(
            "User names or emails allowed to approve, compared case-insensitively. "
            "Required: at least one."
        ),
    )
    timeout_seconds: int = Field(
        default=3600,
        gt=0,
        description=(
            "Seconds to wait for a valid decision; when they run out the release is "
            "rejected. Default: 3600."
        ),
    )
    branches: list[str] = Field(
        default_factory=lambda: ["main"],
        min_length=1,
        description=(
            "Branch globs allowed to reach the environment ('*' stays within a path "
            "segment, '**' crosses them). Default: ['main']."
        ),
    )

    @field_validator("approvers")
    @classmethod
    def _approvers_are_named(cls, value: list[str]) -> list[str]:
        cleaned = [name.strip() for name in value]
        if any(not name for name in cleaned):
            raise ValueError("an approver must be a user name or an email; got an empty one")
        return cleaned

    @field_validator("branches")
    @classmethod
    def _branches_are_globs(cls, value: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("a branch glob must not be empty")
        return value

    def may_approve(self, name: str) -> bool:
        """True when ``name`` is one of the approvers (case and blanks ignored)."""
        wanted = name.strip().casefold()
        return bool(wanted) and any(wanted == a.casefold() for a in self.approvers)

    def allows_branch(self, branch: str | None) -> bool:
        """True when ``branch`` matches one of the globs; no branch never matches."""
        return branch is not None and any(
            glob.globmatch(branch, pattern, flags=_GLOB_FLAGS) for pattern in self.branches
        )


class ApprovalPolicy(Block):
    """Per-environment approvers, allowed branches and decision timeout for slipway.

    Example:
        Load a saved policy and pick the environment a release is going to:
        ```python
        from slipway.blocks.approval import ApprovalPolicy

        approval_policy = ApprovalPolicy.load("BLOCK_NAME")
        production = approval_policy.for_environment("production")
        ```

        Save one:
        ```python
        from slipway.blocks.approval import ApprovalPolicy, EnvironmentApproval

        ApprovalPolicy(environments={
            "production": EnvironmentApproval(
                approvers=["alice@example.com", "bob"],
                timeout_seconds=4 * 3600,
                branches=["main", "release/*"],
            ),
        }).save("BLOCK_NAME")
        ```
    """

    _block_type_name = "Slipway Approval Policy"
    _logo_url = "https://github.com/PrefectHQ.png?size=200"  # type: ignore[assignment]
    _documentation_url = "https://docs.prefect.io/v3/advanced/interactive"  # type: ignore[assignment]

    environments: dict[str, EnvironmentApproval] = Field(
        min_length=1,
        description=(
            "Approval rules per environment name (e.g. production); an environment "
            "missing here cannot be approved. No default: at least one."
        ),
    )

    def for_environment(self, name: str) -> EnvironmentApproval:
        """The rules of one environment; an unknown name is a configuration error."""
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.environments))
            raise ConfigError(
                f"approval policy has no environment {name!r} (it has: {known})"
            ) from None
