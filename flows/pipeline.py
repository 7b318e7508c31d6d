"""The pipeline flow: checkout, read the pipeline file, run its stages, report.

Composition only: every piece of work is a task from ``slipway.tasks``; this
module decides order, parallelism, skips, caching and what the run reports.
"""

# No ``from __future__ import annotations`` here: Prefect builds the flow's parameter
# model from its annotations, and a served flow (``pipeline.serve()``; Prefect's runner
# uses run_flow_in_subprocess) reaches its process cloudpickled *by value* with only
# the globals its body uses, so string annotations naming ``Annotated`` or ``Field``
# could not be resolved there ("PipelineModel is not fully defined").

import asyncio
import concurrent.futures
import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_HOME, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect.states import Cancelled, Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.urls import url_for
from prefect_docker import DockerHost
from pydantic import Field

from slipway.blocks.git import AppRepository
from slipway.blocks.notifications import SlackNotifier
from slipway.blocks.security_policy import SecurityPolicy
from slipway.conditions import ConditionContext, evaluate
from slipway.deploy_spec import DeploySpec
from slipway.exceptions import (
    CommitNotOnBranch,
    ConfigError,
    SlipwayError,
    StageFailed,
    TriggerRefused,
)
from slipway.flows.deliver import Delivery, deliver, load_delivery_blocks
from slipway.flows.scheduler import Decision, StageWalker
from slipway.flows.stage_runner import ensure_stage_runners
from slipway.redact import Redactor
from slipway.report import EnvironmentOutcome, PipelineReport, StageOutcome, summary_markdown
from slipway.repository_policy import check_deployment_run_repository, is_block_name
from slipway.spec import Pipeline, PipelineOverrides, Stage
from slipway.spec_loader import check_overrides, load_pipeline
from slipway.stage_selection import with_needs
from slipway.tasks.checkout import DEFAULT_BRANCH, CheckoutResult, checkout
from slipway.tasks.flaky_history import record_flaky_tests
from slipway.tasks.junit_reports import summary_markdown as tests_markdown
from slipway.tasks.junit_reports import summary_rows
from slipway.tasks.notify import PipelineOutcome, notify_slack
from slipway.tasks.process_tree import cancel_requested
from slipway.tasks.quality_gate import gate_rows
from slipway.tasks.security_scan import findings_rows, scan_markdown
from slipway.tasks.stage_secrets import load_run_secrets
from slipway.tasks.stages import (
    StageContext,
    StageFailedWithReport,
    StageResult,
    cache_key,
    stage_environment,
    stage_task,
)
from slipway.tasks.trigger import PushTrigger, verify_push_trigger
from slipway.tasks.workspace_capture import CannotRestore, restore_reused
from slipway.urls import NO_USERINFO_PATTERN, check_repository_reference
from slipway.workspace import (
    build_number_for_run,
    default_results_path,
    finish_workspace,
    inside,
    new_workspace,
    run_home,
)


async def _settled(future: PrefectFuture[Any]) -> State:
    """The final state of a submitted task, waited for off the event loop."""
    await asyncio.to_thread(future.wait)
    return future.state


