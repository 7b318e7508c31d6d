"""Continuous delivery: from a pushed image through the environments, and back when it goes bad.

Called by the pipeline flow once CI passed and an image was pushed. For every
environment of the spec's ``deploy:`` list, in order:

1. **Branch**: the branch must match the environment's globs (and the approval
   policy's, for gated ones); otherwise the environment and every later one are
   skipped, never failed.
2. **Approval** (gated environments): the run pauses with a form in the Prefect UI;
   a rejection or silence until the deadline stops the release.
3. **Slot**: one deploy per application and environment at a time, through a Prefect
   global concurrency limit (``slipway-deploy-<app>-<environment>``, limit 1; its
   lease expires if the holder dies). ``on_busy`` says wait or fail.
4. **GitOps bump**: the deploy *is* a commit to the manifests repository (image by
   digest, trailers naming app, build, source commit, run and approver). A newer
   build already there supersedes this one: nothing is deployed.
5. **Apply + rollout** of what that commit renders, per the strategy (rolling,
   blue-green to the idle colour, canary beside the stable).
6. **Smoke test** (blue-green: on the preview Service before the switch; canary: on
   the canary Service). A failure rolls the cluster back and reverts the commit.
7. **Traffic + analysis**: blue-green switches the active Service; canary walks its
   weight steps with an analysis at each; rolling and blue-green run the analysis
   once the release takes traffic. A breach (or an inconclusive analysis set to roll
   back) rolls the cluster back, reverts the manifests commit so a later sync never
   re-applies it, and tells Slack what happened with the measured values. An
   inconclusive analysis set to ``pause`` asks a person; nothing is ever promoted on
   missing data.
8. **History**: annotations on the Deployment and a table artifact per environment.

The cluster rollback comes before the git revert: traffic is back on the old release
within seconds, whatever git takes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from prefect import Task, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from wcmatch import glob

from slipway.blocks.approval import ApprovalPolicy
from slipway.blocks.gitops import ManifestsRepository
from slipway.blocks.notifications import SlackNotifier
from slipway.blocks.prometheus import PrometheusServer
from slipway.deploy_spec import DeploySpec, Environment
from slipway.exceptions import (
    BranchNotAllowed,
    ConfigError,
    DeployBusy,
    DeployError,
    SlipwayError,
)
from slipway.redact import Redactor
from slipway.report import EnvironmentOutcome
from slipway.tasks.analysis import AnalysisResult, AnalysisSpec, analysis_rows, run_analysis
from slipway.tasks.approval import (
    ApprovalRecord,
    approval_markdown,
    check_branch_allowed,
    request_approval,
    request_approval_suspended,
)
from slipway.tasks.gitops import BumpResult, bump_manifest, revert_manifest
from slipway.tasks.kube_apply import (
    ANNOTATION_APPROVER,
    ANNOTATION_BUILD,
    ANNOTATION_CHANGE_CAUSE,
    ANNOTATION_IMAGE,
    ANNOTATION_MANIFESTS_COMMIT,
    ANNOTATION_RUN,
    ANNOTATION_SOURCE_COMMIT,
)
from slipway.tasks.kube_client import api_base_url, auth_headers, check_reachable, load_cluster
from slipway.tasks.manifests_render import render_manifests
from slipway.tasks.notify import send_slack_message
from slipway.tasks.rollout import rollout_history
from slipway.tasks.smoke import SmokeResult, run_smoke_checks
from slipway.tasks.strategies import (
    DeployState,
    Release,
    deploy_blue_green,
    deploy_canary,
    deploy_rolling,
    finish_blue_green,
    promote_blue_green,
    promote_canary,
    rollback,
    run_canary_steps,
    state_of,
)
from slipway.tasks.strategy_objects import find_deployment, find_service
from slipway.tasks.sync import plan_environment

_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.BRACE
RELEASE_LABEL = "slipway.dev/release"
Log = Callable[[str], None]
BlockT = TypeVar("BlockT", bound=Block)


@dataclass
class Delivery:
    """Everything the environments share for one release."""

    spec: DeploySpec
    app: str
    image: str
    source_commit: str
    branch: str
    run_id: str
    run_url: str | None
    build_number: int
    workspace: Path
    redactor: Redactor
    manifests: ManifestsRepository
    approvals: ApprovalPolicy | None
    prometheus: PrometheusServer | None
    notifier: SlackNotifier | None
    default_cluster: str | None
    approval_poll: float = 1.0
    # seconds the deploy slot's lease lasts unrenewed (renewed every 3/4 of it while the
    # holder lives): a holder that died (process killed, machine gone) keeps the next
    # deploy waiting at most this plus the server's lease check (15 s). Server: 60 s-1 day.
    slot_lease: float = 300.0
    # suspend (the process exits while it waits; needs a deployment run with persisted
    # results) instead of pausing (the process waits)
    suspend_for_approval: bool = False
    # what CI said about this commit (stage: status, tests, gates), for the approval form
    ci_summary: tuple[str, ...] = ()
    # the source commit's committer date (ISO 8601), recorded in the bump for DORA lead time
    source_commit_time: str | None = None

    @property
    def digest(self) -> str:
        return self.image.rsplit("@", 1)[-1]

    @property
    def release_id(self) -> str:
        """A label value naming this release (Prometheus sees it as a pod label)."""
        return self.digest.removeprefix("sha256:")[:12]


async def load_delivery_blocks(
    spec: DeploySpec, redactor: Redactor
) -> tuple[ManifestsRepository, ApprovalPolicy | None, PrometheusServer | None]:
    """Load the blocks up front: a missing or invalid one fails before anything is deployed."""
    manifests = await _load_block(ManifestsRepository, spec.manifests, "deploy.manifests")
    redactor.add(*manifests.secret_values())
    approvals = (
        await _load_block(ApprovalPolicy, spec.approval_policy, "deploy.approval_policy")
        if spec.approval_policy
        else None
    )
    prometheus = (
        await _load_block(PrometheusServer, spec.prometheus, "deploy.prometheus")
        if spec.prometheus
        else None
    )
    if prometheus is not None:
        redactor.add(*prometheus.secret_values())
    for environment in spec.environments:
        if environment.name not in manifests.environments:
            known = ", ".join(sorted(manifests.environments)) or "none"
            raise ConfigError(
                f"deploy.environments: {environment.name!r} has no path in manifests block "
                f"{spec.manifests!r} (it has: {known})"
            )
        if environment.approval and approvals is not None:
            approvals.for_environment(environment.name)
    return manifests, approvals, prometheus


async def _load_block(block_type: type[BlockT], name: str, where: str) -> BlockT:
    """``block_type.aload(name)``, with Prefect's errors turned into a ConfigError that
    names the block and, for a document that fails validation (one saved through the
    API or an older version), each bad field and why (pydantic's message, never the
    input value, so no secret is repeated)."""
    try:
        return await block_type.aload(name)
    except RuntimeError as exc:  # Prefect: "Unable to load ... due to failed validation"
        cause = exc.__cause__
        if not isinstance(cause, pydantic.ValidationError):
            raise
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in cause.errors()
        )
        raise ConfigError(
            f"{where}: {block_type.__name__} block {name!r} is invalid: {problems}"
        ) from None


# ----------------------------------------------------------------------------- tasks


async def _run(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` as a Prefect task named ``name`` (a step in the UI); its result or error.
    A Prefect task keeps its own policy (retries, timeout) under that name."""
    step = (
        fn.with_options(name=name)
        if isinstance(fn, Task)
        else task(name=name, cache_policy=NO_CACHE)(fn)
    )
    future = step.submit(*args, **kwargs)
    await asyncio.to_thread(future.wait)
    return await future.state.aresult()


