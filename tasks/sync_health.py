"""Health of synced objects, as Argo CD assesses it, and of an application as a whole.

One object's health (:func:`assess_health`):

- **Deployment**: ``kubectl rollout status``'s reading
  (:func:`~slipway.tasks.rollout.rollout_status`): rolled out and available -> Healthy;
  ``ProgressDeadlineExceeded`` -> Degraded (with why the new pods are stuck, e.g.
  ``ImagePullBackOff``); anything else (the controller has not seen the change,
  replicas updating or not yet available) -> Progressing.
  As in Argo CD, a broken image is Progressing until the Deployment's
  ``progressDeadlineSeconds`` runs out, then Degraded.
- **StatefulSet / DaemonSet**: the same questions from their status (observed
  generation, updated and ready replicas).
- **Service**: ExternalName and selector-less Services are Healthy; otherwise it needs
  at least one ready endpoint address (Progressing until then); a LoadBalancer also
  needs an ingress address.
- **PersistentVolumeClaim**: Bound -> Healthy, Lost -> Degraded, else Progressing.
- **Job**: Complete -> Healthy, Failed -> Degraded, else Progressing.
- anything else that exists -> Healthy (a ConfigMap has no health to speak of);
  anything missing -> Missing.

An application's health is its worst object's, in Argo CD's order
(:data:`HEALTH_ORDER`): Healthy < Progressing < Missing < Degraded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import urllib3
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.rest import ApiException

from slipway.tasks.kube_apply import translate_api_error, unreachable
from slipway.tasks.rollout import _stuck_pods, rollout_status

HealthStatus = Literal["Healthy", "Progressing", "Missing", "Degraded"]
HEALTH_ORDER: dict[str, int] = {"Healthy": 0, "Progressing": 1, "Missing": 2, "Degraded": 3}


@dataclass(frozen=True)
class Health:
    """One object's health and the reason in a few words."""

    status: HealthStatus
    message: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.message}" if self.message else self.status


def worst(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """The application's health: its worst object's (Healthy when it has none)."""
    found: HealthStatus = "Healthy"
    for status in statuses:
        if HEALTH_ORDER[status] > HEALTH_ORDER[found]:
            found = status
    return found


def assess_health(api: ApiClient, live: Mapping[str, Any] | None) -> Health:
    """The health of ``live`` (None: the object does not exist). Reads the cluster for
    Deployments (their rollout) and Services (their Endpoints) only."""
    if live is None:
        return Health("Missing", "not in the cluster")
    kind = str(live.get("kind") or "")
    metadata = live.get("metadata") or {}
    name, namespace = str(metadata.get("name")), str(metadata.get("namespace") or "")
    status = live.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return Health("Progressing", "being deleted")
    if kind == "Deployment":
        return _deployment(api, namespace, name)
    if kind in ("StatefulSet", "DaemonSet"):
        return _workload(live, kind)
    if kind == "Service":
        return _service(api, live, namespace, name)
    if kind == "PersistentVolumeClaim":
        phase = status.get("phase")
        if phase == "Bound":
            return Health("Healthy", "bound")
        if phase == "Lost":
            return Health("Degraded", "its volume is lost")
        return Health("Progressing", f"phase {phase or 'unknown'}")
    if kind == "Job":
        for condition in status.get("conditions") or []:
            if condition.get("status") == "True" and condition.get("type") == "Complete":
                return Health("Healthy", "complete")
            if condition.get("status") == "True" and condition.get("type") == "Failed":
                return Health("Degraded", condition.get("message") or "failed")
        return Health("Progressing", "running")
    return Health("Healthy")


def _deployment(api: ApiClient, namespace: str, name: str) -> Health:
    rollout = rollout_status(api, namespace, name)
    if rollout.done:
        return Health("Healthy", f"{rollout.available} of {rollout.replicas} available")
    stuck = _stuck_pods(api, namespace, name)
    detail = f" ({stuck})" if stuck else ""
    if rollout.failed_reason:
        return Health("Degraded", f"{rollout.failed_reason}: {rollout.message}{detail}")
    return Health("Progressing", f"{rollout.message}{detail}")


def _workload(live: Mapping[str, Any], kind: str) -> Health:
    spec, status = live.get("spec") or {}, live.get("status") or {}
    generation = int((live.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return Health("Progressing", "waiting for the controller to observe the change")
    if kind == "StatefulSet":
        want = int(spec.get("replicas", 1))
        updated = int(status.get("updatedReplicas") or 0)
        ready = int(status.get("readyReplicas") or 0)
    else:
        want = int(status.get("desiredNumberScheduled") or 0)
        updated = int(status.get("updatedNumberScheduled") or 0)
        ready = int(status.get("numberAvailable") or 0)
    if updated < want or ready < want:
        return Health("Progressing", f"{updated} of {want} updated, {ready} ready")
    return Health("Healthy", f"{ready} of {want} ready")


def _service(api: ApiClient, live: Mapping[str, Any], namespace: str, name: str) -> Health:
    spec = live.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return Health("Healthy", "external name")
    if spec.get("type") == "LoadBalancer":
        ingress = ((live.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        if not ingress:
            return Health("Progressing", "waiting for a load balancer address")
    if not spec.get("selector"):
        return Health("Healthy", "no selector (endpoints managed by hand)")
    try:
        endpoints = CoreV1Api(api).read_namespaced_endpoints(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return Health("Progressing", "no endpoints yet")
        raise translate_api_error(exc, f"reading the endpoints of service {name}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    ready = sum(len(subset.addresses or []) for subset in endpoints.subsets or [])
    if ready:
        return Health("Healthy", f"{ready} ready endpoint{'s' if ready != 1 else ''}")
    return Health("Progressing", "no ready endpoints")
