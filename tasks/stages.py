"""A command stage as a Prefect task: run, read its test reports, archive outputs.

The plain function :func:`execute_stage` does the work and is unit-tested without
Prefect; :func:`stage_task` builds the per-stage ``@task`` (name, retries with
backoff, timeout, cache key) from the pipeline file.

A failing test suite still has its JUnit report read: the report travels on the
:class:`StageFailed` exception so the summary can name the failed tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from prefect import Task, task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.states import Cancelled
from prefect.transactions import get_transaction
from prefect_docker import DockerHost, DockerRegistryCredentials
from wcmatch import glob

from slipway.exceptions import ConfigError, ReportError, StageCancelled, StageFailed
from slipway.redact import Redactor
from slipway.spec import Stage
from slipway.tasks.artifacts import ArchivedFile, archive_artifacts
from slipway.tasks.commands import run_commands
from slipway.tasks.containers import run_in_container
from slipway.tasks.dependency_cache import (
    CacheRoots,
    DependencyCacheOutcome,
    restore_caches,
    save_caches,
)
from slipway.tasks.images import (
    BuiltImage,
    ImageBuildSpec,
    LocalImage,
    build_image,
    push_image,
    registry_credentials,
)
from slipway.tasks.junit_reports import SuiteReport, collect_suite
from slipway.tasks.quality_gate import QualityGateResult, evaluate_quality_gate
from slipway.tasks.remote_stages import run_remote_stage
from slipway.tasks.security_scan import ScanResult, resolve_policy, run_security_scan
from slipway.tasks.stage_env import (
    Handover,
    HandoverFiles,
    expand_env,
    handover_folder,
    with_handovers,
)
from slipway.tasks.workspace_capture import (
    RESULT_LIFETIME,
    WorkspaceChanges,
    abandon_capture,
    begin_capture,
    finish_capture,
    no_changes,
)
from slipway.workspace import inside

CACHE_EXPIRATION = RESULT_LIFETIME  # the stored workspace changes live as long
# Prefect's own timeout is the backstop; the command runner kills the process
# group at the stage timeout itself and reports it first.
PREFECT_TIMEOUT_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class StageContext:
    """Everything a stage needs from the run, passed explicitly (tasks read no globals).

    ``env`` is what host commands see (:func:`stage_environment`: a short allowlist of
    the worker's variables, the pipeline's and slipway's run variables, never the
    worker's credentials); ``pipeline_env`` is the part that goes into containers.
    ``stage_secrets`` holds what each stage asked for in its ``secrets:``; only that
    stage gets it.
    """

    workspace: Path
    env: Mapping[str, str]
    default_timeout: float
    redactor: Redactor = field(default_factory=Redactor, compare=False)
    pipeline_env: Mapping[str, str] = field(default_factory=dict)
    stage_secrets: Mapping[str, Mapping[str, str]] = field(
        default_factory=dict, compare=False, repr=False
    )
    revision: str = ""
    # the commit's time: the image's OCI "created" label, so rebuilding a commit gives
    # the same image (and digest), as SOURCE_DATE_EPOCH does for reproducible builds
    committed_at: datetime | None = None
    build_number: int = 0
    source_url: str = ""
    docker_host: DockerHost | None = None
    build_spec_of: Mapping[str, ImageBuildSpec] | None = None
    # how a stage runner on another machine gets the code: the pipeline's `repository`
    # parameter (an AppRepository block name, or a URL without credentials)
    repository: str = ""
    # dependency caches are saved under the run's branch and restored from it or the
    # repository's default branch (GitHub's actions/cache scoping)
    branch: str = ""
    default_branch: str = ""


@dataclass(frozen=True)
class StageResult:
    """What a passed stage leaves behind for the summary and the stages after it."""

    name: str
    seconds: float
    cache_key: str | None
    artifacts: tuple[ArchivedFile, ...] = ()
    tests: SuiteReport | None = None
    output_tail: str = ""
    gate: QualityGateResult | None = None
    scan: ScanResult | None = None
    image: LocalImage | None = None
    pushed: BuiltImage | None = None
    # PATH entries and variables for the stages that need this one (SLIPWAY_PATH_FILE...)
    handover: Handover = field(default_factory=Handover)
    # what the stage did to the workspace, put back when the result is reused
    workspace: WorkspaceChanges | None = None
    dependency_caches: tuple[DependencyCacheOutcome, ...] = ()


class StageFailedWithReport(StageFailed):
    """A stage failed but produced something worth showing: tests, a gate, a scan."""

    def __init__(
        self,
        stage: str,
        detail: str,
        report: SuiteReport | None = None,
        gate: QualityGateResult | None = None,
        scan: ScanResult | None = None,
        output_tail: str = "",
    ) -> None:
        super().__init__(stage, detail, output_tail=output_tail)
        self.detail = detail
        self.report = report
        self.gate = gate
        self.scan = scan

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.stage, self.detail, self.report, self.gate, self.scan, self.output_tail),
        )


def find_reports(stage: Stage, workspace: Path) -> list[Path]:
    """Report files matching the stage's globs."""
    found: list[Path] = []
    for pattern in stage.junit:
        for match in sorted(glob.glob(pattern, root_dir=workspace, flags=glob.GLOBSTAR)):
            path = inside(workspace, match)
            if path.is_file() and path not in found:
                found.append(path)
    return found


Snapshot = dict[Path, tuple[int, int]]


def _snapshot(stage: Stage, workspace: Path) -> Snapshot:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in find_reports(stage, workspace)}