class _ThreadTimeoutNotice(logging.Filter):
    """Drop Prefect's notice that thread timeouts cannot interrupt blocking calls.

    It is true in general and wrong here: the command runner enforces the stage
    timeout itself and kills the whole process group, and its polling loop lets
    Prefect's own timeout (the backstop) land as well.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "running in a worker thread" not in record.getMessage()


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())


@task(name="skip", cache_policy=NO_CACHE)
def skip_stage(reason: str, status: str) -> State:
    """A visible task run for a stage that does not run, in a non-success state name."""
    return Completed(name="Skipped" if status == "skipped" else "NotRun", message=reason)


@task(name="load-spec", cache_policy=NO_CACHE)
def load_spec(workspace: Path, spec_path: str, overrides: PipelineOverrides) -> Pipeline:
    pipeline = load_pipeline(inside(workspace, spec_path), display_name=spec_path)
    check_overrides(pipeline, overrides)
    return pipeline


async def resolve_repository(repository: str) -> AppRepository:
    """A clone URL or local path as-is; anything else names an AppRepository block."""
    try:
        check_repository_reference(repository)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if repository and not is_block_name(repository):  # one rule with the allowlist's
        return AppRepository(url=repository)
    return await AppRepository.aload(repository)


def _artifact_key(app: str, what: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"{app}-{what}".lower()).strip("-")


def _decider(pipeline: Pipeline, overrides: PipelineOverrides, ctx: ConditionContext):  # noqa: ANN202
    def decide(stage: Stage) -> Decision:
        if stage.name in overrides.skip:
            return Decision(False, "skipped by the 'skip_stages' parameter", propagates=False)
        if overrides.only is not None and stage.name not in overrides.only:
            group = next((s for s in pipeline.stages if stage in (s.parallel or [])), None)
            if group is None or group.name not in overrides.only:
                inner = [c.name for c in stage.parallel or [] if c.name in overrides.only]
                if not inner:
                    return Decision(False, "not among the 'stages' parameter", propagates=False)
        if stage.when is not None:
            verdict = evaluate(stage.when, ctx)
            if not verdict.holds:
                return Decision(False, f"when: {verdict.reason}")
        return Decision(True)

    return decide


async def _cache_inputs(stage: Stage) -> dict[str, Any] | None:
    """What a built-in stage depends on beyond its spec: a scan's policy and the day."""
    scan = stage.security_scan
    if scan is None:
        return None
    policy = (
        (await SecurityPolicy.aload(scan.policy)).model_dump(mode="json") if scan.policy else None
    )
    return {"day": datetime.now(UTC).date().isoformat(), "policy": policy}


