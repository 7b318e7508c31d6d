"""DORA metrics: the computation over crafted histories, then real git.

The crafted histories pin the definitions (which week a deploy falls in, what counts
as failed, where a lead time comes from, median and p90); the git tests make a real
manifests repository with :func:`bump_image` / :func:`revert_bump` at chosen dates
(``GIT_COMMITTER_DATE``) and a real application repository.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from slipway.blocks.git import AppRepository
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.exceptions import CheckoutError, ConfigError, UnsafeInputError
from slipway.redact import Redactor
from slipway.tasks.dora import (
    ManifestCommit,
    compute_dora,
    find_deploys,
    format_duration,
    parse_log,
    percentile,
    read_manifest_history,
    read_source_commit_times,
    summary_markdown,
    table_rows,
    week_label,
    window,
)
from slipway.tasks.dora_chart import render_chart
from slipway.tasks.gitops import bump_image, parse_trailers, revert_bump
from tests.servers.example_manifests import app_deployment
from tests.servers.git_http import commit_files, make_bare_repo

HOUR = 3600.0
UNTIL = datetime(2024, 3, 20, 12, 0, tzinfo=UTC)  # a Wednesday, ISO week 2024-W12
MONDAY_W12 = datetime(2024, 3, 18, tzinfo=UTC)


def sha(n: int | str) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def at(day_offset: float, base: datetime = MONDAY_W12) -> datetime:
    return base + timedelta(days=day_offset)


def bump(
    n: int,
    when: datetime,
    *,
    app: str = "shop",
    environment: str = "production",
    source_time: datetime | None = None,
    source: str | None = None,
) -> ManifestCommit:
    trailers = {
        "Slipway-App": app,
        "Slipway-Environment": environment,
        "Slipway-Build": str(n),
        "Slipway-Image": f"registry.local/{app}@sha256:{'ab' * 32}",
        "Slipway-Source-Commit": source or sha(f"src-{n}"),
        "Slipway-Run": f"run-{n}",
    }
    if source_time is not None:
        trailers["Slipway-Source-Commit-Time"] = source_time.isoformat()
    return ManifestCommit(sha(n), when, trailers, f"{app}: deploy build {n}")


def revert(n: int, target: str, when: datetime, *, by_trailer: bool = True) -> ManifestCommit:
    if by_trailer:
        trailers = {
            "Slipway-App": "shop",
            "Slipway-Environment": "production",
            "Slipway-Reverts": target,
            "Slipway-Reason": "smoke test failed",
        }
        return ManifestCommit(sha(f"r{n}"), when, trailers, "Revert")
    # what `git revert` by hand writes: no trailers at all
    message = f'Revert "shop: deploy"\n\nThis reverts commit {target}.\n'
    return ManifestCommit(sha(f"r{n}"), when, parse_trailers(message), message)


# ----------------------------------------------------------------------------- definitions


def test_window_is_whole_iso_weeks_ending_with_the_week_of_until() -> None:
    since, mondays = window(UNTIL, 3)
    assert since == datetime(2024, 3, 4, tzinfo=UTC)
    assert mondays == [date(2024, 3, 4), date(2024, 3, 11), date(2024, 3, 18)]
    assert [week_label(m) for m in mondays] == ["2024-W10", "2024-W11", "2024-W12"]
    # ISO years: 2024-12-30 is in week 1 of 2025
    assert week_label(window(datetime(2025, 1, 1, tzinfo=UTC), 1)[1][0]) == "2025-W01"
    with pytest.raises(ConfigError, match="weeks"):
        window(UNTIL, 0)
    with pytest.raises(ConfigError, match="timezone"):
        window(datetime(2024, 3, 20), 2)


def test_deployment_frequency_per_week_in_utc_with_empty_weeks_and_edges() -> None:
    tokyo = timezone(timedelta(hours=9))
    commits = [
        bump(1, at(-14) - timedelta(seconds=1)),  # Sunday before the window: out
        bump(2, at(-14)),  # Monday 00:00 UTC of W10: in
        bump(3, at(-7) - timedelta(seconds=1)),  # Sunday 23:59:59 of W10
        # Monday 08:00 in Tokyo is Sunday 23:00 UTC: W11, not W12
        bump(4, datetime(2024, 3, 18, 8, 0, tzinfo=tokyo)),
        bump(5, at(1)),  # W12
        bump(6, UNTIL + timedelta(hours=1)),  # after until: out
        bump(7, at(1), environment="staging"),  # another environment: out
        bump(8, at(1), app="cart"),
    ]
    report = compute_dora(commits, environment="production", until=UNTIL, weeks=3)
    assert report.weeks == ("2024-W10", "2024-W11", "2024-W12")
    assert report.apps == ("cart", "shop")
    freq = {(r.app, r.week): r.deployments for r in report.rows}
    assert freq == {
        ("cart", "2024-W10"): 0,
        ("cart", "2024-W11"): 0,
        ("cart", "2024-W12"): 1,
        ("shop", "2024-W10"): 2,
        ("shop", "2024-W11"): 1,
        ("shop", "2024-W12"): 1,
    }
    assert [d.build for d in report.deploys] == ["2", "3", "4", "5", "8"]
    quiet = next(r for r in report.rows if r.app == "cart" and r.week == "2024-W10")
    assert quiet.change_failure_rate is None and quiet.lead_time.samples == 0
    assert {t.app: t.deployments for t in report.totals} == {"cart": 1, "shop": 4}


def test_lead_time_trailer_first_then_app_repository_else_unknown() -> None:
    from_repo = sha("from-repo")
    commits = [
        bump(1, at(0, MONDAY_W12) + timedelta(hours=1), source_time=at(0)),  # 1 h
        bump(2, at(0) + timedelta(hours=5), source=from_repo),  # 3 h, from the app repo
        bump(3, at(0) + timedelta(hours=9)),  # unknown
        # the trailer wins over the app repository (same value by construction)
        bump(4, at(1), source=from_repo, source_time=at(1) - timedelta(hours=2)),
    ]
    times = {from_repo: at(0) + timedelta(hours=2)}
    deploys = find_deploys(commits, environment="production", source_times=times)
    assert [d.lead_source for d in deploys] == ["trailer", "app-repository", "unknown", "trailer"]
    assert [d.lead_time for d in deploys] == [
        timedelta(hours=1),
        timedelta(hours=3),
        None,
        timedelta(hours=2),
    ]
    report = compute_dora(
        commits, environment="production", until=UNTIL, weeks=1, source_times=times
    )
    (week,) = report.rows
    assert week.lead_time.samples == 3 and week.lead_time_unknown == 1
    assert week.lead_time.median == 2 * HOUR
    assert week.lead_time.p90 == pytest.approx(2.8 * HOUR)  # 2 h + 0.8 x (3 h - 2 h)


def test_change_failure_rate_and_time_to_restore_from_reverts() -> None:
    commits = [
        bump(1, at(0)),
        bump(2, at(0, MONDAY_W12) + timedelta(hours=2)),
        revert(1, sha(2), at(0) + timedelta(hours=2, minutes=30)),  # slipway's revert: 30 m
        bump(3, at(1)),
        revert(2, sha(3), at(1) + timedelta(hours=4), by_trailer=False),  # by hand: 4 h
        revert(3, sha(3), at(1) + timedelta(hours=5)),  # a second revert: the first counts
        revert(4, sha("not-a-deploy"), at(1)),  # reverts something else: ignored
        bump(4, at(-7)),  # W11, reverted after until: still a failure of W11
        revert(5, sha(4), UNTIL + timedelta(days=1)),
    ]
    report = compute_dora(commits, environment="production", until=UNTIL, weeks=2)
    w11, w12 = report.rows
    assert (w12.deployments, w12.failed, w12.change_failure_rate) == (3, 2, pytest.approx(2 / 3))
    assert w12.time_to_restore.samples == 2
    assert w12.time_to_restore.median == pytest.approx(2.25 * HOUR)  # (0.5 h + 4 h) / 2
    assert w12.time_to_restore.p90 == pytest.approx(3.65 * HOUR)
    assert (w11.deployments, w11.failed, w11.change_failure_rate) == (1, 1, 1.0)
    assert w11.time_to_restore.median == pytest.approx(10 * 24 * HOUR + 12 * HOUR)
    deploys = {d.build: d for d in report.deploys}
    assert deploys["3"].reverted_by == sha("r2") and not deploys["1"].failed
    (total,) = report.totals
    assert (total.deployments, total.failed) == (4, 3)


def test_app_filter_reports_that_app_even_without_deploys() -> None:
    commits = [bump(1, at(0)), bump(2, at(0), app="cart")]
    report = compute_dora(commits, environment="production", until=UNTIL, weeks=2, app="cart")
    assert report.apps == ("cart",) and [d.build for d in report.deploys] == ["2"]
    quiet = compute_dora(commits, environment="production", until=UNTIL, weeks=2, app="search")
    assert quiet.apps == ("search",) and [r.deployments for r in quiet.rows] == [0, 0]


def test_percentile_and_durations() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 90) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 10.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 10.0], 90) == pytest.approx(7.6)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert format_duration(None) == "-"
    assert format_duration(42) == "42s"
    assert format_duration(754) == "12m 34s"
    assert format_duration(4 * HOUR + 300) == "4h 05m"
    assert format_duration(2 * 86400 + 3 * HOUR + 59) == "2d 3h"
    assert format_duration(-90) == "-1m 30s"


def test_table_markdown_and_chart(tmp_path: Path) -> None:
    commits = [
        bump(1, at(0) + timedelta(hours=1), source_time=at(0)),
        bump(2, at(1), app="cart"),
        revert(1, sha(1), at(0) + timedelta(hours=1, minutes=20)),
    ]
    report = compute_dora(commits, environment="production", until=UNTIL, weeks=2)
    rows = table_rows(report)
    assert [(r["app"], r["week"]) for r in rows] == [
        ("cart", "2024-W11"),
        ("cart", "2024-W12"),
        ("cart", "all"),
        ("shop", "2024-W11"),
        ("shop", "2024-W12"),
        ("shop", "all"),
    ]
    shop = rows[4]
    assert shop["deploys"] == 1 and shop["change failure rate"] == "100%"
    assert shop["lead time median"] == "1h 00m" and shop["lead time median s"] == 3600
    assert shop["time to restore median"] == "20m 00s"
    assert rows[1]["lead time unknown"] == 1 and rows[1]["lead time median"] == "-"
    markdown = summary_markdown(report, chart="data:image/png;base64,AAAA", png=tmp_path / "x.png")
    assert "| shop | 1 | 0.5 | 100% | 1h 00m / 1h 00m | 20m 00s / 20m 00s |" in markdown
    assert "| cart | 1 | 0.5 | 0% | - / - (1 unknown) | - / - |" in markdown
    assert "![DORA metrics per week: production](data:image/png;base64,AAAA)" in markdown

    png = render_chart(report, tmp_path / "charts" / "dora.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 300_000
    empty = compute_dora([], environment="production", until=UNTIL, weeks=4)
    assert "No slipway deploys" in summary_markdown(empty)
    assert render_chart(empty, tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_parse_log_skips_what_is_not_a_commit() -> None:
    good = f"{sha(1)}\x1f2024-03-18T10:00:00+09:00\x1fmsg\n\nSlipway-App: shop\n"
    out = "\0".join(["", good, "garbage", f"{sha(2)}\x1fnot a date\x1fmsg", ""])
    (commit,) = parse_log(out)
    assert commit.sha == sha(1) and commit.trailers == {"Slipway-App": "shop"}
    assert commit.committed_at == datetime(2024, 3, 18, 1, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- real git


@dataclass
class History:
    """A real manifests repository with dated deploys, and the app repository behind them."""

    block: ManifestsRepository
    app_repo: Path
    app_commits: list[tuple[str, datetime]]  # (sha, committer date) oldest first
    bumps: dict[str, str]  # name -> bump commit sha
    reverts: dict[str, str]


def _image(app: str, n: int) -> str:
    return f"registry.local/{app}@sha256:{hashlib.sha256(f'{app}{n}'.encode()).hexdigest()}"


def build_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, cart_run_id: str = "run-cart-1"
) -> History:
    """shop and cart in production (and shop in staging), deployed at fixed dates:

    - W11 Mon 10:00 shop build 1 (source commit 1, no time trailer: the app repo has it)
    - W11 Tue 12:00 shop build 2 (trailer: source 4 h earlier); reverted 30 min later
    - W12 Mon 09:00 cart build 1 (no trailer; Slipway-Run ``cart_run_id``)
    - W12 Tue 09:00 shop build 3 in staging (not production)
    """
    app_repo = make_bare_repo(tmp_path / "remotes", "shop.git")
    app_commits = []
    for n in range(3):  # commit_files dates: 2023-11-14 22:13:20 UTC + n seconds
        sha_n = commit_files(app_repo, {"main.py": f"print({n})\n"}, f"change {n}")
        app_commits.append((sha_n, datetime.fromtimestamp(1_700_000_000 + n, UTC)))
    bare = make_bare_repo(tmp_path / "remotes", "manifests.git")
    files = {
        f"production/{app}.yaml": yaml.safe_dump(app_deployment(app, _image(app, 0), 2))
        for app in ("shop", "cart")
    }
    files["staging/shop.yaml"] = files["production/shop.yaml"]
    commit_files(bare, files, "initial manifests")
    block = ManifestsRepository(
        url=bare.as_uri(),
        environments={
            "production": EnvironmentManifests(path="production"),
            "staging": EnvironmentManifests(path="staging"),
        },
    )
    work = tmp_path / "work"

    def dated(when: datetime, action: Callable[[], str]) -> str:
        stamp = f"{int(when.timestamp())} +0000"
        with monkeypatch.context() as m:
            m.setenv("GIT_COMMITTER_DATE", stamp)
            m.setenv("GIT_AUTHOR_DATE", stamp)
            return action()

    def do_bump(name: str, app: str, n: int, env: str, source: str, **kw: object) -> str:
        def action() -> str:
            return bump_image(
                block,
                app=app,
                environment=env,
                image=_image(app, n),
                source_commit=source,
                run_id=kw.pop("run_id", f"run-{app}-{n}"),  # type: ignore[arg-type]
                build_number=n,
                workdir=work / name,
                **kw,  # type: ignore[arg-type]
            ).commit_sha

        return action()

    w11 = MONDAY_W12 - timedelta(days=7)
    bumps, reverts = {}, {}
    bumps["shop1"] = dated(
        w11 + timedelta(hours=10),
        lambda: do_bump("shop1", "shop", 1, "production", app_commits[0][0]),
    )
    bumps["shop2"] = dated(
        w11 + timedelta(days=1, hours=12),
        lambda: do_bump(
            "shop2",
            "shop",
            2,
            "production",
            app_commits[1][0],
            source_commit_time=w11 + timedelta(days=1, hours=8),
        ),
    )
    reverts["shop2"] = dated(
        w11 + timedelta(days=1, hours=12, minutes=30),
        lambda: (
            revert_bump(
                block, commit_sha=bumps["shop2"], reason="smoke test failed", workdir=work / "r2"
            ).commit_sha
        ),
    )
    bumps["cart1"] = dated(
        MONDAY_W12 + timedelta(hours=9),
        lambda: do_bump("cart1", "cart", 1, "production", app_commits[2][0], run_id=cart_run_id),
    )
    bumps["shop3-staging"] = dated(
        MONDAY_W12 + timedelta(days=1, hours=9),
        lambda: do_bump("shop3", "shop", 3, "staging", app_commits[2][0]),
    )
    return History(block, app_repo, app_commits, bumps, reverts)


def test_source_commit_time_trailer_is_validated_and_written(tmp_path: Path) -> None:
    history_dir = tmp_path / "h"
    bare = make_bare_repo(history_dir, "m.git")
    commit_files(bare, {"p/a.yaml": yaml.safe_dump(app_deployment("shop", _image("shop", 0), 1))})
    block = ManifestsRepository(
        url=bare.as_uri(), environments={"p": EnvironmentManifests(path="p")}
    )
    common = {
        "app": "shop",
        "environment": "p",
        "image": _image("shop", 1),
        "source_commit": sha(1),
        "run_id": "run-1",
        "build_number": 1,
    }
    for bad in ("yesterday", "2024-03-18T10:00:00"):  # not a date; no offset
        with pytest.raises(UnsafeInputError, match="source commit time"):
            bump_image(block, **common, source_commit_time=bad, workdir=tmp_path / "w0")
    when = datetime(2024, 3, 18, 10, 0, 0, 123, tzinfo=timezone(timedelta(hours=2)))
    bump_image(block, **common, source_commit_time=when, workdir=tmp_path / "w1")
    commits = read_manifest_history(
        block, environment="p", since=datetime(2000, 1, 1, tzinfo=UTC), workdir=tmp_path / "r"
    )
    assert commits[0].trailers["Slipway-Source-Commit-Time"] == "2024-03-18T10:00:00+02:00"


def test_history_from_real_bumps_and_reverts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = build_history(tmp_path, monkeypatch)
    since, _ = window(UNTIL, 2)
    commits = read_manifest_history(
        h.block, environment="production", since=since, workdir=tmp_path / "read"
    )
    # newest first, the production folder only (the staging bump is not there)
    assert [c.sha for c in commits] == [
        h.bumps["cart1"],
        h.reverts["shop2"],
        h.bumps["shop2"],
        h.bumps["shop1"],
    ]
    assert commits[0].committed_at == MONDAY_W12 + timedelta(hours=9)
    with pytest.raises(ConfigError, match="'qa' is not in"):
        read_manifest_history(h.block, environment="qa", since=since, workdir=tmp_path / "x")

    times = read_source_commit_times(
        AppRepository(url=h.app_repo.as_uri()),
        [h.app_commits[0][0], h.app_commits[2][0][:12], sha("not-there")],
        workdir=tmp_path / "app",
    )
    assert times == {
        h.app_commits[0][0]: h.app_commits[0][1],
        h.app_commits[2][0][:12]: h.app_commits[2][1],
        h.app_commits[2][0]: h.app_commits[2][1],
    }
    report = compute_dora(
        commits, environment="production", until=UNTIL, weeks=2, source_times=times
    )
    shop = {r.week: r for r in report.rows if r.app == "shop"}["2024-W11"]
    assert (shop.deployments, shop.failed, shop.lead_time_unknown) == (2, 1, 0)
    assert shop.time_to_restore.median == 30 * 60
    leads = {(d.app, d.build): (d.lead_source, d.lead_time) for d in report.deploys}
    assert leads["shop", "2"] == ("trailer", timedelta(hours=4))
    assert leads["shop", "1"][0] == leads["cart", "1"][0] == "app-repository"
    deployed = MONDAY_W12 - timedelta(days=7) + timedelta(hours=10)
    assert leads["shop", "1"][1] == deployed - h.app_commits[0][1]

    with pytest.raises(CheckoutError):
        read_source_commit_times(
            AppRepository(url=(tmp_path / "nowhere.git").as_uri()),
            [sha(1)],
            workdir=tmp_path / "app2",
            redactor=Redactor(),
        )
