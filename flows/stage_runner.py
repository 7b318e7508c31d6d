"""The stage runner: one ``run`` stage of a pipeline, on a worker of another work pool.

A stage that names ``work_pool: e2e-runner`` is started by the pipeline as a flow
run of this flow on the deployment ``stage-runner/stage-e2e-runner``
(:mod:`slipway.tasks.remote_stages`). The runner checks the same repository out at
the same commit into a workspace of its own machine, runs the stage exactly as the
pipeline would (:func:`slipway.tasks.stages.execute_stage`), and records the outcome
(pass or fail, reason, JUnit report, output tail) as an artifact of its flow run;
its full log is this flow run's log.

The deployments are made by slipway on demand (:func:`ensure_stage_runners`, at the
start of every pipeline run that has such stages), not declared in prefect.yaml:
the pools are named by the application's pipeline file, which a platform team does
not edit, so a new pool must work without anyone redeploying. The deployment is
an upsert with a module entrypoint (``slipway.flows.stage_runner.stage_runner``):
any machine with slipway installed can run it, from any working directory, with no
pull step. A worker of the pool is all that is needed there::

    prefect work-pool create e2e-runner --type process
    prefect worker start --pool e2e-runner
"""

# No ``from __future__ import annotations``: Prefect builds the parameter model from
# the annotations (see flows/pipeline.py).

import asyncio
import socket
from collections.abc import Callable
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.states import Failed
from pydantic import Field

from slipway.blocks.git import AppRepository
from slipway.exceptions import ConfigError, SlipwayError, StageFailed
from slipway.redact import Redactor
from slipway.repository_policy import is_block_name
from slipway.spec import Pipeline, Stage
from slipway.tasks.checkout import checkout_repo
from slipway.tasks.remote_stages import (
    RUNNER_FLOW_NAME,
    RemoteStageOutcome,
    record_outcome,
    runner_deployment_name,
)
from slipway.tasks.stage_secrets import resolve_stage_secrets
from slipway.tasks.stages import (
    StageContext,
    StageFailedWithReport,
    execute_stage,
    stage_environment,
)
from slipway.workspace import new_workspace, remove_workspace, run_home


async def _repository(reference: str) -> AppRepository:
    """The pipeline's rule: a clone URL or local path as-is, else an AppRepository block."""
    if reference and not is_block_name(reference):
        return AppRepository(url=reference)
    return await AppRepository.aload(reference)


def _run_stage(
    stage: Stage,
    repo: AppRepository,
    commit: str,
    env: dict[str, str],
    default_timeout: float,
    workspace_key: str,
    redactor: Redactor,
    log: Callable[[str], None],
    secrets: dict[str, str],
) -> RemoteStageOutcome:
    """Checkout, then the stage; every failure becomes an outcome with its reason."""
    workspace = new_workspace("stage-runs", workspace_key)
    host = socket.gethostname()

    def failed(detail: str, report: Any = None) -> RemoteStageOutcome:  # noqa: ANN401
        return RemoteStageOutcome(
            stage=stage.name, passed=False, detail=redactor.redact(detail), tests=report, host=host
        )

    try:
        try:
            checkout_repo(repo, workspace, ref=commit, redactor=redactor)
        except SlipwayError as exc:
            return failed(f"checkout of {commit[:12]} on {host} failed: {exc}")
        run_vars = {**env, "SLIPWAY_WORKSPACE": str(workspace)}
        home = {"HOME": str(run_home(workspace))}
        ctx = StageContext(
            workspace=workspace,
            env=stage_environment(base=None, pipeline_env={}, run_vars={**run_vars, **home}),
            default_timeout=default_timeout,
            redactor=redactor,
            pipeline_env=run_vars,
            stage_secrets={stage.name: secrets},
            revision=commit,
            source_url=repo.url,
        )
        result = execute_stage(stage, ctx, log=log)
    except StageFailedWithReport as failure:
        return failed(failure.detail, failure.report)
    except StageFailed as exc:
        return failed(str(exc).split(": ", 1)[-1])
    except SlipwayError as exc:
        return failed(str(exc))
    finally:
        remove_workspace(workspace)
    return RemoteStageOutcome(
        stage=stage.name,
        passed=True,
        seconds=result.seconds,
        output_tail=result.output_tail,
        tests=result.tests,
        host=host,
    )


