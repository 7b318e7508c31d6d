"""Publishing the bundled example application as a git repository to build.

A pipeline checks code out of a git remote, so ``examples/example-app`` is
mirrored into a local bare repository (``$SLIPWAY_HOME/example/example-app.git``)
with one commit per change of the folder; the pipeline then runs on that remote
exactly as it would on a team's own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import git

from slipway.workspace import slipway_home

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "example-app"
_IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "reports", "dist", ".coverage", "*.pyz"
)


def commit_all(repo: git.Repo, message: str) -> None:
    """Commit what is staged as the example's author (no user config needed)."""
    repo.git.execute(
        [
            "git",
            "-c",
            "user.name=slipway example",
            "-c",
            "user.email=example@slipway.invalid",
            "commit",
            "--quiet",
            "-m",
            message,
        ]
    )


def publish_example(source: Path = EXAMPLE_DIR, home: Path | None = None) -> str:
    """Mirror ``source`` into a local bare repo; return its clone URL."""
    base = (home or slipway_home()) / "example"
    remote = base / "example-app.git"
    work = base / "work"
    if not remote.exists():
        git.Repo.init(remote, bare=True, initial_branch="main")
    if not work.exists():
        repo = git.Repo.init(work, initial_branch="main")
        repo.create_remote("origin", str(remote))
    repo = git.Repo(work)
    for child in work.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    shutil.copytree(source, work, ignore=_IGNORED, dirs_exist_ok=True)
    repo.git.add("--all")
    if repo.is_dirty(index=True, untracked_files=True) or not repo.head.is_valid():
        commit_all(repo, "example-app: snapshot of slipway's examples/example-app")
    repo.git.push("--quiet", "origin", "HEAD:refs/heads/main")
    return remote.as_uri()
