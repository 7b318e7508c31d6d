"""The Kubernetes API stand-in, driven only through the official kubernetes client.

Every test also runs against a real cluster (``--kubeconfig`` or
``$SLIPWAY_TEST_KUBECONFIG``), except those marked ``kube_standin_only``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.servers.kube_api import (
    RUNNABLE_IMAGES,
    KubeApiStandIn,
    KubeCluster,
    PodEvent,
    PodStarted,
)

ROOT = Path(__file__).resolve().parents[2]
IMAGE_1, IMAGE_2 = RUNNABLE_IMAGES
REVISION = "deployment.kubernetes.io/revision"
VS = ("networking.istio.io", "v1beta1", "virtualservices")
ROLLOUTS = ("argoproj.io", "v1alpha1", "rollouts")


# --- helpers -----------------------------------------------------------------------------


def apis(kube: KubeCluster) -> SimpleNamespace:
    """The clients as the product makes them: load_kube_config, then the API classes."""
    config.load_kube_config(config_file=str(kube.kubeconfig))
    return SimpleNamespace(
        core=client.CoreV1Api(),
        apps=client.AppsV1Api(),
        custom=client.CustomObjectsApi(),
        ns=kube.namespace,
    )


def status_of(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


def failure(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    body = status_of(caught.value)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == caught.value.status
    return body


def deployment(name: str, image: str, replicas: int = 3, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
            **spec,
        },
    }


def condition(dep: Any, kind: str) -> Any:
    conditions = (dep.status and dep.status.conditions) or []
    return next((c for c in conditions if c.type == kind), None)


def rolled_out(c: SimpleNamespace, name: str) -> Any:
    """The Deployment once its rollout is complete (what ``kubectl rollout status`` waits for)."""
    dep = c.apps.read_namespaced_deployment(name, c.ns)
    st = dep.status
    progressing = condition(dep, "Progressing")
    done = (
        (st.observed_generation or 0) >= dep.metadata.generation
        and (st.updated_replicas or 0) == dep.spec.replicas
        and (st.available_replicas or 0) == dep.spec.replicas
        and (st.replicas or 0) == dep.spec.replicas
        and progressing is not None
        and progressing.reason == "NewReplicaSetAvailable"
    )
    return dep if done else None


def replica_sets(c: SimpleNamespace, dep: Any) -> list[Any]:
    """The Deployment's ReplicaSets, by revision."""
    owned = [
        rs
        for rs in c.apps.list_namespaced_replica_set(c.ns).items
        if any(ref.uid == dep.metadata.uid for ref in rs.metadata.owner_references or [])
    ]
    return sorted(owned, key=lambda rs: int(rs.metadata.annotations[REVISION]))