async def _run_stages(
    pipeline: Pipeline,
    walker: StageWalker,
    checkout_result: CheckoutResult,
    context: StageContext,
    pipeline_env: dict[str, str],
    refresh_cache: bool,
    run_id: str,
) -> None:
    logger = get_run_logger()
    default_delays = pipeline.defaults.retries.delays()
    keys: dict[str, str] = {}
    results: dict[str, StageResult] = {}
    running: dict[concurrent.futures.Future[Any], tuple[Stage, PrefectFuture[Any], float]] = {}
    rerun: dict[str, Callable[[], PrefectFuture[Any]]] = {}

    def needed(stage: Stage) -> list[str]:
        """Every stage this one needs, directly or not, in file order."""
        pending = list(walker.deps[walker.group_of(stage.name) or stage.name])
        found: set[str] = set()
        while pending:
            name = pending.pop()
            if name not in found:
                found.add(name)
                pending.extend(walker.deps.get(name, []))
        ordered = [s.name for s in pipeline.all_stages()]
        members = {m.name for s in pipeline.stages if s.name in found for m in s.parallel or []}
        return [n for n in ordered if n in found | members]

    def upstream_keys(stage: Stage) -> list[str]:
        group = walker.group_of(stage.name)
        top = group or stage.name
        names = walker.deps[top]
        return [keys.get(n, f"uncached:{n}") for n in names]

    while not walker.done:
        for outcome in walker.advance():
            logger.info("stage %s: %s (%s)", outcome.name, outcome.status, outcome.reason)
            await _settled(
                skip_stage.with_options(task_run_name=outcome.name).submit(
                    outcome.reason, outcome.status
                )
            )
        # a cancelled run (Ctrl-C) starts nothing more; running stages stop themselves
        slots = 0 if cancel_requested() else pipeline.max_parallel - walker.running
        for stage in walker.take(max(slots, 0)):
            extra = await _cache_inputs(stage) if stage.cacheable else None
            key = cache_key(
                app=pipeline.app,
                sha=checkout_result.sha,
                branch=checkout_result.branch,
                stage=stage,
                env=pipeline_env,
                upstream=upstream_keys(stage),
                extra=extra,
            )
            stage_run = stage_task(
                stage,
                default_timeout=pipeline.defaults.timeout,
                default_retries=default_delays,
                refresh=refresh_cache,
            )
            upstream = [results[n] for n in needed(stage) if n in results]
            # not reused across runs, but within one: an execution after a suspend reuses it
            key = key if stage.cacheable else f"{key}-run-{run_id}"
            future = stage_run.submit(stage, context, key, upstream)
            running[future.wrapped_future] = (stage, future, time.monotonic())
            # if a cached result's workspace changes cannot be put back: run it instead
            rerun[stage.name] = partial(
                stage_run.with_options(refresh_cache=True).submit, stage, context, key, upstream
            )
        if not running:
            if walker.done or cancel_requested():
                break
            continue
        finished, _ = await asyncio.to_thread(
            concurrent.futures.wait, list(running), return_when=concurrent.futures.FIRST_COMPLETED
        )
        for raw in finished:
            stage, future, started = running.pop(raw)
            state = await _settled(future)
            group = walker.group_of(stage.name)
            elapsed = round(time.monotonic() - started, 3)
            if state.is_completed():
                result: StageResult = await state.aresult()
                cached = state.name == "Cached"
                note = "; ".join(c.note() for c in result.dependency_caches)
                if cached:
                    try:
                        restored = await asyncio.to_thread(
                            restore_reused,
                            getattr(result, "workspace", None),  # None: an older result
                            result.artifacts,
                            checkout_result.workspace,
                        )
                    except CannotRestore as why:
                        logger.warning(
                            "stage %s: cached result not reused, running it again: %s",
                            stage.name,
                            why,
                        )
                        future = rerun.pop(stage.name)()
                        running[future.wrapped_future] = (stage, future, started)
                        continue
                    note = f"reused from an earlier run; {restored.files} file(s) restored"
                    logger.info(
                        "stage %s: cached result reused (same commit %s, stage spec and inputs); "
                        "not rerun, its workspace changes restored (%d file(s), %d bytes, "
                        "%.2f s)",
                        stage.name,
                        checkout_result.short_sha,
                        restored.files,
                        restored.bytes,
                        restored.seconds,
                    )
                    elapsed = round(time.monotonic() - started, 3)
                if result.cache_key and stage.cacheable:
                    keys[stage.name] = result.cache_key
                results[stage.name] = result
                walker.record(
                    StageOutcome(
                        stage.name,
                        "cached" if cached else "passed",
                        elapsed,
                        note,
                        group,
                        result.artifacts,
                        result.tests,
                        result.gate,
                        result.scan,
                        result.image,
                        result.pushed,
                        result.seconds,
                        original_seconds=result.seconds if cached else None,
                    )
                )
            else:
                error = await state.aresult(raise_on_failure=False)
                extra = error if isinstance(error, StageFailedWithReport) else None
                reason = (
                    error.detail
                    if isinstance(error, StageFailedWithReport)
                    else (state.message or str(error))
                )
                if isinstance(error, StageFailed) and not isinstance(error, StageFailedWithReport):
                    reason = str(error).split(": ", 1)[-1]
                logger.error("stage %s failed: %s", stage.name, reason)
                walker.record(
                    StageOutcome(
                        stage.name,
                        "failed",
                        elapsed,
                        reason,
                        group,
                        (),
                        extra.report if extra else None,
                        extra.gate if extra else None,
                        extra.scan if extra else None,
                        output_tail=extra.output_tail if extra else "",
                    )
                )