def _logger_fn(redactor: Redactor) -> Log:
    logger = get_run_logger()
    return lambda line: logger.info(redactor.redact(line))


# ----------------------------------------------------------------------------- pieces


def branch_allowed(environment: Environment, branch: str) -> bool:
    return any(glob.globmatch(branch, p, flags=_GLOB_FLAGS) for p in environment.branches)


async def ensure_deploy_slot_limit(name: str) -> None:
    """Create the limit (1 slot) the first time; concurrent creators race harmlessly."""
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            except ObjectAlreadyExists:
                pass


def slot_name(app: str, environment: str) -> str:
    return f"slipway-deploy-{app}-{environment}"


def _with_release_label(objects: Sequence[dict[str, Any]], release_id: str) -> list[dict]:
    """Label the pods of every Deployment with the release (not the selector): an analysis
    query can then pick out exactly this release's pods with ``{version}``."""
    out: list[dict[str, Any]] = []
    for obj in objects:
        if obj.get("kind") == "Deployment":
            template = obj.setdefault("spec", {}).setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {})[RELEASE_LABEL] = release_id
        out.append(obj)
    return out


def _history_annotations(d: Delivery, environment: str, bump: BumpResult, approver: str | None):  # noqa: ANN202
    values = {
        ANNOTATION_IMAGE: d.image,
        ANNOTATION_SOURCE_COMMIT: d.source_commit,
        ANNOTATION_BUILD: str(d.build_number),
        ANNOTATION_RUN: d.run_id,
        ANNOTATION_APPROVER: approver or "",
        ANNOTATION_MANIFESTS_COMMIT: bump.commit_sha,
        ANNOTATION_CHANGE_CAUSE: (
            f"slipway build {d.build_number} of {d.app} ({d.source_commit[:12]}) to "
            f"{environment}" + (f", approved by {approver}" if approver else "")
        ),
    }
    return {key: value for key, value in values.items() if value}


