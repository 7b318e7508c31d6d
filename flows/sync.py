"""GitOps sync: keep clusters as the manifests repository says, and say where they are not.

``gitops-sync`` takes an application file under ``deployments/applications/`` (by name
or path; :mod:`slipway.application_spec`) and syncs it with
:func:`~slipway.tasks.sync.sync_application`: render git at the target revision, diff
the live objects on the fields git sets, apply what the sync policy allows, prune
what git dropped (with ``prune``), retry with exponential backoff. Deployed on an
interval schedule it is Argo CD's reconciliation loop: an object edited by hand
(replicas 3 -> 5, an image) is found on the next run and, with ``self_heal``, put
back and reported as reverted; without ``self_heal`` it is reported and notified
only.

Every run publishes a Markdown artifact per application (key
``gitops-sync-<app>``): sync status, health, and a readable diff per object that
differed from git. A ``notifier`` (SlackNotifier block) in the application file
hears about drift, failed syncs and Degraded health; a sync that changes nothing
stays quiet.

An application set (a list generator over clusters) syncs every element at once, or,
with ``progressive``, one after the other in list order, waiting for each to be
Healthy (at most ``health_timeout_seconds``) and stopping at the first that is not:
a bad release stops at dev instead of reaching production. The run then fails,
naming the element, and the rest are reported as not synced.

A run fails (after its artifacts) when a sync failed after its retries, when an
empty render was refused, or when a progressive set stopped; drift that was only
reported does not fail it (the artifact and the notification carry it).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from slipway.application_spec import Application, ApplicationSet, find_application
from slipway.blocks.gitops import ManifestsRepository
from slipway.blocks.notifications import SlackNotifier
from slipway.exceptions import ConfigError, SyncFailed
from slipway.redact import Redactor
from slipway.tasks.kube_client import load_cluster
from slipway.tasks.notify import send_slack_message
from slipway.tasks.sync import (
    SyncResult,
    plan_environment,
    repository_for,
    sync_app,
    wait_for_app_health,
)
from slipway.tasks.sync_report import slack_summary, sync_markdown
from slipway.workspace import slipway_home

__all__ = ["gitops_sync", "plan_environment"]  # plan_environment: for the approval form


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


async def _load_repo(app: Application, redactor: Redactor) -> ManifestsRepository:
    if app.repo_is_url:
        return repository_for(app)
    try:
        repo = await ManifestsRepository.aload(app.repo)
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise ConfigError(
            f"application {app.name}: no ManifestsRepository block named {app.repo!r}"
        ) from exc
    redactor.add(*repo.secret_values())
    return repo


async def _load_notifier(name: str | None, redactor: Redactor) -> SlackNotifier | None:
    if name is None:
        return None
    try:
        notifier = await SlackNotifier.aload(name)
    except ValueError as exc:
        raise ConfigError(f"no SlackNotifier block named {name!r}") from exc
    redactor.add(*notifier.secret_values())
    return notifier


def _workdir(app: Application) -> Path:
    """The app's clone of its manifests repository, kept between runs (fetches are cheap)."""
    return slipway_home() / "gitops-sync" / app.name


async def _publish(result: SyncResult, redactor: Redactor) -> None:
    await acreate_markdown_artifact(
        key=_key("gitops-sync", result.app),
        markdown=redactor.redact(sync_markdown(result)),
        description=redactor.redact(result.summary())[:500],
    )


def _worth_telling(result: SyncResult) -> bool:
    return bool(result.error or result.drift or result.health == "Degraded") and not result.dry_run


async def _tell(notifier: SlackNotifier | None, result: SyncResult, redactor: Redactor) -> None:
    if notifier is None or not _worth_telling(result):
        return
    title, body = slack_summary(result)
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}},
    ]
    await asyncio.to_thread(
        send_slack_message, notifier, f"{title}\n{body}", blocks, redactor, what=title
    )


async def _sync(
    app: Application,
    clusters: dict[str, Any],
    repo: ManifestsRepository,
    *,
    dry_run: bool,
    manual: bool,
    redactor: Redactor,
) -> SyncResult:
    future = sync_app.submit(
        clusters[app.destination.cluster], app, repo, workdir=_workdir(app), dry_run=dry_run,
        manual=manual, redactor=redactor,
    )  # fmt: skip
    return await asyncio.to_thread(future.result)


