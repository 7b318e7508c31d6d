"""The objects a deploy strategy writes, made from the rendered manifests (pure functions).

The manifests repository describes the app once (a Deployment, a Service, whatever
else); the strategies in :mod:`slipway.tasks.strategies` need variants of those
objects, derived here without touching the cluster, so each is easy to test:

- blue-green: the Deployment as ``<name>-blue`` and ``<name>-green``, each with the
  label ``slipway.dev/colour`` added to its selector and pod template; the active
  Service with the colour in its selector; a preview Service (a copy under another
  name) selecting the idle colour.
- canary: the Deployment as the stable ``<name>`` and the ``<name>-canary``, told
  apart by the label ``slipway.dev/track``; Services ``<svc>-stable`` and
  ``<svc>-canary`` selecting each track; an Istio VirtualService (host: the app's
  Service) whose first route sends requests carrying the canary header to the canary
  and whose second splits the rest by weight.

Nothing here mutates its input: every function returns a deep copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from slipway.exceptions import DeployError

COLOUR_LABEL = "slipway.dev/colour"
TRACK_LABEL = "slipway.dev/track"
COLOURS = ("blue", "green")
Colour = Literal["blue", "green"]
Track = Literal["stable", "canary"]

VIRTUAL_SERVICE_API = "networking.istio.io/v1beta1"
HEADER_ROUTE = "canary-header"
WEIGHT_ROUTE = "primary"
# What a copy of a Service keeps of the original's spec: the fields that say which pods
# and ports it fronts, not those the cluster assigns (clusterIP, nodePorts) or that would
# expose the copy outside the cluster.
_SERVICE_SPEC_KEPT = ("ports", "selector", "sessionAffinity", "publishNotReadyAddresses")


def other_colour(colour: str) -> Colour:
    """``blue`` <-> ``green``."""
    return "green" if colour == "blue" else "blue"


def _kinds(objects: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def find_deployment(objects: Sequence[Mapping[str, Any]], name: str | None) -> dict[str, Any]:
    """The app's Deployment: the one called ``name``, or the only one when ``name`` is None."""
    deployments = _kinds(objects, "Deployment")
    if name is not None:
        for deployment in deployments:
            if _name(deployment) == name:
                return copy.deepcopy(dict(deployment))
        found = ", ".join(sorted(_name(d) for d in deployments)) or "none"
        raise DeployError(f"the manifests have no Deployment {name!r} (Deployments: {found})")
    if len(deployments) != 1:
        found = ", ".join(sorted(_name(d) for d in deployments)) or "none"
        raise DeployError(
            f"name the app's Deployment: the manifests have {len(deployments)} ({found})"
        )
    return copy.deepcopy(dict(deployments[0]))


def pod_labels(deployment: Mapping[str, Any]) -> dict[str, str]:
    return dict(deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")
                or {})  # fmt: skip