def _approval_summary(
    d: Delivery, environment: Environment, done: Sequence[EnvironmentOutcome]
) -> str:
    """What the approver sees above the form: what is released, how CI and the earlier
    environments went."""
    lines = [
        f"## Release {d.app} build {d.build_number} to `{environment.name}`",
        "",
        f"- commit `{d.source_commit[:12]}` on `{d.branch}`",
        f"- image `{d.image}`",
        f"- strategy {environment.strategy.kind}, namespace `{environment.namespace}`",
    ]
    if d.run_url:
        lines.append(f"- pipeline run: {d.run_url}")
    if d.ci_summary:
        lines += ["", "CI:", *(f"- {line}" for line in d.ci_summary)]
    if done:
        lines += ["", "Environments so far:"]
        lines += [f"- {o.name}: {o.status} {o.reason}".rstrip() for o in done]
    return "\n".join(lines)


async def _plan_markdown(d: Delivery, environment: Environment) -> str:
    """What the release will change in the cluster, for the approver: the environment's
    manifests with the image bumped (nothing committed) diffed against the live objects.
    A plan that cannot be made is said, never a reason to block the approval."""
    cluster = environment.cluster or d.default_cluster
    try:
        if cluster is None:
            raise ConfigError("no cluster block")
        api = await load_cluster(cluster)
        markdown, _changes = await asyncio.to_thread(
            plan_environment,
            api,
            d.manifests,
            environment.name,
            app=d.app,
            namespace=environment.namespace,
            image=d.image,
            workdir=d.workspace / "plan" / environment.name,
            redactor=d.redactor,
        )
    except SlipwayError as exc:
        return f"_No plan: {d.redactor.redact(str(exc))}_"
    note = (
        ""
        if environment.strategy.kind == "rolling"
        else f"\n\n_The {environment.strategy.kind} strategy runs the Deployment as "
        "coloured / canary copies; the diff is against objects of git's names._"
    )
    return d.redactor.redact(markdown) + note


