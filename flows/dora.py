"""DORA report: deployment frequency, lead time, change failure rate and time to restore.

Started on a schedule or from a script::

    prefect deployment run 'dora-report/weekly' -p manifests=manifests \\
        -p environment=production -p weeks=8

The deploy record is the GitOps manifests repository (a deploy is a bump commit, a
rollback a revert commit; :mod:`slipway.tasks.dora` says how each metric is read
from it). The flow:

1. loads the manifests block and clones the repository into
   ``$SLIPWAY_HOME/reports/dora/<run id>/`` (deleted at the end, the PNG kept);
2. reads the commits of the environment's folder in the window;
3. for bumps without a ``Slipway-Source-Commit-Time`` trailer (written before it
   existed, or by other tooling) looks the source commit up in the app repository:
   the one ``repositories`` names for the app (AppRepository block name, clone URL
   or path), else the ``repository`` parameter of the pipeline run the bump's
   ``Slipway-Run`` trailer names, read from the Prefect API. An app repository that
   cannot be reached leaves those lead times unknown (the report counts them); it
   never fails the report;
4. computes the metrics per app and ISO week, and publishes them:

   - a table artifact ``dora-<environment>``: one row per app and week, then the
     app's total over the window;
   - a markdown artifact ``dora-<environment>-summary``: a line per app and the
     chart, embedded as a ``data:image/png;base64`` URI (the Prefect UI renders it
     inline in the artifact page) with the PNG's path on the worker;
   - ``dora-<environment>.png`` in the report folder, for mail or a wiki.

The flow's return value is the :class:`~slipway.tasks.dora.DoraReport`.

No ``from __future__ import annotations``: a flow sent to another process (Prefect's
runner) must resolve its parameter annotations there.
"""

import asyncio
import base64
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.exceptions import ObjectNotFound
from pydantic import Field

from slipway.blocks.git import AppRepository
from slipway.blocks.gitops import ManifestsRepository
from slipway.exceptions import ConfigError, SlipwayError, retry_temporary_errors
from slipway.redact import Redactor
from slipway.repository_policy import is_block_name
from slipway.spec_types import NAME_PATTERN
from slipway.tasks.dora import (
    Deploy,
    DoraReport,
    ManifestCommit,
    compute_dora,
    find_deploys,
    read_manifest_history,
    read_source_commit_times,
    summary_markdown,
    table_rows,
    window,
)
from slipway.tasks.dora_chart import render_chart
from slipway.workspace import slipway_home

BLOCK_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,127}$"
MAX_WEEKS = 104
# a clone URL or local path (as the pipeline's ``repository`` parameter takes it)
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
BlockName = Annotated[str, Field(pattern=BLOCK_NAME_PATTERN)]


# ----------------------------------------------------------------------------- tasks


@task(
    name="read_deploy_history",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_temporary_errors,
    timeout_seconds=600,
    cache_policy=NO_CACHE,  # the history moves; its inputs hold the redactor
)
def read_deploy_history(
    repo: ManifestsRepository,
    *,
    environment: str,
    since: datetime,
    workdir: Path,
    redactor: Redactor,
) -> list[ManifestCommit]:
    """The manifests repository's commits of ``environment`` since ``since``."""
    return read_manifest_history(
        repo, environment=environment, since=since, workdir=workdir, redactor=redactor
    )


@task(
    name="read_commit_times",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_temporary_errors,
    timeout_seconds=600,
    cache_policy=NO_CACHE,
)
def read_commit_times(
    remote: AppRepository, shas: list[str], *, workdir: Path, redactor: Redactor
) -> dict[str, datetime]:
    """Committer dates of ``shas`` in an application repository."""
    return read_source_commit_times(remote, shas, workdir=workdir, redactor=redactor)


@task(name="render_dora_chart", timeout_seconds=120, cache_policy=NO_CACHE)
def render_dora_chart(report: DoraReport, path: Path) -> Path:
    """The report as a PNG at ``path``."""
    return render_chart(report, path)


# ----------------------------------------------------------------------------- helpers