def live_pods(c: SimpleNamespace, selector: str) -> list[Any]:
    pods = c.core.list_namespaced_pod(c.ns, label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def gone(read: Any, *args: str) -> bool:
    """Whether reading the object answers 404 (deletions finish asynchronously)."""
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def endpoint_subsets(c: SimpleNamespace, name: str) -> list[Any]:
    """A Service's Endpoints subsets ([] until the endpoints controller has made them)."""
    try:
        return c.core.read_namespaced_endpoints(name, c.ns).subsets or []
    except ApiException as exc:
        if exc.status == 404:
            return []
        raise


def rollout_undo(c: SimpleNamespace, name: str, to_revision: int = 0) -> None:
    """What ``kubectl rollout undo [--to-revision]`` does: copy an old ReplicaSet's
    template (less its pod-template-hash label) into the Deployment with a JSON patch."""
    dep = c.apps.read_namespaced_deployment(name, c.ns)
    history = replica_sets(c, dep)
    if to_revision:
        target = next(rs for rs in history if rs.metadata.annotations[REVISION] == str(to_revision))
    else:
        target = history[-2]
    template = client.ApiClient().sanitize_for_serialization(target.spec.template)
    template["metadata"]["labels"].pop("pod-template-hash")
    c.apps.patch_namespaced_deployment(
        name, c.ns, [{"op": "replace", "path": "/spec/template", "value": template}]
    )


def start_rollout(c: SimpleNamespace, kube: KubeCluster, name: str, image: str, **spec: Any) -> Any:
    c.apps.create_namespaced_deployment(c.ns, deployment(name, image, **spec))
    return kube.wait_for(lambda: rolled_out(c, name), message=f"{name} to roll out")


# --- discovery and CRUD ----------------------------------------------------------------------


def test_discovery_through_the_dynamic_client(kube: KubeCluster) -> None:
    apis(kube)
    assert client.VersionApi().get_code().major == "1"
    dyn = kube.dynamic_client()
    for api_version, kind, plural in [
        ("v1", "Namespace", "namespaces"),
        ("v1", "Pod", "pods"),
        ("v1", "Service", "services"),
        ("v1", "Endpoints", "endpoints"),
        ("v1", "ConfigMap", "configmaps"),
        ("apps/v1", "Deployment", "deployments"),
        ("apps/v1", "ReplicaSet", "replicasets"),
    ]:
        resource = dyn.resources.get(api_version=api_version, kind=kind)
        assert resource.name == plural
        assert resource.namespaced == (kind != "Namespace")
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert {"scale", "status"} <= set(deployments.subresources)
    created = deployments.create(body=deployment("web", IMAGE_1, 1), namespace=kube.namespace)
    assert created.metadata.generation == 1
    fetched = deployments.get(name="web", namespace=kube.namespace)
    assert fetched.metadata.uid == created.metadata.uid


def test_discovery_of_the_custom_resources(kube: KubeCluster) -> None:
    kube.require_resource("networking.istio.io/v1beta1", "VirtualService")
    kube.require_resource("argoproj.io/v1alpha1", "Rollout")
    dyn = kube.dynamic_client()
    vs = dyn.resources.get(api_version="networking.istio.io/v1beta1", kind="VirtualService")
    rollout = dyn.resources.get(api_version="argoproj.io/v1alpha1", kind="Rollout")
    assert (vs.name, vs.namespaced, rollout.name) == ("virtualservices", True, "rollouts")
    assert "scale" in rollout.subresources


def test_create_read_replace_delete_with_status_errors(kube: KubeCluster) -> None:
    c = apis(kube)
    body = {"metadata": {"name": "settings"}, "data": {"level": "info"}}
    created = c.core.create_namespaced_config_map(c.ns, body)
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.resource_version

    exists = failure(c.core.create_namespaced_config_map, c.ns, body)
    assert exists["reason"] == "AlreadyExists" and exists["code"] == 409
    assert exists["message"] == 'configmaps "settings" already exists'
    assert exists["details"] == {"name": "settings", "kind": "configmaps"}

    missing = failure(c.apps.read_namespaced_deployment, "nope", c.ns)
    assert (missing["reason"], missing["code"]) == ("NotFound", 404)
    assert missing["message"] == 'deployments.apps "nope" not found'
    assert missing["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}

    no_ns = failure(c.core.create_namespaced_config_map, "no-such-namespace", body)
    assert no_ns["message"] == 'namespaces "no-such-namespace" not found'

    created.data["level"] = "debug"
    replaced = c.core.replace_namespaced_config_map("settings", c.ns, created)
    assert replaced.data == {"level": "debug"}
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)

    generated = c.core.create_namespaced_config_map(c.ns, {"metadata": {"generateName": "run-"}})
    assert generated.metadata.name.startswith("run-") and len(generated.metadata.name) == 9

    deleted = c.core.delete_namespaced_config_map("settings", c.ns)
    assert deleted["kind"] == "Status" and deleted["status"] == "Success"
    assert deleted["details"]["name"] == "settings"
    assert failure(c.core.read_namespaced_config_map, "settings", c.ns)["reason"] == "NotFound"
    assert failure(c.core.delete_namespaced_config_map, "settings", c.ns)["code"] == 404


def test_stale_resource_version_is_a_conflict(kube: KubeCluster) -> None:
    c = apis(kube)
    first = c.core.create_namespaced_config_map(
        c.ns, {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    )
    first.data["a"] = "2"
    c.core.replace_namespaced_config_map("cm", c.ns, first)
    first.data["a"] = "3"  # still carries the old resourceVersion
    conflict = failure(c.core.replace_namespaced_config_map, "cm", c.ns, first)
    assert (conflict["reason"], conflict["code"]) == ("Conflict", 409)
    assert conflict["message"] == (
        'Operation cannot be fulfilled on configmaps "cm": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    stale_patch = {
        "metadata": {"resourceVersion": first.metadata.resource_version},
        "data": {"a": "4"},
    }
    assert (
        failure(c.core.patch_namespaced_config_map, "cm", c.ns, stale_patch)["reason"] == "Conflict"
    )
    assert c.core.read_namespaced_config_map("cm", c.ns).data == {"a": "2"}


def test_label_and_field_selectors(kube: KubeCluster) -> None:
    c = apis(kube)
    for name, labels in [
        ("a", {"app": "web", "tier": "front"}),
        ("b", {"app": "web", "tier": "back"}),
        ("c", {"app": "db"}),
    ]:
        c.core.create_namespaced_config_map(c.ns, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> list[str]:
        return [cm.metadata.name for cm in c.core.list_namespaced_config_map(c.ns, **kwargs).items]

    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app==web,tier=back") == ["b"]
    assert names(label_selector="app!=web") == ["c"]
    assert names(label_selector="tier in (front, back)") == ["a", "b"]
    assert names(label_selector="tier notin (front),app") == ["b", "c"]
    assert names(label_selector="!tier") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b", label_selector="app=web") == ["a"]
    page = c.core.list_namespaced_config_map(c.ns, label_selector="app", limit=2)
    assert [cm.metadata.name for cm in page.items] == ["a", "b"] and page.metadata._continue
    rest = c.core.list_namespaced_config_map(
        c.ns, label_selector="app", _continue=page.metadata._continue
    )
    assert [cm.metadata.name for cm in rest.items] == ["c"]
    assert (
        failure(c.core.list_namespaced_config_map, c.ns, label_selector="app in web")["code"] == 400
    )


def test_invalid_objects_are_rejected_with_causes(kube: KubeCluster) -> None:
    c = apis(kube)
    body = deployment("web", IMAGE_1)
    body["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    invalid = failure(c.apps.create_namespaced_deployment, c.ns, body)
    assert (invalid["reason"], invalid["code"]) == ("Invalid", 422)
    assert invalid["details"]["kind"] == "Deployment" and invalid["details"]["group"] == "apps"
    assert [cause["field"] for cause in invalid["details"]["causes"]] == [
        "spec.template.metadata.labels"
    ]
    assert "`selector` does not match template `labels`" in invalid["message"]

    bad_name = failure(
        c.core.create_namespaced_config_map, c.ns, {"metadata": {"name": "Bad_Name"}}
    )
    assert bad_name["details"]["causes"][0]["field"] == "metadata.name"
    assert "RFC 1123 subdomain" in bad_name["message"]

    c.apps.create_namespaced_deployment(c.ns, deployment("web", IMAGE_1, 1))
    moved = {"spec": {"selector": {"matchLabels": {"app": "web", "x": "y"}}}}
    immutable = failure(c.apps.patch_namespaced_deployment, "web", c.ns, moved)
    assert immutable["reason"] == "Invalid" and "field is immutable" in immutable["message"]


# --- patches and server-side apply -------------------------------------------------------------


def test_merge_patch(kube: KubeCluster) -> None:
    c = apis(kube)
    c.core.create_namespaced_config_map(
        c.ns, {"metadata": {"name": "cm", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}}
    )
    patched = c.core.patch_namespaced_config_map(
        "cm",
        c.ns,
        {"metadata": {"labels": {"b": None, "c": "3"}}, "data": {"y": "2"}},
        _content_type="application/merge-patch+json",
    )
    assert patched.metadata.labels == {"a": "1", "c": "3"}
    assert patched.data == {"x": "1", "y": "2"}


def test_strategic_merge_patch_merges_containers_by_name(kube: KubeCluster) -> None:
    c = apis(kube)
    body = deployment("web", IMAGE_1, 2)
    body["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "proxy:1"})
    created = c.apps.create_namespaced_deployment(c.ns, body)
    patch = {
        "metadata": {"annotations": {"slipway.dev/commit": "abc123"}},
        "spec": {
            "replicas": 4,
            "template": {"spec": {"containers": [{"name": "app", "image": IMAGE_2}]}},
        },
    }
    patched = c.apps.patch_namespaced_deployment("web", c.ns, patch)  # strategic by default
    containers = {x.name: x.image for x in patched.spec.template.spec.containers}
    assert containers == {"app": IMAGE_2, "sidecar": "proxy:1"}
    assert patched.spec.replicas == 4
    assert patched.metadata.annotations["slipway.dev/commit"] == "abc123"
    assert patched.metadata.generation == created.metadata.generation + 1
    removed = c.apps.patch_namespaced_deployment(
        "web", c.ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}},
    )  # fmt: skip
    assert [x.name for x in removed.spec.template.spec.containers] == ["app"]


def test_json_patch(kube: KubeCluster) -> None:
    c = apis(kube)
    c.apps.create_namespaced_deployment(c.ns, deployment("web", IMAGE_1, 2))
    ops = [
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "add", "path": "/metadata/labels/track", "value": "stable"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": IMAGE_2},
    ]
    patched = c.apps.patch_namespaced_deployment("web", c.ns, ops)
    assert patched.spec.replicas == 5 and patched.metadata.labels["track"] == "stable"
    assert patched.spec.template.spec.containers[0].image == IMAGE_2
    failed = failure(
        c.apps.patch_namespaced_deployment, "web", c.ns,
        [{"op": "test", "path": "/spec/replicas", "value": 2}],
    )  # fmt: skip
    assert (failed["code"], failed["reason"]) == (422, "Invalid")
    assert "test failed" in failed["details"]["causes"][0]["message"]


def test_server_side_apply_owns_fields_and_reports_conflicts(kube: KubeCluster) -> None:
    c = apis(kube)
    config_a = deployment("web", IMAGE_1, 2)
    config_a["metadata"]["labels"]["owner"] = "a"
    first = c.apps.patch_namespaced_deployment(
        "web",
        c.ns,
        config_a,
        field_manager="slipway-a",
        _content_type="application/apply-patch+yaml",
    )
    assert first.spec.replicas == 2
    assert [(m.manager, m.operation) for m in first.metadata.managed_fields] == [
        ("slipway-a", "Apply")
    ]

    config_b = deployment("web", IMAGE_1, 5)
    del config_b["metadata"]["labels"]
    conflict = failure(
        c.apps.patch_namespaced_deployment, "web", c.ns, config_b,
        field_manager="slipway-b", _content_type="application/apply-patch+yaml",
    )  # fmt: skip
    assert (conflict["reason"], conflict["code"]) == ("Conflict", 409)
    assert (
        'conflict with "slipway-a"' in conflict["message"]
        and ".spec.replicas" in conflict["message"]
    )

    forced = c.apps.patch_namespaced_deployment(
        "web", c.ns, config_b, field_manager="slipway-b", force=True,
        _content_type="application/apply-patch+yaml",
    )  # fmt: skip
    assert forced.spec.replicas == 5
    managers = {(m.manager, m.operation) for m in forced.metadata.managed_fields}
    assert {("slipway-a", "Apply"), ("slipway-b", "Apply")} <= managers

    del config_a["metadata"]["labels"]["owner"]  # a field manager stops applying a field ...
    again = c.apps.patch_namespaced_deployment(
        "web", c.ns, config_a, field_manager="slipway-a", force=True,
        _content_type="application/apply-patch+yaml",
    )  # fmt: skip
    assert "owner" not in again.metadata.labels  # ... and it is removed


# --- the Deployment controller ----------------------------------------------------------------


def test_rolling_update_to_revision_2(kube: KubeCluster) -> None:
    c = apis(kube)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    first = start_rollout(c, kube, "web", IMAGE_1, replicas=4, strategy=strategy)
    assert first.metadata.annotations[REVISION] == "1"
    assert condition(first, "Available").status == "True"
    assert condition(first, "Available").reason == "MinimumReplicasAvailable"
    (rs1,) = replica_sets(c, first)
    assert rs1.metadata.name.startswith("web-") and rs1.status.ready_replicas == 4
    pods = live_pods(c, "app=web")
    assert len(pods) == 4 and all(p.status.phase == "Running" for p in pods)
    assert all(p.metadata.owner_references[0].name == rs1.metadata.name for p in pods)

    c.apps.patch_namespaced_deployment(
        "web",
        c.ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": IMAGE_2}]}}}},
    )
    samples = []

    def sample() -> Any:
        dep = rolled_out(c, "web")
        samples.append(
            (len(live_pods(c, "app=web")), c.apps.read_namespaced_deployment("web", c.ns).status)
        )
        return dep

    second = kube.wait_for(sample, message="revision 2")
    assert second.metadata.annotations[REVISION] == "2"
    assert all(count <= 5 for count, _ in samples), "maxSurge 1 over 4 replicas"
    assert all((st.available_replicas or 0) >= 4 for _, st in samples), "maxUnavailable 0"
    assert any(st.updated_replicas and st.updated_replicas < 4 for _, st in samples)
    old, new = replica_sets(c, second)
    assert old.metadata.uid == rs1.metadata.uid and old.spec.replicas == 0
    assert new.spec.replicas == 4 and new.metadata.annotations[REVISION] == "2"
    assert new.spec.template.spec.containers[0].image == IMAGE_2
    progressing = condition(second, "Progressing")
    assert progressing.status == "True"
    assert progressing.message == f'ReplicaSet "{new.metadata.name}" has successfully progressed.'
    assert {p.spec.containers[0].image for p in live_pods(c, "app=web")} == {IMAGE_2}


def test_undo_to_revision_1_reuses_the_old_replica_set(kube: KubeCluster) -> None:
    c = apis(kube)
    start_rollout(c, kube, "web", IMAGE_1)
    c.apps.patch_namespaced_deployment(
        "web",
        c.ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": IMAGE_2}]}}}},
    )
    second = kube.wait_for(
        lambda: (d := rolled_out(c, "web")) and d.metadata.annotations[REVISION] == "2" and d,
        message="revision 2",
    )
    rs1, rs2 = replica_sets(c, second)

    rollout_undo(c, "web", to_revision=1)
    third = kube.wait_for(
        lambda: (d := rolled_out(c, "web")) and d.metadata.annotations[REVISION] == "3" and d,
        message="revision 3",
    )
    assert third.spec.template.spec.containers[0].image == IMAGE_1
    history = replica_sets(c, third)
    assert [rs.metadata.uid for rs in history] == [rs2.metadata.uid, rs1.metadata.uid]
    assert history[1].metadata.annotations[REVISION] == "3"
    assert history[1].metadata.annotations["deployment.kubernetes.io/revision-history"] == "1"
    assert (history[0].spec.replicas, history[1].spec.replicas) == (0, 3)
    assert {p.spec.containers[0].image for p in live_pods(c, "app=web")} == {IMAGE_1}


def test_broken_image_exceeds_the_progress_deadline(kube: KubeCluster) -> None:
    c = apis(kube)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    start_rollout(
        c, kube, "web", IMAGE_1, replicas=2, strategy=strategy, progressDeadlineSeconds=10
    )
    broken = kube.broken_image("web")
    c.apps.patch_namespaced_deployment(
        "web",
        c.ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": broken}]}}}},
    )
    kube.wait_for(
        lambda: c.apps.read_namespaced_deployment("web", c.ns).status.updated_replicas == 1,
        message="the broken ReplicaSet's first pod",
    )
    kube.advance(12)

    def timed_out() -> Any:
        dep = c.apps.read_namespaced_deployment("web", c.ns)
        cond = condition(dep, "Progressing")
        return dep if cond.reason == "ProgressDeadlineExceeded" else None

    dep = kube.wait_for(timed_out, message="ProgressDeadlineExceeded")
    progressing = condition(dep, "Progressing")
    _, new = replica_sets(c, dep)
    assert progressing.status == "False"
    assert progressing.message == f'ReplicaSet "{new.metadata.name}" has timed out progressing.'
    assert condition(dep, "Available").status == "True"  # the old pods still serve
    assert (dep.status.replicas, dep.status.updated_replicas, dep.status.available_replicas) == (
        3,
        1,
        2,
    )
    (pod,) = live_pods(c, f"pod-template-hash={new.metadata.labels['pod-template-hash']}")
    assert not any(cs.ready for cs in pod.status.container_statuses or [])


def test_recreate_strategy_and_min_ready_seconds(kube: KubeCluster) -> None:
    c = apis(kube)
    start_rollout(
        c, kube, "web", IMAGE_1, replicas=2, strategy={"type": "Recreate"}, minReadySeconds=3
    )
    c.apps.patch_namespaced_deployment(
        "web",
        c.ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": IMAGE_2}]}}}},
    )
    images, statuses = [], []

    def sample() -> Any:
        images.append({p.spec.containers[0].image for p in live_pods(c, "app=web")})
        statuses.append(c.apps.read_namespaced_deployment("web", c.ns).status)
        return rolled_out(c, "web")

    kube.wait_for(sample, message="the Recreate rollout")
    assert {IMAGE_1, IMAGE_2} not in images, "Recreate never runs old and new pods together"
    assert any((s.ready_replicas or 0) > (s.available_replicas or 0) for s in statuses), (
        "ready pods only count as available after minReadySeconds"
    )


@pytest.mark.kube_standin_only("break_image(crash)")
def test_crash_looping_image(kube: KubeCluster) -> None:
    c = apis(kube)
    kube.break_image("app:crash", "crash")
    c.apps.create_namespaced_deployment(c.ns, deployment("web", "app:crash", 1))

    def crashing() -> Any:
        pods = live_pods(c, "app=web")
        statuses = pods[0].status.container_statuses if pods else None
        waiting = statuses and statuses[0].state.waiting
        return waiting and waiting.reason == "CrashLoopBackOff" and statuses[0]

    status = kube.wait_for(crashing, message="CrashLoopBackOff")
    assert status.state.waiting.reason == "CrashLoopBackOff" and status.restart_count >= 1
    kube.advance(35)  # back-off 10 s, then 20 s
    assert live_pods(c, "app=web")[0].status.container_statuses[0].restart_count >= 3
    dep = c.apps.read_namespaced_deployment("web", c.ns)
    assert condition(dep, "Available").status == "False"
    assert dep.status.unavailable_replicas == 1


def test_scale_and_status_subresources(kube: KubeCluster) -> None:
    c = apis(kube)
    start_rollout(c, kube, "web", IMAGE_1, replicas=1)
    scale = c.apps.read_namespaced_deployment_scale("web", c.ns)
    assert (scale.spec.replicas, scale.status.selector) == (1, "app=web")
    c.apps.patch_namespaced_deployment_scale("web", c.ns, {"spec": {"replicas": 3}})
    dep = kube.wait_for(lambda: rolled_out(c, "web"), message="scale to 3")
    assert dep.status.ready_replicas == 3 and dep.metadata.annotations[REVISION] == "1"
    status = c.apps.read_namespaced_deployment_status("web", c.ns)
    assert status.status.observed_generation == dep.metadata.generation
    assert len(replica_sets(c, dep)) == 1


def test_delete_propagation(kube: KubeCluster) -> None:
    c = apis(kube)
    for name in ("background", "orphan", "foreground"):
        start_rollout(c, kube, name, IMAGE_1, replicas=1)
    c.apps.delete_namespaced_deployment("background", c.ns)
    kube.wait_for(lambda: not live_pods(c, "app=background"), message="background deletion")
    assert not c.apps.list_namespaced_replica_set(c.ns, label_selector="app=background").items

    c.apps.delete_namespaced_deployment("orphan", c.ns, propagation_policy="Orphan")
    kube.wait_for(lambda: gone(c.apps.read_namespaced_deployment, "orphan", c.ns), message="orphan")
    (orphan,) = c.apps.list_namespaced_replica_set(c.ns, label_selector="app=orphan").items
    assert not orphan.metadata.owner_references and len(live_pods(c, "app=orphan")) == 1
    again = start_rollout(c, kube, "orphan", IMAGE_1, replicas=1)  # adopts what it left
    (adopted,) = replica_sets(c, again)
    assert adopted.metadata.uid == orphan.metadata.uid
    assert adopted.metadata.owner_references[0].uid == again.metadata.uid

    c.apps.delete_namespaced_deployment(
        "foreground", c.ns, body=client.V1DeleteOptions(propagation_policy="Foreground")
    )
    kube.wait_for(
        lambda: gone(c.apps.read_namespaced_deployment, "foreground", c.ns),
        message="foreground deletion",
    )
    assert not live_pods(c, "app=foreground")


# --- Services, custom resources, watches -------------------------------------------------------


def test_service_endpoints_follow_ready_pods_and_the_selector(kube: KubeCluster) -> None:
    c = apis(kube)
    for colour in ("blue", "green"):
        body = deployment(colour, IMAGE_1, 2)
        body["spec"]["template"]["metadata"]["labels"]["colour"] = colour
        c.apps.create_namespaced_deployment(c.ns, body)
    service = {
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"colour": "blue"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    created = c.core.create_namespaced_service(c.ns, service)
    assert created.spec.cluster_ip and created.spec.type == "ClusterIP"

    def addresses(colour: str) -> set[str] | None:
        pods = {p.status.pod_ip for p in live_pods(c, f"colour={colour}") if p.status.pod_ip}
        subsets = endpoint_subsets(c, "web")
        ready = {a.ip for s in subsets for a in s.addresses or []}
        ports = {(p.name, p.port) for s in subsets for p in s.ports or []}
        return pods if len(pods) == 2 and ready == pods and ports == {("http", 8080)} else None

    blue = kube.wait_for(lambda: addresses("blue"), message="blue endpoints")
    c.core.patch_namespaced_service("web", c.ns, {"spec": {"selector": {"colour": "green"}}})
    green = kube.wait_for(lambda: addresses("green"), message="green endpoints")
    assert not blue & green
    c.apps.patch_namespaced_deployment_scale("green", c.ns, {"spec": {"replicas": 0}})
    kube.wait_for(lambda: not endpoint_subsets(c, "web"), message="no endpoints")


def test_virtual_service_crud(kube: KubeCluster) -> None:
    kube.require_resource("networking.istio.io/v1beta1", "VirtualService")
    c = apis(kube)
    route = [
        {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
        {"destination": {"host": "web", "subset": "canary"}, "weight": 0},
    ]
    body = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "web"},
        "spec": {"hosts": ["web"], "http": [{"route": route}]},
    }
    created = c.custom.create_namespaced_custom_object(*VS[:2], c.ns, VS[2], body)
    assert created["metadata"]["generation"] == 1
    assert failure(c.custom.create_namespaced_custom_object, *VS[:2], c.ns, VS[2], body)[
        "reason"
    ] == ("AlreadyExists")
    route[0]["weight"], route[1]["weight"] = 90, 10
    patched = c.custom.patch_namespaced_custom_object(  # merge patch: lists are replaced
        *VS[:2], c.ns, VS[2], "web", {"spec": {"http": [{"route": route}]}}
    )
    assert [r["weight"] for r in patched["spec"]["http"][0]["route"]] == [90, 10]
    assert patched["metadata"]["generation"] == 2
    listed = c.custom.list_namespaced_custom_object(*VS[:2], c.ns, VS[2])
    assert [i["metadata"]["name"] for i in listed["items"]] == ["web"]
    assert listed["items"][0]["kind"] == "VirtualService"
    stale = dict(created, spec={"hosts": ["web"], "http": []})
    assert (
        failure(c.custom.replace_namespaced_custom_object, *VS[:2], c.ns, VS[2], "web", stale)[
            "reason"
        ]
        == "Conflict"
    )
    smp = failure(
        c.custom.patch_namespaced_custom_object, *VS[:2], c.ns, VS[2], "web", {"spec": {}},
        _content_type="application/strategic-merge-patch+json",
    )  # fmt: skip
    assert (smp["code"], smp["reason"]) == (415, "UnsupportedMediaType")
    deleted = c.custom.delete_namespaced_custom_object(*VS[:2], c.ns, VS[2], "web")
    assert deleted["status"] == "Success" and deleted["details"]["name"] == "web"
    missing = failure(c.custom.get_namespaced_custom_object, *VS[:2], c.ns, VS[2], "web")
    assert missing["message"] == 'virtualservices.networking.istio.io "web" not found'


def test_rollout_crud_with_status_and_scale(kube: KubeCluster) -> None:
    kube.require_resource("argoproj.io/v1alpha1", "Rollout")
    c = apis(kube)
    body = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": deployment("web", IMAGE_1)["spec"]["template"],
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
        },
    }
    c.custom.create_namespaced_custom_object(*ROLLOUTS[:2], c.ns, ROLLOUTS[2], body)
    status = {"status": {"phase": "Healthy", "replicas": 2, "selector": "app=web"}}
    updated = c.custom.patch_namespaced_custom_object_status(
        *ROLLOUTS[:2], c.ns, ROLLOUTS[2], "web", status
    )
    assert updated["status"]["phase"] == "Healthy" and updated["metadata"]["generation"] == 1
    c.custom.patch_namespaced_custom_object_scale(
        *ROLLOUTS[:2], c.ns, ROLLOUTS[2], "web", {"spec": {"replicas": 5}}
    )
    scale = c.custom.get_namespaced_custom_object_scale(*ROLLOUTS[:2], c.ns, ROLLOUTS[2], "web")
    assert scale["spec"]["replicas"] == 5 and scale["status"]["selector"] == "app=web"
    current = c.custom.get_namespaced_custom_object(*ROLLOUTS[:2], c.ns, ROLLOUTS[2], "web")
    assert current["spec"]["replicas"] == 5 and current["metadata"]["generation"] == 2
    current["spec"]["strategy"]["canary"]["steps"] = [{"setWeight": 50}]
    replaced = c.custom.replace_namespaced_custom_object(
        *ROLLOUTS[:2], c.ns, ROLLOUTS[2], "web", current
    )
    assert replaced["status"]["phase"] == "Healthy"  # status is only written through /status
    c.custom.delete_namespaced_custom_object(*ROLLOUTS[:2], c.ns, ROLLOUTS[2], "web")


def test_watch_streams_changes(kube: KubeCluster) -> None:
    c = apis(kube)
    c.core.create_namespaced_config_map(
        c.ns, {"metadata": {"name": "before", "labels": {"w": "1"}}}
    )
    start = c.core.list_namespaced_config_map(c.ns).metadata.resource_version

    def changes() -> None:
        c.core.create_namespaced_config_map(
            c.ns, {"metadata": {"name": "cm", "labels": {"w": "1"}}}
        )
        c.core.patch_namespaced_config_map("cm", c.ns, {"data": {"k": "v"}})
        c.core.patch_namespaced_config_map("cm", c.ns, {"metadata": {"labels": {"w": "2"}}})
        c.core.delete_namespaced_config_map("before", c.ns)

    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    threading.Timer(0.2, changes).start()
    for event in w.stream(
        c.core.list_namespaced_config_map, c.ns, label_selector="w=1", timeout_seconds=10
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 5:
            w.stop()
    assert seen == [
        ("ADDED", "before"),  # the current state first
        ("ADDED", "cm"),
        ("MODIFIED", "cm"),
        ("DELETED", "cm"),  # it stopped matching the selector
        ("DELETED", "before"),
    ]
    resumed = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            c.core.list_namespaced_config_map, c.ns, resource_version=start, timeout_seconds=1
        )
    ]
    assert resumed[0] == ("ADDED", "cm") and resumed[-1] == ("DELETED", "before")


