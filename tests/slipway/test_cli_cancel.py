"""Ctrl-C and SIGTERM on a real ``slipway run``: processes gone, runs Cancelled."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from slipway.tasks.process_tree import _cgroup2_base, pids_with_cookie
from tests.conftest import ROOT
from tests.flows.prefect_api import task_runs

PARALLEL = ("stubborn", "escaper")


def pipeline_file(marks: Path) -> str:
    """Two parallel stages that hold on: one ignores SIGTERM, one escapes with setsid
    and a background job; a stage after them must never start."""

    def stage(name: str, body: str) -> str:
        return (
            f"      - name: {name}\n"
            f"        run: >-\n"
            f'          echo "$SLIPWAY_STAGE_COOKIE" > {marks}/{name}.cookie;\n'
            f"          {body}\n"
            f"          touch {marks}/{name}.ready; sleep 600\n"
        )

    return (
        textwrap.dedent(
            """
            app: demo
            stages:
              - name: quick
                run: echo quick
              - name: slow
                parallel:
            """
        ).lstrip()
        + stage("stubborn", "bash -c 'trap \"\" TERM INT; sleep 600' &")
        + stage("escaper", "setsid sleep 601 & nohup sleep 602 > /dev/null 2>&1 &")
        + "  - name: after\n    run: echo never\n"
    )


def start_run(url: str, tmp_path: Path, api: str, grace: float) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "SLIPWAY_HOME": str(tmp_path / "home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "SLIPWAY_KILL_GRACE_SECONDS": str(grace),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "slipway", "run", url],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "out").open("wb"),
        stderr=(tmp_path / "err").open("wb"),
    )


def wait_for(path: Path, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "slipway run ended before its stages started"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


def output(tmp_path: Path) -> str:
    return (tmp_path / "out").read_text() + (tmp_path / "err").read_text()


def assert_no_stage_process_left(marks: Path) -> None:
    for name in PARALLEL:
        cookie = (marks / f"{name}.cookie").read_text().strip()
        assert pids_with_cookie(cookie) == set(), f"processes of stage {name} survived"
        base = _cgroup2_base()
        if base is not None:
            assert not (base / f"slipway-{cookie}").exists(), f"stage {name}'s cgroup was left"


@pytest.fixture
def running(git_remote, tmp_path, on_server):
    marks = tmp_path / "marks"
    marks.mkdir()
    _bare, url = git_remote({"slipway.yaml": pipeline_file(marks)})

    def start(grace: float) -> subprocess.Popen[bytes]:
        proc = start_run(url, tmp_path, on_server, grace)
        for name in PARALLEL:
            wait_for(marks / f"{name}.ready", proc)
        return proc

    yield start, marks


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_cancels_the_run_cleanly(running, tmp_path, sig, code):
    start, marks = running
    proc = start(grace=1)

    proc.send_signal(sig)
    returncode = proc.wait(120)

    text = output(tmp_path)
    assert returncode == code, text[-3000:]
    assert_no_stage_process_left(marks)
    kept = re.search(r"workspace kept at (\S+)", text)
    assert kept, text[-3000:]
    workspace = Path(kept.group(1))
    assert (workspace / "slipway.yaml").is_file()
    assert str(workspace).startswith(str(tmp_path / "home"))
    flow_run_id = UUID(re.search(r"/runs/flow-run/([0-9a-f-]{36})", text).group(1))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.name == "Cancelled"
    runs = task_runs(flow_run_id, expect=PARALLEL)
    assert {name: runs[name].state.name for name in PARALLEL} == dict.fromkeys(
        PARALLEL, "Cancelled"
    )
    assert runs["quick"].state.name == "Completed"
    # nothing starts once the run is cancelled: the stage after shows as not run
    assert runs["after"].state.name == "NotRun"


def test_a_second_signal_exits_at_once_and_still_kills_the_stages(running, tmp_path):
    start, marks = running
    # a grace far longer than the wait below: only the second signal can end it in time
    proc = start(grace=600)

    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "cancelling the run" not in output(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    returncode = proc.wait(60)

    assert returncode == 130, output(tmp_path)[-3000:]
    assert "exiting now" in output(tmp_path)
    assert_no_stage_process_left(marks)