def _smoke_target(
    api: Any, environment: Environment, state: DeployState, release: Release
) -> tuple[str, dict]:
    """Where the smoke checks go: the environment's own URL, or the Service that shows the
    new release (preview colour, canary Service) through the API server's service proxy."""
    smoke = environment.smoke
    assert smoke is not None
    if smoke.base_url:
        return smoke.base_url, {}
    service = state.release_service
    if service is None:  # rolling: the Service in front of the Deployment
        deployment = find_deployment(release.objects, release.deployment or release.app)
        service = find_service(release.objects, deployment, release.service)["metadata"]["name"]
    url = (
        f"{api_base_url(api)}/api/v1/namespaces/{state.namespace}/services/"
        f"{service}:{smoke.port}/proxy"
    )
    return url, auth_headers(api)


def _analysis_values(result: AnalysisResult) -> str:
    values = ", ".join(f"{v:.4g}" for v in result.values) or "no values"
    return f"{result.phase}: {result.message} (values: {values})"


# ----------------------------------------------------------------------------- the walk


async def deliver(d: Delivery) -> tuple[EnvironmentOutcome, ...]:
    """Take the release through every environment in order; stop at the first that does
    not end deployed (later ones are ``not-run``, naming it)."""
    log = _logger_fn(d.redactor)
    outcomes: list[EnvironmentOutcome] = []
    stopped: str | None = None
    for environment in d.spec.environments:
        if stopped is not None:
            outcomes.append(EnvironmentOutcome(environment.name, "not-run", stopped))
            continue
        started = time.monotonic()
        try:
            outcome = await _deliver_environment(d, environment, outcomes, log)
        except SlipwayError as exc:
            outcome = EnvironmentOutcome(
                environment.name, "failed", d.redactor.redact(str(exc)), image=d.image
            )
        outcome = replace(outcome, seconds=round(time.monotonic() - started, 3))
        log(f"{environment.name}: {outcome.status} {outcome.reason}".rstrip())
        outcomes.append(outcome)
        if outcome.status != "deployed":
            stopped = f"{environment.name} {outcome.status}"
    return tuple(outcomes)


async def _deliver_environment(
    d: Delivery,
    environment: Environment,
    done: Sequence[EnvironmentOutcome],
    log: Log,
) -> EnvironmentOutcome:
    name = environment.name
    if not branch_allowed(environment, d.branch):
        reason = f"branch {d.branch!r} may not reach {name} ({', '.join(environment.branches)})"
        return EnvironmentOutcome(name, "skipped", reason)
    approver: str | None = None
    if environment.approval:
        assert d.approvals is not None  # the spec's validator
        policy = d.approvals.for_environment(name)
        try:
            check_branch_allowed(d.branch, policy, environment=name)
        except BranchNotAllowed as exc:
            return EnvironmentOutcome(name, "skipped", str(exc))
        summary = _approval_summary(d, environment, done)
        summary += "\n\n" + await _plan_markdown(d, environment)
        log(
            f"{name}: waiting for approval; open {d.run_url or 'the flow run in the Prefect UI'}"
            ", press Resume and fill in the form (or `prefect flow-run resume`)"
        )
        if d.suspend_for_approval:
            record = await request_approval_suspended(
                environment=name,
                policy=policy,
                summary_markdown=summary,
                log=get_run_logger(),  # type: ignore[arg-type]
                key=f"approval-{name}-build-{d.build_number}",
            )
        else:
            record = await request_approval(
                environment=name,
                policy=policy,
                summary_markdown=summary,
                poll_interval=d.approval_poll,
                log=get_run_logger(),  # type: ignore[arg-type]
            )
        await acreate_markdown_artifact(
            key=_key(d.app, f"approval-{name}"),
            markdown=approval_markdown(record),
            description=f"Approval of {d.app} build {d.build_number} for {name}",
        )
        if not record.approved:
            await _tell(
                d, f"{d.app} build {d.build_number} not released to {name}", _decision_text(record)
            )
            return EnvironmentOutcome(name, "rejected", _decision_text(record))
        approver = record.approver
    limit = slot_name(d.app, name)
    await ensure_deploy_slot_limit(limit)
    wait = environment.busy_timeout if environment.on_busy == "wait" else 1.0
    try:
        async with concurrency(
            limit, occupy=1, timeout_seconds=wait, lease_duration=d.slot_lease, strict=True
        ):
            return await _deploy(d, environment, approver, log)
    except TimeoutError:
        raise DeployBusy(
            f"another deploy of {d.app} to {name} holds the slot {limit!r}"
            + (" (on_busy: fail)" if environment.on_busy == "fail" else f" after {wait:g} s")
        ) from None


