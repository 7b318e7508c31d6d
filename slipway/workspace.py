"""Where a run's files live, and the guard that keeps paths inside them.

``SLIPWAY_HOME`` (default ``~/.slipway``) holds per-run workspaces and the
content-addressed artifact store that lets a cached stage hand its outputs to a
stage that does rerun.

A workspace is removed when its run succeeds and kept when it fails (or when the
run was asked to keep it), for a person to look into. Kept workspaces are pruned
at the end of every run (:class:`Retention`): beyond the newest
``SLIPWAY_KEEP_WORKSPACES`` (default 5), and any older than
``SLIPWAY_WORKSPACE_MAX_AGE_DAYS`` (default 7). A workspace in use is never
pruned: its run holds an exclusive lock on ``<workspace>.lock`` while it runs
(released by the OS if the process dies, so a crashed run's workspace is pruned
like any other).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from slipway.exceptions import ConfigError, UnsafeInputError

DEFAULT_KEEP_WORKSPACES = 5
DEFAULT_WORKSPACE_MAX_AGE_DAYS = 7.0
_LOCKS: dict[Path, IO[str]] = {}  # workspace -> its held lock file, while the run lasts


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


def new_workspace(app: str, run_id: str, *, lock: bool = False) -> Path:
    """An empty workspace for the run. A run that starts again (resumed after a suspend,
    or retried) gets a clean one: what it had is rebuilt from the checkout and caches.

    With ``lock``, the run holds the workspace's lock until :func:`finish_workspace`,
    so that pruning by other runs leaves it alone.
    """
    path = slipway_home() / "workspaces" / app / run_id
    remove_workspace(path)
    path.mkdir(parents=True)
    if lock:
        held = path.with_name(f"{path.name}.lock").open("w")
        fcntl.flock(held, fcntl.LOCK_EX)
        _LOCKS[path] = held
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
    """A workspace and what lives next to it (its stages' HOME and handover files, its
    lock)."""
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(_home_of(workspace), ignore_errors=True)
    shutil.rmtree(workspace.with_name(f"{workspace.name}.stages"), ignore_errors=True)
    workspace.with_name(f"{workspace.name}.lock").unlink(missing_ok=True)


@dataclass(frozen=True)
class Retention:
    """How many kept workspaces stay, and for how long."""

    keep: int = DEFAULT_KEEP_WORKSPACES
    max_age_days: float = DEFAULT_WORKSPACE_MAX_AGE_DAYS

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> Retention:
        """From ``SLIPWAY_KEEP_WORKSPACES`` (a count, 0 keeps none) and
        ``SLIPWAY_WORKSPACE_MAX_AGE_DAYS`` (days, fractions allowed)."""
        env = os.environ if env is None else env
        keep, age = env.get("SLIPWAY_KEEP_WORKSPACES"), env.get("SLIPWAY_WORKSPACE_MAX_AGE_DAYS")
        try:
            retention = cls(
                keep=int(keep) if keep else DEFAULT_KEEP_WORKSPACES,
                max_age_days=float(age) if age else DEFAULT_WORKSPACE_MAX_AGE_DAYS,
            )
        except ValueError:
            raise ConfigError(
                f"SLIPWAY_KEEP_WORKSPACES={keep!r} / SLIPWAY_WORKSPACE_MAX_AGE_DAYS={age!r}: "
                "expected a whole number of workspaces and a number of days"
            ) from None
        if retention.keep < 0 or retention.max_age_days < 0:
            raise ConfigError("SLIPWAY_KEEP_WORKSPACES and ..._MAX_AGE_DAYS cannot be negative")
        return retention


def _in_use(workspace: Path) -> bool:
    lock_path = workspace.with_name(f"{workspace.name}.lock")
    if workspace in _LOCKS:
        return True
    if not lock_path.exists():
        return False
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def prune_workspaces(
    folder: Path, retention: Retention, *, newest: Path | None = None
) -> list[Path]:
    """Remove kept workspaces of ``folder`` beyond the newest ``retention.keep`` and those
    older than ``retention.max_age_days`` (by last change); workspaces in use stay.
    ``newest`` (the run that just ended) counts as the newest whatever the clock says.
    Returns what was removed."""
    if not folder.is_dir():
        return []
    now = time.time()
    kept = sorted(
        (p for p in folder.iterdir() if p.is_dir() and "." not in p.name and not _in_use(p)),
        key=lambda p: (p == newest, p.stat().st_mtime_ns),
        reverse=True,
    )
    oldest = now - retention.max_age_days * 86400
    removed = [
        p for index, p in enumerate(kept) if index >= retention.keep or p.stat().st_mtime < oldest
    ]
    for path in removed:
        remove_workspace(path)
    return removed


def finish_workspace(workspace: Path, *, keep: bool, retention: Retention | None = None) -> bool:
    """At the end of a run: remove its workspace or keep it, then prune the kept ones.

    Returns whether it was kept (a kept workspace counts toward ``retention.keep``, so
    with ``keep: 0`` nothing stays past the pruning).
    """
    lock = _LOCKS.pop(workspace, None)
    if not keep:
        remove_workspace(workspace)
    if lock is not None:
        lock.close()
    if keep:
        os.utime(workspace)  # its age counts from the end of its run
    prune_workspaces(workspace.parent, retention or Retention.from_env(), newest=workspace)
    return keep and workspace.is_dir()


def default_results_path() -> Path:
    """Where Prefect keeps task and flow results unless configured otherwise."""
    return slipway_home() / "prefect-results"


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
