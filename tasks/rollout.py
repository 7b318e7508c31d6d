"""Deployment rollouts: status, waiting, history and undo, as ``kubectl rollout`` does them.

:func:`rollout_status` reads a Deployment the way ``kubectl rollout status`` does
(kubectl/pkg/polymorphichelpers/rollout_status.go): nothing counts until the
controller has observed the latest generation; then the rollout has failed if the
``Progressing`` condition says ``ProgressDeadlineExceeded``, is waiting while fewer
replicas are updated than desired, while old replicas are still terminating, or while
updated replicas are not yet available, and is done otherwise.

:func:`wait_for_rollout` polls that until done, failed (:class:`RolloutFailed` with the
cluster's message, plus why the new pods are stuck: ``ImagePullBackOff``...) or out of
time (:class:`RolloutTimeout` naming the counts). Polling is idempotent, so a wait
that crashed can simply be repeated.

History lives where the Deployment controller keeps it: one ReplicaSet per pod
template, numbered by its ``deployment.kubernetes.io/revision`` annotation and
carrying the Deployment's annotations of that time (slipway's release annotations,
see ``tasks/kube_apply.HISTORY_ANNOTATIONS``). :func:`undo_rollout` is
``kubectl rollout undo [--to-revision=N]`` (kubectl/pkg/polymorphichelpers/rollback.go):
copy that ReplicaSet's pod template, less its ``pod-template-hash`` label, into the
Deployment together with the ReplicaSet's annotations; the controller then reuses the
old ReplicaSet under the next revision number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.client.rest import ApiException

from slipway.exceptions import ClusterUnreachable, DeployError, RolloutFailed, RolloutTimeout
from slipway.tasks.kube_apply import translate_api_error, unreachable

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
TEMPLATE_HASH_LABEL = "pod-template-hash"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
# Deployment annotations an undo keeps from the Deployment rather than the ReplicaSet
# (kubectl's annotationsToSkip).
_CONTROLLER_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION_ANNOTATION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)
_STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class RolloutStatus:
    """A Deployment's rollout as of one read.

    ``revision`` is the Deployment's current revision (0 before the controller saw
    it); ``done`` and ``failed_reason`` follow ``kubectl rollout status``; ``message``
    is what kubectl would print.
    """

    name: str
    namespace: str
    revision: int
    generation: int
    observed_generation: int
    replicas: int
    updated: int
    ready: int
    available: int
    images: tuple[str, ...]
    done: bool
    failed_reason: str | None
    message: str

    @property
    def counts(self) -> str:
        return (
            f"{self.updated} of {self.replicas} desired replicas updated, "
            f"{self.ready} ready, {self.available} available"
        )


@dataclass(frozen=True)
class Revision:
    """One entry of a Deployment's history: the ReplicaSet behind revision ``number``."""

    number: int
    replicaset: str
    images: tuple[str, ...]
    annotations: dict[str, str] = field(default_factory=dict)


def rollout_status(api: ApiClient, namespace: str, name: str) -> RolloutStatus:
    """Where the Deployment's rollout stands (one read; safe to repeat)."""
    dep = _read_deployment(api, namespace, name)
    meta, spec, st = dep.metadata, dep.spec, dep.status
    generation = int(meta.generation or 0)
    observed = int((st and st.observed_generation) or 0)
    desired = int(spec.replicas if spec.replicas is not None else 1)
    total = int((st and st.replicas) or 0)
    updated = int((st and st.updated_replicas) or 0)
    ready = int((st and st.ready_replicas) or 0)
    available = int((st and st.available_replicas) or 0)
    images = tuple(c.image for c in spec.template.spec.containers or [])
    revision = _int((meta.annotations or {}).get(REVISION_ANNOTATION))
    failed: str | None = None
    done = False
    if generation > observed:
        message = "waiting for the deployment spec update to be observed"
    else:
        progressing = next(
            (c for c in (st and st.conditions) or [] if c.type == "Progressing"), None
        )
        if progressing is not None and progressing.reason == PROGRESS_DEADLINE_EXCEEDED:
            failed = PROGRESS_DEADLINE_EXCEEDED
            message = progressing.message or f"deployment {name!r} exceeded its progress deadline"
        elif updated < desired:
            message = f"{updated} out of {desired} new replicas have been updated"
        elif total > updated:
            message = f"{total - updated} old replicas are pending termination"
        elif available < updated:
            message = f"{available} of {updated} updated replicas are available"
        else:
            done = True
            message = f"deployment {name!r} successfully rolled out"
    return RolloutStatus(
        name=name,
        namespace=namespace,
        revision=revision,
        generation=generation,
        observed_generation=observed,
        replicas=desired,
        updated=updated,
        ready=ready,
        available=available,
        images=images,
        done=done,
        failed_reason=failed,
        message=message,
    )