def test_deleting_a_namespace_removes_its_objects(kube: KubeCluster) -> None:
    c = apis(kube)
    extra = f"{kube.namespace}-x"
    c.core.create_namespace({"metadata": {"name": extra}})
    c.core.create_namespaced_config_map(extra, {"metadata": {"name": "cm"}})
    c.core.delete_namespace(extra)
    kube.wait_for(lambda: gone(c.core.read_namespace, extra), message="namespace deletion")
    assert not c.core.list_namespaced_config_map(extra).items
    assert failure(c.core.delete_namespace, "default")["reason"] == "Forbidden"


# --- stand-in only: auth, pod hook, fixture mode ---------------------------------------------


@pytest.mark.kube_standin_only("custom tokens")
def test_tokens_are_checked(kube: KubeCluster, tmp_path: Path) -> None:
    assert kube.standin is not None
    kube.standin.add_token("viewer-token", user="viewer", read_only=True)
    for token, code, reason in [("wrong", 401, "Unauthorized"), ("viewer-token", 403, "Forbidden")]:
        path = kube.standin.write_kubeconfig(tmp_path / token, kube.namespace, token=token)
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(path)))
        if code == 403:
            assert core.list_namespaced_config_map(kube.namespace).items == []
        body = failure(
            core.create_namespaced_config_map, kube.namespace, {"metadata": {"name": "x"}}
        )
        assert (body["code"], body["reason"]) == (code, reason)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.pod_name}{self.path}".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.kube_standin_only("a pod hook")
