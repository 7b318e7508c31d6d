"""DORA metrics from the deploy record: the GitOps manifests repository.

A deploy *is* a bump commit in the manifests repository and a rollback *is* a revert
commit there (:mod:`slipway.tasks.gitops`), so the four DORA metrics are read from
that repository's history, per app and per ISO week (Monday 00:00 UTC to the next):

- **deployment frequency**: bump commits of the app in the environment (commits
  with ``Slipway-App`` / ``Slipway-Environment`` / ``Slipway-Image`` trailers that
  are not reverts). A bump later reverted still counts: it was deployed, and it is
  what the change failure rate counts as failed.
- **lead time for changes**: the bump's committer date minus the source commit's
  committer date. The committer date, not the author date: it is when the change
  took its final form (a rebase or an amend resets it), and it is what checkout
  records. Where the source commit time comes from, in this order:
  1. the bump's ``Slipway-Source-Commit-Time`` trailer, written by the pipeline from
     the commit it checked out (the same value the app repository holds, read
     without cloning it, and still there when the app repository is gone, renamed
     or force-pushed);
  2. the app repository (``source_times``: the caller looks the ``Slipway-Source-
     Commit`` SHAs up there, see :func:`read_source_commit_times`) for bumps written
     before that trailer existed or by other tooling;
  3. neither: the deploy counts for frequency and failure rate, its lead time is
     unknown and the report says how many are.
- **change failure rate**: deploys of the week that were later reverted (a
  ``Slipway-Reverts: <sha>`` trailer, or git's own ``This reverts commit <sha>``
  for a revert made by hand), over the week's deploys. Attributed to the week of
  the deploy, not of the revert, so a week's rate is final once its reverts land.
  A manual rollback to a revision reverts several bumps; each counts as failed.
- **time to restore**: the revert commit's date minus the bad bump's date: the
  time the bad release was the desired state. Attributed to the deploy's week too.

Lead time and time to restore are distributions: each row has the median and the
90th percentile (linear interpolation between closest ranks, as numpy's default;
with one sample both are that sample). Frequency and failure rate are a count and
a ratio. A week without deploys has a row with 0 deploys and no rates: a quiet week
is data for deployment frequency.

Commit times are what git recorded (``%cI``); bumps and reverts are committed by
slipway on the worker, so their dates are the worker's clock at push time.

Everything above is plain functions over :class:`ManifestCommit` lists, tested
without git or Prefect; :func:`read_manifest_history` and
:func:`read_source_commit_times` are the two places that run git.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import git

from slipway.blocks.git import GitRemote
from slipway.blocks.gitops import ManifestsRepository
from slipway.exceptions import ConfigError, ManifestRepoError
from slipway.redact import Redactor
from slipway.tasks.checkout import SHA_RE, _Git
from slipway.tasks.gitops import (
    TRAILER_APP,
    TRAILER_BUILD,
    TRAILER_ENVIRONMENT,
    TRAILER_IMAGE,
    TRAILER_REVERTS,
    TRAILER_RUN,
    TRAILER_SOURCE_COMMIT,
    TRAILER_SOURCE_COMMIT_TIME,
    parse_trailers,
    sync_manifests,
)

# How many commits of the environment's folder are read at most (newest first).
HISTORY_LIMIT = 20_000
_GIT_REVERT_RE = re.compile(r"^This reverts commit ([0-9a-f]{40})\b", re.MULTILINE)
_SOURCE_SHA_RE = re.compile(r"^[0-9a-f]{7,64}$")

LeadSource = str  # "trailer" | "app-repository" | "unknown"


# ----------------------------------------------------------------------------- input


@dataclass(frozen=True)
class ManifestCommit:
    """One commit of the manifests repository, as read from git.

    Attributes:
        sha: full commit SHA.
        committed_at: committer date (timezone-aware).
        trailers: its git trailers (:func:`~slipway.tasks.gitops.parse_trailers`).
        message: the full message (for git's own ``This reverts commit`` line).
    """

    sha: str
    committed_at: datetime
    trailers: Mapping[str, str] = field(default_factory=dict)
    message: str = ""

    @property
    def reverts(self) -> str | None:
        """The SHA this commit reverts, if it is a revert."""
        if self.trailers.get(TRAILER_REVERTS):
            return self.trailers[TRAILER_REVERTS]
        match = _GIT_REVERT_RE.search(self.message)
        return match.group(1) if match else None


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Deploy:
    """One production deploy (bump commit) and what became of it.

    Attributes:
        deployed_at: the bump's committer date.
        source_committed_at: the source commit's committer date (None: unknown);
            ``lead_source`` says where it came from (trailer, app-repository, unknown).
        reverted_by / reverted_at: the first revert of this bump, if any.
    """

    app: str
    environment: str
    sha: str
    deployed_at: datetime
    build: str | None = None
    source_commit: str | None = None
    run_id: str | None = None
    source_committed_at: datetime | None = None
    lead_source: LeadSource = "unknown"
    reverted_by: str | None = None
    reverted_at: datetime | None = None

    @property
    def failed(self) -> bool:
        return self.reverted_by is not None

    @property
    def lead_time(self) -> timedelta | None:
        if self.source_committed_at is None:
            return None
        return self.deployed_at - self.source_committed_at

    @property
    def time_to_restore(self) -> timedelta | None:
        return None if self.reverted_at is None else self.reverted_at - self.deployed_at


@dataclass(frozen=True)
class Distribution:
    """Median and 90th percentile of some durations, in seconds (None: no samples)."""

    samples: int = 0
    median: float | None = None
    p90: float | None = None

    @classmethod
    def of(cls, durations: Iterable[timedelta]) -> Distribution:
        values = sorted(d.total_seconds() for d in durations)
        return cls(len(values), percentile(values, 50), percentile(values, 90))


@dataclass(frozen=True)
class WeekMetrics:
    """The four metrics of one app in one ISO week (``week``: e.g. ``2025-W07``).

    ``change_failure_rate`` is failed / deployments (None for a week without deploys);
    ``lead_time`` and ``time_to_restore`` are in seconds; ``lead_time_unknown`` counts
    the week's deploys whose source commit time was nowhere to be found.
    """

    app: str
    week: str
    week_start: date
    deployments: int
    failed: int
    change_failure_rate: float | None
    lead_time: Distribution
    time_to_restore: Distribution
    lead_time_unknown: int = 0


@dataclass(frozen=True)
class DoraReport:
    """The metrics of every app over ``weeks`` ISO weeks ending with the one holding ``until``.

    ``rows``: one per app and week, apps sorted, weeks oldest first; ``totals``: one
    per app over the whole window (``week`` = ``all``); ``deploys``: every deploy in
    the window, oldest first.
    """

    environment: str
    since: datetime
    until: datetime
    weeks: tuple[str, ...]
    rows: tuple[WeekMetrics, ...]
    totals: tuple[WeekMetrics, ...]
    deploys: tuple[Deploy, ...]

    @property
    def apps(self) -> tuple[str, ...]:
        return tuple(t.app for t in self.totals)


# ----------------------------------------------------------------------------- computation


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ascending values, interpolating linearly
    between closest ranks (numpy's default); None for no values."""
    if not sorted_values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    fraction = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def week_start(moment: datetime) -> date:
    """The Monday (UTC) of the ISO week holding ``moment``."""
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def window(until: datetime, weeks: int) -> tuple[datetime, list[date]]:
    """The start (a Monday 00:00 UTC) and the Mondays of ``weeks`` ISO weeks ending
    with the week of ``until``."""
    if isinstance(weeks, bool) or not isinstance(weeks, int) or weeks < 1:
        raise ConfigError(f"weeks must be a positive whole number, got {weeks!r}")
    if until.tzinfo is None:
        raise ConfigError(f"until {until.isoformat()!r} has no timezone")
    last = week_start(until)
    mondays = [last - timedelta(weeks=n) for n in range(weeks - 1, -1, -1)]
    return datetime.combine(mondays[0], datetime.min.time(), UTC), mondays


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def is_bump(commit: ManifestCommit, environment: str) -> bool:
    """A slipway bump commit of some app in ``environment`` (not a revert)."""
    t = commit.trailers
    return (
        bool(t.get(TRAILER_APP))
        and t.get(TRAILER_ENVIRONMENT) == environment
        and bool(t.get(TRAILER_IMAGE))
        and commit.reverts is None
    )


def find_deploys(
    commits: Iterable[ManifestCommit],
    *,
    environment: str,
    source_times: Mapping[str, datetime] | None = None,
    app: str | None = None,
) -> list[Deploy]:
    """The bumps of ``environment`` (optionally of one ``app``), oldest first, each with
    its first revert and its source commit time (trailer first, then ``source_times``
    keyed by the ``Slipway-Source-Commit`` SHA)."""
    source_times = source_times or {}
    ordered = sorted(commits, key=lambda c: c.committed_at)
    first_revert: dict[str, ManifestCommit] = {}
    for commit in ordered:
        target = commit.reverts
        if target and target not in first_revert:
            first_revert[target] = commit
    deploys: list[Deploy] = []
    for commit in ordered:
        if not is_bump(commit, environment):
            continue
        t = commit.trailers
        if app is not None and t[TRAILER_APP] != app:
            continue
        source = t.get(TRAILER_SOURCE_COMMIT)
        source_time, lead_source = _parse_time(t.get(TRAILER_SOURCE_COMMIT_TIME)), "trailer"
        if source_time is None and source and source in source_times:
            source_time, lead_source = source_times[source], "app-repository"
        if source_time is None:
            lead_source = "unknown"
        revert = first_revert.get(commit.sha)
        deploys.append(
            Deploy(
                app=t[TRAILER_APP],
                environment=environment,
                sha=commit.sha,
                deployed_at=commit.committed_at,
                build=t.get(TRAILER_BUILD),
                source_commit=source,
                run_id=t.get(TRAILER_RUN),
                source_committed_at=source_time,
                lead_source=lead_source,
                reverted_by=revert.sha if revert else None,
                reverted_at=revert.committed_at if revert else None,
            )
        )
    return deploys


def _metrics(app: str, week: str, monday: date, deploys: Sequence[Deploy]) -> WeekMetrics:
    failed = [d for d in deploys if d.failed]
    leads = [d.lead_time for d in deploys if d.lead_time is not None]
    restores = [d.time_to_restore for d in failed if d.time_to_restore is not None]
    return WeekMetrics(
        app=app,
        week=week,
        week_start=monday,
        deployments=len(deploys),
        failed=len(failed),
        change_failure_rate=len(failed) / len(deploys) if deploys else None,
        lead_time=Distribution.of(leads),
        time_to_restore=Distribution.of(restores),
        lead_time_unknown=len(deploys) - len(leads),
    )


def compute_dora(
    commits: Iterable[ManifestCommit],
    *,
    environment: str,
    until: datetime,
    weeks: int = 8,
    app: str | None = None,
    source_times: Mapping[str, datetime] | None = None,
) -> DoraReport:
    """The DORA metrics of ``environment`` over ``weeks`` ISO weeks ending with the week
    of ``until``; deploys after ``until`` are left out (reverts after it are not: a
    failure found later is still a failure)."""
    since, mondays = window(until, weeks)
    deploys = [
        d
        for d in find_deploys(commits, environment=environment, source_times=source_times, app=app)
        if since <= d.deployed_at <= until
    ]
    apps = sorted({d.app for d in deploys} | ({app} if app else set()))
    rows: list[WeekMetrics] = []
    totals: list[WeekMetrics] = []
    for name in apps:
        mine = [d for d in deploys if d.app == name]
        for monday in mondays:
            week = [d for d in mine if week_start(d.deployed_at) == monday]
            rows.append(_metrics(name, week_label(monday), monday, week))
        totals.append(_metrics(name, "all", mondays[0], mine))
    return DoraReport(
        environment=environment,
        since=since,
        until=until,
        weeks=tuple(week_label(m) for m in mondays),
        rows=tuple(rows),
        totals=tuple(totals),
        deploys=tuple(deploys),
    )


# ----------------------------------------------------------------------------- presentation


def format_duration(seconds: float | None) -> str:
    """``None`` -> ``-``; else the two largest units (``2d 3h``, ``4h 05m``, ``12m 30s``)."""
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def table_rows(report: DoraReport) -> list[dict[str, object]]:
    """One row per app and week, then the app's total: what the table artifact shows.

    Durations are shown readable (``4h 05m``) and also in seconds for anyone who
    copies the table into a spreadsheet.
    """
    rows: list[dict[str, object]] = []
    for total in report.totals:
        weekly = [r for r in report.rows if r.app == total.app]
        for r in [*weekly, total]:
            rows.append(
                {
                    "app": r.app,
                    "week": r.week,
                    "deploys": r.deployments,
                    "failed": r.failed,
                    "change failure rate": _rate(r.change_failure_rate),
                    "lead time median": format_duration(r.lead_time.median),
                    "lead time p90": format_duration(r.lead_time.p90),
                    "lead time unknown": r.lead_time_unknown,
                    "time to restore median": format_duration(r.time_to_restore.median),
                    "time to restore p90": format_duration(r.time_to_restore.p90),
                    "lead time median s": _seconds(r.lead_time.median),
                    "time to restore median s": _seconds(r.time_to_restore.median),
                }
            )
    return rows


def _seconds(value: float | None) -> int | None:
    return None if value is None else round(value)


def summary_markdown(
    report: DoraReport, *, chart: str | None = None, png: Path | None = None
) -> str:
    """The report as markdown: one summary line per app, the chart (an image URL,
    e.g. a ``data:`` URI) and where the PNG file is."""
    days = (report.until - report.since).total_seconds() / 86400
    lines = [
        f"# DORA metrics: {report.environment}",
        "",
        f"{len(report.weeks)} ISO weeks, {report.weeks[0]} to {report.weeks[-1]} "
        f"({report.since:%Y-%m-%d} to {report.until:%Y-%m-%d %H:%M} UTC; the last week "
        f"may still be running), {len(report.deploys)} deploy(s) in {days:.1f} days.",
        "",
    ]
    if not report.totals:
        lines.append("No slipway deploys in this window.")
    else:
        lines += [
            "| app | deploys | per week | change failure rate | lead time median / p90 "
            "| time to restore median / p90 |",
            "|---|---:|---:|---:|---|---|",
        ]
        for t in report.totals:
            unknown = f" ({t.lead_time_unknown} unknown)" if t.lead_time_unknown else ""
            lines.append(
                f"| {t.app} | {t.deployments} | {t.deployments / len(report.weeks):.1f} "
                f"| {_rate(t.change_failure_rate)} "
                f"| {format_duration(t.lead_time.median)} / {format_duration(t.lead_time.p90)}"
                f"{unknown} | {format_duration(t.time_to_restore.median)} / "
                f"{format_duration(t.time_to_restore.p90)} |"
            )
    if chart:
        lines += ["", f"![DORA metrics per week: {report.environment}]({chart})"]
    if png is not None:
        lines += ["", f"Chart file: `{png}`"]
    lines += [
        "",
        "Deploys are bump commits of the manifests repository, failures the deploys a "
        "revert commit undid, time to restore the bump-to-revert time, lead time the "
        "source commit's committer date to the bump; the table artifact has every week.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- git


def parse_log(output: str) -> list[ManifestCommit]:
    """``git log -z --format=%H%x1f%cI%x1f%B`` output -> commits."""
    commits: list[ManifestCommit] = []
    for record in output.split("\0"):
        parts = record.strip("\n").split("\x1f", 2)
        if len(parts) != 3 or not SHA_RE.match(parts[0]):
            continue
        when = _parse_time(parts[1])
        if when is None:
            continue
        commits.append(ManifestCommit(parts[0], when, parse_trailers(parts[2]), parts[2]))
    return commits


def read_manifest_history(
    repo: ManifestsRepository,
    *,
    environment: str,
    since: datetime,
    workdir: Path,
    redactor: Redactor | None = None,
) -> list[ManifestCommit]:
    """Clone (or refresh) the manifests repository in ``workdir`` and read the commits
    that touched ``environment``'s folder since ``since``, newest first."""
    target = repo.environments.get(environment)
    if target is None:
        known = ", ".join(sorted(repo.environments)) or "none"
        raise ConfigError(
            f"environment {environment!r} is not in the manifests repository block (known: {known})"
        )
    sync_manifests(repo, workdir=workdir, redactor=redactor)
    try:
        out = git.Repo(workdir).git.log(
            f"--max-count={HISTORY_LIMIT}",
            f"--since={since.astimezone(UTC).isoformat()}",
            "-z",
            "--format=%H%x1f%cI%x1f%B",
            "HEAD",
            "--",
            target.path,
            env={"GIT_LITERAL_PATHSPECS": "1"},
        )
    except git.GitCommandError as exc:
        raise ManifestRepoError(
            f"manifests repository: cannot read the history of {target.path!r} "
            f"(git exit {exc.status})"
        ) from None
    return parse_log(str(out))


def read_source_commit_times(
    remote: GitRemote,
    shas: Iterable[str],
    *,
    workdir: Path,
    redactor: Redactor | None = None,
) -> dict[str, datetime]:
    """The committer dates of ``shas`` in an application repository.

    Fetches the repository's branches and tags into a bare repository in ``workdir``
    (reused on a second call), commits and trees only where the server supports
    partial clone (``--filter=blob:none``; otherwise git fetches everything and says
    so). SHAs the repository does not have are left out. Raises the checkout errors
    (:class:`~slipway.exceptions.RemoteUnavailable`, ...) when the repository cannot
    be fetched.
    """
    wanted = sorted({s for s in shas if _SOURCE_SHA_RE.match(s)})
    if not wanted:
        return {}
    redactor = redactor or Redactor()
    redactor.add(*remote.secret_values())
    workdir.mkdir(parents=True, exist_ok=True)
    repo = git.Repo(workdir) if (workdir / "HEAD").is_file() else git.Repo.init(workdir, bare=True)
    g = _Git(repo, remote, redactor)
    status = repo.git.execute(
        ["git", "config", "--get", "remote.origin.url"],
        with_extended_output=True,
        with_exceptions=False,
    )[0]
    if status != 0:
        g("remote", "add", "origin", remote.url)
    g(
        "fetch",
        "--quiet",
        "--filter=blob:none",
        "origin",
        "+refs/heads/*:refs/heads/*",
        "+refs/tags/*:refs/tags/*",
    )
    found: dict[str, datetime] = {}
    for sha in wanted:
        status, out, _err = repo.git.execute(
            ["git", "show", "-s", "--format=%H%x1f%cI", f"{sha}^{{commit}}", "--"],
            with_extended_output=True,
            with_exceptions=False,
        )
        full, _, stamp = str(out).strip().partition("\x1f")
        when = _parse_time(stamp)
        if status == 0 and when is not None:
            found[sha] = when
            found.setdefault(full, when)
    return found