def selects(service: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """True when the Service's selector picks pods carrying ``labels``."""
    selector = service.get("spec", {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def find_service(
    objects: Sequence[Mapping[str, Any]], deployment: Mapping[str, Any], name: str | None
) -> dict[str, Any]:
    """The Service in front of the Deployment: the one called ``name``, or else the one
    whose selector matches the Deployment's pods (DeployError when none or several)."""
    services = _kinds(objects, "Service")
    if name is not None:
        for service in services:
            if _name(service) == name:
                return copy.deepcopy(dict(service))
        found = ", ".join(sorted(_name(s) for s in services)) or "none"
        raise DeployError(f"the manifests have no Service {name!r} (Services: {found})")
    labels = pod_labels(deployment)
    matching = [s for s in services if selects(s, labels)]
    if len(matching) != 1:
        found = ", ".join(sorted(_name(s) for s in matching)) or "none"
        raise DeployError(
            f"name the Service of Deployment {_name(deployment)!r}: {len(matching)} Services "
            f"in the manifests select its pods ({found})"
        )
    return copy.deepcopy(dict(matching[0]))


def with_rolling_strategy(
    deployment: Mapping[str, Any], max_surge: int | str | None, max_unavailable: int | str | None
) -> dict[str, Any]:
    """The Deployment with a RollingUpdate strategy; a None value keeps the manifests'."""
    new = copy.deepcopy(dict(deployment))
    strategy = new.setdefault("spec", {}).setdefault("strategy", {})
    strategy["type"] = "RollingUpdate"
    rolling = strategy.setdefault("rollingUpdate", {}) or {}
    strategy["rollingUpdate"] = rolling
    if max_surge is not None:
        rolling["maxSurge"] = max_surge
    if max_unavailable is not None:
        rolling["maxUnavailable"] = max_unavailable
    if not rolling:
        del strategy["rollingUpdate"]
    return new


def _labelled(
    deployment: Mapping[str, Any],
    name: str,
    key: str,
    value: str,
    *,
    selector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    new = copy.deepcopy(dict(deployment))
    meta = new.setdefault("metadata", {})
    meta["name"] = name
    meta["labels"] = {**(meta.get("labels") or {}), key: value}
    spec = new.setdefault("spec", {})
    if selector is not None:
        spec["selector"] = copy.deepcopy(dict(selector))
    else:
        sel = spec.setdefault("selector", {})
        sel["matchLabels"] = {**(sel.get("matchLabels") or {}), key: value}
    template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), key: value}
    return new


def coloured_deployment(deployment: Mapping[str, Any], colour: str) -> dict[str, Any]:
    """``<name>-<colour>``, with ``slipway.dev/colour`` in its selector and pod template
    (so the colours' pods never mix)."""
    return _labelled(deployment, f"{_name(deployment)}-{colour}", COLOUR_LABEL, colour)


def coloured_service(
    service: Mapping[str, Any], colour: str, *, name: str | None = None
) -> dict[str, Any]:
    """The Service selecting one colour; with ``name``, a copy (the preview Service) that
    keeps only the original's ports and selector and is always a ClusterIP Service."""
    new = _service_copy(service, name) if name else copy.deepcopy(dict(service))
    spec = new.setdefault("spec", {})
    spec["selector"] = {**(spec.get("selector") or {}), COLOUR_LABEL: colour}
    return new


def service_colour(service: Mapping[str, Any] | None) -> Colour | None:
    """The colour a live Service selects (None: none yet, or not a blue-green Service)."""
    if not service:
        return None
    colour = (service.get("spec", {}).get("selector") or {}).get(COLOUR_LABEL)
    return colour if colour in COLOURS else None


def _service_copy(service: Mapping[str, Any], name: str) -> dict[str, Any]:
    meta = service.get("metadata", {})
    new_meta: dict[str, Any] = {"name": name}
    for key in ("namespace", "labels", "annotations"):
        if meta.get(key):
            new_meta[key] = copy.deepcopy(meta[key])
    spec = service.get("spec", {})
    new_spec: dict[str, Any] = {"type": "ClusterIP"}
    for key in _SERVICE_SPEC_KEPT:
        if key in spec:
            new_spec[key] = copy.deepcopy(spec[key])
    for port in new_spec.get("ports") or []:
        port.pop("nodePort", None)
    return {"apiVersion": "v1", "kind": "Service", "metadata": new_meta, "spec": new_spec}


def track_deployment(
    deployment: Mapping[str, Any],
    track: Track,
    *,
    name: str,
    replicas: int,
    selector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Deployment as one canary track: ``slipway.dev/track`` in its pod template (and
    its selector, unless ``selector`` is given: a live Deployment's selector is immutable,
    so an existing stable Deployment keeps its own) and ``replicas`` pods."""
    new = _labelled(deployment, name, TRACK_LABEL, track, selector=selector)
    new["spec"]["replicas"] = replicas
    return new


def track_service(service: Mapping[str, Any], track: Track, name: str) -> dict[str, Any]:
    """A copy of the app's Service selecting only one track's pods (a route destination)."""
    new = _service_copy(service, name)
    new["spec"]["selector"] = {**(new["spec"].get("selector") or {}), TRACK_LABEL: track}
    return new


def canary_replicas(replicas: int, weight: int) -> int:
    """Canary pods for a weight: its share of the stable count, at least one while it takes
    any traffic (so a header route always has somewhere to go), none at weight 0."""
    if weight <= 0:
        return 0
    return max(1, math.ceil(replicas * weight / 100))


def canary_routes(
    *, stable_host: str, canary_host: str, weight: int, header: str, header_value: str
) -> list[dict[str, Any]]:
    """The VirtualService's ``http`` routes: the header match first (Istio takes the first
    route that matches), then the weighted split of everything else."""
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be 0-100, got {weight}")
    return [
        {
            "name": HEADER_ROUTE,
            "match": [{"headers": {header: {"exact": header_value}}}],
            "route": [{"destination": {"host": canary_host}, "weight": 100}],
        },
        {
            "name": WEIGHT_ROUTE,
            "route": [
                {"destination": {"host": stable_host}, "weight": 100 - weight},
                {"destination": {"host": canary_host}, "weight": weight},
            ],
        },
    ]


def virtual_service(
    name: str,
    *,
    host: str,
    routes: list[dict[str, Any]],
    labels: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The VirtualService for ``host``; ``base`` (one of that name in the manifests) keeps
    its metadata, hosts, gateways and exportTo, and only its ``http`` routes are ours."""
    if base is not None:
        new = copy.deepcopy(dict(base))
        new["spec"] = {**(new.get("spec") or {}), "http": routes}
        new["spec"].setdefault("hosts", [host])
        return new
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": VIRTUAL_SERVICE_API,
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {"hosts": [host], "http": routes},
    }


def canary_weight(vs: Mapping[str, Any] | None, canary_host: str) -> int | None:
    """The weight a live VirtualService gives ``canary_host`` in its weighted route."""
    for route in (vs or {}).get("spec", {}).get("http") or []:
        if route.get("match"):
            continue
        for destination in route.get("route") or []:
            if destination.get("destination", {}).get("host") == canary_host:
                return int(destination.get("weight", 0))
        return 0
    return None
