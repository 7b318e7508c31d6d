"""A cancelled pipeline (what Ctrl-C on ``slipway run`` asks for), in the harness."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest

from slipway.flows.pipeline import run_pipeline
from slipway.report import PipelineReport
from slipway.tasks import process_tree
from tests.flows.prefect_api import task_runs

pytestmark = pytest.mark.usefixtures("flow_env")


@pytest.fixture(autouse=True)
def no_cancellation():
    process_tree.reset_cancel()
    yield
    process_tree.reset_cancel()


def test_a_cancelled_stage_is_not_served_from_the_cache_next_time(git_remote, tmp_path: Path):
    ready = tmp_path / "ready"
    pipeline_file = f"""
        app: demo
        stages:
          - name: slow
            run: if [ -e {ready} ]; then echo second run; else touch {ready}; sleep 600; fi
        """
    _bare, url = git_remote({"slipway.yaml": textwrap.dedent(pipeline_file).lstrip()})

    def cancel_when_ready() -> None:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        process_tree.request_cancel()

    threading.Thread(target=cancel_when_ready, daemon=True).start()
    first = run_pipeline(repository=url)

    assert first.name == "Cancelled", first
    assert "workspace kept at" in (first.message or "")
    runs = task_runs(first.state_details.flow_run_id, expect=["slow"])
    assert runs["slow"].state.name == "Cancelled"

    process_tree.reset_cancel()
    second = run_pipeline(repository=url)
    report = second.result()
    assert isinstance(report, PipelineReport)
    assert {s.name: s.status for s in report.stages} == {"slow": "passed"}  # ran, not cached
