"""Re-running a commit: reused stages give their workspace back, ``--stage`` runs needs.

Real git remotes, real bash stages, Prefect's harness. The pipeline below is the
issue's: a ``setup`` stage makes a venv-like folder (an executable, a symlink), writes
a file and deletes one from the checkout; ``test`` uses all of it and fails until a
marker exists. Before workspace capture, the re-run reused ``setup`` without its files
and ``test`` failed with exit 127 instead of its real failure.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest

from slipway.flows.pipeline import run_pipeline
from slipway.report import PipelineReport
from tests.flows.prefect_api import logs

pytestmark = pytest.mark.usefixtures("flow_env")

PIPELINE = textwrap.dedent(
    """
    app: demo
    stages:
      - name: setup
        run:
          - mkdir -p .venv/bin
          - printf '#!/bin/sh\\necho "tool $1"\\n' > .venv/bin/tool
          - chmod 755 .venv/bin/tool
          - ln -s tool .venv/bin/python
          - echo configured > settings.txt
          - rm obsolete.txt
          - echo "setup ran" >> "$SETUP_LOG"
      - name: test
        run:
          - test -x .venv/bin/tool && test -L .venv/bin/python
          - .venv/bin/python ok | grep -q "tool ok"
          - grep -q configured settings.txt
          - test ! -e obsolete.txt
          - 'test -f "$MARKER" || { echo "the real failure: no marker"; exit 3; }'
      - name: docs
        needs: []
        run: echo docs
    """
).lstrip()


def run(url: str, **params: object) -> PipelineReport:
    state = run_pipeline(repository=url, **params)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, PipelineReport), report
    return report


def verdict(report: PipelineReport) -> tuple[str, str, str]:
    test = report.stage("test")
    return report.status, test.status, test.reason.split(" from ")[0]


def test_a_rerun_of_a_failed_commit_restores_setup_and_fails_for_the_real_reason(
    git_remote, tmp_path, slipway_home
):
    _bare, url = git_remote({"slipway.yaml": PIPELINE, "obsolete.txt": "old\n"})
    marker, setup_log = tmp_path / "marker", tmp_path / "setup.log"
    env = {"MARKER": str(marker), "SETUP_LOG": str(setup_log)}

    first = run(url, env=env)
    assert first.stage("setup").status == "passed"
    assert verdict(first) == ("failure", "failed", "exit code 3")

    again = run(url, env=env)
    assert again.stage("setup").status == "cached"
    assert setup_log.read_text().count("setup ran") == 1  # reused, not run
    fresh = run(url, env=env, refresh_cache=True)
    assert fresh.stage("setup").status == "passed"
    # the re-run fails where and why the fresh run fails: not exit 127 in 'test'
    assert verdict(again) == verdict(fresh) == ("failure", "failed", "exit code 3")

    marker.touch()
    fixed = run(url, env=env)
    assert fixed.stage("setup").status == "cached"
    assert verdict(fixed) == ("success", "passed", "")
    cached_row = fixed.stage("setup")
    assert cached_row.original_seconds is not None
    assert cached_row.seconds_text.endswith(f"(ran {cached_row.original_seconds:.2f} s)")
    assert "file(s) restored" in cached_row.reason
    assert setup_log.read_text().count("setup ran") == 2  # only the refreshed run


def test_a_cached_result_whose_files_are_gone_runs_again(git_remote, tmp_path, slipway_home):
    _bare, url = git_remote({"slipway.yaml": PIPELINE, "obsolete.txt": "old\n"})
    marker, setup_log = tmp_path / "marker", tmp_path / "setup.log"
    marker.touch()
    env = {"MARKER": str(marker), "SETUP_LOG": str(setup_log)}
    run(url, env=env, stages=["setup"])
    shutil.rmtree(slipway_home / "artifacts")  # the stored workspace changes are lost

    state = run_pipeline(repository=url, env=env)
    report = state.result()
    assert report.stage("setup").status == "passed"  # run again, not reused half
    assert verdict(report) == ("success", "passed", "")
    assert setup_log.read_text().count("setup ran") == 2
    assert "cached result not reused, running it again" in logs(state.state_details.flow_run_id)


def test_one_stage_runs_with_its_needs_from_the_cache_or_run(git_remote, tmp_path):
    _bare, url = git_remote({"slipway.yaml": PIPELINE, "obsolete.txt": "old\n"})
    marker, setup_log = tmp_path / "marker", tmp_path / "setup.log"
    marker.touch()
    env = {"MARKER": str(marker), "SETUP_LOG": str(setup_log)}

    alone = run(url, env=env, stages=["test"])  # nothing cached yet: setup runs first
    assert {s.name: s.status for s in alone.stages} == {
        "setup": "passed",
        "test": "passed",
        "docs": "skipped",
    }
    assert alone.stage("docs").reason == "not among the 'stages' parameter"

    again = run(url, env=env, stages=["test"])  # now setup comes from the cache
    assert [again.stage(n).status for n in ("setup", "test")] == ["cached", "cached"]
    refreshed = run(url, env=env, stages=["test"], refresh_cache=True)
    assert [refreshed.stage(n).status for n in ("setup", "test")] == ["passed", "passed"]
