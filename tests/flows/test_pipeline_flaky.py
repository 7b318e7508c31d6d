"""A flaky test through the whole pipeline: real pytest with pytest-rerunfailures in the
app's stage, the stage passing, the artifact and stage table naming the flaky test, and
the app's flaky history counting one more run each time."""

from __future__ import annotations

import sys
import textwrap

import pytest

from slipway.flows.pipeline import run_pipeline
from slipway.report import PipelineReport, stage_line
from slipway.tasks.flaky_history import read_flaky_history
from tests.flows.prefect_api import artifacts

pytestmark = pytest.mark.usefixtures("flow_env")

FLAKY_TEST = """
import os
from pathlib import Path

import pytest


@pytest.mark.flaky(reruns=1)
def test_network_call():
    marker = Path("first-try.marker")  # in the run's fresh workspace: flaky every run
    if not marker.exists():
        marker.write_text("x")
        pytest.fail("connection reset")


def test_parse():
    assert int("2") == 2
"""


def test_a_flaky_test_passes_the_pipeline_and_is_remembered(git_remote):
    pytest_command = f"{sys.executable} -m pytest -q -p no:cacheprovider -p pytest_rerunfailures"
    pipeline = textwrap.dedent(
        f"""
        app: flaky-demo
        stages:
          - name: unit
            run: {pytest_command} --junitxml=r/unit.xml test_app.py
            junit: r/unit.xml
            cache: false
            env: {{PYTEST_DISABLE_PLUGIN_AUTOLOAD: "1"}}
        """
    ).lstrip()
    _bare, url = git_remote({"slipway.yaml": pipeline, "test_app.py": FLAKY_TEST})

    for run_number in (1, 2):
        state = run_pipeline(repository=url)
        report = state.result(raise_on_failure=False)
        assert isinstance(report, PipelineReport), report
        assert state.is_completed(), report.reason
        unit = report.stage("unit")
        assert unit.status == "passed"
        assert "[1 passed, 1 flaky]" in stage_line(unit)
        tests_md = artifacts(state.state_details.flow_run_id)["flaky-demo-tests"].data
        assert f"| unit | `test_app.py::test_network_call` | 2 | {run_number} |" in tests_md

    history = read_flaky_history("flaky-demo")
    assert history["unit::test_app.py::test_network_call"]["flaky_runs"] == 2