@flow(name="gitops-sync", log_prints=False)
async def gitops_sync(
    application: str, dry_run: bool = False, manual_sync: bool = False
) -> list[SyncResult]:
    """Sync an application (or an application set) from git into its cluster(s).

    Args:
        application: an application file's name in deployments/applications (e.g.
            ``example-app`` for ``deployments/applications/example-app.yaml``) or a path
            to one.
        dry_run: only compare git with the clusters and report; change nothing.
            Default: false.
        manual_sync: a person's sync: apply every difference (drift included) whatever
            ``automated`` and ``self_heal`` say; prune still needs ``prune``. Default: false.
    """
    logger = get_run_logger()
    redactor = Redactor()
    path, spec = find_application(application)
    apps = [spec] if isinstance(spec, Application) else spec.applications()
    logger.info(f"{path}: {', '.join(a.name for a in apps)}")
    template = apps[0]
    repo = await _load_repo(template, redactor)
    notifier = await _load_notifier(template.notifier, redactor)
    clusters = {a.destination.cluster: None for a in apps}
    for name in clusters:
        clusters[name] = await load_cluster(name)

    results: list[SyncResult] = []
    stopped: str | None = None
    if isinstance(spec, ApplicationSet) and spec.progressive:
        for index, app in enumerate(apps):
            result = await _sync(
                app, clusters, repo, dry_run=dry_run, manual=manual_sync, redactor=redactor
            )
            if result.ok and not dry_run:
                result = await asyncio.to_thread(
                    wait_for_app_health,
                    clusters[app.destination.cluster],
                    result,
                    timeout=spec.health_timeout_seconds,
                )
            results.append(result)
            await _publish(result, redactor)
            await _tell(notifier, result, redactor)
            if not dry_run and (not result.ok or result.health != "Healthy"):
                rest = [a.name for a in apps[index + 1 :]]
                stopped = (
                    f"{app.name} is {result.health}"
                    + (f" ({result.error})" if result.error else "")
                    + (f": not synced: {', '.join(rest)}" if rest else "")
                )
                logger.warning(f"progressive sync stopped: {stopped}")
                break
    else:
        results = list(
            await asyncio.gather(
                *(
                    _sync(app, clusters, repo, dry_run=dry_run, manual=manual_sync,
                          redactor=redactor)
                    for app in apps
                )
            )
        )  # fmt: skip
        for result in results:
            await _publish(result, redactor)
            await _tell(notifier, result, redactor)

    if isinstance(spec, ApplicationSet):
        await _publish_set(spec, results, stopped, redactor)
    failed = [r for r in results if not r.ok]
    if failed or stopped:
        reasons = [f"{r.app}: {r.error}" for r in failed]
        if stopped:
            reasons.append(f"progressive sync stopped: {stopped}")
        raise SyncFailed(redactor.redact("; ".join(reasons)))
    return results


async def _publish_set(
    spec: ApplicationSet, results: list[SyncResult], stopped: str | None, redactor: Redactor
) -> None:
    done = {r.app: r for r in results}
    rows = []
    for element, app in zip(spec.generator.list_.elements, spec.applications(), strict=True):
        r = done.get(app.name)
        rows.append(
            {
                "element": element.name,
                "cluster": element.cluster,
                "namespace": element.namespace,
                "sync status": r.sync_status if r else "not synced",
                "health": r.health if r else "-",
                "applied": len(r.applied) if r else 0,
                "reverted": len(r.reverted) if r else 0,
                "pruned": len(r.pruned) if r else 0,
                "error": redactor.redact(r.error or "") if r else "",
            }
        )
    mode = "progressive" if spec.progressive else "all at once"
    await acreate_table_artifact(
        key=_key("gitops-sync", spec.name),
        table=rows,
        description=f"Sync of {spec.name} ({mode})"
        + (f"; stopped: {redactor.redact(stopped)}" if stopped else ""),
    )
