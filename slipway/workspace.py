"""Where a run's files live, and the guard that keeps paths inside them.

``SLIPWAY_HOME`` (default ``~/.slipway``) holds per-run workspaces and the
content-addressed artifact store that lets a cached stage hand its outputs to a
stage that does rerun.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from slipway.exceptions import UnsafeInputError


def slipway_home() -> Path:
    home = Path(os.environ.get("SLIPWAY_HOME") or Path.home() / ".slipway")
    home.mkdir(parents=True, exist_ok=True)
    return home


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that resolves outside ``root``."""
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafeInputError(f"path {relative!r} resolves outside {base}")
    return target


def new_workspace(app: str, run_id: str) -> Path:
    """An empty workspace for the run. A run that starts again (resumed after a suspend,
    or retried) gets a clean one: what it had is rebuilt from the checkout and caches."""
    path = slipway_home() / "workspaces" / app / run_id
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_home(workspace: Path) -> Path:
    """A fresh, private HOME for the stage commands of the run using ``workspace``.

    Next to the workspace (``<workspace>.home``), not inside it, so nothing a tool
    leaves there (caches, configs) is scanned, archived or seen by ``git status``.
    Stages never get the worker's own HOME: its ``~/.prefect/profiles.toml``,
    ``~/.docker/config.json``, ``~/.git-credentials`` and ``~/.kube/config`` are not
    where their tools look (GitHub's runner gives a job the runner user's HOME; a
    per-run HOME also keeps one run's leftovers from the next).
    """
    home = _home_of(workspace)
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(mode=0o700, parents=True)
    return home


def _home_of(workspace: Path) -> Path:
    return workspace.with_name(f"{workspace.name}.home")


def remove_workspace(workspace: Path) -> None:
    """Remove a run's workspace and its HOME (:func:`run_home`)."""
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(_home_of(workspace), ignore_errors=True)


def build_number_for_run(app: str, run_id: str) -> int:
    """The run's build number: a new one the first time, the same one when the run
    executes again (resumed after a suspended approval), so its commits and image tags
    keep naming one build."""
    folder = slipway_home() / "build-numbers" / f"{app}.runs"
    folder.mkdir(parents=True, exist_ok=True)
    record = inside(folder, run_id)
    if record.is_file() and record.read_text().strip().isdigit():
        return int(record.read_text().strip())
    number = next_build_number(app)
    record.write_text(str(number))
    return number


def next_build_number(app: str) -> int:
    """This app's next build number (1, 2, ...), like Jenkins' BUILD_NUMBER.

    Kept in ``$SLIPWAY_HOME/build-numbers/<app>`` under an exclusive lock, so runs on
    one machine never share a number; workers on several machines need a shared
    ``SLIPWAY_HOME`` for numbers to stay unique (image tags carry the commit too).
    """
    folder = slipway_home() / "build-numbers"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / app).open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read().strip()
        number = int(text) + 1 if text.isdigit() else 1
        handle.seek(0)
        handle.truncate()
        handle.write(str(number))
        return number
