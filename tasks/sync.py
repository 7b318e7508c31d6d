"""GitOps sync: make a cluster match git, report what differed, and keep it so (Argo CD's loop).

One sync of an :class:`~slipway.application_spec.Application`
(:func:`sync_application`):

1. **Desired**: the manifests repository at the target revision, rendered
   (:mod:`slipway.tasks.sync_source`); every object gets the destination namespace
   when it names none, and the app's tracking marks (below).
2. **Live**: one list per kind and namespace that desired uses, plus one list per
   kind the cluster serves with the app's label (``app.kubernetes.io/instance=<app>``),
   cluster-wide (per namespace where RBAC forbids that): what the app owns.
3. **Diff** on the fields git sets (:mod:`slipway.tasks.sync_diff`) and a reason for
   every object out of sync: ``missing``; ``changed in git`` (git's version differs
   from the one last applied, which the ``slipway.dev/desired-hash`` annotation
   records, or the object was never applied by this app); ``drift`` (git did not
   change, the cluster did: an edit by hand); ``tracking`` (the content matches but
   the tracking marks are missing or stale); ``not in git`` (owned, no longer
   rendered: a prune candidate).
4. **Apply** with server-side apply (:func:`~slipway.tasks.kube_apply.apply_objects`,
   force: git wins conflicts) what the policy allows: with ``automated``, everything
   but drift; drift too with ``self_heal`` (reported as *reverted*); everything on a
   manual sync (``manual=True``, a person pressing Sync); nothing on a dry run.
5. **Prune**, with ``prune`` on, the owned objects git no longer has, never when the
   render is empty unless ``allow_empty`` (a folder emptied by mistake must not delete
   an application).
6. **Retry** steps 1-5 on errors a retry can fix (the cluster or the repository not
   answering, the cluster refusing an object: a namespace or CRD that arrives later)
   per the application's retry spec: ``limit`` retries, waiting ``duration x
   factor^n``, each wait at most ``max_duration`` (Argo CD's 5 / 5 s / 2 / 3 min).
7. **Result** (:class:`SyncResult`): the live state read again after the changes, so
   ``Synced`` means the cluster now matches git; health per object and for the app
   (:mod:`slipway.tasks.sync_health`); per object the diff found before the
   changes, as readable unified text, and what was done about it.

**Ownership.** Every applied object carries the label ``app.kubernetes.io/instance:
<app>`` and the annotation ``slipway.dev/tracking-id: <app>:<group>/<kind>:<namespace>/<name>``
(Argo CD's annotation tracking). An object counts as the app's only when both match
its own identity: the Deployment controller copies a Deployment's annotations onto
its ReplicaSets, and the Endpoints controller a Service's labels onto its Endpoints,
but their tracking id then names the Deployment or the Service, so they are never
pruned; objects with a controller owner reference are never pruned either.

**Field manager.** The sync applies as ``slipway-sync``, not as the deploy stage's
``slipway``: server-side apply removes fields a manager stops sending, and the
deploy stage sends fields git does not hold (the release label on pod templates,
release-history annotations). Under one manager a sync would strip them and start
a rollout; under two, each keeps its own fields and both own what git says.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException
from kubernetes.dynamic.resource import Resource
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from slipway.application_spec import Application
from slipway.blocks.gitops import ManifestsRepository
from slipway.exceptions import (
    ConfigError,
    DeployError,
    ManifestRenderError,
    TemporaryError,
)
from slipway.redact import Redactor
from slipway.tasks.kube_apply import (
    apply_objects,
    dynamic_client,
    get_object,
    resource_for,
    translate_api_error,
    unreachable,
)
from slipway.tasks.manifests_render import _ORDER_FIRST, _ORDER_LAST
from slipway.tasks.sync_diff import ObjectDiff, diff_object, normalized_desired
from slipway.tasks.sync_health import Health, HealthStatus, assess_health, worst
from slipway.tasks.sync_report import plan_markdown
from slipway.tasks.sync_source import DesiredState, render_revision, render_with_image

TRACKING_LABEL = "app.kubernetes.io/instance"
TRACKING_ANNOTATION = "slipway.dev/tracking-id"
HASH_ANNOTATION = "slipway.dev/desired-hash"
SYNC_FIELD_MANAGER = "slipway-sync"
HEALTH_POLL_SECONDS = 1.0
# Kinds never listed when looking for what an app owns: they are written by the API
# server or by controllers, never applied from git.
_NOT_SCANNED = frozenset(
    {"Event", "Endpoints", "EndpointSlice", "ReplicaSet", "ControllerRevision", "Lease",
     "TokenReview", "SubjectAccessReview", "SelfSubjectAccessReview", "LocalSubjectAccessReview",
     "SelfSubjectRulesReview", "Binding", "ComponentStatus", "Node"}
)  # fmt: skip

SyncStatus = Literal["Synced", "OutOfSync"]
Reason = Literal["", "missing", "changed in git", "drift", "tracking", "not in git"]
Action = Literal["none", "created", "updated", "reverted", "pruned", "skipped"]
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Which object: ``namespace`` is "" for cluster-scoped kinds."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.kind}/{self.name}{where}"


def tracking_id(app: str, ref: ObjectRef) -> str:
    """Argo CD's annotation-tracking id: ``<app>:<group>/<kind>:<namespace>/<name>``."""
    return f"{app}:{ref.group}/{ref.kind}:{ref.namespace}/{ref.name}"


