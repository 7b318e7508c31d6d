"""The objects the strategies derive from the rendered manifests (no cluster needed)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from slipway.exceptions import DeployError
from slipway.tasks.strategy_objects import (
    COLOUR_LABEL,
    TRACK_LABEL,
    canary_replicas,
    canary_routes,
    canary_weight,
    coloured_deployment,
    coloured_service,
    find_deployment,
    find_service,
    other_colour,
    service_colour,
    track_deployment,
    track_service,
    virtual_service,
    with_rolling_strategy,
)

APP = {"app.kubernetes.io/name": "web"}


def deployment(name: str = "web", labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or dict(APP)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "web", "image": "registry.local/web:1"}]},
            },
        },
    }


def service(name: str = "web", selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(APP), "annotations": {"team": "a"}},
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.0.0.7",
            "selector": dict(selector or APP),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}],
        },
    }


CONFIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"}}


def test_find_deployment_by_name_or_the_only_one() -> None:
    objects = [CONFIG, deployment("web"), service()]
    assert find_deployment(objects, None)["metadata"]["name"] == "web"
    assert find_deployment(objects, "web") is not objects[1]  # a copy
    with pytest.raises(DeployError, match=r"no Deployment 'api' \(Deployments: web\)"):
        find_deployment(objects, "api")
    with pytest.raises(DeployError, match=r"name the app's Deployment: .* 2 \(api, web\)"):
        find_deployment([*objects, deployment("api")], None)
    with pytest.raises(DeployError, match=r"0 \(none\)"):
        find_deployment([CONFIG], None)


def test_find_service_by_selector_or_name() -> None:
    other = service("db", {"app.kubernetes.io/name": "db"})
    objects = [deployment(), other, service()]
    assert find_service(objects, deployment(), None)["metadata"]["name"] == "web"
    assert find_service(objects, deployment(), "db")["metadata"]["name"] == "db"
    with pytest.raises(DeployError, match=r"2 Services in the manifests select its pods"):
        find_service([*objects, service("web-admin")], deployment(), None)
    with pytest.raises(DeployError, match=r"0 Services"):
        find_service([deployment(), other], deployment(), None)
    with pytest.raises(DeployError, match=r"no Service 'api' \(Services: db, web\)"):
        find_service(objects, deployment(), "api")


def test_rolling_strategy_sets_only_what_is_given() -> None:
    original = deployment()
    original["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    kept = with_rolling_strategy(original, None, None)
    assert kept["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    changed = with_rolling_strategy(original, "50%", 2)
    assert changed["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "50%", "maxUnavailable": 2}
    assert original["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1  # untouched
    bare = with_rolling_strategy(deployment(), None, None)
    assert bare["spec"]["strategy"] == {"type": "RollingUpdate"}


def test_colours_label_selector_template_and_name() -> None:
    original = deployment()
    before = copy.deepcopy(original)
    green = coloured_deployment(original, "green")
    assert original == before
    assert green["metadata"]["name"] == "web-green"
    assert green["spec"]["selector"]["matchLabels"] == {**APP, COLOUR_LABEL: "green"}
    assert green["spec"]["template"]["metadata"]["labels"] == {**APP, COLOUR_LABEL: "green"}
    assert green["metadata"]["labels"][COLOUR_LABEL] == "green"
    assert green["spec"]["template"]["spec"] == original["spec"]["template"]["spec"]
    assert other_colour("blue") == "green" and other_colour("green") == "blue"


def test_active_and_preview_services() -> None:
    active = coloured_service(service(), "blue")
    assert active["spec"]["selector"] == {**APP, COLOUR_LABEL: "blue"}
    assert active["spec"]["type"] == "NodePort"  # the active Service is the manifests' own
    assert service_colour(active) == "blue"
    assert service_colour(service()) is None and service_colour(None) is None

    preview = coloured_service(service(), "green", name="web-preview")
    assert preview["metadata"] == {
        "name": "web-preview",
        "labels": APP,
        "annotations": {"team": "a"},
    }
    assert preview["spec"] == {
        "type": "ClusterIP",
        "selector": {**APP, COLOUR_LABEL: "green"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    }


def test_canary_tracks() -> None:
    canary = track_deployment(deployment(), "canary", name="web-canary", replicas=1)
    assert canary["metadata"]["name"] == "web-canary"
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"]["matchLabels"] == {**APP, TRACK_LABEL: "canary"}
    kept = {"matchLabels": dict(APP)}
    stable = track_deployment(deployment(), "stable", name="web", replicas=4, selector=kept)
    assert stable["spec"]["selector"] == kept  # a live selector is immutable
    assert stable["spec"]["template"]["metadata"]["labels"][TRACK_LABEL] == "stable"

    svc = track_service(service(), "canary", "web-canary")
    assert svc["metadata"]["name"] == "web-canary"
    assert svc["spec"]["selector"] == {**APP, TRACK_LABEL: "canary"}
    assert "clusterIP" not in svc["spec"]


@pytest.mark.parametrize(
    ("replicas", "weight", "pods"),
    [(4, 0, 0), (4, 1, 1), (4, 10, 1), (4, 50, 2), (4, 51, 3), (4, 100, 4), (1, 100, 1)],
)
def test_canary_replicas_follow_the_weight(replicas: int, weight: int, pods: int) -> None:
    assert canary_replicas(replicas, weight) == pods


def test_virtual_service_routes_header_first_then_weights() -> None:
    routes = canary_routes(
        stable_host="web-stable", canary_host="web-canary", weight=30,
        header="x-canary", header_value="always",
    )  # fmt: skip
    assert routes[0]["match"] == [{"headers": {"x-canary": {"exact": "always"}}}]
    assert routes[0]["route"] == [{"destination": {"host": "web-canary"}, "weight": 100}]
    assert [(d["destination"]["host"], d["weight"]) for d in routes[1]["route"]] == [
        ("web-stable", 70),
        ("web-canary", 30),
    ]
    vs = virtual_service("web", host="web", routes=routes, labels=APP)
    assert vs["apiVersion"] == "networking.istio.io/v1beta1"
    assert vs["spec"]["hosts"] == ["web"]
    assert vs["metadata"] == {"name": "web", "labels": APP}
    assert canary_weight(vs, "web-canary") == 30
    assert canary_weight(None, "web-canary") is None
    with pytest.raises(ValueError, match="0-100"):
        canary_routes(stable_host="a", canary_host="b", weight=101, header="h", header_value="v")


def test_virtual_service_from_the_manifests_keeps_hosts_and_gateways() -> None:
    base = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "web", "annotations": {"owner": "team-a"}},
        "spec": {"hosts": ["web.example.com"], "gateways": ["public"], "http": [{"x": 1}]},
    }
    routes = canary_routes(
        stable_host="web-stable", canary_host="web-canary", weight=0,
        header="x-canary", header_value="always",
    )  # fmt: skip
    vs = virtual_service("web", host="web", routes=routes, base=base)
    assert vs["spec"] == {"hosts": ["web.example.com"], "gateways": ["public"], "http": routes}
    assert vs["metadata"]["annotations"] == {"owner": "team-a"}
    assert base["spec"]["http"] == [{"x": 1}]
