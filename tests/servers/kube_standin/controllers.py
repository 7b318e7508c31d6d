"""Simulated controllers: what kube-controller-manager and a kubelet would do, on cluster time.

One background thread runs :meth:`Simulation.reconcile` whenever the store changes,
when the next timed transition is due (a pod start, a crash back-off, minReadySeconds,
a progress deadline, a readiness probe) and otherwise every ``tick`` real seconds, so
an idle cluster costs next to nothing; a pass runs, in order:

1. the garbage collector: dependents whose owners are all gone are deleted,
   Foreground deletions wait for their dependents, Terminating namespaces are
   emptied and removed;
2. the kubelet: a new pod is bound to node ``standin-node`` and reported
   ``Pending``; after ``pod_start_seconds`` of cluster time it is ``Running`` and
   ``Ready`` with a pod IP, unless its image was declared broken
   (``crash``: CrashLoopBackOff; ``pull``: ImagePullBackOff, still Pending;
   ``unready``: running, never ready), comes from a ``*.invalid`` registry (pull
   fails, as it would on a cluster), or the pod hook says otherwise;
3. the ReplicaSet controller: creates and deletes pods to ``spec.replicas``
   (unready and newest first) and reports replicas / ready / available
   (ready for ``minReadySeconds``);
4. the Deployment controller, after the real one (pkg/controller/deployment):
   one ReplicaSet per pod template, named ``<deployment>-<pod-template-hash>``;
   the ``deployment.kubernetes.io/revision`` annotation is max(old revisions) + 1
   for a new template, and a template that matches an old ReplicaSet (a rollback,
   as ``kubectl rollout undo`` makes) reuses it with the next revision and records
   the old one in ``deployment.kubernetes.io/revision-history``; rolling updates
   honour maxSurge / maxUnavailable (Recreate too); ``revisionHistoryLimit`` prunes
   old ReplicaSets; the status (observedGeneration, replicas, updatedReplicas,
   readyReplicas, availableReplicas, unavailableReplicas; zeros omitted as the API
   omits them) and the ``Available`` / ``Progressing`` conditions
   (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated,
   NewReplicaSetAvailable, ProgressDeadlineExceeded after
   ``progressDeadlineSeconds`` without progress, DeploymentPaused) follow the
   real controller's rules;
5. the Endpoints controller: an Endpoints object per Service with a selector,
   ready pods in ``addresses``, the others in ``notReadyAddresses``, named target
   ports resolved against each pod's container ports.

The pod hook lets a test back pods with real local processes: it is called (outside
the store lock, from the controller thread) with a :class:`PodEvent` when a pod is
to start and when it is gone; its :class:`PodStarted` answer can carry the pod IP
to report and a readiness callable. With a hook installed, pods get loopback IPs
(``127.o.x.y``, ``o`` random per stand-in) so that each pod's process can bind its
own address at the container port and Endpoints list addresses that really answer.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.servers.kube_standin.errors import ApiError
from tests.servers.kube_standin.resources import (
    DEPLOYMENTS,
    ENDPOINTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    SERVICES,
    ResourceType,
    selector_matches,
)
from tests.servers.kube_standin.store import (
    CONTROLLER_MANAGER,
    SAFE_CHARS,
    SimulatedClock,
    Store,
    int_or_percent,
    parse_rfc3339,
    rfc3339,
)

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
TEMPLATE_HASH = "pod-template-hash"
NODE_NAME = "standin-node"
HOST_IP = "10.0.0.1"
_NOT_COPIED = {
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "kubectl.kubernetes.io/last-applied-configuration",
}
CRASH_BACKOFF_SECONDS = (10, 20, 40, 80, 160, 300)  # the kubelet's back-off, then every 300 s
BrokenHow = Literal["crash", "pull", "unready"]


@dataclass(frozen=True)
class PodEvent:
    """What the pod hook is told: a pod is to ``start``, or is gone (``stop``).

    ``pod`` is a copy of the pod object; ``pod_ip`` the loopback address reserved for
    it (bind the pod's process there, at the container ports).
    """

    action: Literal["start", "stop"]
    namespace: str
    name: str
    uid: str
    pod_ip: str
    pod: dict[str, Any]

    @property
    def containers(self) -> list[dict[str, Any]]:
        return list(self.pod.get("spec", {}).get("containers") or [])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.pod.get("metadata", {}).get("labels") or {})


@dataclass(frozen=True)
class PodStarted:
    """The pod hook's answer to ``start``.

    Args:
        pod_ip: the IP to report (default: the event's ``pod_ip``).
        ready: called now and then (at most every ``probe_interval`` real seconds)
            once the pod runs; the pod is Ready while it returns True (a readiness
            probe). None: Ready at once.
    """

    pod_ip: str | None = None
    ready: Callable[[], bool] | None = None


PodHook = Callable[[PodEvent], PodStarted | None]


@dataclass
class _Pod:
    """What the kubelet simulation knows about one pod, by uid."""

    namespace: str
    name: str
    created: float
    phase: Literal["pending", "starting", "running", "broken", "failed"] = "pending"
    broken: BrokenHow | None = None
    error: str = ""
    ip: str = ""
    started_at: float = 0.0
    ready: bool = False
    ready_changed: float = 0.0
    probe: Callable[[], bool] | None = None
    last_probe: float = 0.0
    hooked: bool = False
    restarts: int = 0
    pod_copy: dict[str, Any] = field(default_factory=dict)


class Simulation:
    """The controllers and kubelet; see the module docstring."""

    def __init__(
        self,
        store: Store,
        clock: SimulatedClock,
        *,
        pod_start_seconds: float = 1.0,
        tick: float = 1.0,
        probe_interval: float = 0.05,
        pod_hook: PodHook | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.pod_start_seconds = pod_start_seconds
        self.tick = tick
        self.probe_interval = probe_interval
        self.pod_hook = pod_hook
        self.broken: dict[str, BrokenHow] = {}
        self.errors: list[str] = []
        self._pods: dict[str, _Pod] = {}
        self._pod_ips = itertools.count(2)
        self._loopback_ips = itertools.count(2)
        # a second octet of its own per stand-in: pods of one stand-in that are still
        # stopping never hold the address a pod of the next one is given
        self.loopback_octet = random.randint(2, 254)
        self._wake = threading.Event()
        self._due: list[float] = []  # cluster times at which the last pass expects a change
        self._probing = False
        self._stop = threading.Event()
        self._reconciling = threading.RLock()  # a hook may call advance()
        self._thread: threading.Thread | None = None
        store.on_change = self._wake.set

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="kube-standin-controllers", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and tell the hook that every pod it started is gone."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        with self.store.lock:
            running = [(uid, p) for uid, p in self._pods.items() if p.hooked]
            self._pods.clear()
        for uid, pod in running:
            self._call_stop(uid, pod)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._sleep_for())
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.reconcile()
            except Exception as exc:  # keep simulating; a test sees the error list
                self.errors.append(f"controller pass failed: {type(exc).__name__}: {exc}")

    def _sleep_for(self) -> float:
        """Real seconds until the next pass is needed (a store change wakes it earlier)."""
        wait = self.tick
        if self._due:
            wait = min(wait, (min(self._due) - self.clock.now()) / max(self.clock.speed, 1e-9))
        if self._probing:
            wait = min(wait, self.probe_interval)
        return max(wait, 0.001)

    def _schedule(self, when: float) -> None:
        self._due.append(when)

    def reconcile(self, max_passes: int = 100) -> None:
        """Run controller passes until one changes nothing (or ``max_passes``)."""
        with self._reconciling:
            for _ in range(max_passes):
                if not self._pass():
                    break

    # --- one pass -------------------------------------------------------------------------

    def _pass(self) -> bool:
        self._due = []
        probed = self._probe()
        starts: list[tuple[str, PodEvent]] = []
        stops: list[tuple[str, _Pod]] = []
        with self.store.lock:
            before = self.store.resource_version
            self._collect_garbage()
            self._kubelet(starts, stops)
            self._replicasets()
            self._deployments()
            self._endpoints()
            changed = self.store.resource_version != before
        for uid, event in starts:
            self._call_start(uid, event)
        for uid, pod in stops:
            self._call_stop(uid, pod)
        return changed or probed or bool(starts) or bool(stops)

    # --- pod hook ------------------------------------------------------------------------------

    def _probe(self) -> bool:
        with self.store.lock:
            probed = [(uid, p) for uid, p in self._pods.items() if p.phase == "running" and p.probe]
            self._probing = bool(probed)
            due = [
                (u, p) for u, p in probed if time.monotonic() - p.last_probe >= self.probe_interval
            ]
        changed = False
        for uid, pod in due:
            assert pod.probe is not None
            try:
                ready = bool(pod.probe())
            except Exception:
                ready = False
            with self.store.lock:
                pod.last_probe = time.monotonic()
                if uid in self._pods and ready != pod.ready:
                    pod.ready, pod.ready_changed, changed = ready, self.clock.now(), True
        return changed

    def _call_start(self, uid: str, event: PodEvent) -> None:
        hook = self.pod_hook
        try:
            answer = (hook(event) if hook else None) or PodStarted()
        except Exception as exc:
            with self.store.lock:
                pod = self._pods.get(uid)
                if pod is not None:
                    pod.phase, pod.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
            self.errors.append(f"start {event.namespace}/{event.name}: {exc}")
            return
        with self.store.lock:
            pod = self._pods.get(uid)
            if pod is not None:
                now = self.clock.now()
                pod.phase, pod.hooked, pod.started_at = "running", True, now
                pod.ip = answer.pod_ip or event.pod_ip
                pod.probe = answer.ready
                pod.ready, pod.ready_changed = answer.ready is None, now
                pod.pod_copy = event.pod
                self._wake.set()
                return
        self._call_stop(uid, _Pod(event.namespace, event.name, 0, hooked=True, pod_copy=event.pod))

    def _call_stop(self, uid: str, pod: _Pod) -> None:
        hook = self.pod_hook
        if hook is None or not pod.hooked:
            return
        event = PodEvent("stop", pod.namespace, pod.name, uid, pod.ip, pod.pod_copy)
        try:
            hook(event)
        except Exception as exc:
            self.errors.append(f"stop {pod.namespace}/{pod.name}: {exc}")

    # --- garbage collector -----------------------------------------------------------------

    def _collect_garbage(self) -> None:
        store = self.store
        for ns in store.snapshot(NAMESPACES):
            if "deletionTimestamp" in ns["metadata"]:
                name = ns["metadata"]["name"]
                for rt, obj in list(store.all_objects()):
                    if rt.namespaced and obj["metadata"].get("namespace") == name:
                        store.remove(rt, obj)
                store.remove(NAMESPACES, ns)
        uids = store.uids()
        dependents: dict[str, list[tuple[ResourceType, dict[str, Any]]]] = {}
        for rt, obj in list(store.all_objects()):
            refs = obj["metadata"].get("ownerReferences") or []
            for ref in refs:
                dependents.setdefault(ref.get("uid", ""), []).append((rt, obj))
            if not refs or "deletionTimestamp" in obj["metadata"]:
                continue
            live = [r for r in refs if r.get("uid") in uids]
            meta = obj["metadata"]
            if not live:
                store.delete(rt, meta.get("namespace", ""), meta["name"], propagation="Background")
            elif len(live) < len(refs):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = live
                store.update(rt, obj, new, manager=CONTROLLER_MANAGER)
        for rt, obj in list(store.all_objects()):
            meta = obj["metadata"]
            if "deletionTimestamp" not in meta or "foregroundDeletion" not in (
                meta.get("finalizers") or []
            ):
                continue
            waiting = dependents.get(meta["uid"], [])
            for dep_rt, dep in waiting:
                dep_meta = dep["metadata"]
                if "deletionTimestamp" not in dep_meta:
                    store.delete(
                        dep_rt,
                        dep_meta.get("namespace", ""),
                        dep_meta["name"],
                        propagation="Foreground",
                    )
            if not waiting:
                new = copy.deepcopy(obj)
                new["metadata"]["finalizers"] = [
                    f for f in meta["finalizers"] if f != "foregroundDeletion"
                ]
                store.update(rt, obj, new, manager=CONTROLLER_MANAGER)

    # --- kubelet ---------------------------------------------------------------------------

    def _broken_how(self, pod: Mapping[str, Any]) -> BrokenHow | None:
        for container in pod.get("spec", {}).get("containers") or []:
            image = container.get("image", "")
            how = self.broken.get(image)
            if how:
                return how
            registry = image.split("/", 1)[0] if "/" in image else ""
            if registry.split(":", 1)[0].endswith(".invalid"):  # never resolves (RFC 2606)
                return "pull"
        return None

    def _kubelet(self, starts: list[tuple[str, PodEvent]], stops: list[tuple[str, _Pod]]) -> None:
        store, now = self.store, self.clock.now()
        seen: set[str] = set()
        for pod in store.snapshot(PODS):
            meta = pod["metadata"]
            uid = meta["uid"]
            seen.add(uid)
            state = self._pods.get(uid)
            if state is None:
                created = store.created_at.get(uid, now)
                state = self._pods[uid] = _Pod(meta["namespace"], meta["name"], created)
                if not pod["spec"].get("nodeName"):
                    bound = copy.deepcopy(pod)
                    bound["spec"]["nodeName"] = NODE_NAME
                    pod = store.update(PODS, pod, bound, manager=CONTROLLER_MANAGER)
            if state.phase == "pending" and now < state.created + self.pod_start_seconds:
                self._schedule(state.created + self.pod_start_seconds)
            elif state.phase == "pending":
                state.broken = self._broken_how(pod)
                if state.broken:
                    state.phase, state.started_at = "broken", now
                    state.ip = self._next_ip()
                    state.restarts = 1
                elif self.pod_hook is not None:
                    state.phase = "starting"
                    n = next(self._loopback_ips)
                    ip = f"127.{self.loopback_octet}.{n // 250}.{n % 250 + 1}"
                    state.ip = ip
                    event = PodEvent(
                        "start", meta["namespace"], meta["name"], uid, ip, copy.deepcopy(pod)
                    )
                    starts.append((uid, event))
                else:
                    state.phase, state.started_at = "running", now
                    state.ip = self._next_ip()
                    state.ready, state.ready_changed = True, now
            if state.broken == "crash":
                state.restarts = _crash_restarts(now - state.started_at)
                self._schedule(state.started_at + _crash_restart_at(state.restarts))
            status = self._pod_status(pod, state)
            if status != pod.get("status"):
                new = copy.deepcopy(pod)
                new["status"] = status
                store.update(PODS, pod, new, manager=CONTROLLER_MANAGER, subresource="status")
        for uid in list(self._pods):
            if uid not in seen:
                stops.append((uid, self._pods.pop(uid)))

    def _next_ip(self) -> str:
        n = next(self._pod_ips)
        return f"10.244.{n // 250}.{n % 250 + 1}"

    def _pod_status(self, pod: Mapping[str, Any], state: _Pod) -> dict[str, Any]:
        created = rfc3339(state.created)
        containers = pod["spec"].get("containers") or []
        names = [c.get("name", "") for c in containers]
        scheduled = {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                     "lastTransitionTime": created}  # fmt: skip
        status: dict[str, Any] = {
            "phase": "Pending",
            "conditions": [scheduled],
            "qosClass": "BestEffort",
        }
        if state.phase in ("pending", "starting"):
            status["hostIP"], status["hostIPs"] = HOST_IP, [{"ip": HOST_IP}]
            status["startTime"] = created
            status["containerStatuses"] = [
                self._container(c, {"waiting": {"reason": "ContainerCreating"}}, False, 0)
                for c in containers
            ]
            status["conditions"] = self._conditions(state, False, names) + [scheduled]
            return status
        started = rfc3339(state.started_at)
        ready = state.phase == "running" and state.ready
        if state.phase == "running":
            container_state: dict[str, Any] = {"running": {"startedAt": started}}
        elif state.broken == "pull":
            image = containers[0].get("image", "") if containers else ""
            container_state = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{image}"',
                }
            }
        elif state.broken == "unready":
            container_state = {"running": {"startedAt": started}}
        else:
            reason = "CrashLoopBackOff"
            message = state.error or "back-off restarting failed container"
            container_state = {"waiting": {"reason": reason, "message": message}}
        restarts = state.restarts if state.broken == "crash" or state.phase == "failed" else 0
        status.update(
            phase="Pending" if state.broken == "pull" else "Running",
            hostIP=HOST_IP,
            hostIPs=[{"ip": HOST_IP}],
            podIP=state.ip,
            podIPs=[{"ip": state.ip}],
            startTime=created,
        )
        if state.broken == "pull":
            status.pop("podIP")
            status.pop("podIPs")
        status["containerStatuses"] = [
            self._container(c, container_state, ready, restarts) for c in containers
        ]
        if restarts:
            for cs in status["containerStatuses"]:
                cs["lastState"] = {
                    "terminated": {"exitCode": 1, "reason": "Error",
                                   "startedAt": started, "finishedAt": started}
                }  # fmt: skip
        status["conditions"] = self._conditions(state, ready, names) + [scheduled]
        return status

    def _conditions(self, state: _Pod, ready: bool, names: list[str]) -> list[dict[str, Any]]:
        since = rfc3339(state.ready_changed or state.created)
        initialized = {"type": "Initialized", "status": "True", "lastProbeTime": None,
                       "lastTransitionTime": rfc3339(state.created)}  # fmt: skip
        out = [initialized]
        for kind in ("Ready", "ContainersReady"):
            cond: dict[str, Any] = {
                "type": kind,
                "status": "True" if ready else "False",
                "lastProbeTime": None,
                "lastTransitionTime": since,
            }
            if not ready:
                cond["reason"] = "ContainersNotReady"
                cond["message"] = f"containers with unready status: [{' '.join(names)}]"
            out.append(cond)
        return out

    @staticmethod
    def _container(
        container: Mapping[str, Any], state: dict[str, Any], ready: bool, restarts: int
    ) -> dict[str, Any]:
        image = container.get("image", "")
        out: dict[str, Any] = {
            "name": container.get("name", ""),
            "image": image,
            "imageID": "",
            "ready": ready,
            "restartCount": restarts,
            "started": "running" in state,
            "state": state,
            "lastState": {},
        }
        if "running" in state:
            digest = hashlib.sha256(image.encode()).hexdigest()
            out["imageID"] = f"{image.split('@')[0]}@sha256:{digest}"
            out["containerID"] = f"containerd://{digest[:12]}"
        return out

    # --- ReplicaSet controller -------------------------------------------------------------

    def _replicasets(self) -> None:
        store = self.store
        pods_by_owner: dict[str, list[dict[str, Any]]] = {}
        for pod in store.snapshot(PODS):
            if "deletionTimestamp" in pod["metadata"]:
                continue
            owner = _controller_uid(pod)
            if owner:
                pods_by_owner.setdefault(owner, []).append(pod)
        orphans = [
            p for p in store.snapshot(PODS)
            if not _controller_uid(p) and "deletionTimestamp" not in p["metadata"]
        ]  # fmt: skip
        for rs in store.snapshot(REPLICASETS):
            meta = rs["metadata"]
            if "deletionTimestamp" in meta:
                continue
            adopted = self._adopt(REPLICASETS, rs, PODS, orphans)
            pods = pods_by_owner.get(meta["uid"], []) + adopted
            try:
                self._sync_replicaset(rs, pods)
            except ApiError as exc:
                self.errors.append(f"replicaset {meta['namespace']}/{meta['name']}: {exc}")

    def _adopt(
        self,
        owner_rt: ResourceType,
        owner: Mapping[str, Any],
        rt: ResourceType,
        orphans: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Take controller ownership of orphans in the owner's namespace that its selector
        matches, as the real controllers do (after an Orphan delete and a re-create)."""
        adopted = []
        selector = owner["spec"].get("selector")
        for orphan in list(orphans):
            meta = orphan["metadata"]
            labels = meta.get("labels") or {}
            if meta["namespace"] != owner["metadata"]["namespace"] or not selector:
                continue
            if not selector_matches(selector, labels):
                continue
            new = copy.deepcopy(orphan)
            new["metadata"].setdefault("ownerReferences", []).append(_owner_ref(owner_rt, owner))
            adopted.append(self.store.update(rt, orphan, new, manager=CONTROLLER_MANAGER))
            orphans.remove(orphan)
        return adopted

    def _sync_replicaset(self, rs: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        store, meta = self.store, rs["metadata"]
        desired = int(rs["spec"].get("replicas", 1))
        for _ in range(desired - len(pods)):
            pod = store.create(
                PODS, meta["namespace"], self._pod_for(rs), manager=CONTROLLER_MANAGER
            )
            pods.append(pod)
        if len(pods) > desired:  # unready pods go first, then the newest
            doomed = sorted(
                pods,
                key=lambda p: (_pod_ready(p), -store.created_at.get(p["metadata"]["uid"], 0.0)),
            )[: len(pods) - desired]
            for pod in doomed:
                store.remove(PODS, pod)
            gone = {p["metadata"]["uid"] for p in doomed}
            pods = [p for p in pods if p["metadata"]["uid"] not in gone]
        self._rs_status(rs, pods)

    def _pod_for(self, rs: Mapping[str, Any]) -> dict[str, Any]:
        template = copy.deepcopy(rs["spec"]["template"])
        meta = template.get("metadata") or {}
        return {
            "metadata": {
                "generateName": f"{rs['metadata']['name']}-",
                "labels": meta.get("labels") or {},
                **({"annotations": meta["annotations"]} if meta.get("annotations") else {}),
                "ownerReferences": [_owner_ref(REPLICASETS, rs)],
            },
            "spec": template.get("spec") or {},
        }

    def _rs_status(self, rs: Mapping[str, Any], pods: list[dict[str, Any]]) -> None:
        min_ready = int(rs["spec"].get("minReadySeconds", 0))
        labels = (rs["spec"]["template"].get("metadata") or {}).get("labels") or {}
        status: dict[str, Any] = {"replicas": len(pods)}
        counts = {
            "fullyLabeledReplicas": sum(
                all(p["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())
                for p in pods
            ),
            "readyReplicas": sum(_pod_ready(p) for p in pods),
            "availableReplicas": sum(self._available(p, min_ready) for p in pods),
        }
        status.update({k: v for k, v in counts.items() if v})
        status["observedGeneration"] = rs["metadata"].get("generation", 1)
        if status != rs.get("status"):
            new = copy.deepcopy(dict(rs))
            new["status"] = status
            self.store.update(
                REPLICASETS, rs, new, manager=CONTROLLER_MANAGER, subresource="status"
            )

    def _available(self, pod: Mapping[str, Any], min_ready: int) -> bool:
        cond = _pod_condition(pod, "Ready")
        if not cond or cond.get("status") != "True":
            return False
        available_at = parse_rfc3339(cond["lastTransitionTime"]) + min_ready
        if min_ready and available_at > self.clock.now():
            self._schedule(available_at)
            return False
        return True

    # --- Deployment controller ---------------------------------------------------------------

    def _deployments(self) -> None:
        for deployment in self.store.snapshot(DEPLOYMENTS):
            meta = deployment["metadata"]
            if "deletionTimestamp" in meta:
                continue
            try:
                self._sync_deployment(deployment)
            except ApiError as exc:
                self.errors.append(f"deployment {meta['namespace']}/{meta['name']}: {exc}")

    def _owned_replicasets(self, d: Mapping[str, Any]) -> list[dict[str, Any]]:
        uid = d["metadata"]["uid"]
        replica_sets = self.store.snapshot(REPLICASETS, d["metadata"]["namespace"])
        orphans = [
            rs for rs in replica_sets
            if not _controller_uid(rs) and "deletionTimestamp" not in rs["metadata"]
        ]  # fmt: skip
        adopted = self._adopt(DEPLOYMENTS, d, REPLICASETS, orphans)
        return [
            rs
            for rs in replica_sets
            if _controller_uid(rs) == uid and "deletionTimestamp" not in rs["metadata"]
        ] + adopted

    def _sync_deployment(self, d: dict[str, Any]) -> None:
        store = self.store
        spec = d["spec"]
        template = spec["template"]
        replica_sets = self._owned_replicasets(d)
        new_rs = next((rs for rs in replica_sets if _same_template(rs, template)), None)
        olds = [rs for rs in replica_sets if rs is not new_rs]
        conditions = copy.deepcopy((d.get("status") or {}).get("conditions") or [])
        if spec.get("paused"):
            _set_condition(conditions, "Progressing", "Unknown", "DeploymentPaused",
                           "Deployment is paused", self.clock.stamp())  # fmt: skip
            self._deployment_status(d, new_rs, replica_sets, conditions, paused=True)
            return
        if _condition(conditions, "Progressing", "reason") == "DeploymentPaused":
            _set_condition(conditions, "Progressing", "True", "DeploymentResumed",
                           "Deployment is resumed", self.clock.stamp())  # fmt: skip
        next_revision = max((_revision(rs) for rs in olds), default=0) + 1
        if new_rs is None:
            new_rs = self._create_replicaset(d, next_revision, olds)
            replica_sets.append(new_rs)
            _set_condition(conditions, "Progressing", "True", "NewReplicaSetCreated",
                           f'Created new replica set "{new_rs["metadata"]["name"]}"',
                           self.clock.stamp())  # fmt: skip
        else:
            new_rs = self._sync_replicaset_annotations(d, new_rs, next_revision)
            if _condition(conditions, "Progressing", "type") is None:
                _set_condition(conditions, "Progressing", "True", "FoundNewReplicaSet",
                               f'Found new replica set "{new_rs["metadata"]["name"]}"',
                               self.clock.stamp())  # fmt: skip
        revision = new_rs["metadata"]["annotations"][REVISION]
        if (d["metadata"].get("annotations") or {}).get(REVISION) != revision:
            annotated = copy.deepcopy(d)
            annotated["metadata"].setdefault("annotations", {})[REVISION] = revision
            d = store.update(DEPLOYMENTS, d, annotated, manager=CONTROLLER_MANAGER)
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            self._recreate(d, new_rs, olds)
        else:
            self._rolling(d, new_rs, olds)
        replica_sets = self._owned_replicasets(d)
        new_rs = next((rs for rs in replica_sets if _same_template(rs, template)), new_rs)
        self._deployment_status(d, new_rs, replica_sets, conditions)

    def _create_replicaset(
        self, d: Mapping[str, Any], revision: int, olds: list[dict[str, Any]]
    ) -> dict[str, Any]:
        spec = d["spec"]
        template = copy.deepcopy(spec["template"])
        pod_hash = _template_hash(template)
        template.setdefault("metadata", {}).setdefault("labels", {})[TEMPLATE_HASH] = pod_hash
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})[TEMPLATE_HASH] = pod_hash
        annotations = {
            k: v
            for k, v in (d["metadata"].get("annotations") or {}).items()
            if k not in _NOT_COPIED
        }
        replicas, surge = int(spec.get("replicas", 1)), self._surge(d)
        annotations.update({
            REVISION: str(revision),
            DESIRED_REPLICAS: str(replicas),
            MAX_REPLICAS: str(replicas + surge),
        })  # fmt: skip
        rs_spec: dict[str, Any] = {"replicas": 0, "selector": selector, "template": template}
        if spec.get("minReadySeconds"):
            rs_spec["minReadySeconds"] = spec["minReadySeconds"]
        body = {
            "metadata": {
                "name": f"{d['metadata']['name']}-{pod_hash}",
                "labels": template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [_owner_ref(DEPLOYMENTS, d)],
            },
            "spec": rs_spec,
        }
        return self.store.create(
            REPLICASETS, d["metadata"]["namespace"], body, manager=CONTROLLER_MANAGER
        )

    def _sync_replicaset_annotations(
        self, d: Mapping[str, Any], rs: dict[str, Any], next_revision: int
    ) -> dict[str, Any]:
        """Copy the Deployment's annotations; give a reused (rolled back to) ReplicaSet the
        next revision and remember its old one in revision-history."""
        new = copy.deepcopy(rs)
        annotations = new["metadata"].setdefault("annotations", {})
        for key, value in (d["metadata"].get("annotations") or {}).items():
            if key not in _NOT_COPIED:
                annotations[key] = value
        old_revision = _revision(rs)
        if old_revision < next_revision:
            annotations[REVISION] = str(next_revision)
            if old_revision:
                history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
                annotations[REVISION_HISTORY] = ",".join([*history, str(old_revision)])
        if new == rs:
            return rs
        return self.store.update(REPLICASETS, rs, new, manager=CONTROLLER_MANAGER)

    def _surge(self, d: Mapping[str, Any]) -> int:
        spec = d["spec"]
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            return 0
        return int_or_percent(
            rolling.get("maxSurge", "25%"), int(spec.get("replicas", 1)), round_up=True
        )

    def _max_unavailable(self, d: Mapping[str, Any]) -> int:
        spec = d["spec"]
        replicas = int(spec.get("replicas", 1))
        if (spec.get("strategy") or {}).get("type") == "Recreate" or replicas == 0:
            return 0
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        unavailable = int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
        if unavailable == 0 and self._surge(d) == 0:
            unavailable = 1
        return min(unavailable, replicas)

    def _scale(self, d: Mapping[str, Any], rs: dict[str, Any], replicas: int) -> dict[str, Any]:
        new = copy.deepcopy(rs)
        new["spec"]["replicas"] = replicas
        annotations = new["metadata"].setdefault("annotations", {})
        desired = int(d["spec"].get("replicas", 1))
        annotations[DESIRED_REPLICAS] = str(desired)
        annotations[MAX_REPLICAS] = str(desired + self._surge(d))
        return self.store.update(REPLICASETS, rs, new, manager=CONTROLLER_MANAGER)

    def _rolling(
        self, d: Mapping[str, Any], new_rs: dict[str, Any], olds: list[dict[str, Any]]
    ) -> None:
        replicas = int(d["spec"].get("replicas", 1))
        surge, unavailable = self._surge(d), self._max_unavailable(d)
        everything = [*olds, new_rs]
        current_new = _spec_replicas(new_rs)
        target = current_new
        if current_new > replicas:
            target = replicas
        elif current_new < replicas:
            total = sum(_spec_replicas(rs) for rs in everything)
            if total < replicas + surge:
                target = current_new + min(replicas + surge - total, replicas - current_new)
        if target != current_new:
            self._scale(d, new_rs, target)
            return
        if sum(_spec_replicas(rs) for rs in olds) == 0:
            if _deployment_complete(d, new_rs, everything):
                self._prune_history(d, olds)
            return
        all_count = sum(_spec_replicas(rs) for rs in everything)
        min_available = replicas - unavailable
        new_unavailable = _spec_replicas(new_rs) - _status(new_rs, "availableReplicas")
        budget = all_count - min_available - new_unavailable
        if budget <= 0:
            return
        olds = sorted(olds, key=lambda rs: rs["metadata"]["creationTimestamp"])
        cleaned = 0
        for i, rs in enumerate(olds):  # first the old pods that are not available anyway
            if cleaned >= budget:
                break
            unhealthy = _spec_replicas(rs) - _status(rs, "availableReplicas")
            if _spec_replicas(rs) == 0 or unhealthy <= 0:
                continue
            down = min(budget - cleaned, unhealthy)
            olds[i] = self._scale(d, rs, _spec_replicas(rs) - down)
            cleaned += down
        available = sum(_status(rs, "availableReplicas") for rs in [*olds, new_rs])
        if available <= min_available:
            return
        to_remove, removed = available - min_available, 0
        for i, rs in enumerate(olds):
            if removed >= to_remove:
                break
            if _spec_replicas(rs) == 0:
                continue
            down = min(_spec_replicas(rs), to_remove - removed)
            olds[i] = self._scale(d, rs, _spec_replicas(rs) - down)
            removed += down

    def _recreate(
        self, d: Mapping[str, Any], new_rs: dict[str, Any], olds: list[dict[str, Any]]
    ) -> None:
        active = [rs for rs in olds if _spec_replicas(rs) > 0]
        for rs in active:
            self._scale(d, rs, 0)
        if active or any(_status(rs, "replicas") for rs in olds):
            return
        replicas = int(d["spec"].get("replicas", 1))
        if _spec_replicas(new_rs) != replicas:
            self._scale(d, new_rs, replicas)
        elif _deployment_complete(d, new_rs, [*olds, new_rs]):
            self._prune_history(d, olds)

    def _prune_history(self, d: Mapping[str, Any], olds: list[dict[str, Any]]) -> None:
        limit = int(d["spec"].get("revisionHistoryLimit", 10))
        idle = [rs for rs in olds if _spec_replicas(rs) == 0 and _status(rs, "replicas") == 0]
        idle.sort(key=_revision)
        for rs in idle[: max(len(idle) - limit, 0)]:
            self.store.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])

    def _deployment_status(
        self,
        d: dict[str, Any],
        new_rs: dict[str, Any] | None,
        replica_sets: list[dict[str, Any]],
        conditions: list[dict[str, Any]],
        *,
        paused: bool = False,
    ) -> None:
        spec, old = d["spec"], d.get("status") or {}
        replicas = int(spec.get("replicas", 1))
        counts = {
            "replicas": sum(_status(rs, "replicas") for rs in replica_sets),
            "updatedReplicas": _status(new_rs, "replicas") if new_rs else 0,
            "readyReplicas": sum(_status(rs, "readyReplicas") for rs in replica_sets),
            "availableReplicas": sum(_status(rs, "availableReplicas") for rs in replica_sets),
        }
        counts["unavailableReplicas"] = max(replicas - counts["availableReplicas"], 0)
        now = self.clock.stamp()
        if counts["availableReplicas"] >= replicas - self._max_unavailable(d):
            _set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                           "Deployment has minimum availability.", now)  # fmt: skip
        else:
            _set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                           "Deployment does not have minimum availability.", now)  # fmt: skip
        generation = d["metadata"].get("generation", 1)
        name = new_rs["metadata"]["name"] if new_rs else ""
        current = _condition(conditions, "Progressing", "reason")
        complete_before = (
            counts["replicas"] == counts["updatedReplicas"] and current == "NewReplicaSetAvailable"
        )
        if not paused and new_rs is not None and not complete_before:
            if (
                counts["updatedReplicas"] == replicas
                and counts["replicas"] == replicas
                and counts["availableReplicas"] == replicas
            ):
                message = f'ReplicaSet "{name}" has successfully progressed.'
                _set_condition(
                    conditions, "Progressing", "True", "NewReplicaSetAvailable", message, now
                )
            elif _progressing(old, counts):
                transition = now
                for cond in conditions:
                    if cond["type"] == "Progressing" and cond["status"] == "True":
                        transition = cond["lastTransitionTime"]
                conditions[:] = [c for c in conditions if c["type"] != "Progressing"]
                conditions.append({
                    "type": "Progressing", "status": "True",
                    "lastUpdateTime": now, "lastTransitionTime": transition,
                    "reason": "ReplicaSetUpdated",
                    "message": f'ReplicaSet "{name}" is progressing.',
                })  # fmt: skip
            elif self._timed_out(d, conditions):
                _set_condition(conditions, "Progressing", "False", "ProgressDeadlineExceeded",
                               f'ReplicaSet "{name}" has timed out progressing.', now)  # fmt: skip
        status: dict[str, Any] = {"observedGeneration": generation}
        status.update({k: v for k, v in counts.items() if v})
        status["conditions"] = conditions
        if status != old:
            new = copy.deepcopy(d)
            new["status"] = status
            self.store.update(DEPLOYMENTS, d, new, manager=CONTROLLER_MANAGER, subresource="status")

    def _timed_out(self, d: Mapping[str, Any], conditions: list[dict[str, Any]]) -> bool:
        reason = _condition(conditions, "Progressing", "reason")
        if reason is None or reason == "NewReplicaSetAvailable":
            return False
        if reason == "ProgressDeadlineExceeded":
            return True
        since = parse_rfc3339(_condition(conditions, "Progressing", "lastUpdateTime"))
        deadline = since + int(d["spec"].get("progressDeadlineSeconds", 600))
        if deadline < self.clock.now():
            return True
        self._schedule(deadline + 0.01)
        return False

    # --- Endpoints controller ------------------------------------------------------------------

    def _endpoints(self) -> None:
        store = self.store
        services = {
            (s["metadata"]["namespace"], s["metadata"]["name"]): s for s in store.snapshot(SERVICES)
        }
        pods_by_ns: dict[str, list[dict[str, Any]]] = {}
        for pod in store.snapshot(PODS):
            pods_by_ns.setdefault(pod["metadata"]["namespace"], []).append(pod)
        for endpoints in store.snapshot(ENDPOINTS):
            meta = endpoints["metadata"]
            managed = TRIGGER_TIME in (meta.get("annotations") or {})
            if managed and (meta["namespace"], meta["name"]) not in services:
                store.remove(ENDPOINTS, endpoints)
        for (namespace, name), service in services.items():
            selector = service["spec"].get("selector")
            if not selector or "deletionTimestamp" in service["metadata"]:
                continue
            pods = [
                p
                for p in pods_by_ns.get(namespace, [])
                if selector_matches({"matchLabels": selector}, p["metadata"].get("labels") or {})
                and p.get("status", {}).get("podIP")
                and "deletionTimestamp" not in p["metadata"]
            ]
            subsets = _subsets(service, pods)
            current = store.find(ENDPOINTS, namespace, name)
            labels = service["metadata"].get("labels") or {}
            if current is None:
                body: dict[str, Any] = {
                    "metadata": {"name": name, "labels": labels,
                                 "annotations": {TRIGGER_TIME: self.clock.stamp()}},
                }  # fmt: skip
                if subsets:
                    body["subsets"] = subsets
                store.create(ENDPOINTS, namespace, body, manager=CONTROLLER_MANAGER)
            elif (
                current.get("subsets") != (subsets or None)
                or current["metadata"].get("labels", {}) != labels
            ):
                new = copy.deepcopy(current)
                new["metadata"]["labels"] = labels
                new["metadata"].setdefault("annotations", {})[TRIGGER_TIME] = self.clock.stamp()
                if subsets:
                    new["subsets"] = subsets
                else:
                    new.pop("subsets", None)
                store.update(ENDPOINTS, current, new, manager=CONTROLLER_MANAGER)


TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


def _subsets(service: Mapping[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for pod in sorted(pods, key=lambda p: p["status"]["podIP"]):
        ports = []
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str):
                target = next(
                    (
                        cp.get("containerPort")
                        for c in pod["spec"].get("containers") or []
                        for cp in c.get("ports") or []
                        if cp.get("name") == target
                    ),
                    None,
                )
                if target is None:
                    continue
            entry = {"port": int(target), "protocol": port.get("protocol", "TCP")}
            if port.get("name"):
                entry = {"name": port["name"], **entry}
            ports.append(entry)
        if not ports:
            continue
        key = json.dumps(ports, sort_keys=True)
        group = groups.setdefault(key, {"addresses": [], "notReadyAddresses": [], "ports": ports})
        meta = pod["metadata"]
        address = {
            "ip": pod["status"]["podIP"],
            "nodeName": pod["spec"].get("nodeName", NODE_NAME),
            "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                          "uid": meta["uid"]},
        }  # fmt: skip
        group["addresses" if _pod_ready(pod) else "notReadyAddresses"].append(address)
    return [{k: v for k, v in g.items() if v} for g in groups.values()]


def _crash_restart_at(restarts: int) -> float:
    """Seconds after the first failure at which restart number ``restarts + 1`` happens."""
    steps = itertools.chain(CRASH_BACKOFF_SECONDS, itertools.repeat(300))
    return float(sum(itertools.islice(steps, restarts)))


def _crash_restarts(elapsed: float) -> int:
    """How often a crash-looping container has restarted ``elapsed`` seconds after it
    first failed."""
    restarts, waited = 1, 0.0
    for step in itertools.chain(CRASH_BACKOFF_SECONDS, itertools.repeat(300)):
        waited += step
        if waited > elapsed:
            return restarts
        restarts += 1
    raise AssertionError("unreachable")


def _owner_ref(rt: ResourceType, owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": rt.api_version,
        "kind": rt.kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _controller_uid(obj: Mapping[str, Any]) -> str:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid", ""))
    return ""


def _pod_condition(pod: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    cond = _pod_condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


def _template_without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(dict(template))
    labels = (template.get("metadata") or {}).get("labels")
    if labels is not None:
        labels.pop(TEMPLATE_HASH, None)
    return template


def _same_template(rs: Mapping[str, Any], template: Mapping[str, Any]) -> bool:
    return _template_without_hash(rs["spec"]["template"]) == _template_without_hash(template)


def _template_hash(template: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(SAFE_CHARS[b % len(SAFE_CHARS)] for b in digest[:10])


def _revision(rs: Mapping[str, Any]) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _spec_replicas(rs: Mapping[str, Any]) -> int:
    return int(rs["spec"].get("replicas", 1))


def _status(rs: Mapping[str, Any] | None, key: str) -> int:
    return int(((rs or {}).get("status") or {}).get(key, 0))


def _deployment_complete(
    d: Mapping[str, Any], new_rs: Mapping[str, Any], everything: list[dict[str, Any]]
) -> bool:
    replicas = int(d["spec"].get("replicas", 1))
    return (
        _status(new_rs, "replicas") == replicas
        and _status(new_rs, "availableReplicas") == replicas
        and sum(_status(rs, "replicas") for rs in everything) == replicas
    )


def _progressing(old: Mapping[str, Any], new: Mapping[str, int]) -> bool:
    old_olds = int(old.get("replicas", 0)) - int(old.get("updatedReplicas", 0))
    new_olds = new["replicas"] - new["updatedReplicas"]
    return (
        new["updatedReplicas"] > int(old.get("updatedReplicas", 0))
        or new_olds < old_olds
        or new["readyReplicas"] > int(old.get("readyReplicas", 0))
        or new["availableReplicas"] > int(old.get("availableReplicas", 0))
    )


def _condition(conditions: list[dict[str, Any]], kind: str, key: str) -> Any:
    for cond in conditions:
        if cond.get("type") == kind:
            return cond.get(key)
    return None


def _set_condition(
    conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str, now: str
) -> None:
    """The controller's SetDeploymentCondition: no change when status and reason are the
    same; lastTransitionTime kept when only the reason changes."""
    current = next((c for c in conditions if c.get("type") == kind), None)
    if current and current.get("status") == status and current.get("reason") == reason:
        return
    transition = (
        current["lastTransitionTime"] if current and current.get("status") == status else now
    )
    conditions[:] = [c for c in conditions if c.get("type") != kind]
    conditions.append({
        "type": kind, "status": status, "lastUpdateTime": now,
        "lastTransitionTime": transition, "reason": reason, "message": message,
    })  # fmt: skip