def _read_reports(stage: Stage, workspace: Path, before: Snapshot) -> SuiteReport | None:
    """The reports this attempt wrote; one left over from an earlier try does not count."""
    if not stage.junit:
        return None
    files = [
        p
        for p in find_reports(stage, workspace)
        if before.get(p) != (p.stat().st_mtime_ns, p.stat().st_size)
    ]
    if not files:
        raise StageFailed(
            stage.name, f"no JUnit report matching {', '.join(stage.junit)} was written by this run"
        )
    return collect_suite(stage.name, workspace, files)


def _log_report(report: SuiteReport, log: Callable[[str], None]) -> None:
    for note in report.notes:
        log(f"JUnit totals disagree: {note}")
    for case in report.flaky:
        log(f"flaky test {case.id}: passed after {case.attempts} attempts ({case.message})")


def _check_report(stage: Stage, report: SuiteReport | None, log: Callable[[str], None]) -> None:
    """Log what the report says beyond pass/fail; fail a suite that ran no test at all.

    Zero testcases is how a broken test run looks (a collection error, a wrong path, a
    layout the reporter got wrong), so it fails unless the stage says ``allow_empty``.
    """
    if report is None:
        return
    _log_report(report, log)
    if report.tests == 0:
        if stage.allow_empty:
            log("the JUnit report holds no test, and the stage allows it (allow_empty)")
            return
        raise StageFailedWithReport(
            stage.name,
            f"the JUnit report ({', '.join(report.files)}) holds no test; a suite that ran "
            "nothing fails unless the stage says allow_empty: true",
            report,
        )


def execute_stage(
    stage: Stage,
    ctx: StageContext,
    *,
    log: Callable[[str], None] | None = None,
    upstream: Sequence[StageResult] = (),
) -> StageResult:
    """Run one stage of any kind; raise :class:`StageFailed` (with what it produced).

    ``upstream`` holds the results of the stages this one needs, nearest last: an
    image scan or push finds the image it works on there.
    """
    log = log or (lambda _line: None)
    if stage.quality_gate is not None:
        return _quality_gate_stage(stage, ctx, log)
    if stage.security_scan is not None:
        return _security_scan_stage(stage, ctx, log, upstream)
    if stage.build_image is not None:
        return _build_image_stage(stage, ctx, log)
    if stage.push_image is not None:
        return _push_image_stage(stage, ctx, log, upstream)
    assert stage.run is not None, "parallel groups are scheduled by the flow"
    if stage.work_pool is not None:
        return _remote_stage(stage, ctx, log)
    return _command_stage(stage, ctx, log, upstream)