@flow(
    name=RUNNER_FLOW_NAME,
    persist_result=False,  # the outcome travels as an artifact: no shared result store
    description="One `run` stage of a pipeline, from a fresh checkout of its commit.",
)
async def stage_runner(
    repository: Annotated[
        str, Field(description="AppRepository block name, or a clone URL / local path.")
    ],
    commit: Annotated[str, Field(description="Full SHA of the commit the pipeline builds.")],
    stage: Annotated[dict[str, Any], Field(description="The stage, as in the pipeline file.")],
    env: Annotated[
        dict[str, str], Field(description="The pipeline's environment and run variables.")
    ],
    default_timeout: Annotated[
        float, Field(description="The pipeline's default stage timeout, in seconds.")
    ] = 3600,
) -> dict[str, Any]:
    """Run one stage of a pipeline here and record its outcome on this flow run.

    Args:
        repository: AppRepository block name, or a clone URL / local path.
        commit: full SHA of the commit the pipeline builds.
        stage: the stage, as in the pipeline file.
        env: the pipeline's environment and run variables (SLIPWAY_*).
        default_timeout: the pipeline's default stage timeout, in seconds.
    """
    logger = get_run_logger()
    flow_run = get_run_context().flow_run  # type: ignore[union-attr]
    run_id = flow_run.id if flow_run else None
    # run here, not handed on again: the pool is where we are
    spec = Stage.model_validate(stage).model_copy(update={"work_pool": None})
    redactor = Redactor()
    try:
        repo = await _repository(repository)
        # asked for by the stage itself, resolved on this machine: never a parameter
        secrets = await resolve_stage_secrets(spec.name, spec.secrets, redactor)
    except (ValueError, SlipwayError) as exc:
        outcome = RemoteStageOutcome(stage=spec.name, passed=False, detail=str(exc))
    else:
        redactor.add(*repo.secret_values())
        logger.info("stage %s at %s on %s", spec.name, commit[:12], socket.gethostname())
        outcome = await asyncio.to_thread(
            _run_stage,
            spec,
            repo,
            commit,
            env,
            default_timeout,
            str(run_id or "local"),
            redactor,
            logger.info,
            secrets,
        )
    if run_id is not None:
        with get_client(sync_client=True) as client:
            record_outcome(client, run_id, outcome)
    if not outcome.passed:
        logger.error("stage %s failed: %s", spec.name, outcome.detail)
        return Failed(message=f"stage {spec.name!r} failed: {outcome.detail}")  # type: ignore[return-value]
    return outcome.model_dump(mode="json")


async def ensure_stage_runners(pipeline: Pipeline) -> dict[str, str]:
    """Create or update the stage runner's deployment on every pool the pipeline names.

    Returns the deployment names by pool. An upsert, so concurrent pipelines and
    repeated runs are harmless.

    Raises:
        ConfigError: a pool the pipeline names does not exist on the Prefect server.
    """
    pools = sorted({s.work_pool for s in pipeline.all_stages() if s.work_pool})
    made: dict[str, str] = {}
    if not pools:
        return made
    async with get_client() as client:
        for pool in pools:
            try:
                await client.read_work_pool(pool)
            except ObjectNotFound:
                users = [s.name for s in pipeline.all_stages() if s.work_pool == pool]
                raise ConfigError(
                    f"work pool {pool!r} (stage {', '.join(users)}) does not exist on the "
                    f"Prefect server: create it (`prefect work-pool create {pool} --type "
                    "process`) and start a worker on it"
                ) from None
            deployment = await stage_runner.ato_deployment(
                name=runner_deployment_name(pool),
                work_pool_name=pool,
                entrypoint_type=EntrypointType.MODULE_PATH,
                description=f"Runs `work_pool: {pool}` stages of slipway pipelines.",
                tags=["slipway", "stage-runner"],
            )
            await deployment.aapply()
            made[pool] = f"{RUNNER_FLOW_NAME}/{runner_deployment_name(pool)}"
    return made
