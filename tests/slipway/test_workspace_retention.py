"""Kept workspaces are pruned by count and age, never while their run holds them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slipway.exceptions import ConfigError
from slipway.workspace import Retention, finish_workspace, new_workspace, prune_workspaces

DAY = 86400.0


def kept(folder: Path, name: str, age_days: float) -> Path:
    path = folder / name
    (path / "src").mkdir(parents=True)
    (path / "src" / "big.bin").write_bytes(b"x" * 1024)
    (folder / f"{name}.stages" / "build").mkdir(parents=True)
    stamp = time.time() - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def test_keeps_the_newest_and_drops_the_old(tmp_path: Path):
    runs = [kept(tmp_path, f"run{i}", age_days=i) for i in range(6)]  # run0 is the newest

    removed = prune_workspaces(tmp_path, Retention(keep=3, max_age_days=1.5))

    assert sorted(p.name for p in removed) == ["run2", "run3", "run4", "run5"]
    assert [p.is_dir() for p in runs] == [True, True, False, False, False, False]
    assert not (tmp_path / "run3.stages").exists()  # what lived next to it went too
    assert prune_workspaces(tmp_path, Retention(keep=0, max_age_days=30)) == runs[:2]


def test_a_workspace_whose_run_is_alive_in_another_process_stays(tmp_path: Path):
    busy = kept(tmp_path, "busy", age_days=30)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(tmp_path / 'busy.lock')!r}, 'w')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert prune_workspaces(tmp_path, Retention(keep=0, max_age_days=0)) == []
    finally:
        holder.kill()
        holder.wait()
    # the holder died (a crashed run): its workspace is pruned like any other
    assert prune_workspaces(tmp_path, Retention(keep=0, max_age_days=0)) == [busy]


def test_finish_removes_a_passed_run_and_keeps_a_failed_one_within_retention(
    slipway_home: Path,
):
    older = [new_workspace("runs", f"old{i}", lock=True) for i in range(3)]
    for age, path in zip((3, 2, 1), older, strict=True):  # old2 is the newest of them
        finish_workspace(path, keep=True, retention=Retention(keep=5))
        os.utime(path, (time.time() - age * 60, time.time() - age * 60))
    current = new_workspace("runs", "current", lock=True)
    other = new_workspace("runs", "running", lock=True)  # still running in this process

    assert finish_workspace(current, keep=True, retention=Retention(keep=2)) is True

    folder = slipway_home / "workspaces" / "runs"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["current", "current.lock", "old2", "old2.lock", "running", "running.lock"]
    )
    assert finish_workspace(other, keep=False) is False
    assert not other.exists() and not (folder / "running.lock").exists()


def test_retention_from_the_environment():
    assert Retention.from_env({}) == Retention(keep=5, max_age_days=7.0)
    assert Retention.from_env(
        {"SLIPWAY_KEEP_WORKSPACES": "2", "SLIPWAY_WORKSPACE_MAX_AGE_DAYS": "0.5"}
    ) == Retention(keep=2, max_age_days=0.5)
    with pytest.raises(ConfigError, match="SLIPWAY_KEEP_WORKSPACES='two'"):
        Retention.from_env({"SLIPWAY_KEEP_WORKSPACES": "two"})
    with pytest.raises(ConfigError, match="cannot be negative"):
        Retention.from_env({"SLIPWAY_KEEP_WORKSPACES": "-1"})
