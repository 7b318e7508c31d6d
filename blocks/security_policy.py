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

Licenses (trivy's license scanner) are judged by the same environment, with their own
threshold if wanted (:class:`LicensePolicy`) and an allowlist of license names the
organisation accepts everywhere (no expiry: accepting MIT is not a debt).

Rule ids are compared in every spelling a scanner has used for the same check:
trivy renamed its misconfiguration ids (``DS002`` became ``DS-0002``, with
``AVD-DS-0002`` as the long form), so an allowance written for one trivy version
keeps applying after an upgrade (:func:`rule_key`).

The block holds configuration only; deciding lives in
``slipway.tasks.security_scan``. A pipeline file can carry an
:class:`EnvironmentPolicy` inline instead of naming a block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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


# trivy's check ids: DS002, DS-0002, AVD-DS-0002, KSV001, AVD-KSV-0001, AVD-AWS-0086.
_CHECK_ID = re.compile(r"(?:AVD-)?([A-Z][A-Z0-9]*?)-?(\d+)", re.IGNORECASE)


def rule_key(rule: str) -> str:
    """One spelling for every form of a check id: ``DS002``, ``DS-0002`` and
    ``AVD-DS-0002`` all give ``DS-0002``; anything else (``CVE-2024-2511``,
    ``CKV_K8S_16``, ``Private Key``) is only stripped and upper-cased."""
    text = rule.strip()
    match = _CHECK_ID.fullmatch(text)
    if match is None:
        return text.upper()
    return f"{match.group(1).upper()}-{int(match.group(2)):04d}"


def _upper(value: Any) -> Any:
    """Severities are written in any case in YAML; scanners report them upper-case."""
    return value.upper() if isinstance(value, str) else value


ThresholdField = Annotated[Threshold, BeforeValidator(_upper)]


class Allowance(StrictModel):
    """A finding accepted until ``expires``, for a stated reason.

    ``rule`` is a bandit test id such as ``B602``, a checkov check id such as
    ``CKV_K8S_16``, a detect-secrets type such as ``Private Key``, a trivy
    ``CVE-...`` id, check id (``DS-0002``, ``AVD-DS-0002`` or the old ``DS002``) or
    license name. ``tool`` and ``path`` narrow it further.
    """

    tool: ToolName | None = Field(
        default=None, description="Scanner whose finding this is. Default: any scanner."
    )
    rule: str = Field(
        min_length=1,
        description=(
            "Rule or check id; trivy check ids match in any spelling (DS002 = DS-0002 = "
            "AVD-DS-0002), others exactly."
        ),
    )
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

    def match(self, tool: str, ids: Sequence[str], file: str | None) -> str | None:
        """Which of a finding's ids this allowance is about (whatever the date), or None.

        A finding may carry several ids (trivy: ``ID`` and ``AVDID``); the allowance
        applies when its rule equals any of them in any spelling (:func:`rule_key`).
        """
        if self.tool is not None and self.tool != tool:
            return None
        if self.path is not None and (
            file is None or not glob.globmatch(file, self.path, flags=_GLOB_FLAGS)
        ):
            return None
        if self.rule in ids:
            return self.rule
        wanted = rule_key(self.rule)
        return next((i for i in ids if rule_key(i) == wanted), None)

    def matches(self, tool: str, rule: str, file: str | None) -> bool:
        """True when this allowance is about that finding (whatever the date)."""
        return self.match(tool, (rule,), file) is not None

    def active_on(self, day: date) -> bool:
        """An allowance still applies on its expiry day and stops the day after."""
        return day <= self.expires


class LicensePolicy(StrictModel):
    """How license findings are judged (trivy's severities: forbidden CRITICAL,
    restricted HIGH, reciprocal MEDIUM, notice and permissive LOW)."""

    fail_on: ThresholdField | None = Field(
        default=None,
        description=(
            "Lowest license severity that fails the stage. Default: none, the "
            "environment's fail_on (so a restricted license fails at HIGH)."
        ),
    )
    allowed: list[str] = Field(
        default_factory=list,
        description=(
            "License names (SPDX ids such as GPL-2.0-only, compared without regard to "
            "case) accepted whatever their severity. Default: none."
        ),
    )

    def allows(self, name: str) -> bool:
        """True when the license is on the allowlist."""
        wanted = name.strip().casefold()
        return any(entry.strip().casefold() == wanted for entry in self.allowed)


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

    licenses: LicensePolicy = Field(
        default_factory=LicensePolicy,
        description="Threshold and allowlist for license findings. Default: fail_on, none allowed.",
    )

    def fails(self, severity: str, *, license: bool = False) -> bool:
        """True when an open finding of this severity (a license's, if so) fails the stage."""
        threshold = (self.licenses.fail_on if license else None) or self.fail_on
        rank = SEVERITY_RANK.get(severity, SEVERITY_RANK[self.unknown_as])
        return rank >= SEVERITY_RANK[threshold]


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
