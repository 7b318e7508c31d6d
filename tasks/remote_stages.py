"""A ``run`` stage on another machine: a flow run of the stage runner on a work pool.

A stage that names ``work_pool:`` (the role of a Jenkins agent label such as
``e2e-runner``) is handed to a worker of that pool as a flow run of the generic
stage runner (:mod:`slipway.flows.stage_runner`), started with Prefect's
``run_deployment`` from inside the stage's task, so the Prefect UI shows the
runner's flow run nested under the pipeline's stage.

Nothing crosses over on a disk. The workspace goes by git: the runner fetches the
same repository at the same commit itself. The outcome comes back through the
Prefect API: the runner records it as an artifact of its own flow run (type
:data:`OUTCOME_ARTIFACT_TYPE`: pass or fail, the reason, the JUnit report, the last
lines of output), and the pipeline reads it once that run is final. A runner that
dies before recording one (a crashed worker, a cancelled run) fails the stage with
the run's final state.

The stage's ``timeout`` covers the whole trip: waiting for a worker of the pool,
the checkout there and the commands. A run still going at the deadline, or left
behind because the pipeline's task stopped waiting, is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling
from prefect.utilities.urls import url_for
from pydantic import BaseModel, ConfigDict, Field

from slipway.exceptions import StageFailed, StageTimeout
from slipway.spec import Stage
from slipway.tasks.junit_reports import SuiteReport

RUNNER_FLOW_NAME = "stage-runner"
OUTCOME_ARTIFACT_TYPE = "slipway-stage-outcome"
POLL_SECONDS = 1.0


def runner_deployment_name(pool: str) -> str:
    """The stage runner's deployment on ``pool`` (``stage-<pool>``), without the flow name."""
    return f"stage-{pool}"


class RemoteStageOutcome(BaseModel):
    """What a stage runner reports back about the one stage it ran."""

    model_config = ConfigDict(frozen=True)

    stage: str = Field(description="The stage's name.")
    passed: bool = Field(description="Whether the stage passed.")
    detail: str = Field(default="", description="Why it failed (redacted); empty when passed.")
    seconds: float = Field(default=0.0, description="The commands' own duration, in seconds.")
    output_tail: str = Field(default="", description="The last lines of output (redacted).")
    tests: SuiteReport | None = Field(default=None, description="Its JUnit report, if any.")
    host: str = Field(default="", description="The machine the runner ran on.")


def record_outcome(
    client: SyncPrefectClient, flow_run_id: UUID, outcome: RemoteStageOutcome
) -> None:
    """Attach the outcome to the runner's flow run, where the pipeline reads it."""
    verdict = "passed" if outcome.passed else f"failed: {outcome.detail}"
    client.create_artifact(
        ArtifactCreate(
            type=OUTCOME_ARTIFACT_TYPE,
            data=outcome.model_dump(mode="json"),
            description=f"stage {outcome.stage} on {outcome.host or 'the runner'}: {verdict}",
            flow_run_id=flow_run_id,
        )
    )


def read_outcome(client: SyncPrefectClient, flow_run_id: UUID) -> RemoteStageOutcome | None:
    """The outcome a runner recorded on its flow run; None when it recorded none."""
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            type=ArtifactFilterType(any_=[OUTCOME_ARTIFACT_TYPE]),
        )
    )
    return RemoteStageOutcome.model_validate(found[-1].data) if found else None


def runner_parameters(
    stage: Stage,
    *,
    repository: str,
    commit: str,
    env: Mapping[str, str],
    default_timeout: float,
) -> dict[str, Any]:
    """The stage runner's parameters: everything it needs, and no secret (they are shown
    in the UI): the repository is a block name or a URL without credentials."""
    return {
        "repository": repository,
        "commit": commit,
        "stage": stage.model_dump(mode="json", by_alias=True, exclude_none=True),
        "env": dict(env),
        "default_timeout": default_timeout,
    }


