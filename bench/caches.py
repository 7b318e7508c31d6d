"""What the two file caches cost and save, measured with the real stages and tools.

1. Workspace capture on the bundled example app: the CI stages of
   ``examples/example-app/slipway.yaml`` (lint, build, unit, integration, quality,
   security) run for real in order on a copy of its tracked files, each one captured
   as the pipeline captures it; then the same for a second "commit" with the same
   content (what a re-run or a docs-only commit adds to the store), and the restore of
   every capture into a fresh checkout (what a fully cached re-run spends).
2. A ``setup`` stage making a virtualenv with pip: what one takes in the store, how
   long capture and restore take, and whether the restored venv works.
3. An install stage on a real Node project (``chalk`` 4 and ``ms``, seven packages
   from the npm registry): ``npm ci`` in a fresh workspace and HOME, without a
   dependency cache and on a cache hit (``node_modules`` and ``~/.npm`` restored).

No Prefect here: the stages run through the same plain functions the tasks call, so
the numbers are the caches' own. Results: ``bench/results/caches.json`` and ``.md``.

    .venv/bin/python -m bench.caches [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slipway.example import EXAMPLE_DIR
from slipway.spec_loader import load_pipeline, parse_pipeline
from slipway.tasks.dependency_cache import CacheRoots, CacheStore, restore_caches, save_caches
from slipway.tasks.stages import StageContext, execute_stage
from slipway.tasks.workspace_capture import (
    begin_capture,
    finish_capture,
    restore_changes,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NPM_PROJECT = ROOT / "tests" / "flows" / "npm_projects" / "chalk-and-ms"
CI_STAGES = ("lint", "build", "unit", "integration", "quality", "security")
INSTALL_STAGE = """
app: node-demo
stages:
  - name: install
    run: npm ci --prefer-offline
    dependency_cache: {paths: [node_modules, ~/.npm], key_files: [package-lock.json], key: npm}
"""


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _checkout(target: Path) -> Path:
    """The example app's tracked files, as the pipeline's checkout would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "."], cwd=EXAMPLE_DIR, check=True, capture_output=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(EXAMPLE_DIR / name, target / name)
    return target


def _example_context(workspace: Path) -> StageContext:
    spec = load_pipeline(EXAMPLE_DIR / "slipway.yaml")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **spec.env, "PATH": path, "CI": "true"}
    return StageContext(workspace=workspace, env=env, default_timeout=600)


def _run_example(workspace: Path, store: Path) -> list[dict[str, Any]]:
    spec = load_pipeline(EXAMPLE_DIR / "slipway.yaml")
    ctx = _example_context(workspace)
    rows = []
    for name in CI_STAGES:
        stage = spec.stage(name)
        started = time.monotonic()
        begin_capture(workspace, name)
        snapshot_seconds = time.monotonic() - started
        ran = time.monotonic()
        execute_stage(stage, ctx)
        stage_seconds = time.monotonic() - ran
        before = _du(store)
        finished = time.monotonic()
        changes = finish_capture(workspace, name, store=store)
        capture_seconds = time.monotonic() - finished + snapshot_seconds
        rows.append(
            {
                "stage": name,
                "stage_seconds": round(stage_seconds, 2),
                "capture_seconds": round(capture_seconds, 3),
                "files": changes.files,
                "deleted": changes.deleted,
                "bytes": changes.bytes,
                "new_store_bytes": _du(store) - before,
                "changes": changes,
            }
        )
    return rows


def measure_workspace_capture(work: Path) -> dict[str, Any]:
    store = work / "store"
    store.mkdir()
    first_ws = _checkout(work / "run1")
    checkout_bytes = _du(first_ws)
    first = _run_example(first_ws, store)
    after_first = _du(store)
    second = _run_example(_checkout(work / "run2"), store)
    after_second = _du(store)
    fresh = _checkout(work / "restored")
    started = time.monotonic()
    for row in first:
        restore_changes(row["changes"], fresh, store=store)
    restore_seconds = time.monotonic() - started
    for row in (*first, *second):
        row.pop("changes")
    return {
        "checkout_bytes": checkout_bytes,
        "workspace_bytes_after_ci": _du(first_ws),
        "stages": first,
        "store_bytes_first_run": after_first,
        "store_bytes_added_by_second_run": after_second - after_first,
        "second_run_stages": second,
        "restore_all_seconds": round(restore_seconds, 3),
        "restored_files": sum(r["files"] for r in first),
    }


def measure_venv(work: Path) -> dict[str, Any]:
    """A `setup` stage's typical output: ``python -m venv .venv`` (with pip)."""
    store = work / "venv-store"
    store.mkdir()
    workspace = work / "venv-ws"
    workspace.mkdir()
    begin_capture(workspace, "setup")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", ".venv"], cwd=workspace, check=True)
    stage_seconds = time.monotonic() - started
    started = time.monotonic()
    changes = finish_capture(workspace, "setup", store=store)
    capture_seconds = time.monotonic() - started
    fresh = work / "venv-restored"
    fresh.mkdir()
    restored = restore_changes(changes, fresh, store=store)
    works = subprocess.run(
        [str(fresh / ".venv" / "bin" / "python"), "-m", "pip", "--version"],
        capture_output=True,
        check=False,
    )
    return {
        "stage_seconds": round(stage_seconds, 2),
        "files": changes.files,
        "bytes": changes.bytes,
        "store_bytes": _du(store),
        "capture_seconds": round(capture_seconds, 3),
        "restore_seconds": restored.seconds,
        "restored_venv_runs_pip": works.returncode == 0,
    }


