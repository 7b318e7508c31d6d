"""The ``strategy:`` of an environment: how a release replaces the one running.

A one-of, as Argo Rollouts spells it (``rollingUpdate`` | ``blueGreen`` | ``canary``):

- ``rolling``: the Deployment's own RollingUpdate, with ``max_surge`` /
  ``max_unavailable``; rollback is ``kubectl rollout undo``.
- ``blue_green``: two Deployments (``<name>-blue``, ``<name>-green``) and a Service
  whose selector is switched from one colour to the other; a preview Service shows
  the idle colour before the switch.
- ``canary``: a stable and a canary Deployment behind an Istio VirtualService whose
  weights move in ``steps``; a header match sends testers to the canary at any weight.

The models only validate; :mod:`slipway.tasks.strategies` does the work.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slipway.spec_types import StrictModel

STRATEGY_KINDS = ("rolling", "blue_green", "canary")
StrategyKind = Literal["rolling", "blue_green", "canary"]

# A DNS-1035 label: what Kubernetes accepts as a Service name.
SERVICE_NAME = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
# Envoy matches header names in lower case; Istio refuses upper case in a match.
HEADER_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
HEADER_VALUE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_PERCENT = re.compile(r"^(\d{1,3})%$")

IntOrPercent = int | str


def _int_or_percent(value: object, field: str) -> object:
    """Checked before pydantic's coercion, which would take True for 1 and "25" for a
    string; Kubernetes takes neither."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{field} must be a count or a percentage, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field} must not be negative, got {value}")
        return value
    match = _PERCENT.match(value)
    if not match or int(match.group(1)) > 100:
        raise ValueError(
            f"{field} must be a count (e.g. 1) or a percentage (e.g. '25%'), got {value!r}"
        )
    return value


def _is_zero(value: IntOrPercent | None) -> bool:
    return value == 0 or value == "0%"


class RollingSpec(StrictModel):
    """The Deployment's RollingUpdate strategy."""

    max_surge: IntOrPercent | None = Field(
        default=None,
        description="Pods above the desired count during a rollout: a count or a percentage "
        "('25%'). Default: what the manifests say (Kubernetes' default is 25%).",
    )
    max_unavailable: IntOrPercent | None = Field(
        default=None,
        description="Pods that may be unavailable during a rollout: a count or a percentage. "
        "Default: what the manifests say (Kubernetes' default is 25%).",
    )

    @field_validator("max_surge", "max_unavailable", mode="before")
    @classmethod
    def _count_or_percent(cls, value: object, info: ValidationInfo) -> object:
        return _int_or_percent(value, info.field_name or "value")

    @model_validator(mode="after")
    def _can_progress(self) -> RollingSpec:
        if _is_zero(self.max_surge) and _is_zero(self.max_unavailable):
            raise ValueError("max_surge and max_unavailable cannot both be 0: nothing could move")
        return self


class BlueGreenSpec(StrictModel):
    """Two colours of the Deployment; the active Service's selector picks one."""

    service: str | None = Field(
        default=None,
        pattern=SERVICE_NAME,
        description="The active Service (takes the traffic). Default: the Service in the "
        "manifests whose selector matches the Deployment's pods.",
    )
    preview_service: str | None = Field(
        default=None,
        pattern=SERVICE_NAME,
        description="The Service showing the idle colour before the switch (smoke tests go "
        "there). Default: '<service>-preview'.",
    )
    scale_down_delay_seconds: float = Field(
        default=30,
        ge=0,
        le=86400,
        description="Seconds the old colour keeps running after the switch, so a rollback "
        "is only a selector change. Default: 30.",
    )


class CanaryStepSpec(StrictModel):
    """One traffic step: move to ``weight`` percent, wait, then analyse."""

    weight: int = Field(ge=1, le=100, description="Percent of traffic to the canary (1-100).")
    pause_seconds: float = Field(
        default=0, ge=0, le=86400, description="Seconds to wait at this weight. Default: 0."
    )
    analysis: bool = Field(
        default=True,
        description="Run the environment's metric analysis at this step. Default: true.",
    )


class CanarySpec(StrictModel):
    """Traffic steps through an Istio VirtualService."""

    steps: list[CanaryStepSpec] = Field(
        min_length=1, description="Steps in order; weights must increase (e.g. 10, 50, 100)."
    )
    virtual_service: str | None = Field(
        default=None,
        pattern=SERVICE_NAME,
        description="Name of the VirtualService to write. Default: the app's Service name.",
    )
    header: str = Field(
        default="x-canary",
        pattern=HEADER_NAME,
        description="Request header (lower case) that sends a request to the canary at any "
        "weight. Default: x-canary.",
    )
    header_value: str = Field(
        default="always",
        pattern=HEADER_VALUE,
        description="Value the header must have (exact match). Default: always.",
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[CanaryStepSpec]) -> list[CanaryStepSpec]:
        weights = [step.weight for step in steps]
        for i, (before, after) in enumerate(zip(weights, weights[1:], strict=False), start=2):
            if after <= before:
                raise ValueError(
                    f"step {i} has weight {after} after {before}: weights must increase"
                )
        return steps


class StrategySpec(StrictModel):
    """Exactly one of ``rolling``, ``blue_green`` or ``canary``."""

    rolling: RollingSpec | None = Field(default=None, description="Rolling update.")
    blue_green: BlueGreenSpec | None = Field(default=None, description="Blue-green switch.")
    canary: CanarySpec | None = Field(default=None, description="Canary steps (Istio).")

    @model_validator(mode="after")
    def _exactly_one(self) -> StrategySpec:
        chosen = [kind for kind in STRATEGY_KINDS if getattr(self, kind) is not None]
        if len(chosen) != 1:
            found = f"found {', '.join(chosen)}" if chosen else "found none"
            raise ValueError(
                f"a strategy needs exactly one of {', '.join(STRATEGY_KINDS)} ({found})"
            )
        return self

    @property
    def kind(self) -> StrategyKind:
        kind = next(k for k in STRATEGY_KINDS if getattr(self, k) is not None)
        return kind  # type: ignore[return-value]
