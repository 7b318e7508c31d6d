"""``slipway run``: repositories given the way git takes them, kept workspaces, and
Prefect's results under SLIPWAY_HOME, through the real CLI on a real Prefect server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slipway.cli import repository_argument
from slipway.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def working_repo(path: Path, pipeline: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", cwd=path)
    (path / "slipway.yaml").write_text(pipeline)
    git("add", ".", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "pipeline", cwd=path)
    return path


def test_paths_urls_and_block_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    repo = working_repo(tmp_path / "work" / "app", "app: demo\n")
    git("clone", "-q", "--bare", str(repo), str(tmp_path / "work" / "repo.git"), cwd=tmp_path)
    monkeypatch.chdir(repo)

    assert repository_argument(".") == str(repo)
    assert repository_argument("./") == str(repo)
    assert repository_argument("../repo.git") == str(tmp_path / "work" / "repo.git")
    assert repository_argument(str(repo)) == str(repo)
    monkeypatch.chdir(tmp_path / "work")
    assert repository_argument("./repo.git") == str(tmp_path / "work" / "repo.git")
    assert repository_argument("repo.git") == str(tmp_path / "work" / "repo.git")  # it exists
    assert repository_argument("app") == str(repo)
    for unchanged in (
        "example-app",  # no such path here: a block name
        "file:///srv/git/app.git",
        "https://git.example.com/team/app.git",
        "git@git.example.com:team/app.git",
    ):
        assert repository_argument(unchanged) == unchanged
    with pytest.raises(ConfigError, match="repository path './nope' does not exist"):
        repository_argument("./nope")
    (tmp_path / "work" / "plain").mkdir()
    with pytest.raises(ConfigError, match="plain is not a git repository"):
        repository_argument("./plain")


FAILING = """\
app: demo
stages:
  - name: build
    env: {PATH: "$HOME/bin:$PATH"}
    run: |
      echo compiling
      python3 -c "raise SystemExit('Error: the build is broken')"
      echo never
"""
PASSING = """\
app: demo
stages:
  - name: build
    run: echo built
"""


def slipway_run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slipway", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_dot_keeps_a_failed_workspace_prints_it_and_prunes_by_retention(
    prefect_server: str, tmp_path: Path
):
    repo = working_repo(tmp_path / "app", FAILING)
    home = tmp_path / "home"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH")
    }
    env |= {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "SLIPWAY_HOME": str(home),
        "SLIPWAY_KEEP_WORKSPACES": "1",
        "PYTHONPATH": str(ROOT),
    }

    failed = slipway_run(["."], repo, env)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert re.search(r"build\s+❌ failed .*Error: the build is broken", failed.stdout)
    first = Path(re.findall(r"^workspace kept: (.+)$", failed.stdout, re.M)[0])
    assert first.parent == home / "workspaces" / "runs" and (first / "slipway.yaml").is_file()
    # Prefect's results went under SLIPWAY_HOME, not under PREFECT_HOME/storage
    assert any((home / "prefect-results").iterdir())
    assert not (tmp_path / "prefect-home" / "storage").exists()

    (repo / "slipway.yaml").write_text(PASSING)
    git("-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qam", "fix", cwd=repo)
    passed = slipway_run(["./app", "--keep-workspace"], tmp_path, env)

    assert passed.returncode == 0, passed.stdout + passed.stderr
    second = Path(re.findall(r"^workspace kept: (.+)$", passed.stdout, re.M)[0])
    assert second.is_dir() and second != first
    assert not first.exists()  # SLIPWAY_KEEP_WORKSPACES=1: only the newest stays