def _remote_stage(stage: Stage, ctx: StageContext, log: Callable[[str], None]) -> StageResult:
    """A ``work_pool`` stage: the same commit, checked out and run on a worker of that pool."""
    outcome = run_remote_stage(
        stage,
        repository=ctx.repository or ctx.source_url,
        commit=ctx.revision,
        env=ctx.pipeline_env,
        timeout=stage.timeout or ctx.default_timeout,
        default_timeout=ctx.default_timeout,
        log=log,
    )
    if not outcome.passed:
        raise StageFailedWithReport(stage.name, outcome.detail, outcome.tests)
    return StageResult(
        stage.name, outcome.seconds, None, tests=outcome.tests, output_tail=outcome.output_tail
    )


def _docker_client(ctx: StageContext) -> docker.DockerClient:
    return (ctx.docker_host or DockerHost()).get_client()


def _with_stage_env(stage: Stage, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` and the stage's own ``env``, whose ``$VAR`` values expand against it."""
    return {**base, **expand_env(stage.env, base)}


def _run_commands_somewhere(  # noqa: ANN202
    stage: Stage,
    ctx: StageContext,
    log: Callable[[str], None],
    upstream: Sequence[StageResult] = (),
    files: HandoverFiles | None = None,
):
    assert stage.run is not None
    cwd = inside(ctx.workspace, stage.dir)
    timeout = stage.timeout or ctx.default_timeout
    secrets = ctx.stage_secrets.get(stage.name, {})
    if stage.container is None:
        base = with_handovers(ctx.env, [r.handover for r in upstream])
        return run_commands(
            stage.run,
            stage=stage.name,
            cwd=cwd,
            env={
                **_with_stage_env(stage, {**base, **(files.variables if files else {})}),
                **secrets,
            },
            timeout=timeout,
            redactor=ctx.redactor,
            log=log,
        )
    client = _docker_client(ctx)
    try:
        return run_in_container(
            client,
            stage.container,
            stage.run,
            stage=stage.name,
            workspace=ctx.workspace,
            cwd=cwd,
            env={**_with_stage_env(stage, ctx.pipeline_env), **secrets},
            timeout=timeout,
            redactor=ctx.redactor,
            log=log,
        )
    finally:
        client.close()


def _command_stage(
    stage: Stage,
    ctx: StageContext,
    log: Callable[[str], None],
    upstream: Sequence[StageResult] = (),
) -> StageResult:
    before = _snapshot(stage, ctx.workspace)
    files = HandoverFiles(handover_folder(ctx.workspace, stage.name))
    try:
        outcome = _run_commands_somewhere(stage, ctx, log, upstream, files)
    except StageFailed as failure:
        try:
            report = _read_reports(stage, ctx.workspace, before)
        except (StageFailed, ReportError):
            report = None
        if report is not None:
            _log_report(report, log)
        detail = str(failure).split(": ", 1)[-1]
        if report and report.problems:
            names = ", ".join(c.id for c in report.problems[:10])
            more = f" and {len(report.problems) - 10} more" if len(report.problems) > 10 else ""
            detail = f"{len(report.problems)} test(s) failed: {names}{more}"
        raise StageFailedWithReport(
            stage.name, detail, report, output_tail=failure.output_tail
        ) from None
    # a container cannot reach the files: only host stages hand over
    handover = files.read(stage.name) if stage.container is None else Handover()
    report = _read_reports(stage, ctx.workspace, before)
    _check_report(stage, report, log)
    if report and report.problems:
        names = ", ".join(c.id for c in report.problems[:10])
        raise StageFailedWithReport(
            stage.name, f"commands passed but the report lists failures: {names}", report
        )
    artifacts = archive_artifacts(stage.name, ctx.workspace, stage.artifacts)
    return StageResult(
        name=stage.name,
        seconds=round(outcome.duration_seconds, 3),
        cache_key=None,
        artifacts=artifacts,
        tests=report,
        output_tail=outcome.output_tail,
        handover=handover,
    )


def _gate_verdict(phase: str, stage: Stage, log: Callable[[str], None]) -> str | None:
    """Why a gate's phase fails the stage; None when it passes. Missing data never passes,
    unless the stage says an undecided gate may go on (``allow_inconclusive``)."""
    if phase == "Inconclusive" and stage.allow_inconclusive:
        log("inconclusive, and the stage allows it (allow_inconclusive): carrying on")
        return None
    return {
        "Successful": None,
        "Failed": "failed",
        "Inconclusive": "inconclusive (missing data never counts as a pass)",
        "Error": "could not be evaluated",
    }.get(phase, f"ended in unknown phase {phase!r}")


def _quality_gate_stage(stage: Stage, ctx: StageContext, log: Callable[[str], None]) -> StageResult:
    spec = stage.quality_gate
    assert spec is not None
    started = time.monotonic()
    env = _with_stage_env(stage, ctx.env)
    gate = evaluate_quality_gate(spec, ctx.workspace, env, ctx.redactor, log)
    verdict = _gate_verdict(gate.phase, stage, log)
    if verdict is not None:
        failed = "; ".join(
            f"{c.metric} {c.actual} (limit {c.comparator} {c.threshold})"
            for c in gate.failed_conditions
        )
        detail = f"quality gate {verdict}: {failed or gate.message}"
        raise StageFailedWithReport(stage.name, detail, gate=gate)
    return StageResult(stage.name, round(time.monotonic() - started, 3), None, gate=gate)


def _nearest_image(upstream: Sequence[StageResult]) -> StageResult | None:
    return next((r for r in reversed(upstream) if r.image is not None), None)


def _security_scan_stage(
    stage: Stage,
    ctx: StageContext,
    log: Callable[[str], None],
    upstream: Sequence[StageResult],
) -> StageResult:
    spec = stage.security_scan
    assert spec is not None
    started = time.monotonic()
    image_ref = None
    if spec.image:
        built = _nearest_image(upstream)
        if built is None or built.image is None:
            raise StageFailed(stage.name, "an image scan needs a build_image stage before it")
        image_ref = built.image.references[0]
    scan = run_security_scan(
        spec,
        workspace=ctx.workspace,
        image_ref=image_ref,
        policy=resolve_policy(spec),
        today=datetime.now(UTC).date(),
        log=log,
    )
    verdict = _gate_verdict(scan.phase, stage, log)
    if verdict is not None:
        raise StageFailedWithReport(
            stage.name, f"security scan {verdict}: {scan.reason}", scan=scan
        )
    return StageResult(stage.name, round(time.monotonic() - started, 3), None, scan=scan)


def _registry_of(spec: ImageBuildSpec, redactor: Redactor) -> DockerRegistryCredentials | None:
    registry = registry_credentials(spec)
    if registry is not None and registry.password is not None:
        redactor.add(registry.password.get_secret_value())
    return registry


def _build_image_stage(stage: Stage, ctx: StageContext, log: Callable[[str], None]) -> StageResult:
    spec = stage.build_image
    assert spec is not None
    started = time.monotonic()
    registry = _registry_of(spec, ctx.redactor) if spec.push else None
    client = _docker_client(ctx)
    try:
        image = build_image(
            client,
            spec,
            workspace=ctx.workspace,
            revision=ctx.revision,
            build_number=ctx.build_number,
            source_url=ctx.source_url,
            log=log,
            created=ctx.committed_at,
        )
        pushed = None
        if spec.push:
            pushed = push_image(
                client, image, registry=registry, registry_url=spec.registry_url, log=log
            )
    finally:
        client.close()
    return StageResult(
        stage.name, round(time.monotonic() - started, 3), None, image=image, pushed=pushed
    )


def _push_image_stage(
    stage: Stage,
    ctx: StageContext,
    log: Callable[[str], None],
    upstream: Sequence[StageResult],
) -> StageResult:
    spec = stage.push_image
    assert spec is not None
    built = next((r for r in upstream if r.name == spec.from_stage), None)
    if built is None or built.image is None:
        raise StageFailed(
            stage.name, f"stage {spec.from_stage!r} built no image this run (it must be needed)"
        )
    if ctx.build_spec_of is None or spec.from_stage not in ctx.build_spec_of:
        raise StageFailed(stage.name, f"stage {spec.from_stage!r} is not a build_image stage")
    build_spec = ctx.build_spec_of[spec.from_stage]
    started = time.monotonic()
    registry = _registry_of(build_spec, ctx.redactor)
    client = _docker_client(ctx)
    try:
        pushed = push_image(
            client, built.image, registry=registry, registry_url=build_spec.registry_url, log=log
        )
    finally:
        client.close()
    return StageResult(
        stage.name, round(time.monotonic() - started, 3), None, image=built.image, pushed=pushed
    )


def cache_key(
    *,
    app: str,
    sha: str,
    branch: str | None,
    stage: Stage,
    env: Mapping[str, str],
    upstream: list[str],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """What a stage's result depends on: commit, ref, its spec, env and upstream keys
    (plus ``extra``: what a built-in stage also depends on, e.g. a scan's policy and day)."""
    material = json.dumps(
        {
            "app": app,
            "sha": sha,
            "branch": branch,
            "stage": stage.model_dump(mode="json", by_alias=True, exclude_none=True),
            "env": dict(sorted(env.items())),
            "upstream": sorted(upstream),
            "extra": dict(extra or {}),
        },
        sort_keys=True,
    )
    return f"slipway-stage-{stage.name}-" + hashlib.sha256(material.encode()).hexdigest()[:32]


def _with_dependency_caches(
    stage: Stage, ctx: StageContext, log: Callable[[str], None], run: Callable[[], StageResult]
) -> StageResult:
    """Restore the stage's dependency caches, run it, save the caches that missed."""
    if not stage.dependency_cache:
        return run()
    home = {**ctx.env, **stage.env}.get("HOME")
    roots = CacheRoots(ctx.workspace, Path(home) if home and os.path.isabs(home) else None)
    scopes = list(dict.fromkeys(s for s in (ctx.branch, ctx.default_branch)))
    lookups = restore_caches(stage.name, stage.dependency_cache, roots, scopes, log)
    result = run()
    outcomes = save_caches(stage.name, lookups, roots, ctx.branch, log)
    return StageResult(**{**result.__dict__, "dependency_caches": outcomes})


def _attempt() -> tuple[str, bool]:
    """The task run's id (shared by its retries) and whether this is its last attempt."""
    context = TaskRunContext.get()
    if context is None:
        return uuid.uuid4().hex, True
    return str(context.task_run.id), context.task_run.run_count > context.task.retries


def _run_stage(
    stage: Stage, ctx: StageContext, key: str | None, upstream: Sequence[StageResult] = ()
) -> StageResult:
    logger = get_run_logger()
    local = stage.work_pool is None  # a work_pool stage changes another machine's disk
    attempt, last = _attempt()
    if local:
        begin_capture(ctx.workspace, attempt)
    try:
        result = _with_dependency_caches(
            stage,
            ctx,
            logger.info,
            lambda: execute_stage(stage, ctx, log=logger.info, upstream=upstream),
        )
    except StageCancelled as cancelled:
        # the run is being cancelled (its processes are already gone): the task run
        # ends Cancelled, not Failed, and is never retried. Prefect would store a
        # returned non-failed state under the cache key and serve it as a Cached
        # result to the next run: not written.
        if local:
            abandon_capture(ctx.workspace, attempt)
        transaction = get_transaction()
        if transaction is not None:
            transaction.write_on_commit = False
        return Cancelled(message=str(cancelled))  # type: ignore[return-value]
    except BaseException:
        if local and last:
            abandon_capture(ctx.workspace, attempt)
        raise
    changes = finish_capture(ctx.workspace, attempt) if local else no_changes()
    if not changes.restorable:
        logger.warning("stage %s: its result will not be reused: %s", stage.name, changes.why_not)
    return StageResult(**{**result.__dict__, "cache_key": key, "workspace": changes})


def _key_from_parameters(_context: object, parameters: dict[str, Any]) -> str | None:
    return parameters.get("key")


# No tags on slipway's tasks: Prefect asks the server for a tag concurrency slot at
# the start of every task run that has tags, limit or not, and on SQLite those
# requests collide with the server's own writes ("database is locked", HTTP 503 and
# a client retry of about 2 s). Runs are found by their flow run instead.
_base_stage_task: Task[..., StageResult] = task(
    _run_stage,
    name="stage",
    persist_result=True,
)


def stage_task(
    stage: Stage, *, default_timeout: float, default_retries: list[float], refresh: bool
) -> Task[..., StageResult]:
    """The Prefect task for one stage, configured from the pipeline file."""
    delays = stage.retries.delays() if stage.retries is not None else default_retries
    timeout = (stage.timeout or default_timeout) + PREFECT_TIMEOUT_MARGIN_SECONDS
    options: dict[str, Any] = {
        "name": f"stage:{stage.name}",
        "task_run_name": stage.name,
        "retries": len(delays),
        "retry_delay_seconds": delays or 0,
        "timeout_seconds": timeout,
    }
    # Keyed by the flow (no key: never reused). A stage that is not reused across runs
    # (images, image scans, cache: false) gets a key scoped to its run, so a run that
    # executes again (resumed after a suspended approval) does not rebuild or push again.
    options.update(
        cache_key_fn=_key_from_parameters,
        cache_expiration=CACHE_EXPIRATION,
        refresh_cache=refresh,
    )
    return _base_stage_task.with_options(**options)


# What stage commands get from the worker's environment, by name: what programs need
# to run at all, nothing that authenticates (a worker's cloud keys, PREFECT_API_*,
# SLIPWAY_WEBHOOK_SECRET never reach a stage). HOME is the run's own (see
# slipway.workspace.run_home), so ~/.prefect, ~/.docker, ~/.git-credentials and
# ~/.kube of the worker's user are not where a stage's tools look.
WORKER_ENV_ALLOWED = frozenset({"PATH", "LANG", "TZ", "TMPDIR", "TERM", "USER"})
WORKER_ENV_ALLOWED_PREFIXES = ("LC_",)
# An operator may pass more of the worker's variables, by name (proxies, CA bundles):
# SLIPWAY_STAGE_PASS_ENV="SSL_CERT_FILE,HTTPS_PROXY". Never these:
PASS_ENV_VARIABLE = "SLIPWAY_STAGE_PASS_ENV"
NEVER_PASSED_PREFIXES = ("PREFECT_",)
NEVER_PASSED = frozenset({"SLIPWAY_WEBHOOK_SECRET"})


def _passed_by_operator(base: Mapping[str, str]) -> set[str]:
    names = {n.strip() for n in base.get(PASS_ENV_VARIABLE, "").split(",") if n.strip()}
    refused = sorted(n for n in names if n in NEVER_PASSED or n.startswith(NEVER_PASSED_PREFIXES))
    if refused:
        raise ConfigError(
            f"{PASS_ENV_VARIABLE} names {', '.join(refused)}: these never reach a stage "
            "(give a stage what it needs with the pipeline file's env: or secrets:)"
        )
    return names


def worker_env_for_stages(base: Mapping[str, str]) -> dict[str, str]:
    """The part of the worker's environment that stage commands may see."""
    allowed = WORKER_ENV_ALLOWED | _passed_by_operator(base)
    return {
        name: value
        for name, value in base.items()
        if name in allowed or name.startswith(WORKER_ENV_ALLOWED_PREFIXES)
    }


def stage_environment(
    *, base: Mapping[str, str] | None, pipeline_env: Mapping[str, str], run_vars: Mapping[str, str]
) -> dict[str, str]:
    """The environment commands see: the allowed part of the worker's (``base``, default
    this process's), then the pipeline's (``$VAR`` expanded from the allowed part and the
    run variables, never from what stages are not given), then slipway's run variables
    (HOME among them)."""
    allowed = worker_env_for_stages(os.environ if base is None else base)
    return {**allowed, **expand_env(pipeline_env, {**allowed, **run_vars}), **run_vars}
