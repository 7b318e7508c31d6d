"""The diff on the fields git sets, on plain objects (no cluster needed)."""

from __future__ import annotations

import copy
from typing import Any

from slipway.tasks.sync_diff import diff_object


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "web:1",
                            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                            "ports": [{"containerPort": 8080}],
                            "env": [],
                        }
                    ]
                }
            },
        },
    }


def live_of(desired: dict[str, Any]) -> dict[str, Any]:
    """What an API server returns: defaults, status, bookkeeping, normalised quantities."""
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="u-1", resourceVersion="42", generation=3, managedFields=[{}])
    live["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "3"}
    live["status"] = {"replicas": 2, "availableReplicas": 2}
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    container = live["spec"]["template"]["spec"]["containers"][0]
    container.pop("env")  # the server drops empty lists
    container["terminationMessagePath"] = "/dev/termination-log"
    container["resources"]["limits"] = {"cpu": "1000m", "memory": "1073741824"}
    container["ports"][0]["protocol"] = "TCP"
    return live


def test_server_defaults_status_and_normalised_quantities_are_no_diff() -> None:
    desired = deployment()
    assert diff_object(desired, live_of(desired)).in_sync


def test_fields_are_named_by_path_and_merge_key() -> None:
    desired = deployment()
    live = live_of(desired)
    live["spec"]["replicas"] = 5
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2"
    live["metadata"]["labels"]["app.kubernetes.io/name"] = "other"

    diff = diff_object(desired, live)

    assert diff.fields == (
        "metadata.labels['app.kubernetes.io/name']",
        "spec.replicas",
        "spec.template.spec.containers[name=web].resources.limits.cpu",
    )
    assert "-  replicas: 5\n+  replicas: 2\n" in diff.text
    assert "strategy" not in diff.text and "status" not in diff.text  # restricted to git's paths


def test_a_container_added_by_hand_is_drift_and_order_is_not() -> None:
    desired = deployment()
    desired["spec"]["template"]["spec"]["containers"].append({"name": "log", "image": "log:1"})
    live = live_of(desired)
    live["spec"]["template"]["spec"]["containers"].reverse()
    assert diff_object(desired, live).in_sync

    live["spec"]["template"]["spec"]["containers"].append({"name": "debug", "image": "sh"})
    diff = diff_object(desired, live)
    assert diff.fields == ("spec.template.spec.containers[name=debug]",)
    assert diff.text.endswith("-      - name: debug\n-        image: sh\n")
    assert diff.text.count("\n-") == 2 and "\n+" not in diff.text.split("+++ git", 1)[1]


def test_a_missing_object_shows_whole_as_added() -> None:
    diff = diff_object(deployment(), None)
    assert diff.fields == ("<object missing>",)
    assert "+  replicas: 2" in diff.text and "-" not in diff.text.split("+++ git\n", 1)[1][:3]


def test_unkeyed_lists_compare_item_by_item() -> None:
    desired = {"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "args": ["a", "b"]}
    assert diff_object(desired, copy.deepcopy(desired)).in_sync
    assert diff_object(desired, {**desired, "args": ["a"]}).fields == ("args",)
    assert diff_object(desired, {**desired, "args": ["a", "c"]}).fields == ("args[1]",)