async def _publish_artifacts(report: PipelineReport, run_id: str) -> None:
    await acreate_markdown_artifact(
        key=_artifact_key(report.app, "pipeline-summary"),
        markdown=summary_markdown(report),
        description=f"{report.app} pipeline at {report.sha[:12]}: {report.status}",
    )
    suites = report.test_reports
    # a reused stage's report is an earlier run's: its flaky tests are on record already
    fresh = [s.tests for s in report.stages if s.tests is not None and s.status != "cached"]
    flaky = record_flaky_tests(report.app, fresh, run_id)
    if suites:
        await acreate_markdown_artifact(
            key=_artifact_key(report.app, "tests"),
            markdown=tests_markdown(suites, flaky_runs={k: r.flaky_runs for k, r in flaky.items()}),
            description="Test suites: passed / failed / skipped / errors, failures, slowest",
        )
        await acreate_table_artifact(
            key=_artifact_key(report.app, "test-totals"),
            table=summary_rows(suites),
            description="Per-suite and total test counts",
        )
    for stage in report.stages:
        if stage.gate is not None:
            await acreate_table_artifact(
                key=_artifact_key(report.app, "quality-gate"),
                table=gate_rows(stage.gate),
                description=f"Quality gate ({stage.gate.source}): {stage.gate.phase}. "
                + stage.gate.message,
            )
        if stage.scan is not None:
            await acreate_markdown_artifact(
                key=_artifact_key(report.app, f"security-{stage.name}"),
                markdown=scan_markdown(stage.scan),
                description=f"Security scan {stage.name}: {stage.scan.phase}",
            )
            await acreate_table_artifact(
                key=_artifact_key(report.app, f"findings-{stage.name}"),
                table=findings_rows(stage.scan) or [{"finding": "none"}],
                description="Findings: tool, rule, severity, file:line, status",
            )
    images = [s for s in report.stages if s.image is not None]
    if images:
        await acreate_table_artifact(
            key=_artifact_key(report.app, "images"),
            table=[
                {
                    "stage": s.name,
                    "image": s.pushed.ref if s.pushed else s.image.references[0],
                    "tags": ", ".join(s.image.tags),
                    "digest": s.pushed.digest if s.pushed else "(not pushed)",
                    "image id": s.image.image_id,
                    "size": s.image.size_bytes,
                }
                for s in images
                if s.image is not None
            ],
            description="Images built (and pushed: deploy by digest)",
        )
    files = report.artifacts
    if files:
        await acreate_table_artifact(
            key=_artifact_key(report.app, "build-artifacts"),
            table=[
                {"stage": stage, "path": a.path, "size": a.size, "sha256": a.sha256}
                for stage, a in files
            ],
            description="Archived build outputs with their sha256 fingerprints",
        )


async def _load_notifier(name: str | None, redactor: Redactor) -> SlackNotifier | None:
    """Load the notifier up front so its secrets are masked in every stage's output."""
    if not name:
        return None
    try:
        notifier = await SlackNotifier.aload(name)
    except Exception as exc:  # a notifier that cannot load must not fail the pipeline
        get_run_logger().warning(
            "notifier %r could not be loaded, no message will be sent: %s",
            name,
            redactor.redact(str(exc)),
        )
        return None
    redactor.add(*notifier.secret_values())
    return notifier


async def _notify(
    notifier: SlackNotifier | None, report: PipelineReport, redactor: Redactor
) -> None:
    if notifier is None:
        return
    outcome = PipelineOutcome(
        app=report.app,
        branch=report.branch or "-",
        commit=report.sha,
        status=report.status,
        failed_stage=report.failed_stage,
        reason=report.reason,
        run_url=report.run_url,
        duration_seconds=report.seconds,
        stages=tuple((s.name, s.status) for s in report.stages),
    )
    await _settled(notify_slack.submit(notifier, outcome, redactor))


