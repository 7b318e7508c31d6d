"""prefect.yaml: ``prefect deploy --all`` run for real against the Prefect API (harness).

The CLI parses the file, loads every entrypoint from the project root, builds each
flow's parameter schema (the form the UI shows) and registers the deployments; then
``prefect deployment run`` starts the rollback as a script would, and the server
checks the parameters against that schema.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import ObjectAlreadyExists
from prefect.testing.cli import invoke_and_assert

ROOT = Path(__file__).resolve().parent.parent
POOL = "slipway"
ROLLBACK_REQUIRED = ["app", "environment", "namespace", "cluster", "manifests", "reason"]


@pytest.fixture
def deployed(prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """``prefect deploy --all`` from the project root; the deployments by (entrypoint,
    name): names are unique per flow only (pipeline/example-app, gitops-sync/example-app)."""
    monkeypatch.chdir(ROOT)
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
    invoke_and_assert(
        ["--no-prompt", "deploy", "--all"],
        expected_output_does_not_contain=["Skipping", "validation error", "Traceback"],
        echo=False,
    )
    with get_client(sync_client=True) as client:
        return {(d.entrypoint, d.name): d for d in client.read_deployments()}


def test_every_deployment_in_prefect_yaml_is_created_on_one_pool(deployed) -> None:
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    for entry in declared:
        deployment = deployed[(entry["entrypoint"], entry["name"])]
        assert deployment.work_pool_name == POOL
        assert deployment.enforce_parameter_schema


def test_the_rollback_deployment_takes_its_parameters_from_the_ui_or_a_script(deployed) -> None:
    rollback = deployed[("flows/rollback.py:rollback", "manual")]
    assert rollback.schedules == []  # a person starts it
    schema = rollback.parameter_openapi_schema
    assert schema["required"] == ROLLBACK_REQUIRED
    undescribed = [name for name, p in schema["properties"].items() if not p.get("description")]
    assert undescribed == []  # the UI form explains every field
    parameters = [
        "app=shop", "environment=production", "namespace=shop-prod", "cluster=prod",
        "manifests=manifests", "reason=5xx after 1.4", "to_revision=3",
    ]  # fmt: skip
    command = ["deployment", "run", "rollback/manual"]
    try:
        invoke_and_assert(
            [*command, *(arg for p in parameters for arg in ("-p", p))],
            expected_output_contains="Created flow run",
            echo=False,
        )
        with get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[rollback.id]))
            )
        assert run.parameters["to_revision"] == 3 and run.parameters["namespace"] == "shop-prod"
        # the server holds a script to the form's rules: nothing starts on a bad name
        bad = [p.replace("shop-prod", "Shop_Prod") for p in parameters]
        invoke_and_assert(
            [*command, *(arg for p in bad for arg in ("-p", p))],
            expected_output_contains="Validation failed for field 'namespace'",
            expected_code=1,
            echo=False,
        )
    finally:
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[rollback.id]))
            ):
                client.delete_flow_run(run.id)
