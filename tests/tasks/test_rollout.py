"""Rollout status, waiting, history and undo against the ``kube`` fixture."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from slipway.exceptions import DeployError, RolloutFailed, RolloutTimeout
from slipway.tasks.kube_apply import ANNOTATION_IMAGE, apply_objects
from slipway.tasks.rollout import (
    PROGRESS_DEADLINE_EXCEEDED,
    rollout_history,
    rollout_status,
    undo_rollout,
    wait_for_rollout,
)
from tests.servers.kube_api import RUNNABLE_IMAGES, KubeCluster

IMAGE_1, IMAGE_2 = RUNNABLE_IMAGES
TIMEOUT = 60.0  # real seconds; the stand-in needs a fraction, a real cluster pulls images


def deployment(image: str, replicas: int = 2, note: str = "", **spec: Any) -> dict[str, Any]:
    template_meta: dict[str, Any] = {"labels": {"app": "web"}}
    if note:
        template_meta["annotations"] = {"note": note}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": template_meta,
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            **spec,
        },
    }


class Lines(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture
def api(kube: KubeCluster) -> client.ApiClient:
    return kube.api_client()


def release(kube: KubeCluster, api: client.ApiClient, image: str, **spec: Any) -> None:
    """Apply a Deployment running ``image`` (with its history annotation)."""
    apply_objects(
        api,
        [deployment(image, **spec)],
        namespace=kube.namespace,
        annotations={ANNOTATION_IMAGE: image},
        log=Lines(),
    )


def deploy(kube: KubeCluster, api: client.ApiClient, image: str, **spec: Any) -> Any:
    release(kube, api, image, **spec)
    return wait_for_rollout(api, kube.namespace, "web", timeout=TIMEOUT, log=Lines())


def running_images(kube: KubeCluster, api: client.ApiClient) -> set[str]:
    pods = client.CoreV1Api(api).list_namespaced_pod(kube.namespace, label_selector="app=web")
    return {
        c.image
        for p in pods.items
        if p.metadata.deletion_timestamp is None
        for c in p.spec.containers
    }


def test_wait_reports_a_finished_rollout(kube: KubeCluster, api: client.ApiClient) -> None:
    release(kube, api, IMAGE_1)
    log = Lines()
    status = wait_for_rollout(api, kube.namespace, "web", timeout=TIMEOUT, log=log)
    assert status.done and status.failed_reason is None
    assert (status.revision, status.replicas, status.updated, status.available) == (1, 2, 2, 2)
    assert status.ready == 2 and status.images == (IMAGE_1,)
    assert status.observed_generation >= status.generation == 1
    assert (
        log[-1] == f"deployment/web in {kube.namespace}: deployment 'web' successfully rolled out"
    )
    assert len(log) == len(set(log)), "a line only when the status changes"
    assert rollout_status(api, kube.namespace, "web") == status


def test_deploy_two_versions_then_undo_runs_the_first_again(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    deploy(kube, api, IMAGE_1)
    second = deploy(kube, api, IMAGE_2)
    assert (second.revision, second.images) == (2, (IMAGE_2,))
    kube.wait_for(lambda: running_images(kube, api) == {IMAGE_2}, message="v2 pods only")

    log = Lines()
    target = undo_rollout(api, kube.namespace, "web", log=log)
    assert (target.number, target.images) == (1, (IMAGE_1,))
    assert log == [f"deployment/web in {kube.namespace} rolled back to revision 1 ({IMAGE_1})"]
    third = wait_for_rollout(api, kube.namespace, "web", timeout=TIMEOUT, log=Lines())
    assert (third.revision, third.images) == (3, (IMAGE_1,))
    kube.wait_for(lambda: running_images(kube, api) == {IMAGE_1}, message="v1 pods only")

    history = rollout_history(api, kube.namespace, "web")
    assert [(r.number, r.images) for r in history] == [(2, (IMAGE_2,)), (3, (IMAGE_1,))]
    assert history[1].replicaset == target.replicaset, "the old ReplicaSet is reused"
    assert history[1].annotations[ANNOTATION_IMAGE] == IMAGE_1
    dep = client.AppsV1Api(api).read_namespaced_deployment("web", kube.namespace)
    assert dep.metadata.annotations[ANNOTATION_IMAGE] == IMAGE_1, "annotations follow the undo"
    assert "pod-template-hash" not in dep.spec.template.metadata.labels


def test_undo_to_a_named_revision(kube: KubeCluster, api: client.ApiClient) -> None:
    deploy(kube, api, IMAGE_1)
    deploy(kube, api, IMAGE_2)
    deploy(kube, api, IMAGE_2, note="third")  # a template change: revision 3
    assert [r.number for r in rollout_history(api, kube.namespace, "web")] == [1, 2, 3]

    target = undo_rollout(api, kube.namespace, "web", to_revision=1, log=Lines())
    assert (target.number, target.images) == (1, (IMAGE_1,))
    status = wait_for_rollout(api, kube.namespace, "web", timeout=TIMEOUT, log=Lines())
    assert (status.revision, status.images) == (4, (IMAGE_1,))
    history = rollout_history(api, kube.namespace, "web")
    assert [(r.number, r.images) for r in history] == [
        (2, (IMAGE_2,)),
        (3, (IMAGE_2,)),
        (4, (IMAGE_1,)),
    ]
    dep = client.AppsV1Api(api).read_namespaced_deployment("web", kube.namespace)
    assert not (dep.spec.template.metadata.annotations or {}).get("note")


def test_undo_to_an_unknown_revision_names_the_known_ones(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    deploy(kube, api, IMAGE_1)
    with pytest.raises(DeployError, match="no previous revision to undo to .revisions: 1."):
        undo_rollout(api, kube.namespace, "web", log=Lines())
    deploy(kube, api, IMAGE_2)
    with pytest.raises(DeployError, match=r"has no revision 7; revisions: 1, 2$"):
        undo_rollout(api, kube.namespace, "web", to_revision=7, log=Lines())
    with pytest.raises(
        DeployError, match=f"deployment gone not found in namespace {kube.namespace}"
    ):
        undo_rollout(api, kube.namespace, "gone", log=Lines())


def test_undo_to_the_running_revision_changes_nothing(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    deploy(kube, api, IMAGE_1)
    deploy(kube, api, IMAGE_2)
    before = client.AppsV1Api(api).read_namespaced_deployment("web", kube.namespace)
    log = Lines()
    undo_rollout(api, kube.namespace, "web", to_revision=2, log=log)
    after = client.AppsV1Api(api).read_namespaced_deployment("web", kube.namespace)
    assert after.metadata.generation == before.metadata.generation
    assert "nothing to undo" in log[0]


def test_broken_image_fails_with_the_cluster_reason(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    deploy(kube, api, IMAGE_1, progressDeadlineSeconds=10)
    broken = kube.broken_image("web")
    release(kube, api, broken, progressDeadlineSeconds=10)
    log = Lines()
    with pytest.raises(RolloutFailed) as caught:
        # kube.advance moves the stand-in's clock (and sleeps on a real cluster)
        wait_for_rollout(
            api, kube.namespace, "web", timeout=TIMEOUT * 3, poll=1.0, log=log, sleep=kube.advance
        )
    message = str(caught.value)
    assert PROGRESS_DEADLINE_EXCEEDED in message
    assert "has timed out progressing" in message
    assert "ErrImagePull" in message or "ImagePullBackOff" in message
    assert "1 of 2 desired replicas updated" in message and "2 available" in message
    status = rollout_status(api, kube.namespace, "web")
    assert status.failed_reason == PROGRESS_DEADLINE_EXCEEDED and not status.done
    assert running_images(kube, api) >= {IMAGE_1}, "the old pods still serve"

    undo_rollout(api, kube.namespace, "web", log=Lines())
    recovered = wait_for_rollout(api, kube.namespace, "web", timeout=TIMEOUT, log=Lines())
    assert recovered.images == (IMAGE_1,)


def test_timeout_names_the_counts(kube: KubeCluster, api: client.ApiClient) -> None:
    deploy(kube, api, IMAGE_1)
    release(kube, api, kube.broken_image("web"))
    with pytest.raises(RolloutTimeout) as caught:
        wait_for_rollout(api, kube.namespace, "web", timeout=1.0, poll=0.2, log=Lines())
    message = str(caught.value)
    assert message.startswith(f"rollout of deployment web in {kube.namespace} not done after 1 s:")
    assert "of 2 desired replicas updated" in message and "revision 2" in message


def test_status_of_a_missing_deployment(kube: KubeCluster, api: client.ApiClient) -> None:
    with pytest.raises(DeployError, match="deployment web not found"):
        rollout_status(api, kube.namespace, "web")
    with pytest.raises(DeployError, match="deployment web not found"):
        rollout_history(api, kube.namespace, "web")


def test_injected_clock_bounds_the_wait(kube: KubeCluster, api: client.ApiClient) -> None:
    release(kube, api, kube.broken_image("web"))
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with pytest.raises(RolloutTimeout):
        wait_for_rollout(
            api, kube.namespace, "web", timeout=3, poll=1, log=Lines(),
            sleep=sleep, clock=lambda: now[0],
        )  # fmt: skip
    assert slept == [1, 1, 1]