@flow(
    name="pipeline",
    task_runner=ThreadPoolTaskRunner(max_workers=64),
    persist_result=True,
    description="Checkout, then the stages of the repository's slipway.yaml.",
)
async def pipeline(
    repository: Annotated[
        str,
        Field(
            description="AppRepository block name, or a clone URL / local path (no "
            "credentials in it: the server refuses a run whose URL has user:token@). A "
            "deployment's run may name a URL only if SLIPWAY_ALLOWED_REPOSITORIES allows it.",
            json_schema_extra={"pattern": NO_USERINFO_PATTERN},
        ),
    ],
    branch: Annotated[
        str | None, Field(description="Branch to build (default: the repository's).")
    ] = None,
    commit: Annotated[
        str | None, Field(description="Tag or full SHA to build instead of the branch head.")
    ] = None,
    base: Annotated[
        str | None, Field(description="Base commit for changesets (default: the parent).")
    ] = None,
    stages: Annotated[
        list[str] | None,
        Field(description="Run only these stages and what they need (cached, else run)."),
    ] = None,
    skip_stages: Annotated[list[str] | None, Field(description="Stages to skip.")] = None,
    env: Annotated[
        dict[str, str] | None, Field(description="Extra pipeline environment variables.")
    ] = None,
    notifier: Annotated[str | None, Field(description="SlackNotifier block name.")] = None,
    refresh_cache: Annotated[
        bool, Field(description="Rerun every stage, ignoring cached results.")
    ] = False,
    keep_workspace: Annotated[
        bool,
        Field(
            description="Keep the workspace after a successful run (a failed run's is kept "
            "anyway; both are pruned by SLIPWAY_KEEP_WORKSPACES / "
            "SLIPWAY_WORKSPACE_MAX_AGE_DAYS)."
        ),
    ] = False,
    environments: Annotated[
        list[str] | None,
        Field(description="Deploy only to these environments of deploy: ([] = CI only)."),
    ] = None,
    cluster: Annotated[
        str | None,
        Field(description="KubernetesCredentials block for environments that name none."),
    ] = None,
    approval_wait: Annotated[
        Literal["auto", "pause", "suspend"],
        Field(
            description="How a run waits for approval: pause (the process waits), suspend "
            "(it exits and the run resumes from its deployment, reusing persisted results), "
            "auto = suspend when started from a deployment."
        ),
    ] = "auto",
    push: Annotated[
        PushTrigger | None,
        Field(
            description="Set by the push trigger only: the signed slipway.push event, "
            "verified before anything runs (a forged or replayed one fails the run)."
        ),
    ] = None,
) -> PipelineReport:
    """Run the repository's pipeline file.

    An async flow on purpose: Prefect joins a sync flow's heartbeat thread when the
    run ends, which costs up to a second per run; the async engine does not wait
    for it, and heartbeats (crash detection) are still sent. Blocking work runs in
    task threads; the flow only waits for it.

    Args:
        repository: AppRepository block name, or a clone URL / local path.
        branch: branch to build (default: the repository's default branch).
        commit: tag or full SHA to build instead of the branch head.
        base: base commit for changesets (default: the commit's parent).
        stages: run only these stages and the stages they need, directly or not (those
            are reused from the cache when there, else they run); the others show as
            skipped.
        skip_stages: stages to skip.
        env: extra pipeline environment variables.
        notifier: SlackNotifier block name.
        refresh_cache: rerun every stage, ignoring cached results.
        keep_workspace: keep the workspace after a successful run.
        environments: deploy only to these environments of `deploy:` ([] = CI only).
        cluster: KubernetesCredentials block for environments that name none.
        approval_wait: how a run waits for approval: pause (the process waits),
            suspend (it exits; the run resumes from its deployment, reusing cached
            stages), auto = suspend when started from a deployment.
        push: set by the push trigger: the signed event (slipway.tasks.trigger).
    """
    logger = get_run_logger()
    started = time.monotonic()
    flow_run = get_run_context().flow_run  # type: ignore[union-attr]
    if push is not None:  # from the push trigger: only the receiver's event may run
        if flow_run is None:
            raise TriggerRefused("a push event is only accepted by a flow run of a deployment")
        verified = await verify_push_trigger(push, flow_run=flow_run, branch=branch, commit=commit)
        logger.info(
            "push event verified: delivery %s, signed by slipway webhook", verified.delivery
        )
    run_url = url_for(flow_run) if flow_run else None
    run_id = str(flow_run.id) if flow_run else "local"
    overrides = PipelineOverrides(only=stages, skip=skip_stages or [], env=env or {})
    redactor = Redactor()
    # a deployment's run builds a block, its own default or an allowlisted URL, else
    # it fails here: before checkout, no stage runs (slipway.repository_policy)
    await check_deployment_run_repository(repository, flow_run)
    repo = await resolve_repository(repository)
    redactor.add(*repo.secret_values())
    slack = await _load_notifier(notifier, redactor)
    # "HEAD": the remote's default branch, resolved (and the commit verified on it) by checkout
    branch_name = branch or repo.default_branch or DEFAULT_BRANCH
    workspace = new_workspace("runs", run_id, lock=True)
    app = repository.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    sha = commit or "unknown"
    step = "checkout"
    try:
        checkout_state = await _settled(
            checkout.submit(
                repo, workspace, ref=commit, branch=branch_name, base=base, redactor=redactor
            )
        )
        result: CheckoutResult = await checkout_state.aresult()
        sha = result.sha
        branch_name = result.branch or branch_name  # verified: the commit is on it
        logger.info(
            "checked out %s at %s (%s): %s, %d file(s) changed since %s",
            branch_name,
            result.short_sha,
            result.author,
            result.message.splitlines()[0] if result.message else "",
            len(result.changed_files),
            (result.base_sha or "the root")[:12],
        )
        step = "load-spec"
        spec_state = await _settled(load_spec.submit(workspace, repo.spec_path, overrides))
        spec: Pipeline = await spec_state.aresult()
        app = spec.app
        await ensure_stage_runners(spec)  # the deployments `work_pool:` stages run as
        # every secret of every block the file names is masked from here on
        stage_secrets = await load_run_secrets(spec, redactor, cluster=cluster)
        pipeline_env = {**spec.env, **overrides.env}
        build_number = build_number_for_run(app, run_id)
        run_vars = {
            "CI": "true",
            "SLIPWAY_BUILD_NUMBER": str(build_number),
            "SLIPWAY_APP": app,
            "SLIPWAY_BRANCH": branch_name,
            "SLIPWAY_COMMIT": result.sha,
            "SLIPWAY_REF": commit or branch_name,
            "SLIPWAY_BASE_COMMIT": result.base_sha or "",
            "SLIPWAY_RUN_ID": run_id,
            "SLIPWAY_WORKSPACE": str(workspace),
        }
        docker_host = await DockerHost.aload(spec.docker_host) if spec.docker_host else None
        context = StageContext(
            workspace=workspace,
            env=stage_environment(
                base=None,
                pipeline_env=pipeline_env,
                run_vars={**run_vars, "HOME": str(run_home(workspace))},
            ),
            default_timeout=spec.defaults.timeout,
            redactor=redactor,
            pipeline_env={**pipeline_env, **run_vars},
            stage_secrets=stage_secrets,
            revision=result.sha,
            committed_at=datetime.fromisoformat(result.committed_at),
            build_number=build_number,
            source_url=repo.url,
            docker_host=docker_host,
            build_spec_of={s.name: s.build_image for s in spec.all_stages() if s.build_image},
            repository=repository,
            branch=branch_name,
            default_branch=repo.default_branch,
        )
        conditions = ConditionContext(
            branch=branch_name, env=context.env, changed_files=result.changed_files
        )
        selected = with_needs(spec, overrides)
        if selected.only != overrides.only:
            added = [n for n in selected.only or [] if n not in (overrides.only or [])]
            logger.info(
                "stages %s need %s: those come from the cache when there, else they run",
                ", ".join(overrides.only or []),
                ", ".join(added),
            )
        walker = StageWalker(spec, _decider(spec, selected, conditions))
        await _run_stages(spec, walker, result, context, pipeline_env, refresh_cache, run_id)
        outcomes = walker.ordered()
        failed = next(
            (o for o in outcomes if o.status == "failed" and o.group is None),
            next((o for o in outcomes if o.status == "failed"), None),
        )
        report = PipelineReport(
            app=app,
            sha=result.sha,
            branch=branch_name,
            status="failure" if failed else "success",
            stages=tuple(outcomes),
            failed_stage=failed.name if failed else None,
            reason=failed.reason if failed else None,
            run_url=run_url,
            seconds=round(time.monotonic() - started, 3),
        )
        if (
            report.status == "success"
            and spec.deploy is not None
            and environments != []
            and not cancel_requested()
        ):
            step = "deploy"
            suspend = approval_wait == "suspend" or (
                approval_wait == "auto" and flow_run is not None and flow_run.deployment_id
            )
            report = await _deliver(
                spec,
                report,
                context,
                run_id,
                slack,
                environments,
                cluster,
                started,
                suspend=bool(suspend),
            )
    except SlipwayError as exc:
        report = PipelineReport(
            app=app,
            sha=sha,
            branch=exc.branch if isinstance(exc, CommitNotOnBranch) else branch_name,
            status="failure",
            failed_stage=step,
            reason=redactor.redact(str(exc)),
            run_url=run_url,
            seconds=round(time.monotonic() - started, 3),
        )
    if finish_workspace(workspace, keep=keep_workspace or report.status != "success"):
        logger.info("workspace kept: %s", workspace)
        report = replace(report, workspace=str(workspace))
    await _publish_artifacts(report, run_id)
    if cancel_requested():  # Ctrl-C / SIGTERM on `slipway run` (slipway/interrupt.py)
        logger.warning("pipeline cancelled; workspace kept at %s", workspace)
        return Cancelled(message=f"cancelled; workspace kept at {workspace}", data=report)  # type: ignore[return-value]
    await _notify(slack, report, redactor)
    if report.status == "failure":
        logger.error("pipeline failed at stage %s: %s", report.failed_stage, report.reason)
        return Failed(  # type: ignore[return-value]
            message=redactor.redact(f"stage {report.failed_stage!r} failed: {report.reason}"),
            data=report,
        )
    logger.info("pipeline succeeded in %.1f s", report.seconds)
    return report


