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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from wcmatch import glob

from slipway.exceptions import ReportError, StageFailed
from slipway.redact import Redactor
from slipway.spec import Stage
from slipway.tasks.artifacts import ArchivedFile, archive_artifacts
from slipway.tasks.commands import run_commands
from slipway.tasks.junit_reports import SuiteReport, collect_suite
from slipway.workspace import inside

CACHE_EXPIRATION = timedelta(days=14)
# Prefect's own timeout is the backstop; the command runner kills the process
# group at the stage timeout itself and reports it first.
PREFECT_TIMEOUT_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class StageContext:
    """Everything a stage needs from the run, passed explicitly (tasks read no globals)."""

    workspace: Path
    env: Mapping[str, str]
    default_timeout: float
    redactor: Redactor = field(default_factory=Redactor, compare=False)


@dataclass(frozen=True)
class StageResult:
    """What a passed stage leaves behind for the summary and the stages after it."""

    name: str
    seconds: float
    cache_key: str | None
    artifacts: tuple[ArchivedFile, ...] = ()
    tests: SuiteReport | None = None
    output_tail: str = ""


class StageFailedWithReport(StageFailed):
    """A stage failed but produced a test report worth showing."""

    def __init__(self, stage: str, detail: str, report: SuiteReport | None = None) -> None:
        super().__init__(stage, detail)
        self.detail = detail
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.stage, self.detail, self.report))


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


def execute_stage(
    stage: Stage, ctx: StageContext, *, log: Callable[[str], None] | None = None
) -> StageResult:
    """Run one command stage; raise :class:`StageFailed` (with the report when there is one)."""
    assert stage.run is not None, "parallel groups are scheduled by the flow"
    log = log or (lambda _line: None)
    cwd = inside(ctx.workspace, stage.dir)
    env = {**ctx.env, **stage.env}
    before = _snapshot(stage, ctx.workspace)
    try:
        outcome = run_commands(
            stage.run,
            stage=stage.name,
            cwd=cwd,
            env=env,
            timeout=stage.timeout or ctx.default_timeout,
            redactor=ctx.redactor,
            log=log,
        )
    except StageFailed as failure:
        try:
            report = _read_reports(stage, ctx.workspace, before)
        except (StageFailed, ReportError):
            report = None
        detail = str(failure).split(": ", 1)[-1]
        if report and report.problems:
            names = ", ".join(c.id for c in report.problems[:10])
            more = f" and {len(report.problems) - 10} more" if len(report.problems) > 10 else ""
            detail = f"{len(report.problems)} test(s) failed: {names}{more}"
        raise StageFailedWithReport(stage.name, detail, report) from None
    report = _read_reports(stage, ctx.workspace, before)
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
    )


def cache_key(
    *,
    app: str,
    sha: str,
    branch: str | None,
    stage: Stage,
    env: Mapping[str, str],
    upstream: list[str],
) -> str:
    """What a stage's result depends on: commit, ref, its spec, env and upstream keys."""
    material = json.dumps(
        {
            "app": app,
            "sha": sha,
            "branch": branch,
            "stage": stage.model_dump(mode="json", by_alias=True, exclude_none=True),
            "env": dict(sorted(env.items())),
            "upstream": sorted(upstream),
        },
        sort_keys=True,
    )
    return f"slipway-stage-{stage.name}-" + hashlib.sha256(material.encode()).hexdigest()[:32]


def _run_stage(stage: Stage, ctx: StageContext, key: str | None) -> StageResult:
    logger = get_run_logger()
    result = execute_stage(stage, ctx, log=logger.info)
    return StageResult(**{**result.__dict__, "cache_key": key})


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
    if stage.cache:
        options.update(
            cache_key_fn=_key_from_parameters,
            cache_expiration=CACHE_EXPIRATION,
            refresh_cache=refresh,
        )
    else:
        options.update(cache_policy=NO_CACHE)
    return _base_stage_task.with_options(**options)


def stage_environment(
    *, base: Mapping[str, str] | None, pipeline_env: Mapping[str, str], run_vars: Mapping[str, str]
) -> dict[str, str]:
    """The environment commands see: the worker's, then the pipeline's, then slipway's."""
    return {**(os.environ if base is None else base), **pipeline_env, **run_vars}
