"""The ``deploy:`` part of a pipeline file: where a release goes after CI passed.

Environments are an ordered list (dev -> staging -> production): a release reaches
an environment only after every earlier one took it, and only from the branches
that environment allows. Each names its cluster (a prefect-kubernetes
``KubernetesCredentials`` or ``KubernetesClusterConfig`` block), namespace, rollout
strategy, smoke checks, whether a person must approve, and the metric analysis
that decides whether the release stays. What is deployed is never built here: the
GitOps bump (a commit to the manifests repository) is the deploy, and the cluster
is then brought to what that commit says.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slipway.spec_types import Name, StrictModel, StrList
from slipway.tasks.analysis import AnalysisSpec
from slipway.tasks.smoke import SmokeCheck
from slipway.tasks.strategy_spec import StrategySpec


class SmokeSpec(StrictModel):
    """HTTP checks against a freshly deployed release."""

    checks: list[SmokeCheck] = Field(
        min_length=1, description="The checks, run in order; every one must pass."
    )
    base_url: str | None = Field(
        default=None,
        description="Address filling {base_url} in the checks (e.g. an ingress URL). Default: "
        "the release's Service through the Kubernetes API server's service proxy.",
    )
    port: str | int = Field(
        default="http",
        description="Service port (name or number) used through the service proxy. Default: http.",
    )


class Environment(StrictModel):
    """One place a release is deployed to."""

    name: Name = Field(description="Environment name; the manifests block has a path for it.")
    cluster: Name | None = Field(
        default=None,
        description="prefect-kubernetes KubernetesCredentials (or KubernetesClusterConfig) "
        "block; default: the cluster given to the run (the local one for the example).",
    )
    namespace: Name = Field(description="Namespace the app lives in.")
    create_namespace: bool = Field(
        default=False, description="Create the namespace when it is missing. Default: false."
    )
    deployment: Name | None = Field(
        default=None, description="Deployment of the app in the manifests. Default: the app name."
    )
    service: Name | None = Field(
        default=None, description="Service of the app in the manifests. Default: the app name."
    )
    branches: StrList = Field(
        default_factory=lambda: ["**"],
        description="Branch globs that may reach this environment. Default: every branch.",
    )
    strategy: StrategySpec = Field(
        default_factory=lambda: StrategySpec(rolling={}),  # type: ignore[arg-type]
        description="rolling, blue_green or canary. Default: rolling as the manifests say.",
    )
    rollout_timeout: float = Field(
        default=600, gt=0, le=86400, description="Seconds a rollout may take. Default: 600."
    )
    smoke: SmokeSpec | None = Field(
        default=None, description="Smoke test; a failure rolls this environment back."
    )
    approval: bool = Field(
        default=False,
        description="A person from the approval policy must approve first. Default: false.",
    )
    analysis: AnalysisSpec | None = Field(
        default=None,
        description="Prometheus analysis after the release takes traffic (at every canary "
        "step); a breach rolls back the cluster and reverts the manifests commit.",
    )
    on_busy: Literal["wait", "fail"] = Field(
        default="wait",
        description="When another deploy of this app to this environment is running: wait "
        "for it, or fail at once. Default: wait.",
    )
    busy_timeout: float = Field(
        default=3600, gt=0, description="Seconds to wait for the slot. Default: 3600."
    )


class DeploySpec(StrictModel):
    """Continuous delivery: GitOps bump, deploys, approval, analysis, rollback."""

    image_from: Name | None = Field(
        default=None,
        description="Stage whose pushed image is released. Default: the last that pushed one.",
    )
    manifests: Name = Field(description="ManifestsRepository block (the GitOps repository).")
    approval_policy: Name | None = Field(
        default=None, description="ApprovalPolicy block; required when an environment approves."
    )
    prometheus: Name | None = Field(
        default=None, description="PrometheusServer block; required when an environment analyses."
    )
    environments: list[Environment] = Field(
        min_length=1, description="In the order a release goes through them."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DeploySpec:
        names = [e.name for e in self.environments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"environment(s) listed twice: {', '.join(duplicates)}")
        if any(e.approval for e in self.environments) and self.approval_policy is None:
            raise ValueError("an environment needs approval: name the 'approval_policy' block")
        if any(e.analysis for e in self.environments) and self.prometheus is None:
            raise ValueError("an environment has an analysis: name the 'prometheus' block")
        return self

    def environment(self, name: str) -> Environment:
        for environment in self.environments:
            if environment.name == name:
                return environment
        raise KeyError(name)