def _deploy_spec(spec: Pipeline, only: list[str] | None) -> DeploySpec:
    assert spec.deploy is not None
    if only is None:
        return spec.deploy
    known = [e.name for e in spec.deploy.environments]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ConfigError(
            f"environments: {', '.join(map(repr, unknown))} not in deploy.environments "
            f"({', '.join(known)})"
        )
    chosen = [e for e in spec.deploy.environments if e.name in only]
    return spec.deploy.model_copy(update={"environments": chosen})


def _ci_summary(report: PipelineReport) -> tuple[str, ...]:
    """One line per top-level stage, with test counts and gate / scan verdicts."""
    lines = []
    for stage in report.stages:
        if stage.group is not None:
            continue
        extra = []
        suites = [s.tests for s in report.stages if s.tests and s.group == stage.name]
        if stage.tests:
            suites.append(stage.tests)
        if suites:
            total = sum(t.tests for t in suites)
            failed = sum(len(t.problems) for t in suites)
            flaky = sum(len(t.flaky) for t in suites)
            extra.append(f"{total} tests, {failed} failed" + (f", {flaky} flaky" if flaky else ""))
        if stage.gate is not None:
            extra.append(f"gate {stage.gate.phase}")
        if stage.scan is not None:
            extra.append(f"scan {stage.scan.phase}")
        note = f" ({', '.join(extra)})" if extra else ""
        lines.append(f"{stage.name}: {stage.status}{note}")
    return tuple(lines)