@dataclass(frozen=True)
class ObjectResult:
    """One object after the sync: its status and health now, why it was out of sync
    before (``reason``, "" when it was not), the diff found then, and what was done."""

    ref: ObjectRef
    status: SyncStatus
    health: Health
    reason: Reason = ""
    diff: ObjectDiff = field(default_factory=lambda: ObjectDiff((), ""))
    action: Action = "none"
    note: str = ""


@dataclass(frozen=True)
class SyncResult:
    """One sync of one application in one cluster.

    ``sync_status`` and ``health`` describe the cluster after the sync; ``objects``
    every object git renders plus every owned object git no longer has.
    """

    app: str
    cluster: str
    namespace: str
    target_revision: str
    revision: str
    sync_status: SyncStatus
    health: HealthStatus
    objects: tuple[ObjectResult, ...]
    dry_run: bool = False
    manual: bool = False
    attempts: int = 1
    seconds: float = 0.0
    error: str | None = None

    def _with(self, action: str) -> tuple[ObjectResult, ...]:
        return tuple(o for o in self.objects if o.action == action)

    @property
    def out_of_sync(self) -> tuple[ObjectResult, ...]:
        """Objects that differed from git when the sync started."""
        return tuple(o for o in self.objects if o.reason)

    @property
    def applied(self) -> tuple[ObjectResult, ...]:
        return tuple(o for o in self.objects if o.action in ("created", "updated", "reverted"))

    @property
    def reverted(self) -> tuple[ObjectResult, ...]:
        """Drift put back (self-heal or a manual sync)."""
        return self._with("reverted")

    @property
    def pruned(self) -> tuple[ObjectResult, ...]:
        return self._with("pruned")

    @property
    def drift(self) -> tuple[ObjectResult, ...]:
        """Objects changed in the cluster by hand, reverted or not."""
        return tuple(o for o in self.objects if o.reason == "drift")

    @property
    def unrepaired_drift(self) -> tuple[ObjectResult, ...]:
        return tuple(o for o in self.drift if o.action != "reverted")

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        parts = [
            f"{self.app} in {self.cluster}/{self.namespace}: {self.sync_status}, {self.health}"
        ]
        counts = [
            (len(self.applied) - len(self.reverted), "applied"),
            (len(self.reverted), "reverted"),
            (len(self.pruned), "pruned"),
            (len(self.unrepaired_drift), "drifted (not reverted)"),
        ]
        said = [f"{n} {what}" for n, what in counts if n]
        if said:
            parts.append(", ".join(said))
        if self.dry_run:
            parts.append("dry run")
        if self.error:
            parts.append(f"error: {self.error}")
        return "; ".join(parts)


# ----------------------------------------------------------------------------- desired


@dataclass(frozen=True)
class _Desired:
    ref: ObjectRef
    body: dict[str, Any]  # what is applied: normalized, namespaced, with tracking marks
    content: dict[str, Any]  # what is compared: the same without the tracking marks
    digest: str