def _decision_text(record: ApprovalRecord) -> str:
    if record.decision == "timed-out":
        return "no approval before the deadline (counts as rejected)"
    return f"{record.decision} by {record.approver}: {record.reason or 'no reason given'}"


async def _deploy(
    d: Delivery, environment: Environment, approver: str | None, log: Log
) -> EnvironmentOutcome:
    name = environment.name
    workdir = d.workspace / "manifests" / name
    # The cluster first: a deploy is a commit, so nothing is committed for a cluster
    # that is not there (a later sync would apply it untested).
    cluster = environment.cluster or d.default_cluster
    if cluster is None:
        raise ConfigError(f"deploy.environments {name!r}: no 'cluster' block and no default")
    api = await load_cluster(cluster)
    await asyncio.to_thread(check_reachable, api)
    bump: BumpResult = await _run(
        f"bump-{name}",
        bump_manifest,
        d.manifests,
        app=d.app,
        environment=name,
        image=d.image,
        source_commit=d.source_commit,
        run_id=d.run_id,
        build_number=d.build_number,
        approver=approver,
        source_commit_time=d.source_commit_time,
        workdir=workdir,
        redactor=d.redactor,
    )
    if bump.superseded_by is not None:
        return EnvironmentOutcome(name, "superseded", bump.note, image=d.image)
    outcome = EnvironmentOutcome(
        name,
        "deployed",
        bump.note,
        image=d.image,
        manifests_commit=bump.commit_sha,
        approver=approver,
    )
    target = d.manifests.environments[name]
    try:
        rendered = render_manifests(workdir, target.path, target.kind)
    except SlipwayError as exc:  # the commit cannot be deployed: take it back out of git
        return await _revert_only(d, outcome, bump, f"manifests not rendered: {exc}", log)
    objects = _with_release_label(rendered, d.release_id)
    release = Release(
        app=d.app,
        environment=name,
        namespace=environment.namespace,
        objects=objects,
        image=d.image,
        annotations=_history_annotations(d, name, bump, approver),
        deployment=environment.deployment,
        service=environment.service,
    )
    try:
        state: DeployState = await _run(
            f"deploy-{name}", _strategy_deploy, api, release, environment, log=log
        )
    except SlipwayError as exc:
        reached = state_of(exc)
        if reached is None:  # nothing changed in the cluster: undo git alone
            return await _revert_only(d, outcome, bump, f"deploy failed: {exc}", log)
        return await _roll_back(d, api, reached, outcome, bump, f"rollout failed: {exc}", log)
    if environment.smoke is not None:
        url, headers = _smoke_target(api, environment, state, release)
        smoke: SmokeResult = await _run(
            f"smoke-{name}",
            run_smoke_checks,
            environment.smoke.checks,
            base_url=url,
            headers=headers,
            log=log,
        )
        outcome = replace(outcome, smoke=smoke.phase)
        if smoke.phase != "Successful":
            return await _roll_back(
                d,
                api,
                state,
                outcome,
                bump,
                f"smoke test failed: {smoke.message}",
                log,
            )
    analysis = environment.analysis
    if state.kind == "canary":
        verdicts: list[AnalysisResult] = []

        def analyse(weight: int) -> bool:
            if analysis is None:
                return True
            result = _analyse(d, environment, analysis, log, f"canary at {weight} %")
            verdicts.append(result)
            return result.phase == "Successful"

        passed = await _run(
            f"canary-{name}",
            run_canary_steps,
            api,
            state,
            environment.strategy.canary,
            analyse=analyse,
            log=log,
        )
        if verdicts:
            await _analysis_artifact(d, name, verdicts[-1])
            outcome = replace(outcome, analysis=_analysis_values(verdicts[-1]))
        if not passed:
            return await _roll_back(
                d,
                api,
                state,
                outcome,
                bump,
                f"canary analysis {_analysis_values(verdicts[-1]) if verdicts else 'failed'}",
                log,
            )
        await _run(
            f"promote-{name}",
            promote_canary,
            api,
            state,
            timeout=environment.rollout_timeout,
            log=log,
        )
    else:
        if state.kind == "blue_green":
            await _run(f"switch-{name}", promote_blue_green, api, state, log=log)
        if analysis is not None:
            result = await _run(
                f"analysis-{name}", _analyse, d, environment, analysis, log, "after the switch"
            )
            await _analysis_artifact(d, name, result)
            outcome = replace(outcome, analysis=_analysis_values(result))
            keep = result.phase == "Successful" or (
                result.phase in ("Inconclusive", "Error")
                and analysis.on_inconclusive == "pause"
                and await _human_keeps(d, environment, result)
            )
            if not keep:
                return await _roll_back(
                    d,
                    api,
                    state,
                    outcome,
                    bump,
                    f"analysis {analysis.name} {_analysis_values(result)}",
                    log,
                )
        if state.kind == "blue_green":
            await _run(f"scale-down-old-{name}", finish_blue_green, api, state, log=log)
    serving = (
        f"{state.deployment}-{state.idle_colour}"
        if state.kind == "blue_green"
        else state.deployment
    )
    history = await asyncio.to_thread(rollout_history, api, environment.namespace, serving)
    outcome = replace(outcome, revision=history[-1].number if history else None)
    await _history_artifact(d, name, history)
    return outcome


