"""The pipeline's checkout, end to end under Prefect's test harness, on real git remotes:
the branch a run claims is verified before anything runs, and with no branch the run
builds the repository's own default branch (``master`` here), not a hard-coded name.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from uuid import uuid4

import git
import pytest

from slipway.blocks.git import AppRepository
from slipway.conditions import ConditionContext, evaluate
from slipway.flows.deliver import branch_allowed
from slipway.spec_loader import load_pipeline
from tests.flows.prefect_api import task_runs
from tests.flows.test_pipeline import run, statuses
from tests.servers.git_http import commit_files, git_executable

pytestmark = pytest.mark.usefixtures("flow_env")


def pipeline_file(marker: Path) -> str:
    """A stage that leaves a trace, a main-only release stage, and a production gate that
    admits main: everything a run claiming main would get through."""
    return textwrap.dedent(
        f"""
        app: shop
        stages:
          - name: build
            run: printf '%s' "$SLIPWAY_BRANCH" > {marker}
          - name: release
            when: {{branch: main}}
            run: echo releasing
        deploy:
          manifests: manifests-never-loaded
          approval_policy: approvals-never-loaded
          environments:
            - name: production
              cluster: cluster-never-loaded
              namespace: production
              approval: true
              branches: [main]
        """
    ).lstrip()


@pytest.fixture
def forked(git_remote, tmp_path):
    """main, and an `evil` branch forked from it whose commit changes the pipeline's work."""
    marker = tmp_path / "stage-ran.txt"
    bare, url = git_remote({"slipway.yaml": pipeline_file(marker), "app.py": "ok\n"})
    subprocess.run([git_executable(), "--git-dir", str(bare), "branch", "evil", "main"], check=True)
    evil = commit_files(bare, {"app.py": "exfiltrate()\n"}, "evil", branch="evil")
    return {"bare": bare, "url": url, "evil": evil, "marker": marker}


def test_a_commit_claimed_as_a_branch_it_is_not_on_fails_at_checkout_before_any_stage(
    forked, tmp_path
):
    evil, marker = forked["evil"], forked["marker"]
    # What the run would get through if the claim were believed: the spec at that commit
    # runs `release` for main, and its production gate admits main.
    at_evil = tmp_path / "at-evil"
    git.Repo.clone_from(forked["bare"].as_uri(), at_evil, branch="evil")
    spec = load_pipeline(at_evil / "slipway.yaml")
    assert spec.deploy is not None and branch_allowed(spec.deploy.environments[0], "main")
    release = spec.stages[1]
    assert release.when is not None
    assert evaluate(release.when, ConditionContext(branch="main", env={}, changed_files=())).holds

    state, report = run(forked["url"], branch="main", commit=evil)

    assert state.is_failed()
    assert report.failed_stage == "checkout"
    assert f"commit {evil} is not on branch 'main'" in report.reason
    assert report.stages == ()
    assert not marker.exists()  # no stage ran
    runs = task_runs(state.state_details.flow_run_id, expect={"checkout*"})
    assert runs and all(name.startswith("checkout") for name in runs)


def test_the_same_commit_runs_as_the_branch_it_is_on(forked):
    state, report = run(forked["url"], branch="evil", commit=forked["evil"], environments=[])

    assert state.is_completed(), state.message
    assert (report.sha, report.branch) == (forked["evil"], "evil")
    assert statuses(report) == {"build": "passed", "release": "skipped"}
    assert forked["marker"].read_text() == "evil"  # SLIPWAY_BRANCH


def test_a_commit_without_a_branch_is_verified_on_the_default_branch(forked):
    state, report = run(forked["url"], commit=forked["evil"])

    assert state.is_failed()
    assert (report.failed_stage, report.branch) == ("checkout", "main")
    assert "is not on branch 'main'" in report.reason


@pytest.fixture
def on_master(git_remote, tmp_path):
    """A repository as `git init` makes it with no config: its default branch is master."""
    marker = tmp_path / "branch.txt"
    text = textwrap.dedent(
        f"""
        app: legacy
        stages:
          - name: build
            run: printf '%s' "$SLIPWAY_BRANCH" > {marker}
        """
    ).lstrip()
    bare, url = git_remote({"slipway.yaml": text}, branch="master")
    release = commit_files(bare, {"slipway.yaml": text, "r.txt": "1\n"}, "r", branch="release")
    return {"bare": bare, "url": url, "marker": marker, "release": release}


def test_no_branch_builds_the_repositorys_default_branch(on_master):
    state, report = run(on_master["url"])

    assert state.is_completed(), state.message
    assert report.branch == "master"
    assert report.sha == git.Repo(on_master["bare"]).commit("master").hexsha
    assert on_master["marker"].read_text() == "master"


def test_the_blocks_default_branch_overrides_the_remotes(on_master):
    name = f"legacy-{uuid4().hex[:8]}"
    AppRepository(url=on_master["url"], default_branch="release").save(name)

    state, report = run(name)

    assert state.is_completed(), state.message
    assert (report.branch, report.sha) == ("release", on_master["release"])
    assert on_master["marker"].read_text() == "release"
