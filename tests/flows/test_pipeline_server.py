"""The bundled example application's pipeline against a real ``prefect server``.

Everything a person looks at afterwards is checked on the server itself: every
stage's task run, the artifacts, and the run's logs, after the flow's process
has moved on (the ephemeral API would have lost part of them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from slipway.example import publish_example
from slipway.flows.pipeline import run_pipeline
from tests.flows.prefect_api import artifacts, task_runs

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"lint", "build", "test", "unit", "integration", "manifests"}


def test_example_app_pipeline_runs_for_real_on_a_prefect_server(on_server, slipway_home):
    url = publish_example(home=slipway_home)
    state = run_pipeline(repository=url)
    report = state.result()
    assert state.is_completed(), state.message
    assert {s.name: s.status for s in report.stages} == dict.fromkeys(STAGES, "passed")
    unit = report.stage("unit").tests
    integration = report.stage("integration").tests
    assert unit is not None and unit.tests >= 10 and not unit.problems
    assert integration is not None and integration.tests >= 3 and not integration.problems
    assert {a.path for _s, a in report.artifacts} == {
        "dist/example-app.pyz",
        "reports/coverage.xml",
    }

    runs = task_runs(state.state_details.flow_run_id)
    leaf = STAGES - {"test"}
    assert leaf <= set(runs)
    assert all(runs[name].state.is_completed() for name in leaf)
    found = artifacts(state.state_details.flow_run_id)
    assert {
        "example-app-pipeline-summary",
        "example-app-tests",
        "example-app-build-artifacts",
    } <= set(found)

    again = run_pipeline(repository=url).result()
    assert {s.name: s.status for s in again.stages} == dict.fromkeys(STAGES, "cached")


def test_readme_main_command_runs_the_example_and_says_where_to_look(prefect_server, tmp_path):
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "SLIPWAY_HOME": str(tmp_path / "home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "slipway", "example"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    base = prefect_server.removesuffix("/api")
    assert re.search(
        rf"watch it in the Prefect UI: {re.escape(base)}/runs/flow-run/[0-9a-f-]{{36}}", done.stdout
    )
    assert "example-app @" in done.stdout and ": success" in done.stdout