async def _call(step: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a sync task from the async flow without blocking its event loop."""
    future = step.submit(*args, **kwargs)
    await asyncio.to_thread(future.wait)
    return await future.state.aresult()


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lower-case letters, digits, dashes) from names."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


async def _load_manifests(name: str, environment: str) -> ManifestsRepository:
    try:
        repo = await ManifestsRepository.aload(name)
    except ValueError as exc:
        why = "no such block" if "Unable to find" in str(exc) else "it does not load"
        raise ConfigError(f"ManifestsRepository block {name!r}: {why}") from None
    if environment not in repo.environments:
        known = ", ".join(sorted(repo.environments)) or "none"
        raise ConfigError(
            f"environment {environment!r} is not in manifests block {name!r} (it has: {known})"
        )
    return repo


async def _resolve_repository(repository: str) -> AppRepository:
    if repository and not is_block_name(repository):
        return AppRepository(url=repository)
    try:
        return await AppRepository.aload(repository)
    except ValueError:
        raise ConfigError(f"AppRepository block {repository!r} does not load") from None


async def pipeline_repositories(run_ids: set[str]) -> set[str]:
    """The ``repository`` parameters of the pipeline runs named, as the Prefect API has
    them (runs it no longer has, or ids that are not flow run ids, are skipped)."""
    found: set[str] = set()
    async with get_client() as client:
        for run_id in sorted(run_ids):
            try:
                run = await client.read_flow_run(UUID(run_id))
            except (ValueError, ObjectNotFound):
                continue
            repository = (run.parameters or {}).get("repository")
            if isinstance(repository, str) and repository:
                found.add(repository)
    return found


async def source_commit_times(
    deploys: list[Deploy],
    repositories: dict[str, str],
    *,
    workdir: Path,
    redactor: Redactor,
) -> dict[str, datetime]:
    """Source commit times from the app repositories, for deploys without the trailer.

    Best effort: what cannot be read is logged and left unknown.
    """
    logger = get_run_logger()
    missing = [d for d in deploys if d.source_committed_at is None and d.source_commit]
    times: dict[str, datetime] = {}
    for app in sorted({d.app for d in missing}):
        mine = [d for d in missing if d.app == app]
        if app in repositories:
            candidates = {repositories[app]}
        else:
            candidates = await pipeline_repositories({d.run_id for d in mine if d.run_id})
        if not candidates:
            logger.warning(
                "%s: %d deploy(s) have no source commit time and no app repository is known "
                "(give repositories={%r: ...}); their lead time is unknown",
                app,
                len(mine),
                app,
            )
            continue
        for n, repository in enumerate(sorted(candidates)):
            wanted = [d.source_commit for d in mine if d.source_commit not in times]
            if not wanted:
                break
            try:
                remote = await _resolve_repository(repository)
                redactor.add(*remote.secret_values())
                found = await _call(
                    read_commit_times,
                    remote,
                    [s for s in wanted if s],
                    workdir=workdir / artifact_key(app, str(n)),
                    redactor=redactor,
                )
            except SlipwayError as exc:
                logger.warning(
                    "%s: app repository %s not readable (%s); lead time of %d deploy(s) unknown",
                    app,
                    redactor.redact(repository),
                    redactor.redact(str(exc)),
                    len(wanted),
                )
                continue
            times.update(found)
            logger.info(
                "%s: %d of %d source commit time(s) read from %s",
                app,
                sum(1 for s in wanted if s in found),
                len(wanted),
                redactor.redact(repository),
            )
    return times


# ----------------------------------------------------------------------------- flow


@flow(
    name="dora-report",
    description="DORA metrics per app and ISO week from the GitOps manifests repository.",
)
async def dora_report(
    manifests: BlockName,
    environment: Name = "production",
    weeks: Annotated[int, Field(ge=1, le=MAX_WEEKS)] = 8,
    app: Name | None = None,
    repositories: dict[str, str] | None = None,
    until: datetime | None = None,
) -> DoraReport:
    """DORA metrics of one environment, per app and ISO week, as a table and a chart.

    Args:
        manifests: ManifestsRepository block name (the deploy record).
        environment: environment whose deploys count; default production.
        weeks: ISO weeks to report, ending with the current one (1-104); default 8.
        app: report only this app; default every app deployed in the window.
        repositories: app -> AppRepository block name, clone URL or path, for source
            commit times of bumps without the Slipway-Source-Commit-Time trailer;
            default: the repository parameter of the pipeline run that deployed it.
        until: end of the window (ISO 8601 with an offset); default now.
    """
    logger = get_run_logger()
    until = until or datetime.now(UTC)
    if until.tzinfo is None:
        raise ConfigError(f"until {until.isoformat()!r} needs a UTC offset")
    since, _mondays = window(until, weeks)
    redactor = Redactor()
    repo = await _load_manifests(manifests, environment)
    redactor.add(*repo.secret_values())
    context = get_run_context()
    run_id = str(context.flow_run.id) if context.flow_run else "local"
    folder = slipway_home() / "reports" / "dora" / run_id
    clones = folder / "git"
    try:
        commits = await _call(
            read_deploy_history,
            repo,
            environment=environment,
            since=since,
            workdir=clones / "manifests",
            redactor=redactor,
        )
        deploys = find_deploys(commits, environment=environment, app=app)
        times = await source_commit_times(
            deploys, repositories or {}, workdir=clones / "apps", redactor=redactor
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, clones, True)
    report = compute_dora(
        commits, environment=environment, until=until, weeks=weeks, app=app, source_times=times
    )
    png = await _call(
        render_dora_chart, report, folder / f"{artifact_key('dora', environment)}.png"
    )
    data_uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    description = (
        f"DORA metrics of {environment}, {report.weeks[0]} to {report.weeks[-1]}: "
        f"{len(report.deploys)} deploy(s), {len(report.apps)} app(s)"
    )
    await acreate_table_artifact(
        key=artifact_key("dora", environment),
        table=table_rows(report),
        description=description,
    )
    await acreate_markdown_artifact(
        key=artifact_key("dora", environment, "summary"),
        markdown=summary_markdown(report, chart=data_uri, png=png),
        description=description,
    )
    logger.info("%s; chart at %s", description, png)
    return report
