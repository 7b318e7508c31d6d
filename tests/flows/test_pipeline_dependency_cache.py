"""A dependency cache with real npm: miss, hit (npm then runs offline), eviction.

Real git remotes, real ``npm ci`` against the npm registry on a miss, Prefect's harness.
Every run gets a fresh HOME, as a new worker would: what it finds in ``~/.npm`` comes
from the cache or from nowhere.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from slipway.flows.pipeline import run_pipeline
from slipway.report import PipelineReport
from slipway.tasks.dependency_cache import CacheStore
from tests.servers.git_http import commit_files

pytestmark = pytest.mark.usefixtures("flow_env")

PROJECTS = Path(__file__).parent / "npm_projects"
PIPELINE = textwrap.dedent(
    """
    app: node-demo
    env: {npm_config_update_notifier: "false", npm_config_fund: "false", npm_config_audit: "false"}
    stages:
      - name: install
        run: npm ci --prefer-offline
        dependency_cache:
          paths: [node_modules, ~/.npm]
          key_files: [package-lock.json]
          key: npm
      - name: use
        run: node -e "console.log(require('ms')('2h'))"
    """
).lstrip()


def project(name: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in (PROJECTS / name).iterdir()}


def run(url: str, home: Path, **env: str) -> PipelineReport:
    home.mkdir()
    state = run_pipeline(repository=url, env={"HOME": str(home), **env})
    report = state.result(raise_on_failure=False)
    assert isinstance(report, PipelineReport), report
    return report


def test_npm_install_restores_across_commits_and_evicts_the_least_recently_used(
    git_remote, tmp_path, slipway_home, monkeypatch
):
    bare, url = git_remote({"slipway.yaml": PIPELINE, **project("chalk-and-ms")})

    first = run(url, tmp_path / "home1")
    assert first.status == "success", first.reason
    assert first.stage("install").reason.startswith(
        "dependency cache node_modules, ~/.npm: miss, saved"
    )

    commit_files(bare, {"README.md": "a new commit, the same lock file\n"}, "docs")
    # offline: npm may only use what the cache put into this fresh HOME's ~/.npm
    second = run(url, tmp_path / "home2", npm_config_offline="true")
    assert second.status == "success", second.reason
    assert second.stage("install").reason == "dependency cache node_modules, ~/.npm: hit"
    assert second.stage("install").status == "passed"  # a new commit: the stage ran

    # room for one entry only (the setting under test): the next save evicts the first
    size = sum(
        p.stat().st_size for p in CacheStore(slipway_home / "dependency-cache").blobs.iterdir()
    )
    monkeypatch.setenv("SLIPWAY_DEPENDENCY_CACHE_MAX_BYTES", str(size))
    commit_files(bare, project("ms-only"), "only ms")
    third = run(url, tmp_path / "home3")
    assert "miss, saved" in third.stage("install").reason
    assert "evicted 1 older entry" in third.stage("install").reason

    commit_files(bare, project("chalk-and-ms"), "chalk is back")
    evicted = run(url, tmp_path / "home4", npm_config_offline="true")
    assert evicted.status == "failure"  # its entry is gone: offline npm has nothing
    assert evicted.stage("install").status == "failed"
