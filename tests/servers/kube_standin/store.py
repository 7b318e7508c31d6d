"""The object store: what an apiserver plus etcd do for a write, minus the networking.

Every write goes through one path (:meth:`Store._commit`): identity fields are kept
from the stored object, the kind's defaults are applied, the object is validated
(422 ``Invalid`` with causes), ``metadata.generation`` bumps when the spec changes
(for kinds that have one), a cluster-wide ``resourceVersion`` counter increments,
field ownership (``managedFields``) is updated, and a watch event is recorded.
A write that changes nothing is a no-op, as on a real apiserver: no new
resourceVersion, no event.

Deletion honours ``finalizers`` and ``propagationPolicy``: Background removes the
object now and leaves its dependents to the garbage collector (see
``controllers``), Foreground keeps the object with a ``foregroundDeletion``
finalizer until the collector has removed its dependents, Orphan strips the
owner references from the dependents first. A namespace is deleted by marking it
``Terminating``; the collector empties and then removes it.

All methods take the store's lock themselves; the controllers hold it across a
whole pass (it is re-entrant).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from tests.servers.kube_standin import errors
from tests.servers.kube_standin.errors import ApiError
from tests.servers.kube_standin.patches import (
    Path,
    apply_conflicts,
    apply_merge,
    changed_paths,
    dotted,
    field_paths,
    fields_v1,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.servers.kube_standin.resources import (
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    RESOURCES,
    SERVICES,
    ResourceType,
    parse_field_selector,
    parse_label_selector,
    selector_matches,
    selector_string,
)

CONTROLLER_MANAGER = "kube-controller-manager"
_UNDELETABLE_NAMESPACES = {"default", "kube-system", "kube-public"}
SAFE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated suffixes
PATCH_TYPES = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
]
CR_PATCH_TYPES = [t for t in PATCH_TYPES if "strategic" not in t]


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


class SimulatedClock:
    """Cluster time: wall-clock time at start, then ``speed`` simulated seconds per real
    second, plus whatever :meth:`advance` added. Timestamps in objects and every
    controller delay (pod start, progress deadlines, minReadySeconds) use it."""

    def __init__(self, speed: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._base = time.time()
        self._mono = time.monotonic()
        self._speed = speed

    def now(self) -> float:
        with self._lock:
            return self._base + (time.monotonic() - self._mono) * self._speed

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        now = self.now()
        with self._lock:
            self._base, self._mono, self._speed = now, time.monotonic(), value

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._base += seconds

    def stamp(self) -> str:
        return rfc3339(self.now())


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rt: ResourceType
    namespace: str
    obj: dict[str, Any]
    previous: dict[str, Any] | None


@dataclass
class _Owner:
    manager: str
    operation: str  # Apply | Update
    api_version: str
    time: str
    subresource: str = ""
    paths: set[Path] = field(default_factory=set)


Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


class Store:
    """Objects by resource type and (namespace, name), with watch history."""

    def __init__(self, clock: SimulatedClock, *, history: int = 10000) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.on_change: Callable[[], None] = lambda: None
        self._objects: dict[ResourceType, dict[Key, dict[str, Any]]] = {r: {} for r in RESOURCES}
        self._owners: dict[str, list[_Owner]] = {}
        self.created_at: dict[str, float] = {}  # uid -> exact time; timestamps are whole seconds
        self._rv = 1000
        self.events: deque[WatchEvent] = deque(maxlen=history)
        self._ips = itertools.count(10)
        self._random = random.Random()
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(NAMESPACES, "", {"metadata": {"name": name}}, manager="kube-apiserver")

    # --- reads -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._require(rt, namespace, name))

    def find(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self._objects[rt].get(self._key(rt, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def snapshot(self, rt: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of all objects of a type (in one namespace, or all), in key order."""
        with self.lock:
            return [
                copy.deepcopy(obj)
                for key, obj in sorted(self._objects[rt].items())
                if namespace is None or key[0] == namespace
            ]

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> tuple[list[dict[str, Any]], str, str, int]:
        """(items, list resourceVersion, continue token, remaining item count)."""
        labels_ok = parse_label_selector(label_selector)
        fields_ok = parse_field_selector(field_selector)
        start = ""
        if continue_token:
            try:
                start = base64.urlsafe_b64decode(continue_token.encode()).decode()
            except ValueError as exc:
                raise errors.bad_request(f"continue key is not valid: {exc}") from exc
        with self.lock:
            items = [
                obj
                for key, obj in sorted(self._objects[rt].items())
                if (namespace is None or key[0] == namespace)
                and "/".join(key) > start
                and labels_ok(obj["metadata"].get("labels") or {})
                and fields_ok(obj)
            ]
            token, remaining = "", 0
            if limit and len(items) > limit:
                remaining = len(items) - limit
                items = items[:limit]
                last = items[-1]["metadata"]
                key = "/".join((last.get("namespace", ""), last["name"]))
                token = base64.urlsafe_b64encode(key.encode()).decode()
            return copy.deepcopy(items), str(self._rv), token, remaining

    # --- writes ---------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str,
        body: Any,
        *,
        manager: str,
        operation: str = "Update",
        applied_paths: set[Path] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        obj = self._check_body(rt, namespace, body)
        meta = obj["metadata"]
        with self.lock:
            if rt.namespaced:
                self._check_namespace_open(rt, meta["namespace"], meta.get("name", ""))
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(10):
                    meta["name"] = meta["generateName"] + self.random_suffix()
                    if self._key(rt, meta["namespace"], meta["name"]) not in self._objects[rt]:
                        break
            name = meta.get("name", "")
            if name and self._key(rt, meta.get("namespace", ""), name) in self._objects[rt]:
                raise errors.already_exists(rt.group, rt.plural, name)
            for transient in ("resourceVersion", "deletionTimestamp", "managedFields", "selfLink"):
                meta.pop(transient, None)
            meta["uid"] = str(uuid.uuid4())
            created_at = self.clock.now()
            meta["creationTimestamp"] = rfc3339(created_at)
            if rt.has_generation:
                meta["generation"] = 1
            if "status" in rt.subresources:
                obj.pop("status", None)
            if rt.builtin and "status" in rt.subresources:
                obj["status"] = {}  # a Go struct: the apiserver always sends it, empty or not
            self._default(rt, obj, None)
            self._validate(rt, obj, None)
            if dry_run:
                meta["resourceVersion"] = ""
                return obj
            self.created_at[meta["uid"]] = created_at
            owners = self._owners.setdefault(meta["uid"], [])
            if operation == "Apply":
                owners.append(self._owner(manager, "Apply", rt, applied_paths or set()))
            elif manager:
                owners.append(self._owner(manager, "Update", rt, field_paths(obj, rt.builtin)))
            return self._commit(rt, obj, None)

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        *,
        manager: str,
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        with self.lock:
            current = self._require(rt, namespace, name)
            if subresource == "scale":
                return self._write_scale(rt, current, body, manager=manager, dry_run=dry_run)
            new = self._check_body(rt, namespace, body, url_name=name)
            rv = new["metadata"].get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise errors.conflict(rt.group, rt.plural, name)
            if not rv and not rt.builtin:
                raise errors.invalid(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        (
                            "metadata.resourceVersion",
                            "FieldValueInvalid",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
            return self.update(
                rt, current, new, manager=manager, subresource=subresource, dry_run=dry_run
            )

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        raw: bytes,
        *,
        manager: str,
        force: bool = False,
        subresource: str = "",
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Returns (object, created); only an apply creates."""
        accepted = PATCH_TYPES if rt.builtin else CR_PATCH_TYPES
        if content_type not in accepted:
            raise errors.unsupported_media_type(content_type, accepted)
        body = _decode(raw, yaml_ok=content_type.endswith("yaml"))
        if content_type == "application/apply-patch+yaml":
            return self._apply(
                rt, namespace, name, body, manager=manager, force=force,
                subresource=subresource, dry_run=dry_run,
            )  # fmt: skip
        with self.lock:
            current = self._require(rt, namespace, name)
            base = self.scale_of(rt, current) if subresource == "scale" else current
            if content_type == "application/json-patch+json":
                patched = json_patch(base, body)
            elif content_type == "application/merge-patch+json":
                patched = merge_patch(base, body)
            else:
                patched = strategic_merge_patch(base, body, builtin=rt.builtin)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patched object is not an object")
            if subresource == "scale":
                return self._write_scale(
                    rt, current, patched, manager=manager, dry_run=dry_run
                ), False
            rv = (patched.get("metadata") or {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise errors.conflict(rt.group, rt.plural, name)
            new = self._check_body(rt, namespace, patched, url_name=name)
            return self.update(
                rt, current, new, manager=manager, subresource=subresource, dry_run=dry_run
            ), False

    def _apply(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        *,
        manager: str,
        force: bool,
        subresource: str,
        dry_run: bool,
    ) -> tuple[dict[str, Any], bool]:
        if not manager:
            raise errors.invalid(
                "PatchOptions", "meta.k8s.io", "",
                [("fieldManager", "FieldValueRequired",
                  "Required value: is required for apply patch")],
            )  # fmt: skip
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            raise errors.bad_request(
                "invalid object type: apiVersion and kind must be set in an applied configuration"
            )
        if (body["apiVersion"], body["kind"]) != (rt.api_version, rt.kind):
            raise errors.bad_request(
                f"the API version in the data ({body['apiVersion']}) and kind ({body['kind']}) "
                f"do not match the expected {rt.api_version} {rt.kind}"
            )
        if subresource == "scale":
            raise errors.method_not_allowed("apply to scale")
        applied = self._check_body(rt, namespace, body, url_name=name)
        applied_paths = field_paths(applied, rt.builtin)
        with self.lock:
            current = self._objects[rt].get(self._key(rt, namespace, name))
            if current is None:
                if subresource:
                    raise errors.not_found(rt.group, rt.plural, name)
                return self.create(
                    rt, namespace, applied, manager=manager, operation="Apply",
                    applied_paths=applied_paths, dry_run=dry_run,
                ), True  # fmt: skip
            rv = applied["metadata"].get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise errors.conflict(rt.group, rt.plural, name)
            owners = self._owners.setdefault(current["metadata"]["uid"], [])
            mine = next((o for o in owners if (o.manager, o.operation) == (manager, "Apply")), None)
            others = [o for o in owners if o is not mine]
            clashes = apply_conflicts(
                current, applied, applied_paths, [(o.manager, o.paths) for o in others]
            )
            if clashes and not force:
                raise errors.apply_conflict(
                    rt.group, rt.plural, name, rt.api_version,
                    [(m, dotted(p)) for m, p in clashes],
                )  # fmt: skip
            previous = mine.paths if mine else set()
            dropped = {p for p in previous - applied_paths if not any(p in o.paths for o in others)}
            new = apply_merge(current, applied, dropped, rt.builtin)
            if dry_run or subresource:
                return self.update(
                    rt, current, new, manager=manager, subresource=subresource,
                    dry_run=dry_run, track=False,
                ), False  # fmt: skip
            saved = copy.deepcopy(owners)
            for m, p in clashes:
                for o in others:
                    if o.manager == m:
                        o.paths.discard(p)
            if mine is None:
                mine = self._owner(manager, "Apply", rt, set())
                owners.append(mine)
            mine.paths, mine.time = set(applied_paths), self.clock.stamp()
            owners[:] = [o for o in owners if o.paths]
            try:
                self.update(rt, current, new, manager=manager, track=False)
            except ApiError:
                owners[:] = saved
                raise
            stored = self._objects[rt].get(self._key(rt, namespace, name))
            if stored is None:
                return new, False
            self._render_owners(stored)  # ownership may change without any value changing
            return copy.deepcopy(stored), False

    def update(
        self,
        rt: ResourceType,
        current: Mapping[str, Any],
        new: dict[str, Any],
        *,
        manager: str,
        subresource: str = "",
        dry_run: bool = False,
        track: bool = True,
    ) -> dict[str, Any]:
        """Write ``new`` over ``current`` (identity kept; status only through ``/status``)."""
        with self.lock:
            new = copy.deepcopy(new)
            old_meta, meta = current["metadata"], new.setdefault("metadata", {})
            if subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(dict(current))
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
                meta = new["metadata"]
            elif "status" in rt.subresources:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            new["apiVersion"], new["kind"] = rt.api_version, rt.kind
            for kept in (
                "name", "namespace", "uid", "creationTimestamp", "generation",
                "deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion",
                "managedFields",
            ):  # fmt: skip
                if kept in old_meta:
                    meta[kept] = copy.deepcopy(old_meta[kept])
                else:
                    meta.pop(kept, None)
            if "deletionTimestamp" in old_meta:
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    raise errors.invalid(
                        rt.kind, rt.group, meta["name"],
                        [("metadata.finalizers", "FieldValueForbidden",
                          "Forbidden: no new finalizers can be added if the object is being "
                          "deleted")],
                    )  # fmt: skip
            self._default(rt, new, current)
            self._validate(rt, new, current)
            if rt.has_generation and _spec_of(rt, new) != _spec_of(rt, current):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
            if new == current:
                return copy.deepcopy(new)
            if dry_run:
                return new
            if track and not subresource and manager:
                self._track_update(rt, current, new, manager)
            if "deletionTimestamp" in meta and not meta.get("finalizers") and rt is not NAMESPACES:
                self._remove(rt, current)
                return new
            return self._commit(rt, new, dict(current))

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], int]:
        """Returns (response body, HTTP code)."""
        with self.lock:
            current = self._require(rt, namespace, name)
            meta = current["metadata"]
            for field_name in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(field_name)
                if wanted and wanted != meta[field_name]:
                    err = errors.conflict(rt.group, rt.plural, name)
                    err.message = (
                        f'Operation cannot be fulfilled on {rt} "{name}": Precondition failed: '
                        f"{'UID' if field_name == 'uid' else 'ResourceVersion'} in precondition: "
                        f"{wanted}, {'UID' if field_name == 'uid' else 'ResourceVersion'} in "
                        f"object meta: {meta[field_name]}"
                    )
                    raise err
            if propagation not in (None, "Background", "Foreground", "Orphan"):
                raise errors.bad_request(
                    f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported '
                    f'value: "{propagation}": supported values: "Foreground", "Background", '
                    '"Orphan"'
                )
            if rt is NAMESPACES and name in _UNDELETABLE_NAMESPACES:
                raise errors.forbidden_message(
                    rt.group, rt.plural, name,
                    f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                )  # fmt: skip
            if dry_run:
                return copy.deepcopy(current), 200
            if "deletionTimestamp" in meta:
                return copy.deepcopy(current), 202
            if propagation == "Orphan":
                self.orphan_dependents(meta["uid"], namespace)
            new = copy.deepcopy(current)
            finalizers = list(new["metadata"].get("finalizers") or [])
            if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if rt is NAMESPACES:
                new.setdefault("status", {})["phase"] = "Terminating"
            if finalizers or rt is NAMESPACES:
                new["metadata"]["finalizers"] = finalizers
                if not finalizers:
                    new["metadata"].pop("finalizers")
                new["metadata"]["deletionTimestamp"] = self.clock.stamp()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                return self._commit(rt, new, copy.deepcopy(current)), 200
            gone = self._remove(rt, current)
            if rt is not PODS:  # pods answer with the object (ReturnDeletedObject)
                details = {"name": name, **({"group": rt.group} if rt.group else {})}
                details.update(kind=rt.plural, uid=meta["uid"])
                return {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }, 200
            return gone, 200

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        propagation: str | None = None,
    ) -> list[dict[str, Any]]:
        with self.lock:
            items, *_ = self.list(
                rt, namespace, label_selector=label_selector, field_selector=field_selector
            )
            for item in items:
                meta = item["metadata"]
                self.delete(rt, meta.get("namespace", ""), meta["name"], propagation=propagation)
            return items

    # --- scale subresource ----------------------------------------------------------------

    def scale_of(self, rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        """The ``autoscaling/v1`` Scale view of a Deployment, ReplicaSet or Rollout."""
        meta = obj["metadata"]
        status = obj.get("status") or {}
        if rt.builtin:
            selector = selector_string(obj.get("spec", {}).get("selector"))
        else:  # a Rollout's CRD points labelSelectorPath at .status.selector
            selector = status.get("selector", "")
        scale_status: dict[str, Any] = {"replicas": int(status.get("replicas", 0))}
        if selector:
            scale_status["selector"] = selector
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": int(obj.get("spec", {}).get("replicas", 0))},
            "status": scale_status,
        }

    def _write_scale(
        self,
        rt: ResourceType,
        current: Mapping[str, Any],
        scale: Any,
        *,
        manager: str,
        dry_run: bool,
    ) -> dict[str, Any]:
        if not isinstance(scale, dict):
            raise errors.bad_request("the body of a scale request must be a Scale object")
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, current["metadata"]["name"])
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid(
                "Scale", "autoscaling", current["metadata"]["name"],
                [("spec.replicas", "FieldValueInvalid",
                  f"Invalid value: {replicas!r}: must be greater than or equal to 0")],
            )  # fmt: skip
        new = copy.deepcopy(dict(current))
        new.setdefault("spec", {})["replicas"] = replicas
        updated = self.update(rt, current, new, manager=manager, dry_run=dry_run)
        return self.scale_of(rt, updated)

    # --- helpers for the controllers ---------------------------------------------------------

    def orphan_dependents(self, owner_uid: str, namespace: str) -> None:
        with self.lock:
            for rt in RESOURCES:
                for obj in list(self._objects[rt].values()):
                    refs = obj["metadata"].get("ownerReferences") or []
                    if any(r.get("uid") == owner_uid for r in refs):
                        new = copy.deepcopy(obj)
                        kept = [r for r in refs if r.get("uid") != owner_uid]
                        if kept:
                            new["metadata"]["ownerReferences"] = kept
                        else:
                            new["metadata"].pop("ownerReferences")
                        self.update(rt, obj, new, manager=CONTROLLER_MANAGER)

    def remove(self, rt: ResourceType, obj: Mapping[str, Any]) -> None:
        """Remove an object now (the garbage collector's and kubelet's final step)."""
        with self.lock:
            meta = obj["metadata"]
            if self._key(rt, meta.get("namespace", ""), meta["name"]) in self._objects[rt]:
                self._remove(rt, obj)

    def uids(self) -> set[str]:
        with self.lock:
            return {o["metadata"]["uid"] for objs in self._objects.values() for o in objs.values()}

    def all_objects(self) -> Iterator[tuple[ResourceType, dict[str, Any]]]:
        """Live references (no copies): only for reading while holding the lock."""
        for rt in RESOURCES:
            yield from ((rt, obj) for obj in list(self._objects[rt].values()))

    def random_suffix(self, length: int = 5) -> str:
        return "".join(self._random.choice(SAFE_CHARS) for _ in range(length))

    # --- internals ---------------------------------------------------------------------------

    def _key(self, rt: ResourceType, namespace: str, name: str) -> Key:
        return (namespace if rt.namespaced else "", name)

    def _require(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self._objects[rt].get(self._key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return obj

    def _check_namespace_open(self, rt: ResourceType, namespace: str, name: str) -> None:
        ns = self._objects[NAMESPACES].get(("", namespace))
        if ns is None:
            raise errors.not_found("", "namespaces", namespace)
        if "deletionTimestamp" in ns["metadata"]:
            raise errors.namespace_terminating(rt.group, rt.plural, name, namespace)

    def _check_body(
        self, rt: ResourceType, namespace: str, body: Any, url_name: str | None = None
    ) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"the body of the request was not a {rt.kind} object: {type(body).__name__}"
            )
        obj = copy.deepcopy(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rt.api_version})"
            )
        if kind and kind != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if url_name is not None and meta.get("name", url_name) != url_name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({url_name})"
            )
        if url_name is not None:
            meta["name"] = url_name
        if rt.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _owner(self, manager: str, operation: str, rt: ResourceType, paths: set[Path]) -> _Owner:
        return _Owner(manager, operation, rt.api_version, self.clock.stamp(), paths=set(paths))

    def _track_update(
        self, rt: ResourceType, old: Mapping[str, Any], new: dict[str, Any], manager: str
    ) -> None:
        owners = self._owners.setdefault(new["metadata"]["uid"], [])
        changed, removed = changed_paths(dict(old), new, rt.builtin)
        for owner in owners:
            owner.paths -= changed | removed
        if changed:
            mine = next(
                (o for o in owners if (o.manager, o.operation) == (manager, "Update")), None
            )
            if mine is None:
                mine = self._owner(manager, "Update", rt, set())
                owners.append(mine)
            mine.paths |= changed
            mine.time = self.clock.stamp()
        owners[:] = [o for o in owners if o.paths]

    def _render_owners(self, obj: dict[str, Any]) -> None:
        owners = self._owners.get(obj["metadata"]["uid"], [])
        entries = []
        for o in owners:
            entry: dict[str, Any] = {
                "manager": o.manager,
                "operation": o.operation,
                "apiVersion": o.api_version,
                "time": o.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(o.paths),
            }
            if o.subresource:
                entry["subresource"] = o.subresource
            entries.append(entry)
        if entries:
            obj["metadata"]["managedFields"] = entries
        else:
            obj["metadata"].pop("managedFields", None)

    def _commit(
        self, rt: ResourceType, obj: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        self._render_owners(obj)
        self._objects[rt][self._key(rt, meta.get("namespace", ""), meta["name"])] = obj
        event = "ADDED" if previous is None else "MODIFIED"
        self._record(event, rt, obj, previous)
        return copy.deepcopy(obj)

    def _remove(self, rt: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        stored = self._objects[rt].pop(self._key(rt, meta.get("namespace", ""), meta["name"]))
        self._owners.pop(meta["uid"], None)
        self.created_at.pop(meta["uid"], None)
        self._rv += 1
        gone = copy.deepcopy(stored)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record("DELETED", rt, gone, stored)
        return copy.deepcopy(gone)

    def _record(
        self, kind: str, rt: ResourceType, obj: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        namespace = obj["metadata"].get("namespace", "")
        self.events.append(
            WatchEvent(self._rv, kind, rt, namespace, copy.deepcopy(obj), copy.deepcopy(previous))
        )
        self.changed.notify_all()
        self.on_change()

    # --- defaults and validation -------------------------------------------------------------

    def _default(
        self, rt: ResourceType, obj: dict[str, Any], old: Mapping[str, Any] | None
    ) -> None:
        spec = obj.get("spec")
        if rt is NAMESPACES:
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj[
                "metadata"
            ].get("name", "")
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        elif rt in (DEPLOYMENTS, REPLICASETS) and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            if rt is DEPLOYMENTS:
                strategy = spec.setdefault("strategy", {})
                strategy.setdefault("type", "RollingUpdate")
                if strategy["type"] == "RollingUpdate":
                    rolling = strategy.setdefault("rollingUpdate", {})
                    rolling.setdefault("maxUnavailable", "25%")
                    rolling.setdefault("maxSurge", "25%")
                spec.setdefault("revisionHistoryLimit", 10)
                spec.setdefault("progressDeadlineSeconds", 600)
            template = spec.get("template")
            if isinstance(template, dict) and isinstance(template.get("spec"), dict):
                _default_pod_spec(template["spec"])
        elif rt is PODS and isinstance(spec, dict):
            _default_pod_spec(spec)
            if old is None:
                status = obj.setdefault("status", {})
                status.setdefault("phase", "Pending")
                status.setdefault("qosClass", "BestEffort")
        elif rt is SERVICES and isinstance(spec, dict):
            self._default_service(spec, (old or {}).get("spec") or {})
            obj.setdefault("status", {}).setdefault("loadBalancer", {})
        elif rt.plural == "secrets":
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None) or {}
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()

    def _default_service(self, spec: dict[str, Any], old_spec: Mapping[str, Any]) -> None:
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        if spec["type"] == "ExternalName":
            return
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIP"):
            n = next(self._ips)
            spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")

    def _validate(
        self, rt: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None
    ) -> None:
        causes: list[tuple[str, str, str]] = []
        meta = obj["metadata"]
        name = meta.get("name", "")
        if not name:
            causes.append(
                ("metadata.name", "FieldValueRequired",
                 "Required value: name or generateName is required")
            )  # fmt: skip
        elif problem := _name_problem(name, rt.name_rule):
            causes.append(
                ("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {problem}')
            )
        causes += _label_causes("metadata.labels", meta.get("labels"))
        spec = obj.get("spec") or {}
        if rt in (DEPLOYMENTS, REPLICASETS):
            causes += _workload_causes(rt, spec, (old or {}).get("spec"))
        elif rt is PODS:
            causes += _containers_causes("spec", spec)
        elif rt is SERVICES:
            causes += _service_causes(spec, (old or {}).get("spec"))
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)


def _decode(raw: bytes, *, yaml_ok: bool) -> Any:
    try:
        if yaml_ok:
            return yaml.safe_load(raw.decode("utf-8"))
        return json.loads(raw.decode("utf-8") or "null")
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"error decoding patch: {exc}") from exc


def _spec_of(rt: ResourceType, obj: Mapping[str, Any]) -> Any:
    if rt.builtin:
        return obj.get("spec")
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers") or []:
        if not isinstance(container, dict):
            continue
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _name_problem(name: str, rule: str) -> str:
    if rule == "label":
        if len(name) > 63:
            return "must be no more than 63 characters"
        if not _LABEL.match(name):
            return (
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  "
                "or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
        return ""
    if len(name) > 253:
        return "must be no more than 253 characters"
    if not _SUBDOMAIN.match(name):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        )
    return ""


def _label_causes(path: str, labels: Any) -> list[tuple[str, str, str]]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [(path, "FieldValueInvalid", "Invalid value: must be a map of strings")]
    causes = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and not _SUBDOMAIN.match(prefix))
            or not _QUALIFIED_NAME.match(name)
            or len(name) > 63
        ):
            causes.append(
                (path, "FieldValueInvalid",
                 f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                 "'-', '_' or '.', and must start and end with an alphanumeric character")
            )  # fmt: skip
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                (path, "FieldValueInvalid",
                 f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                 "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                 "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
                 "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
            )  # fmt: skip
    return causes


def _go_map(labels: Mapping[str, Any]) -> str:
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items()))
    return "map[string]string{" + inner + "}"


def int_or_percent(value: Any, total: int, *, round_up: bool) -> int:
    """An IntOrString like ``maxSurge``: an int, or a percentage of ``total``."""
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total
        return -(-scaled // 100) if round_up else scaled // 100
    return int(value or 0)


def _containers_causes(path: str, pod_spec: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    containers = pod_spec.get("containers")
    if not containers:
        return [(f"{path}.containers", "FieldValueRequired", "Required value")]
    causes = []
    for i, container in enumerate(containers):
        where = f"{path}.containers[{i}]"
        if not isinstance(container, dict):
            causes.append((where, "FieldValueInvalid", "Invalid value: must be an object"))
            continue
        if not container.get("name"):
            causes.append((f"{where}.name", "FieldValueRequired", "Required value"))
        image = container.get("image")
        if not image:
            causes.append((f"{where}.image", "FieldValueRequired", "Required value"))
        elif image != image.strip():
            causes.append(
                (f"{where}.image", "FieldValueInvalid",
                 f'Invalid value: "{image}": must not have leading or trailing whitespace')
            )  # fmt: skip
    return causes


def _workload_causes(
    rt: ResourceType, spec: Mapping[str, Any], old_spec: Mapping[str, Any] | None
) -> list[tuple[str, str, str]]:
    causes: list[tuple[str, str, str]] = []
    selector = spec.get("selector")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector:
        causes.append(("spec.selector", "FieldValueRequired", "Required value"))
    elif not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(
            ("spec.selector", "FieldValueInvalid",
             "Invalid value: v1.LabelSelector{}: empty selector is invalid for deployment")
        )  # fmt: skip
    elif not selector_matches(selector, labels):
        causes.append(
            ("spec.template.metadata.labels", "FieldValueInvalid",
             f"Invalid value: {_go_map(labels)}: `selector` does not match template `labels`")
        )  # fmt: skip
    if old_spec is not None and selector and old_spec.get("selector") != selector:
        causes.append(
            ("spec.selector", "FieldValueInvalid",
             f"Invalid value: {selector_string(selector)!r}: field is immutable")
        )  # fmt: skip
    causes += _label_causes("spec.template.metadata.labels", labels)
    causes += _containers_causes("spec.template.spec", template.get("spec") or {})
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(
            ("spec.replicas", "FieldValueInvalid",
             f"Invalid value: {replicas!r}: must be greater than or equal to 0")
        )  # fmt: skip
    if rt is DEPLOYMENTS:
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        zero = (0, "0", "0%")
        if rolling and rolling.get("maxSurge") in zero and rolling.get("maxUnavailable") in zero:
            causes.append(
                ("spec.strategy.rollingUpdate.maxUnavailable", "FieldValueInvalid",
                 f"Invalid value: {rolling.get('maxUnavailable')!r}: may not be 0 when "
                 "`maxSurge` is 0")
            )  # fmt: skip
        deadline = spec.get("progressDeadlineSeconds", 600)
        if isinstance(deadline, int) and deadline <= int(spec.get("minReadySeconds", 0)):
            causes.append(
                ("spec.progressDeadlineSeconds", "FieldValueInvalid",
                 f"Invalid value: {deadline}: must be greater than minReadySeconds")
            )  # fmt: skip
    return causes


def _service_causes(
    spec: Mapping[str, Any], old_spec: Mapping[str, Any] | None
) -> list[tuple[str, str, str]]:
    causes: list[tuple[str, str, str]] = []
    headless = spec.get("clusterIP") == "None"
    if spec.get("type") != "ExternalName" and not headless and not spec.get("ports"):
        causes.append(("spec.ports", "FieldValueRequired", "Required value"))
    for i, port in enumerate(spec.get("ports") or []):
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 0 < number < 65536:
            causes.append(
                (f"spec.ports[{i}].port", "FieldValueInvalid",
                 f"Invalid value: {number!r}: must be between 1 and 65535, inclusive")
            )  # fmt: skip
    if old_spec and old_spec.get("clusterIP") and spec.get("clusterIP") != old_spec["clusterIP"]:
        causes.append(
            ("spec.clusterIPs[0]", "FieldValueInvalid",
             f'Invalid value: []string{{"{spec.get("clusterIP")}"}}: may not change once set')
        )  # fmt: skip
    return causes