def _kind_rank(kind: str) -> int:
    if kind in _ORDER_FIRST:
        return _ORDER_FIRST.index(kind)
    if kind in _ORDER_LAST:
        return len(_ORDER_FIRST) + 1 + _ORDER_LAST.index(kind)
    return len(_ORDER_FIRST)


def prepare_desired(
    api: ApiClient, app: str, objects: Sequence[Mapping[str, Any]], namespace: str
) -> list[_Desired]:
    """The rendered objects as they are applied: destination namespace where none is
    named (none at all for cluster-scoped kinds), tracking label and annotations, in
    apply order (Namespaces, CRDs, ... before workloads; otherwise as rendered)."""
    prepared: list[_Desired] = []
    seen: set[ObjectRef] = set()
    for obj in objects:
        content = normalized_desired(obj)
        api_version, kind = str(content["apiVersion"]), str(content["kind"])
        metadata = content.setdefault("metadata", {})
        resource = resource_for(api, api_version, kind)
        if resource.namespaced:
            metadata["namespace"] = str(metadata.get("namespace") or namespace)
        else:
            metadata.pop("namespace", None)
        ref = ObjectRef(api_version, kind, str(metadata.get("namespace") or ""), metadata["name"])
        if ref in seen:
            raise ManifestRenderError(f"{ref} is rendered twice")
        seen.add(ref)
        digest = hashlib.sha256(
            json.dumps(content, sort_keys=True, default=str).encode("utf-8")
        ).hexdigest()[:32]
        body = json.loads(json.dumps(content, default=str))
        meta = body["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), TRACKING_LABEL: app}
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            TRACKING_ANNOTATION: tracking_id(app, ref),
            HASH_ANNOTATION: digest,
        }
        prepared.append(_Desired(ref, body, content, digest))
    return sorted(prepared, key=lambda d: _kind_rank(d.ref.kind))  # stable: render order kept


# ----------------------------------------------------------------------------- live


def _ref_of(obj: Mapping[str, Any]) -> ObjectRef:
    meta = obj.get("metadata") or {}
    return ObjectRef(
        str(obj.get("apiVersion")), str(obj.get("kind")), str(meta.get("namespace") or ""),
        str(meta.get("name")),
    )  # fmt: skip


