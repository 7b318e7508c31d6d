"""Several applications' pipelines at once, on two workers of a PostgreSQL-backed server.

Four pipeline runs are started together from the deployment, the way scripts and
pushes start them; each worker takes two at most, so both must take runs, and the
runs overlap in time. Each must end Completed with its own stages and test counts:
nothing of one app may leak into another's run.
"""

from __future__ import annotations

import json

from tests.flows.prefect_api import artifacts, task_runs
from tests.scale_out.conftest import PIPELINE_POOL
from tests.scale_out.runs import (
    app_repo,
    deploy_pipeline,
    junit_command,
    start_pipeline,
    wait_final,
)

APPS = {"alpha": 3, "bravo": 5, "charlie": 7, "delta": 2}  # app -> unit test cases


def _stages(app: str, cases: int) -> list[dict[str, object]]:
    return [
        {"name": "build", "run": [f"mkdir -p out && echo {app} > out/build.txt", "sleep 1"]},
        {
            "name": "test",
            "parallel": [
                {
                    "name": "unit",
                    "run": [junit_command("reports/unit.xml", f"{app}.unit", cases)],
                    "junit": ["reports/unit.xml"],
                },
                {"name": "lint", "run": [f'test "$(cat out/build.txt)" = {app}']},
            ],
        },
    ]


def test_pipelines_of_four_apps_run_at_once_on_two_workers(on_scale_out, git_remote):
    deploy_pipeline(PIPELINE_POOL)
    urls = {app: app_repo(git_remote, app, _stages(app, n)) for app, n in APPS.items()}
    started = {app: start_pipeline(url).id for app, url in urls.items()}

    runs = wait_final(list(started.values()), timeout=240)

    for app, run_id in started.items():
        state = runs[run_id].state
        assert state is not None and state.is_completed(), (app, state)
    # both workers took pipeline runs, and every run was taken exactly once
    taken = {w.name: w.flow_runs_taken() for w in on_scale_out.on(PIPELINE_POOL)}
    assert all(taken.values()), taken
    ids = {str(i) for i in started.values()}
    assert set.union(*taken.values()) >= ids
    assert not set.intersection(*taken.values()) & ids
    # they ran at the same time, not one after the other
    spans = sorted((runs[i].start_time, runs[i].end_time) for i in started.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))

    for app, run_id in started.items():
        stages = task_runs(run_id, expect=["build", "unit", "lint"])
        assert all(stages[name].state.is_completed() for name in ("build", "unit", "lint")), app
        found = artifacts(run_id)
        totals = json.loads(found[f"{app}-test-totals"].data)
        assert [(r["suite"], r["tests"], r["failed"]) for r in totals] == [
            ("unit", APPS[app], 0),
            ("TOTAL", APPS[app], 0),
        ]
        summary = found[f"{app}-pipeline-summary"]
        assert summary.description.startswith(f"{app} pipeline at") and "success" in (
            summary.description
        )