def _npm(workspace: Path, home: Path) -> float:
    env = {
        **os.environ,
        "HOME": str(home),
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    started = time.monotonic()
    subprocess.run(
        ["npm", "ci", "--prefer-offline"], cwd=workspace, env=env, check=True, capture_output=True
    )
    return time.monotonic() - started


def _npm_workspace(work: Path, name: str) -> tuple[Path, Path]:
    workspace, home = work / name / "ws", work / name / "home"
    shutil.copytree(NPM_PROJECT, workspace)
    home.mkdir()
    return workspace, home


def measure_npm(work: Path, repeat: int) -> dict[str, Any]:
    spec = parse_pipeline(INSTALL_STAGE).stage("install")
    store = CacheStore(work / "dependency-cache")
    without = []
    for i in range(repeat):
        workspace, home = _npm_workspace(work, f"plain{i}")
        without.append(_npm(workspace, home))

    def cached_run(name: str) -> dict[str, float]:
        workspace, home = _npm_workspace(work, name)
        roots = CacheRoots(workspace, home)
        started = time.monotonic()
        lookups = restore_caches("install", spec.dependency_cache, roots, ["main"], print, store)
        restored = time.monotonic() - started
        npm = _npm(workspace, home)
        started = time.monotonic()
        outcome = save_caches("install", lookups, roots, "main", print, store)[0]
        saved = time.monotonic() - started
        return {"restore": restored, "npm": npm, "save": saved, "hit": outcome.status == "hit"}

    miss = cached_run("miss")
    hits = [cached_run(f"hit{i}") for i in range(repeat)]
    assert all(h["hit"] for h in hits) and not miss["hit"]
    return {
        "packages": len(list((work / "plain0" / "ws" / "node_modules").glob("*/package.json"))),
        "without_cache_seconds": [round(s, 2) for s in without],
        "without_cache_median": round(statistics.median(without), 2),
        "miss_then_save": {k: round(v, 3) for k, v in miss.items() if k != "hit"},
        "hit_restore_median": round(statistics.median(h["restore"] for h in hits), 3),
        "hit_npm_median": round(statistics.median(h["npm"] for h in hits), 2),
        "hit_total_median": round(statistics.median(h["restore"] + h["npm"] for h in hits), 2),
        "cache_bytes": _du(store.root),
    }


def markdown(results: dict[str, Any]) -> str:
    ws, npm, venv = results["workspace_capture"], results["npm"], results["venv"]
    lines = [
        "# Cache measurements (`python -m bench.caches`)",
        "",
        f"Measured {results['when']} on this machine (2 cores, shared).",
        "",
        "## Workspace capture, example app CI stages",
        "",
        "| stage | stage s | capture s | files | deleted | bytes | new in store |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ws["stages"]:
        lines.append(
            f"| {row['stage']} | {row['stage_seconds']} | {row['capture_seconds']} | "
            f"{row['files']} | {row['deleted']} | {row['bytes']} | {row['new_store_bytes']} |"
        )
    lines += [
        "",
        f"- checkout: {ws['checkout_bytes']} bytes; workspace after CI: "
        f"{ws['workspace_bytes_after_ci']} bytes",
        f"- store after the first run: {ws['store_bytes_first_run']} bytes; added by a second "
        f"run of the same content: {ws['store_bytes_added_by_second_run']} bytes",
        f"- restoring every stage into a fresh checkout: {ws['restored_files']} files in "
        f"{ws['restore_all_seconds']} s",
        "",
        "## A `setup` stage's `python -m venv .venv` (with pip), captured and restored",
        "",
        f"- the stage: {venv['stage_seconds']} s; {venv['files']} files and folders, "
        f"{venv['bytes']} bytes; {venv['store_bytes']} bytes in the store",
        f"- capture (snapshot after, hash and store): {venv['capture_seconds']} s; restore "
        f"into an empty workspace: {venv['restore_seconds']} s; the restored venv runs pip: "
        f"{venv['restored_venv_runs_pip']}",
        "",
        f"## `npm ci`, {npm['packages']} packages (chalk 4, ms), fresh workspace and HOME",
        "",
        "| | seconds (median) |",
        "|---|---:|",
        f"| no dependency cache | {npm['without_cache_median']} |",
        f"| cache hit: restore | {npm['hit_restore_median']} |",
        f"| cache hit: npm ci | {npm['hit_npm_median']} |",
        f"| cache hit: total | {npm['hit_total_median']} |",
        f"| cache miss: npm ci, then save | {npm['miss_then_save']['npm']} + "
        f"{npm['miss_then_save']['save']} |",
        "",
        f"- every run without the cache: {npm['without_cache_seconds']}",
        f"- cache size on disk: {npm['cache_bytes']} bytes",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slipway-bench-caches-") as tmp:
        work = Path(tmp)
        (work / "ws").mkdir()
        results = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "workspace_capture": measure_workspace_capture(work / "ws"),
            "venv": measure_venv(work),
            "npm": measure_npm(work, args.repeat),
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "caches.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "caches.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