def _check_pool(client: SyncPrefectClient, stage: Stage, log: Callable[[str], None]) -> None:
    pool = stage.work_pool
    assert pool is not None
    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        raise StageFailed(
            stage.name,
            f"work pool {pool!r} does not exist on the Prefect server (create it with "
            f"`prefect work-pool create {pool} --type process` and start a worker on it)",
        ) from None
    workers = client.read_workers_for_work_pool(pool)
    if not any(w.status == "ONLINE" for w in workers):
        log(f"no worker of work pool {pool!r} is online: the stage waits for one")


def _cancel(client: SyncPrefectClient, run: FlowRun) -> None:
    """Stop a runner the pipeline no longer waits for (``prefect flow-run cancel``'s rule:
    a run not started yet is cancelled at once, a running one is asked to stop)."""
    current = client.read_flow_run(run.id)
    state = current.state
    if state is None or state.is_final():
        return
    stop = Cancelled if state.is_scheduled() or state.is_paused() else Cancelling
    client.set_flow_run_state(run.id, stop(message="the pipeline stopped waiting"), force=True)


def _wait(client: SyncPrefectClient, run: FlowRun, deadline: float) -> FlowRun:
    while True:
        run = client.read_flow_run(run.id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() >= deadline:
            return run
        time.sleep(POLL_SECONDS)


def run_remote_stage(
    stage: Stage,
    *,
    repository: str,
    commit: str,
    env: Mapping[str, str],
    timeout: float,
    default_timeout: float,
    log: Callable[[str], None],
) -> RemoteStageOutcome:
    """Run ``stage`` on a worker of its ``work_pool`` and return what the runner reported.

    Must be called from the stage's task, so the runner's flow run is linked to it.
    The runner's deployment must exist (:func:`slipway.flows.stage_runner.ensure_stage_runners`).

    Raises:
        StageFailed: the pool does not exist, or the runner ended without an outcome.
        StageTimeout: the runner had not finished within ``timeout`` seconds.
    """
    pool = stage.work_pool
    assert pool is not None, "a local stage runs in the pipeline's process"
    if not commit:
        raise StageFailed(stage.name, "a work_pool stage needs the commit it builds")
    started = time.monotonic()
    deadline = started + timeout
    with get_client(sync_client=True) as client:
        _check_pool(client, stage, log)
        run: FlowRun = run_deployment(  # type: ignore[assignment]
            f"{RUNNER_FLOW_NAME}/{runner_deployment_name(pool)}",
            parameters=runner_parameters(
                stage,
                repository=repository,
                commit=commit,
                env=env,
                default_timeout=default_timeout,
            ),
            flow_run_name=f"{stage.name}@{commit[:12]}",
            timeout=0,  # waited for below, with the stage's deadline and a cancel
        )
        link = url_for(run) or str(run.id)
        log(f"stage {stage.name} runs on work pool {pool!r} as flow run {run.name!r}: {link}")
        try:
            run = _wait(client, run, deadline)
        finally:
            # on the deadline, or when the task itself is stopped mid-wait
            if run.state is None or not run.state.is_final():
                _cancel(client, run)
        state = run.state
        assert state is not None
        if not state.is_final():
            raise StageTimeout(
                stage.name,
                f"not finished on work pool {pool!r} within {timeout:g} s "
                f"(runner {run.name!r} was {state.name}; cancelled)",
            )
        outcome = read_outcome(client, run.id)
    if outcome is None:
        raise StageFailed(
            stage.name,
            f"the stage runner {run.name!r} on work pool {pool!r} ended {state.name} "
            f"without an outcome: {state.message or 'no message'}",
        )
    where = f" on {outcome.host}" if outcome.host else ""
    log(
        f"stage runner {run.name!r} {state.name.lower()}{where} after "
        f"{time.monotonic() - started:.1f} s; its own logs are in that flow run"
    )
    if outcome.output_tail:
        log("last lines of its output:\n" + outcome.output_tail)
    return outcome