async def _deliver(
    spec: Pipeline,
    report: PipelineReport,
    context: StageContext,
    run_id: str,
    slack: SlackNotifier | None,
    only: list[str] | None,
    cluster: str | None,
    started: float,
    *,
    suspend: bool,
) -> PipelineReport:
    """The CD half: take the pushed image through the environments (flows/deliver.py)."""
    deploy = _deploy_spec(spec, only)
    pushed = report.stage(deploy.image_from).pushed if deploy.image_from else report.pushed_image
    if pushed is None:
        reason = "this run pushed no image"
        outcomes = tuple(EnvironmentOutcome(e.name, "skipped", reason) for e in deploy.environments)
        return replace(report, environments=outcomes)
    manifests, approvals, prometheus = await load_delivery_blocks(deploy, context.redactor)
    delivery = Delivery(
        spec=deploy,
        app=spec.app,
        image=pushed.ref,
        source_commit=report.sha,
        branch=report.branch or "",
        run_id=run_id,
        run_url=report.run_url,
        build_number=context.build_number,
        workspace=context.workspace,
        redactor=context.redactor,
        manifests=manifests,
        approvals=approvals,
        prometheus=prometheus,
        notifier=slack,
        default_cluster=cluster,
        suspend_for_approval=suspend,
        ci_summary=_ci_summary(report),
        source_commit_time=context.committed_at.isoformat() if context.committed_at else None,
    )
    outcomes = await deliver(delivery)
    failed = next((o for o in outcomes if not o.ok and o.status != "not-run"), None)
    return replace(
        report,
        environments=outcomes,
        status="failure" if failed else "success",
        failed_stage=f"deploy-{failed.name}" if failed else None,
        reason=failed.reason if failed else None,
        seconds=round(time.monotonic() - started, 3),
    )


def run_pipeline(**parameters: Any) -> State:
    """Run the pipeline flow from synchronous code; returns its final state.

    Prefect's result files go under ``$SLIPWAY_HOME/prefect-results`` unless
    ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` says otherwise (Prefect's default,
    ``~/.prefect/storage``, would mix every project's results).

    Raises:
        ConfigError: the repository URL carries credentials (before any run exists).
    """
    try:
        check_repository_reference(str(parameters.get("repository", "")))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    path = PREFECT_RESULTS_LOCAL_STORAGE_PATH.value()
    if Path(path) == Path(PREFECT_HOME.value()) / "storage":
        path = default_results_path()
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: path}):
        return asyncio.run(pipeline(**parameters, return_state=True))  # type: ignore[arg-type]
