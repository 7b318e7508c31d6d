"""What a security scan may find before it stops a change, per environment.

A team saves one :class:`SecurityPolicy` block; each environment (``ci``,
``staging``, ``production`` ...) has its own :class:`EnvironmentPolicy`: the lowest
severity that fails the stage, and the findings the team has accepted for now.

An accepted finding is an :class:`Allowance` and every allowance carries a reason
and an expiry date: "we will look at it later" must name a day, and on the day
after it the finding is open again (status ``allowance-expired``) and fails the
stage as it did before. In-code suppressions (``# nosec``, ``pragma: allowlist
secret``, ``checkov:skip``) are not honoured by the scan for the same reason: they
have neither, and they sit where the policy's owners do not look.

The block holds configuration only; matching and deciding live in
``slipway.tasks.security_scan``. A pipeline file can carry an
:class:`EnvironmentPolicy` inline instead of naming a block.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from prefect.blocks.core import Block
from pydantic import BeforeValidator, Field, field_validator
from wcmatch import glob

from slipway.exceptions import ConfigError
from slipway.spec_types import StrictModel

Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL", "UNKNOWN"]
Threshold = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
ToolName = Literal["bandit", "detect-secrets", "checkov", "trivy"]

SEVERITY_RANK: dict[str, int] = {"LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}

# `/` separates segments, `**` crosses them: the same globs as `when.changeset`.
_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB


def _upper(value: Any) -> Any:
    """Severities are written in any case in YAML; scanners report them upper-case."""
    return value.upper() if isinstance(value, str) else value


ThresholdField = Annotated[Threshold, BeforeValidator(_upper)]


class Allowance(StrictModel):
    """A finding accepted until ``expires``, for a stated reason.

    ``rule`` matches exactly (a bandit test id such as ``B602``, a checkov check id
    such as ``CKV_K8S_16``, a detect-secrets type such as ``Private Key``, a trivy
    ``CVE-...``/``AVD-...`` id). ``tool`` and ``path`` narrow it further.
    """

    tool: ToolName | None = Field(
        default=None, description="Scanner whose finding this is. Default: any scanner."
    )
    rule: str = Field(min_length=1, description="Rule or check id, matched exactly.")
    path: str | None = Field(
        default=None,
        description=(
            "Glob over the finding's file, relative to the workspace ('**' crosses "
            "directories). Default: any file."
        ),
    )
    reason: str = Field(
        description="Why the finding is acceptable for now; required and shown next to it."
    )
    expires: date = Field(
        description="Last day (YYYY-MM-DD) the allowance applies; required, no default."
    )

    @field_validator("reason")
    @classmethod
    def _reason_says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reason must say why the finding is acceptable; it is empty")
        return value.strip()

    @field_validator("path")
    @classmethod
    def _relative_glob(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("/"):
            raise ValueError(f"path {value!r} must be a glob relative to the workspace")
        return value

    def matches(self, tool: str, rule: str, file: str | None) -> bool:
        """True when this allowance is about that finding (whatever the date)."""
        if self.tool is not None and self.tool != tool:
            return False
        if self.rule != rule:
            return False
        if self.path is None:
            return True
        return file is not None and glob.globmatch(file, self.path, flags=_GLOB_FLAGS)

    def active_on(self, day: date) -> bool:
        """An allowance still applies on its expiry day and stops the day after."""
        return day <= self.expires


class EnvironmentPolicy(StrictModel):
    """How one environment judges findings."""

    fail_on: ThresholdField = Field(
        default="HIGH",
        description=(
            "Lowest severity that fails the stage: LOW, MEDIUM, HIGH or CRITICAL. Default: HIGH."
        ),
    )
    unknown_as: ThresholdField = Field(
        default="HIGH",
        description=(
            "Severity a finding is ranked at when its scanner gave none (UNKNOWN). "
            "Default: HIGH, so an unranked finding fails until someone allows it."
        ),
    )
    allow: list[Allowance] = Field(
        default_factory=list,
        description="Findings accepted for now, each with a reason and an expiry. Default: none.",
    )

    def fails(self, severity: str) -> bool:
        """True when an open finding of this severity fails the stage."""
        rank = SEVERITY_RANK.get(severity, SEVERITY_RANK[self.unknown_as])
        return rank >= SEVERITY_RANK[self.fail_on]


class SecurityPolicy(Block):
    """Per-environment thresholds and allowances for slipway's security scan.

    Example:
        Load a saved policy and pick the environment a scan runs for:
        ```python
        from slipway.blocks.security_policy import SecurityPolicy

        security_policy = SecurityPolicy.load("BLOCK_NAME")
        policy = security_policy.for_environment("production")
        ```

        Save one:
        ```python
        from datetime import date
        from slipway.blocks.security_policy import (
            Allowance, EnvironmentPolicy, SecurityPolicy,
        )

        SecurityPolicy(environments={
            "ci": EnvironmentPolicy(fail_on="CRITICAL"),
            "production": EnvironmentPolicy(
                fail_on="MEDIUM",
                allow=[Allowance(tool="bandit", rule="B104", path="src/**",
                                 reason="binds 0.0.0.0 inside the pod on purpose",
                                 expires=date(2026, 6, 30))],
            ),
        }).save("BLOCK_NAME")
        ```
    """

    _block_type_name = "Slipway Security Policy"
    _logo_url = "https://github.com/PyCQA.png?size=200"  # type: ignore[assignment]
    _documentation_url = "https://bandit.readthedocs.io/en/latest/plugins/index.html"  # type: ignore[assignment]  # noqa: E501

    environments: dict[str, EnvironmentPolicy] = Field(
        min_length=1,
        description=(
            "Policy per environment name (e.g. ci, staging, production); a scan names "
            "the environment it runs for. No default: at least one."
        ),
    )

    def for_environment(self, name: str) -> EnvironmentPolicy:
        """The policy of one environment; an unknown name is a configuration error."""
        try:
            return self.environments[name]
        except KeyError:
            known = ", ".join(sorted(self.environments))
            raise ConfigError(
                f"security policy has no environment {name!r} (it has: {known})"
            ) from None
