"""Server-side apply against the ``kube`` fixture (the stand-in, or a real cluster)."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from slipway.exceptions import ClusterUnreachable, DeployError
from slipway.tasks.kube_apply import (
    FIELD_MANAGER,
    HISTORY_ANNOTATIONS,
    AppliedObject,
    apply_objects,
    ensure_namespace,
    get_object,
    patch_object,
)
from slipway.tasks.kube_client import api_client_from_config_dict
from slipway.tasks.rollout import rollout_history, wait_for_rollout
from tests.servers.kube_api import RUNNABLE_IMAGES, KubeCluster
from tests.servers.ports import free_port

IMAGE_1, IMAGE_2 = RUNNABLE_IMAGES


def deployment(name: str, image: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }


def config_map(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


class Lines(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture
def api(kube: KubeCluster) -> client.ApiClient:
    return kube.api_client()


def test_apply_creates_then_reports_unchanged_and_configured(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    objects = [config_map("settings", mode="a"), service("web"), deployment("web", IMAGE_1)]
    pristine = copy.deepcopy(objects)
    log = Lines()

    first = apply_objects(api, objects, namespace=kube.namespace, log=log)
    assert [(o.kind, o.name, o.action) for o in first] == [
        ("ConfigMap", "settings", "created"),
        ("Service", "web", "created"),
        ("Deployment", "web", "created"),
    ]
    assert all(o.namespace == kube.namespace and o.resource_version for o in first)
    assert first[2].generation == 1
    assert objects == pristine, "the caller's objects are not modified"
    assert log == [f"{o.kind.lower()}/{o.name} in {kube.namespace} created" for o in first]

    again = apply_objects(api, objects, namespace=kube.namespace, log=log)
    assert [o.action for o in again] == ["unchanged"] * 3

    changed = [config_map("settings", mode="b"), service("web"), deployment("web", IMAGE_2)]
    third = apply_objects(api, changed, namespace=kube.namespace, log=log)
    assert [o.action for o in third] == ["configured", "unchanged", "configured"]
    assert third[2].generation == 2
    live = get_object(api, "v1", "ConfigMap", "settings", kube.namespace)
    assert live is not None and live["data"] == {"mode": "b"}
    managers = {m["manager"] for m in live["metadata"]["managedFields"]}
    assert FIELD_MANAGER in managers


def test_fields_dropped_from_the_manifests_are_removed(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    apply_objects(
        api, [config_map("settings", a="1", b="2")], namespace=kube.namespace, log=Lines()
    )
    apply_objects(api, [config_map("settings", a="1")], namespace=kube.namespace, log=Lines())
    live = get_object(api, "v1", "ConfigMap", "settings", kube.namespace)
    assert live is not None and live["data"] == {"a": "1"}


def test_history_annotations_reach_the_replica_set(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    annotations = {
        "slipway.dev/image": IMAGE_1,
        "slipway.dev/source-commit": "0123abc",
        "kubernetes.io/change-cause": "release 0123abc by slipway",
    }
    assert set(annotations) <= set(HISTORY_ANNOTATIONS)
    objects = [service("web"), deployment("web", IMAGE_1)]
    apply_objects(api, objects, namespace=kube.namespace, annotations=annotations, log=Lines())
    wait_for_rollout(api, kube.namespace, "web", timeout=30, log=Lines())

    live = get_object(api, "apps/v1", "Deployment", "web", kube.namespace)
    assert live is not None
    assert annotations.items() <= live["metadata"]["annotations"].items()
    (revision,) = rollout_history(api, kube.namespace, "web")
    assert annotations.items() <= revision.annotations.items()
    assert revision.number == 1 and revision.images == (IMAGE_1,)


def test_namespace_is_created_when_asked_and_kept_when_given(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    fresh = f"{kube.namespace}-x"
    other = f"{kube.namespace}-y"
    elsewhere = config_map("elsewhere")
    elsewhere["metadata"]["namespace"] = other
    log = Lines()
    core = client.CoreV1Api(api)
    try:
        applied = apply_objects(
            api,
            [config_map("here"), elsewhere],
            namespace=fresh,
            create_namespace=True,
            log=log,
        )
        assert [(o.name, o.namespace) for o in applied] == [("here", fresh), ("elsewhere", other)]
        assert f"namespace/{fresh} created" in log and f"namespace/{other} created" in log
        assert core.read_namespaced_config_map("elsewhere", other).metadata.name == "elsewhere"
        assert ensure_namespace(api, fresh, log) is False
    finally:
        for name in (fresh, other):
            try:
                core.delete_namespace(name)
            except client.ApiException:
                pass


def test_missing_namespace_without_create_is_a_deploy_error(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    missing = f"{kube.namespace}-missing"
    with pytest.raises(DeployError, match=missing) as caught:
        apply_objects(api, [config_map("x")], namespace=missing, log=Lines())
    assert "not found" in str(caught.value)


def test_cluster_scoped_objects_get_no_namespace(kube: KubeCluster, api: client.ApiClient) -> None:
    name = f"{kube.namespace}-cluster"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    try:
        (applied,) = apply_objects(api, [namespace], namespace=kube.namespace, log=Lines())
        assert (applied.kind, applied.namespace, applied.action) == ("Namespace", None, "created")
    finally:
        client.CoreV1Api(api).delete_namespace(name)


def test_invalid_object_is_a_deploy_error_with_the_api_message(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    bad = deployment("web", IMAGE_1)
    bad["spec"]["selector"]["matchLabels"] = {"app": "other"}
    with pytest.raises(DeployError) as caught:
        apply_objects(api, [config_map("first"), bad], namespace=kube.namespace, log=Lines())
    message = str(caught.value)
    assert message.startswith(f"applying Deployment web in namespace {kube.namespace}: invalid:")
    assert "selector" in message and "does not match template" in message
    assert get_object(api, "v1", "ConfigMap", "first", kube.namespace) is not None


def test_conflict_without_force_is_a_deploy_error(kube: KubeCluster, api: client.ApiClient) -> None:
    apply_objects(
        api, [config_map("shared", owner="a")], namespace=kube.namespace,
        field_manager="someone-else", log=Lines(),
    )  # fmt: skip
    with pytest.raises(DeployError) as caught:
        apply_objects(
            api, [config_map("shared", owner="b")], namespace=kube.namespace,
            force_conflicts=False, log=Lines(),
        )  # fmt: skip
    message = str(caught.value)
    assert ": conflict: " in message and "someone-else" in message and ".data.owner" in message
    forced = apply_objects(
        api, [config_map("shared", owner="b")], namespace=kube.namespace, log=Lines()
    )
    assert forced[0].action == "configured"


@pytest.mark.kube_standin_only("a read-only token")
def test_forbidden_is_a_deploy_error(kube: KubeCluster, tmp_path: Path) -> None:
    assert kube.standin is not None
    token = f"viewer-{uuid.uuid4().hex}"
    kube.standin.add_token(token, user="viewer", read_only=True)
    viewer = api_client_from_config_dict(kube.standin.kubeconfig(kube.namespace, token=token))
    with pytest.raises(DeployError) as caught:
        apply_objects(viewer, [config_map("x")], namespace=kube.namespace, log=Lines())
    message = str(caught.value)
    assert ": forbidden: " in message and "viewer" in message
    assert token not in message


def test_unknown_kind_is_a_deploy_error(kube: KubeCluster, api: client.ApiClient) -> None:
    widget = {"apiVersion": "example.invalid/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(DeployError, match=r"does not serve example.invalid/v1 Widget"):
        apply_objects(api, [widget], namespace=kube.namespace, log=Lines())


def test_object_without_a_name_is_refused_before_anything_is_sent(
    kube: KubeCluster, api: client.ApiClient
) -> None:
    nameless = config_map("x")
    del nameless["metadata"]["name"]
    with pytest.raises(DeployError, match="metadata.name"):
        apply_objects(api, [config_map("first"), nameless], namespace=kube.namespace, log=Lines())
    assert get_object(api, "v1", "ConfigMap", "first", kube.namespace) is None


def test_patch_and_get_object(kube: KubeCluster, api: client.ApiClient) -> None:
    assert get_object(api, "v1", "ConfigMap", "settings", kube.namespace) is None
    apply_objects(api, [config_map("settings", a="1")], namespace=kube.namespace, log=Lines())
    log = Lines()
    patched = patch_object(
        api, "v1", "ConfigMap", "settings", kube.namespace, {"data": {"b": "2"}}, log=log
    )
    assert patched["data"] == {"a": "1", "b": "2"}
    assert log == ["configmap/settings patched"]
    json_patched = patch_object(
        api, "v1", "ConfigMap", "settings", kube.namespace,
        [{"op": "remove", "path": "/data/a"}], log=log,
    )  # fmt: skip
    assert json_patched["data"] == {"b": "2"}
    with pytest.raises(DeployError, match="patching ConfigMap gone: not found"):
        patch_object(api, "v1", "ConfigMap", "gone", kube.namespace, {"data": {}}, log=log)


def test_unreachable_cluster(kube: KubeCluster) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "secret-token-123"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    api = api_client_from_config_dict(config)
    with pytest.raises(ClusterUnreachable, match="did not answer") as caught:
        apply_objects(api, [config_map("x")], namespace=kube.namespace, log=Lines())
    assert "secret-token-123" not in str(caught.value)


def test_applied_object_reads_like_kubectl() -> None:
    applied = AppliedObject("v1", "Service", "web", "staging", None, "12", "created")
    assert str(applied) == "service/web in staging created"
