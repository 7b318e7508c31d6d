"""``work_pool:`` stages: run by the stage runner on a worker of another pool.

The pipelines run from their deployment on the ``pipelines`` pool; their ``e2e``
stage goes to the worker of ``e2e-runner``, which has its own disk: it checks the
commit out itself (a file the local stage wrote is not there), and its result,
JUnit report and log come back into the pipeline run.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from pydantic import ValidationError

from slipway.exceptions import ConfigError, StageTimeout
from slipway.flows.stage_runner import ensure_stage_runners
from slipway.spec import Pipeline, Stage
from slipway.tasks.remote_stages import run_remote_stage
from tests.flows.prefect_api import artifacts, logs, task_runs
from tests.scale_out.conftest import PIPELINE_POOL, RUNNER_POOL
from tests.scale_out.runs import (
    app_repo,
    deploy_pipeline,
    junit_command,
    start_pipeline,
    subflow_runs,
    wait_final,
)


def _stages(app: str, *, failed: int = 0, pool: str = RUNNER_POOL) -> list[dict[str, object]]:
    e2e = [
        'echo "machine=$SLIPWAY_TEST_MACHINE"',  # passed on by the worker's operator
        # the runner's worker has the Prefect auth string; the stage does not get it
        'test -z "${PREFECT_API_AUTH_STRING:-}" && test -z "${PREFECT_API_URL:-}"',
        'echo "e2e token=$E2E_TOKEN"',  # its secret, resolved on the runner's machine
        "test ! -e local-only.txt",  # no shared disk: the local stage's file is not here
        'test "$(git rev-parse HEAD)" = "$SLIPWAY_COMMIT"',  # the pipeline's commit
        junit_command("reports/e2e.xml", f"{app}.e2e", 4, failed),
    ]
    if failed:
        e2e.append("exit 1")
    return [
        {
            "name": "unit",
            "run": ["touch local-only.txt", junit_command("reports/unit.xml", f"{app}.unit", 2)],
            "junit": ["reports/unit.xml"],
        },
        {
            "name": "e2e",
            "work_pool": pool,
            "run": e2e,
            "junit": ["reports/e2e.xml"],
            "secrets": {"E2E_TOKEN": {"block": f"secret/{E2E_SECRET_BLOCK}"}},
        },
    ]


E2E_SECRET_BLOCK = "e2e-token"
E2E_TOKEN = "e2e-runner-token-3f9a1c"


def _pipeline(stages: list[dict[str, object]]) -> Pipeline:
    return Pipeline.model_validate({"app": "probe", "stages": stages})


def test_a_work_pool_stage_needs_run_and_keeps_its_files_on_its_machine():
    with pytest.raises(ValidationError, match="'work_pool' goes with 'run' only"):
        Stage.model_validate({"name": "gate", "work_pool": "e2e-runner", "quality_gate": {}})
    with pytest.raises(ValidationError, match="stay on the runner's machine"):
        Stage.model_validate(
            {"name": "e2e", "work_pool": "e2e-runner", "run": ["true"], "artifacts": ["out/*"]}
        )


def test_stages_run_on_the_e2e_runner_pool_and_report_back(on_scale_out, git_remote):
    Secret(value=E2E_TOKEN).save(E2E_SECRET_BLOCK, overwrite=True)
    deploy_pipeline(PIPELINE_POOL)
    passing = start_pipeline(app_repo(git_remote, "shop", _stages("shop"))).id
    failing = start_pipeline(app_repo(git_remote, "cart", _stages("cart", failed=1))).id

    runs = wait_final([passing, failing], timeout=240)

    # passing: both stages, the e2e one on the e2e-runner's worker, tests back in the run
    state = runs[passing].state
    assert state is not None and state.is_completed(), state
    stages = task_runs(passing, expect=["unit", "e2e"])
    assert stages["unit"].state.is_completed() and stages["e2e"].state.is_completed()
    totals = json.loads(artifacts(passing)["shop-test-totals"].data)
    assert [(r["suite"], r["tests"], r["failed"]) for r in totals] == [
        ("unit", 2, 0),
        ("e2e", 4, 0),
        ("TOTAL", 6, 0),
    ]
    (runner,) = subflow_runs(passing)
    assert runner.state is not None and runner.state.is_completed()
    assert runner.parent_task_run_id is not None  # nested under the pipeline's e2e stage
    (e2e_box,) = on_scale_out.on(RUNNER_POOL)
    assert str(runner.id) in e2e_box.flow_runs_taken()
    assert "machine=e2e-box" in logs(runner.id)  # the stage's own output, in its own run
    # the secret reached the stage, masked; the runner's parameters name only the block
    assert "e2e token=***" in logs(runner.id) and E2E_TOKEN not in logs(runner.id)
    assert E2E_TOKEN not in str(runner.parameters)
    assert E2E_SECRET_BLOCK in str(runner.parameters)
    pipeline_log = logs(passing)
    assert f"as flow run {runner.name!r}" in pipeline_log and str(runner.id) in pipeline_log
    assert "machine=e2e-box" in pipeline_log  # the output's tail, in the pipeline's log too

    # failing: the pipeline fails at the remote stage, with the failed test as the reason
    state = runs[failing].state
    assert state is not None and state.is_failed(), state
    assert state.message == "stage 'e2e' failed: 1 test(s) failed: cart.e2e::broken_0"
    totals = json.loads(artifacts(failing)["cart-test-totals"].data)
    assert ("e2e", 5, 1) in [(r["suite"], r["tests"], r["failed"]) for r in totals]
    (runner,) = subflow_runs(failing)
    assert runner.state is not None and runner.state.is_failed()


def test_a_pool_must_exist_and_a_runner_waiting_in_vain_is_cancelled(on_scale_out, git_remote):
    spec = _pipeline(_stages("gpu", pool="gpu-box"))
    with pytest.raises(ConfigError) as refused:
        asyncio.run(ensure_stage_runners(spec))
    assert "work pool 'gpu-box' (stage e2e) does not exist" in str(refused.value)
    assert "prefect work-pool create gpu-box" in str(refused.value)

    # a pool without a worker: the stage waits for one until its timeout, then the
    # runner's flow run is cancelled, never left to start later
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="idle", type="process"))
    spec = _pipeline(_stages("wait", pool="idle"))
    asyncio.run(ensure_stage_runners(spec))
    said: list[str] = []
    with pytest.raises(StageTimeout, match="not finished on work pool 'idle' within 2 s"):
        run_remote_stage(
            spec.stage("e2e"),
            repository=app_repo(git_remote, "wait", _stages("wait", pool="idle")),
            commit="0" * 40,
            env={},
            timeout=2,
            default_timeout=60,
            log=said.append,
        )
    assert "no worker of work pool 'idle' is online: the stage waits for one" in said
    with get_client(sync_client=True) as client:
        (runner,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"e2e@{'0' * 12}"]))
        )
    assert runner.state is not None and runner.state.is_cancelled()