def _owned_by(app: str, obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(TRACKING_LABEL) != app:
        return False
    if any(ref.get("controller") for ref in meta.get("ownerReferences") or []):
        return False
    return (meta.get("annotations") or {}).get(TRACKING_ANNOTATION) == tracking_id(
        app, _ref_of(obj)
    )


def _list(
    api: ApiClient, resource: Resource, namespace: str | None, selector: str | None
) -> list[dict[str, Any]]:
    """Every object of ``resource`` (in ``namespace``, or everywhere), as plain dicts with
    apiVersion and kind filled in (a list answer leaves them out of its items)."""
    try:
        answer = resource.get(namespace=namespace, label_selector=selector)
    except ApiException as exc:
        if exc.status == 404:
            return []  # the namespace does not exist (yet)
        raise translate_api_error(exc, f"listing {resource.kind} objects") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    items = answer.to_dict().get("items") or []
    for item in items:
        item.setdefault("apiVersion", resource.group_version)
        item.setdefault("kind", resource.kind)
    return items


def _scannable(api: ApiClient) -> list[Resource]:
    """The kinds the cluster serves that an app may own: listable, deletable, top-level."""
    found = []
    for resource in dynamic_client(api).resources.search():
        verbs = set(getattr(resource, "verbs", None) or ())
        kind = str(getattr(resource, "kind", "") or "")
        if (
            {"list", "delete"} <= verbs
            and "/" not in str(resource.name)
            and not kind.endswith("List")
            and kind not in _NOT_SCANNED
        ):
            found.append(resource)
    # the same kind served under several versions: scan its preferred one only
    preferred: dict[tuple[str, str], Resource] = {}
    for resource in found:
        key = (str(resource.group), resource.kind)
        if key not in preferred or getattr(resource, "preferred", False):
            preferred[key] = resource
    return list(preferred.values())


def _read_live(
    api: ApiClient, app: str, desired: Sequence[_Desired], namespace: str, log: Log
) -> tuple[dict[ObjectRef, dict[str, Any]], dict[ObjectRef, dict[str, Any]]]:
    """(live objects git renders, by ref; objects the app owns, by ref)."""
    live: dict[ObjectRef, dict[str, Any]] = {}
    owned: dict[ObjectRef, dict[str, Any]] = {}
    wanted: dict[tuple[str, str, str], set[str]] = {}
    for d in desired:
        wanted.setdefault((d.ref.api_version, d.ref.kind, d.ref.namespace), set()).add(d.ref.name)
    for (api_version, kind, ns), names in wanted.items():
        resource = resource_for(api, api_version, kind)
        for obj in _list(api, resource, ns or None, None):
            ref = _ref_of(obj)
            ref = replace(ref, api_version=api_version)  # as desired names it
            if ref.name in names:
                live[ref] = obj
    namespaces = sorted({namespace} | {d.ref.namespace for d in desired if d.ref.namespace})
    selector = f"{TRACKING_LABEL}={app}"
    for resource in _scannable(api):
        try:
            if resource.namespaced:
                try:
                    items = _list(api, resource, None, selector)
                except DeployError as exc:
                    if "forbidden" not in str(exc):
                        raise
                    items = [o for ns in namespaces for o in _list(api, resource, ns, selector)]
            else:
                items = _list(api, resource, None, selector)
        except DeployError as exc:
            log(f"not looking for {resource.kind} objects of {app}: {exc}")
            continue
        for obj in items:
            if _owned_by(app, obj):
                owned[_ref_of(obj)] = obj
    return live, owned


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Planned:
    ref: ObjectRef
    desired: _Desired | None  # None: owned, not in git
    live: dict[str, Any] | None
    diff: ObjectDiff
    reason: Reason


def _plan(
    api: ApiClient, app: str, desired: Sequence[_Desired], namespace: str, log: Log
) -> list[_Planned]:
    live, owned = _read_live(api, app, desired, namespace, log)
    planned: list[_Planned] = []
    refs = set()
    for d in desired:
        refs.add(d.ref)
        have = live.get(d.ref)
        diff = diff_object(d.content, have)
        reason: Reason = ""
        if have is None:
            reason = "missing"
        else:
            annotations = (have.get("metadata") or {}).get("annotations") or {}
            applied_digest = annotations.get(HASH_ANNOTATION)
            tracked = _owned_by(app, have)
            if not diff.in_sync:
                reason = "drift" if tracked and applied_digest == d.digest else "changed in git"
            elif not tracked or applied_digest != d.digest:
                reason = "tracking"
        planned.append(_Planned(d.ref, d, have, diff, reason))
    known = {_identity(r) for r in refs}
    for ref, obj in sorted(owned.items(), key=lambda kv: (-_kind_rank(kv[0].kind), kv[0])):
        if _identity(ref) not in known:
            planned.append(
                _Planned(ref, None, obj, ObjectDiff(("<not in git>",), ""), "not in git")
            )
    return planned


def _identity(ref: ObjectRef) -> tuple[str, str, str, str]:
    """An object whatever version it is read at: group, kind, namespace, name."""
    return ref.group, ref.kind, ref.namespace, ref.name


def _decide(
    item: _Planned, app: Application, *, dry_run: bool, manual: bool, empty_refused: bool
) -> tuple[Action, str]:
    """What to do about one object out of sync: the action, or why it is skipped."""
    policy = app.sync_policy
    if dry_run:
        return "skipped", "dry run"
    if not (policy.automated or manual):
        return "skipped", "automated sync is off: start a manual sync to apply"
    if item.reason == "not in git":
        if not policy.prune:
            return "skipped", "prune is off"
        if empty_refused:
            return "skipped", "the manifests render nothing and allow_empty is off"
        return "pruned", ""
    if item.reason == "drift":
        if policy.self_heal or manual:
            return "reverted", ""
        return "skipped", "self_heal is off: drift reported, not reverted"
    if item.reason == "missing":
        return "created", ""
    return "updated", ""


# ----------------------------------------------------------------------------- sync


def default_revision(app: Application, repo: ManifestsRepository) -> str:
    """The revision a sync renders: the application's, else the block's branch (HEAD for a
    repository given as a URL)."""
    if app.target_revision:
        return app.target_revision
    return "HEAD" if app.repo_is_url else repo.branch or "HEAD"


def repository_for(app: Application) -> ManifestsRepository:
    """A ManifestsRepository for an application whose ``repo`` is a URL (no credentials)."""
    return ManifestsRepository(url=app.repo)


def sync_application(
    api: ApiClient,
    app: Application,
    repo: ManifestsRepository,
    *,
    workdir: Path,
    dry_run: bool = False,
    manual: bool = False,
    redactor: Redactor | None = None,
    log: Log,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncResult:
    """One sync of ``app`` into the cluster of ``api`` (see the module docstring).

    Args:
        api: the destination cluster's client.
        app: the application.
        repo: its manifests repository (a block, or :func:`repository_for` a URL).
        workdir: where the repository's clone is kept between runs.
        dry_run: read and diff only; apply and prune nothing.
        manual: a person's sync: apply every difference (drift included) and prune
            when ``prune`` is on, whatever ``automated`` and ``self_heal`` say.
        redactor: masks the repository's credentials in messages.
        log: where progress lines go.
        sleep: how to wait between attempts (tests pass a fake).

    Returns:
        The result; ``error`` is set (and nothing raised) when the sync failed after its
        retries, or when an empty render was refused.

    Raises:
        ConfigError, ManifestRenderError, CheckoutError: the application or its
            manifests are wrong; no retry can help and nothing was changed.

    Example:
        ```python
        result = sync_application(api, app, repo, workdir=Path("/tmp/x"), log=print)
        print(result.summary())
        ```
    """
    redactor = redactor or Redactor()
    redactor.add(*repo.secret_values())
    start = time.monotonic()
    revision = default_revision(app, repo)
    delays = app.retry.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return _sync_once(
                api, app, repo, revision, workdir=workdir, dry_run=dry_run, manual=manual,
                redactor=redactor, log=log, attempt=attempt, start=start,
            )  # fmt: skip
        except (TemporaryError, DeployError) as exc:
            message = redactor.redact(str(exc))
            if attempt > len(delays):
                log(f"sync of {app.name} failed after {attempt} attempts: {message}")
                return _failed(app, revision, dry_run, manual, attempt, start, message)
            wait = delays[attempt - 1]
            log(f"sync attempt {attempt} of {app.name} failed ({message}); retrying in {wait:g} s")
            sleep(wait)


def _failed(
    app: Application, revision: str, dry_run: bool, manual: bool, attempts: int, start: float,
    message: str,
) -> SyncResult:  # fmt: skip
    return SyncResult(
        app=app.name, cluster=app.destination.cluster, namespace=app.destination.namespace,
        target_revision=revision, revision="", sync_status="OutOfSync", health="Missing",
        objects=(), dry_run=dry_run, manual=manual, attempts=attempts,
        seconds=round(time.monotonic() - start, 3), error=message,
    )  # fmt: skip


def _sync_once(
    api: ApiClient,
    app: Application,
    repo: ManifestsRepository,
    revision: str,
    *,
    workdir: Path,
    dry_run: bool,
    manual: bool,
    redactor: Redactor,
    log: Log,
    attempt: int,
    start: float,
) -> SyncResult:
    namespace = app.destination.namespace
    state = render_revision(
        repo, revision=revision, path=app.path, kind=app.kind, workdir=workdir,
        redactor=redactor, log=log,
    )  # fmt: skip
    desired = prepare_desired(api, app.name, state.objects, namespace)
    empty_refused = not desired and not app.sync_policy.allow_empty
    before = _plan(api, app.name, desired, namespace, log)
    decisions = {
        item.ref: _decide(item, app, dry_run=dry_run, manual=manual, empty_refused=empty_refused)
        for item in before
        if item.reason
    }
    to_apply = [
        item.desired.body
        for item in before
        if item.desired is not None
        and decisions.get(item.ref, ("none",))[0] in ("created", "updated", "reverted")
    ]
    to_prune = [item for item in before if decisions.get(item.ref, ("none",))[0] == "pruned"]
    if to_apply:
        log(f"applying {len(to_apply)} of {len(desired)} objects of {app.name}")
        apply_objects(
            api, to_apply, namespace=namespace,
            create_namespace=app.sync_options.create_namespace,
            field_manager=SYNC_FIELD_MANAGER, force_conflicts=True, log=_quiet(log, len(to_apply)),
        )  # fmt: skip
    for item in to_prune:
        _delete(api, item.ref, log)
    after = _plan(api, app.name, desired, namespace, log) if (to_apply or to_prune) else before
    result = _result(api, app, revision, state, before, after, decisions, dry_run, manual)
    error = None
    if empty_refused and any(item.reason == "not in git" for item in before):
        error = (
            f"the manifests at {app.path} rendered no objects and allow_empty is off: "
            f"nothing was pruned"
        )
    result = replace(
        result, attempts=attempt, seconds=round(time.monotonic() - start, 3), error=error
    )
    log(redactor.redact(result.summary()))
    return result


def _quiet(log: Log, count: int) -> Log:
    """Per-object apply lines for a few objects; for many, only the count is logged."""
    return log if count <= 20 else (lambda _line: None)


def _delete(api: ApiClient, ref: ObjectRef, log: Log) -> None:
    resource = resource_for(api, ref.api_version, ref.kind)
    try:
        resource.delete(
            name=ref.name,
            namespace=ref.namespace or None,
            body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
        )
    except ApiException as exc:
        if exc.status != 404:
            raise translate_api_error(exc, f"pruning {ref}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    log(f"{ref} pruned (no longer in git)")


def _result(
    api: ApiClient,
    app: Application,
    revision: str,
    state: DesiredState,
    before: Sequence[_Planned],
    after: Sequence[_Planned],
    decisions: Mapping[ObjectRef, tuple[Action, str]],
    dry_run: bool,
    manual: bool,
) -> SyncResult:
    now = {item.ref: item for item in after}
    objects: list[ObjectResult] = []
    for item in before:
        current = now.get(item.ref)
        action, note = decisions.get(item.ref, ("none", ""))
        if item.desired is None:
            gone = current is None
            status: SyncStatus = "Synced" if gone else "OutOfSync"
            health = Health("Missing", "pruned") if gone else assess_health(api, current.live)
        else:
            assert current is not None
            status = "Synced" if not current.reason else "OutOfSync"
            health = assess_health(api, current.live)
        objects.append(ObjectResult(item.ref, status, health, item.reason, item.diff, action, note))
    in_git = [o for o in objects if o.reason != "not in git"]
    sync_status: SyncStatus = (
        "Synced" if all(o.status == "Synced" for o in objects) else "OutOfSync"
    )
    return SyncResult(
        app=app.name, cluster=app.destination.cluster, namespace=app.destination.namespace,
        target_revision=revision, revision=state.revision, sync_status=sync_status,
        health=worst(o.health.status for o in in_git), objects=tuple(objects),
        dry_run=dry_run, manual=manual,
    )  # fmt: skip


# ----------------------------------------------------------------------------- health


def refresh_health(api: ApiClient, result: SyncResult) -> SyncResult:
    """``result`` with the health of its objects read again (objects already Healthy stay
    so; a pruned one stays Missing)."""
    objects = []
    for obj in result.objects:
        if obj.health.status == "Healthy" or obj.reason == "not in git":
            objects.append(obj)
            continue
        live = get_object(
            api, obj.ref.api_version, obj.ref.kind, obj.ref.name, obj.ref.namespace or None
        )
        objects.append(replace(obj, health=assess_health(api, live)))
    in_git = [o for o in objects if o.reason != "not in git"]
    return replace(result, objects=tuple(objects), health=worst(o.health.status for o in in_git))


def wait_for_health(
    api: ApiClient,
    result: SyncResult,
    *,
    timeout: float,
    poll: float = HEALTH_POLL_SECONDS,
    log: Log,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncResult:
    """Read health again until the app is Healthy or Degraded, or ``timeout`` seconds
    pass (then it stays Progressing or Missing); safe to repeat."""
    deadline = clock() + timeout
    last = ""
    while True:
        result = refresh_health(api, result)
        if result.health != last:
            last = result.health
            log(f"{result.app}: health {result.health}")
        if result.health in ("Healthy", "Degraded") or clock() >= deadline:
            return result
        sleep(max(0.0, min(poll, deadline - clock())))


# ----------------------------------------------------------------------------- plan for approval


def plan_environment(
    api: ApiClient,
    manifests: ManifestsRepository,
    environment: str,
    *,
    app: str,
    namespace: str,
    image: str | None = None,
    workdir: Path,
    redactor: Redactor | None = None,
    log: Log | None = None,
) -> tuple[str, tuple[ObjectResult, ...]]:
    """What deploying to ``environment`` will change in the cluster, for an approver.

    Renders the environment's folder at the branch head, with ``image`` bumped the way
    the deploy's GitOps bump will bump it (in the work tree only; nothing is committed),
    and diffs every object against the cluster on the fields git sets.

    Args:
        api: the environment's cluster.
        manifests: the manifests repository block.
        environment: an environment of the block (its folder and kind).
        app: the application (names the image entry the bump edits).
        namespace: the environment's namespace (for objects that name none).
        image: the release's ``repository@sha256:...``; None: git as it is.
        workdir: a folder for the clone (reused when it already holds one).

    Returns:
        (Markdown with a unified diff per changing object, the changing objects).

    Example:
        ```python
        markdown, changes = plan_environment(
            api, manifests, "production", app="shop", namespace="production",
            image="registry/shop@sha256:...", workdir=workspace / "plan")
        ```
    """
    quiet: Log = log or (lambda _line: None)
    if image is not None:
        state = render_with_image(
            manifests, app=app, environment=environment, image=image, workdir=workdir,
            redactor=redactor, log=quiet,
        )  # fmt: skip
    else:
        target = manifests.environments.get(environment)
        if target is None:
            known = ", ".join(sorted(manifests.environments)) or "none"
            raise ConfigError(
                f"environment {environment!r} is not in the manifests repository block "
                f"(known: {known})"
            )
        state = render_revision(
            manifests, revision=manifests.branch or "HEAD", path=target.path, kind=target.kind,
            workdir=workdir, redactor=redactor, log=quiet,
        )  # fmt: skip
    desired = prepare_desired(api, app, state.objects, namespace)
    changes: list[ObjectResult] = []
    for d in desired:
        live = get_object(api, d.ref.api_version, d.ref.kind, d.ref.name, d.ref.namespace or None)
        diff = diff_object(d.content, live)
        if not diff.in_sync:
            reason: Reason = "missing" if live is None else "changed in git"
            health = Health("Missing", "not in the cluster") if live is None else Health("Healthy")
            changes.append(ObjectResult(d.ref, "OutOfSync", health, reason, diff))
    markdown = plan_markdown(environment, state.revision, image, changes, len(desired))
    if redactor is not None:
        markdown = redactor.redact(markdown)
    return markdown, tuple(changes)


# ----------------------------------------------------------------------------- Prefect tasks


@task(
    name="sync_application",
    task_run_name="sync-{app.name}",
    cache_policy=NO_CACHE,  # a sync reads and writes a cluster: never reuse an old answer
    timeout_seconds=3600,
)
def sync_app(
    api: ApiClient,
    app: Application,
    repo: ManifestsRepository,
    *,
    workdir: Path,
    dry_run: bool = False,
    manual: bool = False,
    redactor: Redactor | None = None,
) -> SyncResult:
    """Sync one application (see :func:`sync_application`); retries are its own."""
    logger = get_run_logger()
    redactor = redactor or Redactor()
    return sync_application(
        api, app, repo, workdir=workdir, dry_run=dry_run, manual=manual, redactor=redactor,
        log=lambda line: logger.info(redactor.redact(line)),
    )  # fmt: skip


@task(name="wait_for_app_health", task_run_name="health-{result.app}", cache_policy=NO_CACHE)
def wait_for_app_health(api: ApiClient, result: SyncResult, *, timeout: float) -> SyncResult:
    """Wait until the synced app is Healthy or Degraded (see :func:`wait_for_health`)."""
    return wait_for_health(api, result, timeout=timeout, log=get_run_logger().info)