def test_pod_hook_backs_pods_with_local_servers(kube: KubeCluster) -> None:
    c = apis(kube)
    events: list[tuple[str, str]] = []
    servers: dict[str, ThreadingHTTPServer] = {}
    ready = threading.Event()

    def hook(event: PodEvent) -> PodStarted | None:
        events.append((event.action, event.name))
        if event.action == "stop":
            server = servers.pop(event.name)
            server.shutdown()
            server.server_close()
            return None
        port = event.containers[0]["ports"][0]["containerPort"]
        server = ThreadingHTTPServer((event.pod_ip, port), _Hello)
        server.pod_name = event.name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[event.name] = server
        return PodStarted(ready=ready.is_set)

    kube.set_pod_hook(hook)
    c.apps.create_namespaced_deployment(c.ns, deployment("web", IMAGE_1, 2))
    c.core.create_namespaced_service(
        c.ns, {"metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}},
    )  # fmt: skip

    def not_ready_endpoints() -> Any:
        subsets = endpoint_subsets(c, "web")
        return sum(len(s.not_ready_addresses or []) for s in subsets) == 2

    kube.wait_for(not_ready_endpoints, message="two running, unready pods")
    assert failure(c.core.connect_get_namespaced_service_proxy, "web:80", c.ns)["code"] == 503
    ready.set()
    kube.wait_for(lambda: rolled_out(c, "web"), message="ready pods")
    pod_names = {p.metadata.name for p in live_pods(c, "app=web")}
    assert {p.status.pod_ip for p in live_pods(c, "app=web")} == {
        s.server_address[0] for s in servers.values()
    }
    answers = {
        c.core.connect_get_namespaced_service_proxy_with_path("web:80", c.ns, "greet")
        for _ in range(4)
    }
    assert answers == {f"hello from {name}/greet" for name in pod_names}  # round robin

    c.apps.patch_namespaced_deployment_scale("web", c.ns, {"spec": {"replicas": 0}})
    kube.wait_for(lambda: not servers, message="the hook to stop both pods")
    assert sorted(events) == sorted(
        [("start", n) for n in pod_names] + [("stop", n) for n in pod_names]
    )
    assert kube.standin is not None and kube.standin.errors == []


def test_stand_in_stop_stops_hooked_pods() -> None:
    stopped: list[str] = []

    def hook(event: PodEvent) -> None:
        if event.action == "stop":
            stopped.append(event.name)

    with KubeApiStandIn(speed=50, pod_hook=hook) as standin:
        from tests.servers.kube_standin.resources import PODS

        standin.store.create(
            PODS, "default",
            {"metadata": {"name": "solo"}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}},
            manager="test",
        )  # fmt: skip
        standin.advance(2)
        assert standin.store.get(PODS, "default", "solo")["status"]["phase"] == "Running"
    assert stopped == ["solo"]


@pytest.fixture
def external_standin(tmp_path: Path) -> Iterator[Path]:
    """A stand-in playing the part of a real cluster (the fixture cannot tell)."""
    with KubeApiStandIn(speed=10) as standin:
        yield standin.write_kubeconfig(tmp_path / "real-kubeconfig")


def test_fixture_uses_a_given_kubeconfig_and_skips_stand_in_only_tests(
    external_standin: Path,
) -> None:
    env = {**os.environ, "SLIPWAY_TEST_KUBECONFIG": str(external_standin)}
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
            "--noconftest", "-p", "tests.servers.kube_api",
            f"{Path(__file__).relative_to(ROOT)}",
            "-k", "create_read_replace or pod_hook_backs",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
    assert "a pod hook) needs the Kubernetes API stand-in" in result.stdout