def _strategy_deploy(api: Any, release: Release, environment: Environment, *, log: Log):  # noqa: ANN202
    strategy = environment.strategy
    common = {
        "create_namespace": environment.create_namespace,
        "timeout": environment.rollout_timeout,
        "log": log,
    }
    if strategy.blue_green is not None:
        return deploy_blue_green(api, release, strategy.blue_green, **common)
    if strategy.canary is not None:
        return deploy_canary(api, release, strategy.canary, **common)
    assert strategy.rolling is not None
    return deploy_rolling(api, release, strategy.rolling, **common)


def _analyse(
    d: Delivery, environment: Environment, spec: AnalysisSpec, log: Log, when: str
) -> AnalysisResult:
    assert d.prometheus is not None  # the spec's validator
    log(f"{environment.name}: analysis {spec.name} {when}")
    return run_analysis(
        d.prometheus,
        spec,
        app=d.app,
        namespace=environment.namespace,
        version=d.release_id,
        log=log,
    )


async def _human_keeps(d: Delivery, environment: Environment, result: AnalysisResult) -> bool:
    """Inconclusive with ``on_inconclusive: pause``: a person decides (approve = keep)."""
    if d.approvals is None or environment.name not in d.approvals.environments:
        return False  # nobody to ask: never promote on missing data
    record = await request_approval(
        environment=environment.name,
        policy=d.approvals.for_environment(environment.name),
        summary_markdown=(
            f"## The analysis of {d.app} build {d.build_number} in `{environment.name}` "
            f"could not decide\n\n{_analysis_values(result)}\n\nApprove to keep the "
            "release, reject to roll it back."
        ),
        poll_interval=d.approval_poll,
        log=get_run_logger(),  # type: ignore[arg-type]
    )
    return record.approved


