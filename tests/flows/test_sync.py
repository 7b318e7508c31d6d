"""The ``gitops-sync`` flow: scheduled drift repair, reports, Slack, and application sets.

Real: git (the manifests repository), the Prefect API (harness) with its blocks and
artifacts, Slack over HTTP (a local receiver). Stand-in: the Kubernetes API, reached
through the real kubernetes client from a prefect-kubernetes block (two blocks on two
namespaces play two clusters for the application sets).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from kubernetes import client
from prefect.states import State
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
from prefect_slack import SlackWebhook

from slipway.blocks.gitops import ManifestsRepository
from slipway.blocks.notifications import SlackNotifier
from slipway.exceptions import SyncFailed
from slipway.flows.sync import gitops_sync
from slipway.tasks.sync import SyncResult
from tests.flows.prefect_api import artifacts
from tests.servers.example_manifests import app_deployment, app_service
from tests.servers.git_http import commit_files, make_bare_repo
from tests.servers.kube_api import RUNNABLE_IMAGES, KubeCluster
from tests.servers.slack_receiver import SlackReceiver

pytestmark = pytest.mark.usefixtures("flow_env")

APP = "shop"
IMAGE, OTHER_IMAGE = RUNNABLE_IMAGES


def manifests(folder: str, image: str = IMAGE, replicas: int = 3) -> dict[str, str]:
    deployment = app_deployment(APP, image, replicas)
    deployment["spec"]["progressDeadlineSeconds"] = 3
    return {
        f"{folder}/deployment.yaml": yaml.safe_dump(deployment),
        f"{folder}/service.yaml": yaml.safe_dump(app_service(APP)),
    }


@dataclass
class World:
    kube: KubeCluster
    remote: Path
    folder: Path
    repo_block: str
    cluster_block: str
    notifier_block: str
    slack: SlackReceiver

    def write(self, name: str, spec: dict[str, Any]) -> str:
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return str(path)

    def application(self, **policy: Any) -> str:
        return self.write(
            APP,
            {
                "application": {
                    "name": APP,
                    "repo": self.repo_block,
                    "path": "prod",
                    "destination": {
                        "cluster": self.cluster_block,
                        "namespace": self.kube.namespace,
                    },
                    "sync_policy": {"automated": True, **policy},
                    "notifier": self.notifier_block,
                }
            },
        )

    def cluster(self) -> str:
        """Another cluster block for the same cluster (a second 'cluster' of a set)."""
        name = f"cluster-{uuid4().hex[:8]}"
        config = yaml.safe_load(self.kube.kubeconfig.read_text())
        KubernetesCredentials(
            cluster_config=KubernetesClusterConfig(
                config=config, context_name=config["current-context"]
            )
        ).save(name)
        return name

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.kube.api_client())

    def messages(self) -> list[str]:
        return [str(r.body.get("text", "")) for r in self.slack.received if r.body]


@pytest.fixture
def world(kube: KubeCluster, tmp_path: Path) -> Iterator[World]:
    remote = make_bare_repo(tmp_path / "git", "manifests.git")
    commit_files(remote, manifests("prod"), "manifests")
    repo_block = f"manifests-{uuid4().hex[:8]}"
    ManifestsRepository(url=remote.as_uri()).save(repo_block)
    folder = tmp_path / "applications"
    folder.mkdir()
    with SlackReceiver() as slack:
        notifier = f"slack-{uuid4().hex[:8]}"
        SlackNotifier(webhook=SlackWebhook(url=slack.webhook_url)).save(notifier)
        world = World(kube, remote, folder, repo_block, "", notifier, slack)
        world.cluster_block = world.cluster()
        yield world


def run(application: str, **parameters: Any) -> State:
    return asyncio.run(gitops_sync(application=application, return_state=True, **parameters))


def edit_by_hand(world: World, namespace: str) -> None:
    world.apps.patch_namespaced_deployment_scale(APP, namespace, {"spec": {"replicas": 5}})
    patch = {"spec": {"template": {"spec": {"containers": [{"name": APP, "image": OTHER_IMAGE}]}}}}
    world.apps.patch_namespaced_deployment(APP, namespace, patch)


def test_a_scheduled_run_reverts_hand_edits_and_reports_them(world: World) -> None:
    application = world.application(self_heal=True, prune=True)
    first = run(application)
    assert first.is_completed()
    (created,) = first.result()
    assert isinstance(created, SyncResult) and created.sync_status == "Synced"
    page = artifacts(first.state_details.flow_run_id)["gitops-sync-shop"].data
    assert "| sync status | **Synced** |" in page
    assert world.messages() == []  # a sync that only applied git is not news

    edit_by_hand(world, world.kube.namespace)
    state = run(application)

    assert state.is_completed()
    (result,) = state.result()
    assert [o.ref.kind for o in result.reverted] == ["Deployment"]
    dep = world.apps.read_namespaced_deployment(APP, world.kube.namespace)
    assert dep.spec.replicas == 3 and dep.spec.template.spec.containers[0].image == IMAGE
    page = artifacts(state.state_details.flow_run_id)["gitops-sync-shop"].data
    assert "| reverted (drift) | 1 |" in page
    assert "**reverted** to git" in page and "-  replicas: 5\n+  replicas: 3" in page
    assert f"-      - image: {OTHER_IMAGE}" in page
    (message,) = world.messages()
    assert "Drift in shop reverted (1 objects)" in message
    assert "spec.replicas" in message and "reverted" in message


def test_without_self_heal_drift_is_reported_and_notified_only(world: World) -> None:
    application = world.application(self_heal=False)
    run(application)
    edit_by_hand(world, world.kube.namespace)

    state = run(application)

    assert state.is_completed()  # reported drift is not a failed run
    (result,) = state.result()
    assert result.sync_status == "OutOfSync" and len(result.unrepaired_drift) == 1
    assert world.apps.read_namespaced_deployment(APP, world.kube.namespace).spec.replicas == 5
    page = artifacts(state.state_details.flow_run_id)["gitops-sync-shop"].data
    assert "| drift not reverted | 1 |" in page and "self_heal is off" in page
    (message,) = world.messages()
    assert "Drift in shop: 1 objects differ from git" in message
    assert "not reverted (self_heal off)" in message


def test_dry_run_and_manual_sync_parameters(world: World) -> None:
    application = world.application(self_heal=False)
    dry = run(application, dry_run=True)
    assert dry.is_completed() and dry.result()[0].dry_run
    assert not world.apps.list_namespaced_deployment(world.kube.namespace).items
    run(application)
    edit_by_hand(world, world.kube.namespace)

    manual = run(application, manual_sync=True)

    assert [o.ref.kind for o in manual.result()[0].reverted] == ["Deployment"]


def application_set(world: World, *, progressive: bool, broken_dev: bool) -> str:
    dev_image = world.kube.broken_image(APP) if broken_dev else IMAGE
    commit_files(world.remote, manifests("dev", image=dev_image), "dev")
    ns = world.kube.namespace
    elements = [
        {"name": "dev", "cluster": world.cluster(), "namespace": f"{ns}-dev", "path": "dev"},
        {"name": "prod", "cluster": world.cluster_block, "namespace": ns, "path": "prod"},
    ]
    return world.write(
        "shop-clusters",
        {
            "application_set": {
                "name": APP,
                "progressive": progressive,
                "health_timeout_seconds": 20,
                "generator": {"list": {"elements": elements}},
                "template": {
                    "repo": world.repo_block,
                    "sync_policy": {"automated": True},
                    "sync_options": {"create_namespace": True},
                },
            }
        },
    )


@pytest.fixture
def dev_namespace(world: World) -> Iterator[str]:
    name = f"{world.kube.namespace}-dev"
    yield name
    core = client.CoreV1Api(world.kube.api_client())
    if any(n.metadata.name == name for n in core.list_namespace().items):
        core.delete_namespace(name)


def test_a_progressive_set_stops_at_the_first_unhealthy_cluster(
    world: World, dev_namespace: str
) -> None:
    application = application_set(world, progressive=True, broken_dev=True)

    state = run(application)

    assert state.is_failed()
    with pytest.raises(SyncFailed, match="progressive sync stopped: shop-dev is Degraded"):
        state.result()
    assert "not synced: shop-prod" in state.message
    assert world.apps.list_namespaced_deployment(dev_namespace).items  # dev got it
    assert not world.apps.list_namespaced_deployment(world.kube.namespace).items  # prod not
    found = artifacts(state.state_details.flow_run_id)
    table = found["gitops-sync-shop"].data
    assert '"not synced"' in table and '"Degraded"' in table
    assert "ProgressDeadlineExceeded" in found["gitops-sync-shop-dev"].data


def test_a_progressive_set_syncs_every_cluster_when_each_turns_healthy(
    world: World, dev_namespace: str
) -> None:
    application = application_set(world, progressive=True, broken_dev=False)

    state = run(application)

    assert state.is_completed()
    dev, prod = state.result()
    assert (dev.app, dev.health, prod.app, prod.health) == (
        "shop-dev", "Healthy", "shop-prod", "Healthy",
    )  # fmt: skip
    assert world.apps.list_namespaced_deployment(world.kube.namespace).items


def test_a_set_without_progressive_syncs_all_at_once(world: World, dev_namespace: str) -> None:
    application = application_set(world, progressive=False, broken_dev=True)

    state = run(application)

    assert state.is_completed()  # nothing waits for health: both are applied
    assert {r.app for r in state.result()} == {"shop-dev", "shop-prod"}
    assert world.apps.list_namespaced_deployment(world.kube.namespace).items
