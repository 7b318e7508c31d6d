"""Loading a run's secrets: every named block registered up front, each stage's
``secrets:`` resolved, bad references refused naming stage, variable and block
(blocks saved on Prefect's test harness)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect.blocks.system import Secret
from prefect_docker import DockerRegistryCredentials
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from slipway.exceptions import ConfigError
from slipway.redact import Redactor
from slipway.spec import Pipeline
from slipway.tasks.stage_secrets import blocks_named, load_run_secrets

pytestmark = pytest.mark.usefixtures("flow_env")

KUBE_TOKEN = "kube-token-unit-61c2aa"
REGISTRY_PASSWORD = "registry-unit-pass-09f1"


def _pipeline(stages: list[dict[str, Any]], **extra: Any) -> Pipeline:  # noqa: ANN401
    return Pipeline.model_validate({"app": "unit", "stages": stages, **extra})


def _deploy(cluster: str | None) -> dict[str, Any]:
    environment = {"name": "staging", "namespace": "staging"}
    if cluster:
        environment["cluster"] = cluster
    return {"manifests": "m", "environments": [environment]}


def test_the_blocks_a_file_names_are_listed_with_where_they_are_named() -> None:
    spec = _pipeline(
        [
            {"name": "image", "build_image": {"repository": "app", "registry": "prod"}},
            {
                "name": "quality",
                "quality_gate": {"sonarqube": {"server": "sonar", "project_key": "app"}},
            },
        ],
        docker_host="engine",
        deploy={**_deploy(None), "prometheus": "prom"},
    )

    found = [(u.name, u.where) for u in blocks_named(spec, cluster="from-param")]

    assert found == [
        ("engine", "docker_host"),
        ("prod", "stage image"),
        ("sonar", "stage quality"),
        ("m", "deploy.manifests"),
        ("prom", "deploy.prometheus"),
        ("from-param", "deploy.environments.staging.cluster"),
    ]


def save_token_cluster(name: str, token: str) -> None:
    """A KubernetesCredentials block whose kubeconfig user logs in with ``token``."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(config=kubeconfig, context_name="c")
    ).save(name, overwrite=True)


def test_every_named_block_is_registered_before_any_stage_asks() -> None:
    save_token_cluster("unit-cluster", KUBE_TOKEN)
    DockerRegistryCredentials(
        username="ci", password=REGISTRY_PASSWORD, registry_url="127.0.0.1:5999"
    ).save("unit-registry", overwrite=True)
    spec = _pipeline(
        [
            {"name": "lint", "run": "true"},
            {"name": "image", "build_image": {"repository": "app", "registry": "unit-registry"}},
        ],
        deploy=_deploy("unit-cluster"),  # the manifests block "m" does not exist: skipped
    )
    redactor = Redactor()

    by_stage = asyncio.run(load_run_secrets(spec, redactor))

    assert by_stage == {}
    assert redactor.redact(f"{KUBE_TOKEN} {REGISTRY_PASSWORD}") == "*** ***"


def test_a_stage_gets_the_fields_it_names() -> None:
    Secret(value="db-unit-pass-44e0").save("unit-db", overwrite=True)
    DockerRegistryCredentials(
        username="ci-user", password=REGISTRY_PASSWORD, registry_url="127.0.0.1:5999"
    ).save("unit-registry", overwrite=True)
    secrets = {
        "DB": {"block": "secret/unit-db"},
        "REGISTRY_USER": {
            "block": "docker-registry-credentials/unit-registry",
            "field": "username",
        },
    }
    spec = _pipeline([{"name": "login", "run": "true", "secrets": secrets}])
    redactor = Redactor()

    by_stage = asyncio.run(load_run_secrets(spec, redactor))

    assert by_stage == {"login": {"DB": "db-unit-pass-44e0", "REGISTRY_USER": "ci-user"}}
    # a plain field asked for as a secret is masked too, with the rest of its block
    assert redactor.redact("ci-user db-unit-pass-44e0 " + REGISTRY_PASSWORD) == "*** *** ***"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"block": "secret/does-not-exist"}, "no block 'secret/does-not-exist' on the Prefect"),
        ({"block": "no-such-type/x"}, "no block 'no-such-type/x' on the Prefect server"),
        ({"block": "secret/unit-db", "field": "password"}, "the block has no field 'password'"),
    ],
)
def test_a_bad_reference_fails_naming_stage_variable_and_block(
    ref: dict[str, str], message: str
) -> None:
    Secret(value="db-unit-pass-44e0").save("unit-db", overwrite=True)
    spec = _pipeline([{"name": "login", "run": "true", "secrets": {"TOKEN": ref}}])

    with pytest.raises(ConfigError, match="stage login: secrets.TOKEN") as refused:
        asyncio.run(load_run_secrets(spec, Redactor()))

    assert message in str(refused.value)
    assert "db-unit-pass-44e0" not in str(refused.value)