async def _roll_back(
    d: Delivery,
    api: Any,
    state: DeployState,
    outcome: EnvironmentOutcome,
    bump: BumpResult,
    why: str,
    log: Log,
) -> EnvironmentOutcome:
    """Cluster first (traffic back in seconds), then git, then Slack."""
    name = outcome.name
    why = d.redactor.redact(why)
    log(f"{name}: rolling back: {why}")
    try:
        seconds: float | None = await _run(f"rollback-{name}", rollback, api, state, log=log)
    except DeployError as exc:  # a first deploy has nothing to go back to
        seconds = None
        why = f"{why}; the cluster was not rolled back: {d.redactor.redact(str(exc))}"
    reverted = await _revert(d, name, bump, f"automatic rollback of build {d.build_number}: {why}")
    outcome = replace(
        outcome,
        status="rolled-back" if seconds is not None else "failed",
        reason=why,
        rollback_seconds=seconds,
        revert_commit=reverted,
    )
    await _tell(
        d,
        f":rewind: {d.app} build {d.build_number} rolled back in {name}",
        f"{why}\n"
        + (
            f"Cluster back on the previous release in {seconds:.2f} s ({state.kind}); "
            if seconds is not None
            else ""
        )
        + (
            f"manifests commit {bump.commit_sha[:12]} reverted by {reverted[:12]}."
            if reverted
            else "manifests unchanged."
        ),
    )
    return outcome


async def _revert_only(
    d: Delivery, outcome: EnvironmentOutcome, bump: BumpResult, why: str, log: Log
) -> EnvironmentOutcome:
    """The cluster refused the release before anything changed: revert the commit so a
    later sync does not try again, and report the environment failed."""
    why = d.redactor.redact(why)
    reason = f"build {d.build_number} could not be deployed: {why}"
    reverted = await _revert(d, outcome.name, bump, reason)
    await _tell(d, f":x: {d.app} build {d.build_number} failed to deploy to {outcome.name}", why)
    return replace(outcome, status="failed", reason=why, revert_commit=reverted)


async def _revert(d: Delivery, environment: str, bump: BumpResult, reason: str) -> str | None:
    """Revert the bump commit (GitOps: a later sync must not re-apply it); the revert
    commit's SHA, or None when there was nothing to revert."""
    if not bump.changed:
        return None
    revert = await _run(
        f"revert-{environment}",
        revert_manifest,
        d.manifests,
        commit_sha=bump.commit_sha,
        reason=reason,
        workdir=d.workspace / "manifests" / environment,
        redactor=d.redactor,
    )
    return revert.commit_sha if revert.changed else None


async def _tell(d: Delivery, title: str, body: str) -> None:
    if d.notifier is None:
        return
    text = f"{title}\n{body}"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}},
    ]
    if d.run_url:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"<{d.run_url}|pipeline run>"}],
            }
        )
    await asyncio.to_thread(send_slack_message, d.notifier, text, blocks, d.redactor, what=title)


def _key(app: str, what: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"{app}-{what}".lower()).strip("-")


async def _analysis_artifact(d: Delivery, environment: str, result: AnalysisResult) -> None:
    await acreate_table_artifact(
        key=_key(d.app, f"analysis-{environment}"),
        table=analysis_rows(result) or [{"measurement": "none"}],
        description=f"Analysis in {environment}: {_analysis_values(result)}",
    )


async def _history_artifact(d: Delivery, environment: str, history: Sequence[Any]) -> None:
    rows = [
        {
            "revision": r.number,
            "image": ", ".join(r.images),
            "source commit": r.annotations.get(ANNOTATION_SOURCE_COMMIT, "-"),
            "build": r.annotations.get(ANNOTATION_BUILD, "-"),
            "approver": r.annotations.get(ANNOTATION_APPROVER, "-"),
            "manifests commit": r.annotations.get(ANNOTATION_MANIFESTS_COMMIT, "-"),
        }
        for r in reversed(history)
    ]
    await acreate_table_artifact(
        key=_key(d.app, f"deploys-{environment}"),
        table=rows or [{"revision": "none"}],
        description=f"Deploy history of {d.app} in {environment} (newest first)",
    )