def wait_for_rollout(
    api: ApiClient,
    namespace: str,
    name: str,
    *,
    timeout: float,
    poll: float = 0.5,
    log: Log,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RolloutStatus:
    """Poll :func:`rollout_status` until the rollout is done.

    Args:
        timeout: seconds (by ``clock``) to wait at most.
        poll: seconds between reads.
        log: gets a line whenever the status message changes.

    Raises:
        RolloutFailed: the cluster gave up (ProgressDeadlineExceeded); the message is the
            cluster's, plus the waiting reason of the stuck pods.
        RolloutTimeout: not done after ``timeout`` seconds; the message names the counts.
    """
    deadline = clock() + timeout
    last = ""
    while True:
        status = rollout_status(api, namespace, name)
        if status.message != last:
            last = status.message
            log(f"deployment/{name} in {namespace}: {status.message}")
        if status.done:
            return status
        if status.failed_reason:
            stuck = _stuck_pods(api, namespace, name)
            detail = f" ({stuck})" if stuck else ""
            raise RolloutFailed(
                f"rollout of deployment {name} in {namespace} failed: "
                f"{status.failed_reason}: {status.message}{detail}; {status.counts}"
            )
        if clock() >= deadline:
            raise RolloutTimeout(
                f"rollout of deployment {name} in {namespace} not done after {timeout:g} s: "
                f"{status.counts} (revision {status.revision}; {status.message})"
            )
        sleep(max(0.0, min(poll, deadline - clock())))


def rollout_history(api: ApiClient, namespace: str, name: str) -> list[Revision]:
    """The Deployment's revisions, oldest first (from its ReplicaSets)."""
    dep = _read_deployment(api, namespace, name)
    return [_revision_of(rs) for rs in _replicasets(api, dep)]


def undo_rollout(
    api: ApiClient,
    namespace: str,
    name: str,
    *,
    to_revision: int | None = None,
    log: Log,
) -> Revision:
    """Roll the Deployment back to ``to_revision`` (None: the previous revision).

    Returns the revision whose template the Deployment now has, numbered as it was
    before the undo (the controller gives it the next number once it sees the change;
    wait with :func:`wait_for_rollout`). When the Deployment already runs that
    template nothing is changed, as kubectl skips such an undo.

    Raises:
        DeployError: the revision is unknown (the message lists those that exist), there
            is no previous revision, or the Deployment is paused.
    """
    dep = _read_deployment(api, namespace, name)
    if dep.spec.paused:
        raise DeployError(
            f"deployment {name} in {namespace} is paused; resume it before undoing a rollout"
        )
    history = _replicasets(api, dep)
    numbers = [_int((rs.metadata.annotations or {}).get(REVISION_ANNOTATION)) for rs in history]
    current = _int((dep.metadata.annotations or {}).get(REVISION_ANNOTATION))
    if to_revision:
        if to_revision not in numbers:
            raise DeployError(
                f"deployment {name} in {namespace} has no revision {to_revision}; "
                f"revisions: {', '.join(map(str, numbers)) or 'none'}"
            )
        target = history[numbers.index(to_revision)]
    else:
        older = [rs for n, rs in zip(numbers, history, strict=True) if n != current]
        if not older:
            raise DeployError(
                f"deployment {name} in {namespace} has no previous revision to undo to "
                f"(revisions: {', '.join(map(str, numbers)) or 'none'})"
            )
        target = older[-1]
    revision = _revision_of(target)
    template = api.sanitize_for_serialization(target.spec.template)
    labels = template.setdefault("metadata", {}).get("labels") or {}
    labels.pop(TEMPLATE_HASH_LABEL, None)
    current_template = api.sanitize_for_serialization(dep.spec.template)
    if template == current_template:
        log(
            f"deployment/{name} in {namespace} already runs revision {revision.number}'s "
            "template; nothing to undo"
        )
        return revision
    annotations = {
        k: v for k, v in (dep.metadata.annotations or {}).items() if k in _CONTROLLER_ANNOTATIONS
    }
    annotations.update(
        {k: v for k, v in revision.annotations.items() if k not in _CONTROLLER_ANNOTATIONS}
    )
    patch = [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]
    try:
        AppsV1Api(api).patch_namespaced_deployment(name, namespace, patch)
    except ApiException as exc:
        raise translate_api_error(exc, f"rolling back deployment {name} in {namespace}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    log(
        f"deployment/{name} in {namespace} rolled back to revision {revision.number} "
        f"({', '.join(revision.images)})"
    )
    return revision


# --- reading ---------------------------------------------------------------------------


def _read_deployment(api: ApiClient, namespace: str, name: str) -> Any:
    try:
        return AppsV1Api(api).read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise DeployError(f"deployment {name} not found in namespace {namespace}") from None
        raise translate_api_error(exc, f"reading deployment {name} in {namespace}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None


def _replicasets(api: ApiClient, dep: Any) -> list[Any]:
    """The ReplicaSets the Deployment controls, by revision."""
    match = (dep.spec.selector and dep.spec.selector.match_labels) or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
    try:
        items = (
            AppsV1Api(api)
            .list_namespaced_replica_set(dep.metadata.namespace, label_selector=selector)
            .items
        )
    except ApiException as exc:
        raise translate_api_error(exc, f"listing the ReplicaSets of {dep.metadata.name}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    owned = [
        rs
        for rs in items
        if any(
            ref.controller and ref.uid == dep.metadata.uid
            for ref in rs.metadata.owner_references or []
        )
    ]
    return sorted(
        owned, key=lambda rs: _int((rs.metadata.annotations or {}).get(REVISION_ANNOTATION))
    )


def _revision_of(rs: Any) -> Revision:
    annotations = dict(rs.metadata.annotations or {})
    return Revision(
        number=_int(annotations.get(REVISION_ANNOTATION)),
        replicaset=rs.metadata.name,
        images=tuple(c.image for c in rs.spec.template.spec.containers or []),
        annotations=annotations,
    )


def _stuck_pods(api: ApiClient, namespace: str, name: str) -> str:
    """Why the newest ReplicaSet's pods are not ready ("ImagePullBackOff: ..."), or ""."""
    try:
        dep = _read_deployment(api, namespace, name)
        history = _replicasets(api, dep)
        if not history:
            return ""
        newest = history[-1]
        hash_label = (newest.metadata.labels or {}).get(TEMPLATE_HASH_LABEL)
        if not hash_label:
            return ""
        pods = (
            CoreV1Api(api)
            .list_namespaced_pod(namespace, label_selector=f"{TEMPLATE_HASH_LABEL}={hash_label}")
            .items
        )
    except (ApiException, DeployError, ClusterUnreachable):
        return ""  # the failure itself is what matters; this is only a detail
    reasons: dict[str, str] = {}
    for pod in pods:
        statuses = (pod.status and pod.status.container_statuses) or []
        for cs in statuses:
            waiting = cs.state and cs.state.waiting
            if waiting and waiting.reason in _STUCK_REASONS:
                text = (waiting.message or "").strip().splitlines()
                reasons.setdefault(
                    waiting.reason, f"{waiting.reason}: {text[0][:200]}" if text else waiting.reason
                )
    return "; ".join(f"pods {reason}" for reason in reasons.values())


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
