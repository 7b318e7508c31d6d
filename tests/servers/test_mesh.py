"""The Istio data-plane stand-in: route matching, and canary traffic to real app processes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from slipway.tasks.strategies import Release, abort_canary, deploy_canary, set_canary_weight
from slipway.tasks.strategy_spec import CanarySpec, CanaryStepSpec
from tests.servers.kube_api import KubeCluster
from tests.servers.mesh import Mesh, Route, choose_route
from tests.servers.pod_runner import PodRunner, process_pods  # noqa: F401  (the fixture)

APP = {"app.kubernetes.io/name": "example-app"}
TIMEOUT = 60.0


def _route(host: str, match: list[dict[str, Any]] | None = None) -> Route:
    spec: dict[str, Any] = {"route": [{"destination": {"host": host}}]}
    if match is not None:
        spec["match"] = match
    return Route.from_spec(spec)


def test_routes_match_in_order_like_istio() -> None:
    routes = [
        _route("header", [{"headers": {"x-canary": {"exact": "always"}}}]),
        _route("prefix", [{"uri": {"prefix": "/api/"}, "method": {"exact": "POST"}}]),
        _route("either", [{"headers": {"x-a": {"regex": "[0-9]+"}}}, {"uri": {"exact": "/b"}}]),
        _route("unknown", [{"queryParams": {"q": {"exact": "1"}}}]),
    ]
    assert choose_route(routes, "GET", "/", {"X-Canary": "always"}).destinations[0][0] == "header"
    assert choose_route(routes, "GET", "/", {"x-canary": "never"}) is None
    assert choose_route(routes, "POST", "/api/x?y=1", {}).destinations[0][0] == "prefix"
    assert choose_route(routes, "GET", "/api/x", {}) is None
    assert choose_route(routes, "GET", "/", {"x-a": "42"}).destinations[0][0] == "either"
    assert choose_route(routes, "GET", "/b", {}).destinations[0][0] == "either"
    assert choose_route(routes, "GET", "/?q=1", {}) is None  # unsupported match: no match
    catch_all = [*routes, _route("default")]
    assert choose_route(catch_all, "GET", "/", {}).destinations[0][0] == "default"


def test_a_lone_destination_takes_all_weight() -> None:
    assert _route("a").destinations == (("a", None, 100),)
    split = Route.from_spec(
        {
            "route": [
                {"destination": {"host": "s", "port": {"number": 80}}, "weight": 75},
                {"destination": {"host": "c"}, "weight": 25},
            ]
        }
    )
    assert split.destinations == (("s", 80, 75), ("c", None, 25))


def _example_app(image: str) -> list[dict[str, Any]]:
    container = {
        "name": "example-app",
        "image": image,
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": "PORT", "value": "8080"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "example-app", "labels": dict(APP)},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": dict(APP)},
                "template": {
                    "metadata": {"labels": dict(APP)},
                    "spec": {"containers": [container]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "example-app", "labels": dict(APP)},
            "spec": {
                "selector": dict(APP),
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },  # fmt: skip
    ]


def _deploy(kube: KubeCluster, api: Any, image: str, lines: list[str]) -> Any:
    release = Release(
        app="example-app", environment="test", namespace=kube.namespace,
        objects=_example_app(image), image=image,
    )  # fmt: skip
    spec = CanarySpec(steps=[CanaryStepSpec(weight=20)])
    return deploy_canary(api, release, spec, timeout=TIMEOUT, log=lines.append)


def _versions(mesh: Mesh, count: int, headers: dict[str, str] | None = None) -> list[str]:
    versions = []
    with httpx.Client(timeout=5) as http:
        for _ in range(count):
            answer = http.get(f"{mesh.url}/", headers=headers)
            assert answer.status_code == 200, answer.text
            versions.append(answer.json()["version"])
    return versions


@pytest.mark.kube_standin_only("pods run as local processes")
def test_canary_traffic_through_the_mesh_reaches_real_pods(
    kube: KubeCluster,
    process_pods: PodRunner,  # noqa: F811
) -> None:
    api, lines = kube.api_client(), []
    _deploy(kube, api, "registry.local/example-app:1.0.0", lines)
    state = _deploy(kube, api, "registry.local/example-app:2.0.0", lines)
    assert len(process_pods.ready_pods()) == 3  # two stable, one canary

    with Mesh(api, kube.namespace, "example-app", seed=7) as mesh:
        # Weight 0: only the header reaches the canary.
        assert set(_versions(mesh, 20)) == {"1.0.0"}
        assert set(_versions(mesh, 10, {"x-canary": "always"})) == {"2.0.0"}
        assert set(_versions(mesh, 5, {"x-canary": "sometimes"})) == {"1.0.0"}

        set_canary_weight(api, state, 20, timeout=TIMEOUT, log=lines.append)
        mesh.refresh()
        versions = _versions(mesh, 400)
        share = versions.count("2.0.0") / len(versions)
        assert 0.13 < share < 0.27, share
        assert set(_versions(mesh, 10, {"x-canary": "always"})) == {"2.0.0"}
        assert mesh.routed["example-app-canary"] >= 20
        stable_ips = {p.ip for p in process_pods.ready_pods() if p.env["APP_VERSION"] == "1.0.0"}
        assert len(stable_ips) == 2

        abort_canary(api, state, log=lines.append)
        mesh.refresh()
        assert set(_versions(mesh, 30)) == {"1.0.0"}
        kube.wait_for(lambda: len(process_pods.ready_pods()) == 2, message="canary pod stopped")
        mesh.refresh()
        answer = httpx.get(f"{mesh.url}/", headers={"x-canary": "always"}, timeout=5)
        assert answer.status_code == 503 and answer.text == "no healthy upstream"
        assert not mesh.errors
