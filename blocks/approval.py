"""Who may let a release into an environment, from which branches, and how long they have.

A team saves one :class:`ApprovalPolicy` block; each gated environment (usually
``production``) has an :class:`EnvironmentApproval`: the people allowed to approve,
the branches allowed to reach it at all, and how long the pipeline waits for a
decision before treating the silence as a rejection.

The block holds configuration only. Pausing the run, checking the person who
answered and recording the decision live in ``slipway.tasks.approval``.

Identity. The open-source Prefect UI has no users: whoever can resume a run can type
any name into the form. So each :class:`Approver` carries a TOTP secret (RFC 6238:
SHA-1, 6 digits, 30-second steps, what authenticator apps use), and a decision
counts only with the current code for that approver; ``slipway.tasks.approval``
checks it and refuses a code used before. A typed name is normalised (Unicode NFKC,
blanks stripped, case-folded) and must then equal one entry exactly; the record names
the entry as the policy spells it, never the typed text.

The secrets sit in this block (masked, encrypted at rest by the server): whoever can
read the block's secrets through the Prefect API can make codes, so protect the API
(API authentication, and no API access for stage commands).
"""

from __future__ import annotations

import base64
import binascii
import unicodedata

import pyotp
from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator
from wcmatch import glob

from slipway.exceptions import ConfigError
from slipway.spec_types import StrictModel

# The same globs as `when.branch`: `*` stays inside a segment, `**` crosses `/`.
_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.BRACE


MAX_NAME_LENGTH = 200  # characters of an approver's name
MIN_SECRET_BYTES = 16  # 128 bits; RFC 4226 recommends 160 (pyotp.random_base32() gives 160)


def canonical_name(name: str) -> str:
    """The form two spellings of one name share: NFKC, stripped, case-folded."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


class Approver(StrictModel):
    """A person (or bot) who may decide, and the TOTP secret that proves it is them."""

    # a validation error would otherwise quote the secret it refused
    model_config = ConfigDict(**StrictModel.model_config, hide_input_in_errors=True)

    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description="User name or email, as records show it. Required.",
    )
    totp_secret: SecretStr = Field(
        description=(
            "The approver's TOTP secret, base32 (RFC 6238: SHA-1, 6 digits, 30 s), at "
            "least 128 bits; make one with pyotp.random_base32() and add it to their "
            "authenticator app (Approver.provisioning_uri). Required."
        ),
    )
    prefect_cloud_user: str | None = Field(
        default=None,
        description=(
            "On Prefect Cloud only: the email or handle of the Cloud user who must be the "
            "one resuming the run, checked besides the code. Default: not checked."
        ),
    )

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not canonical_name(value):
            raise ValueError("an approver must be a user name or an email; got an empty one")
        return value.strip()

    @field_validator("totp_secret")
    @classmethod
    def _base32(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().replace(" ", "").upper()
        try:
            raw = base64.b32decode(text + "=" * (-len(text) % 8))
        except (binascii.Error, ValueError):
            raise ValueError("totp_secret is not base32 (A-Z, 2-7)") from None
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(
                f"totp_secret holds {len(raw) * 8} bits; at least {MIN_SECRET_BYTES * 8} "
                "(use pyotp.random_base32())"
            )
        return SecretStr(text)

    def totp(self) -> pyotp.TOTP:
        """The code generator for this approver (the secret stays inside it)."""
        return pyotp.TOTP(self.totp_secret.get_secret_value())

    def provisioning_uri(self, issuer: str = "slipway") -> str:
        """The ``otpauth://`` URI an authenticator app scans (it holds the secret)."""
        return self.totp().provisioning_uri(name=self.name, issuer_name=issuer)


class EnvironmentApproval(StrictModel):
    """The approval rules of one environment."""

    approvers: list[Approver] = Field(
        min_length=1,
        description=(
            "Who may approve, each with a TOTP secret; names are matched after "
            "normalising (case, blanks, Unicode forms). Required: at least one."
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
    def _approvers_are_distinct(cls, value: list[Approver]) -> list[Approver]:
        seen: set[str] = set()
        for approver in value:
            key = canonical_name(approver.name)
            if key in seen:
                raise ValueError(f"approver {approver.name!r} is listed twice")
            seen.add(key)
        return value

    @field_validator("branches")
    @classmethod
    def _branches_are_globs(cls, value: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("a branch glob must not be empty")
        return value

    def approver_named(self, name: str) -> Approver | None:
        """The entry ``name`` stands for after normalising, or None. Only the name: the
        code is checked by ``slipway.tasks.approval``."""
        wanted = canonical_name(name)
        if not wanted:
            return None
        return next((a for a in self.approvers if canonical_name(a.name) == wanted), None)

    @property
    def approver_names(self) -> list[str]:
        return [a.name for a in self.approvers]

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

        Save one (each approver's secret goes into their authenticator app):
        ```python
        import pyotp
        from slipway.blocks.approval import ApprovalPolicy, Approver, EnvironmentApproval

        alice = Approver(name="alice@example.com", totp_secret=pyotp.random_base32())
        print(alice.provisioning_uri())  # show it to alice once, as a QR code
        ApprovalPolicy(environments={
            "production": EnvironmentApproval(
                approvers=[alice],
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
