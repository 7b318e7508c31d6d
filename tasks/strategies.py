"""Deploy strategies: how a release replaces the one running, and how it is undone.

Every strategy starts from the same input, a :class:`Release` (the rendered manifests
of one environment and the image they run) and returns a :class:`DeployState`, a
small record of what it changed that the rollback needs; every step reads what the
cluster has before it writes, so repeating a step after a crash does no harm.

Rolling
    The Deployment's own RollingUpdate, with ``max_surge`` / ``max_unavailable`` from
    the spec; :func:`rollback_rolling` is ``kubectl rollout undo`` to the revision
    that ran before the deploy (or a named one).

Blue-green (two Deployments and a Service selector switch)
    The app's Deployment runs as ``<name>-blue`` and ``<name>-green``, told apart by
    the label ``slipway.dev/colour`` in selector and pod template; the active Service
    (the one in the manifests in front of the Deployment) selects one colour. A new
    release goes to the colour the active Service does not select, and once it has
    rolled out the preview Service (``<service>-preview``) shows it for smoke tests.
    :func:`promote_blue_green` switches the active Service's selector; a rollback
    switches it back (the old colour keeps running for ``scale_down_delay_seconds``,
    so undoing is one PATCH, well within the 5 s target);
    :func:`finish_blue_green` scales the old colour down after that delay.
    Chosen over an Argo Rollouts ``blueGreen`` Rollout because it works on any
    cluster without installing the Argo Rollouts controller (and the test cluster
    stand-in has no Rollouts controller): it is plain Deployments and Services.

Canary (Istio VirtualService)
    A stable Deployment ``<name>`` and a canary ``<name>-canary`` (label
    ``slipway.dev/track``), Services ``<svc>-stable`` and ``<svc>-canary``, and a
    VirtualService (host: the app's Service) whose first route sends requests with
    the canary header (``x-canary: always``) to the canary at any weight, so testers
    can reach it before it takes traffic, and whose second route splits the rest by
    weight. :func:`run_canary_steps` moves the weight step by step (canary replicas
    follow the weight: scaled up and ready *before* the weight rises, scaled down
    *after* it falls), pauses and asks the analysis callback; :func:`promote_canary`
    gives the stable the canary's pod template and takes the canary out;
    :func:`abort_canary` sends every request back to the stable first and then scales
    the canary to 0. Argo Rollouts' canary would need its controller; Istio routing
    needs only the VirtualService. Traffic that does not pass through the mesh (e.g.
    straight to the app's Service) still reaches stable and canary pods in proportion
    to their counts.

A deploy whose rollout fails raises :class:`~slipway.exceptions.RolloutFailed` /
:class:`~slipway.exceptions.RolloutTimeout` carrying the state built so far
(:func:`state_of`), so the caller can still roll back. :func:`rollback` dispatches by
kind and returns the seconds from the decision to the API confirming the change;
:func:`observe_state` rebuilds what a rollback needs from the cluster, for a rollback
a person starts long after the deploy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient

from slipway.exceptions import DeployError
from slipway.tasks.kube_apply import apply_objects, get_object, patch_object
from slipway.tasks.rollout import (
    REVISION_ANNOTATION,
    rollout_history,
    undo_rollout,
    wait_for_rollout,
)
from slipway.tasks.strategy_objects import (
    COLOUR_LABEL,
    TRACK_LABEL,
    VIRTUAL_SERVICE_API,
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
from slipway.tasks.strategy_spec import (
    BlueGreenSpec,
    CanarySpec,
    RollingSpec,
    StrategyKind,
    StrategySpec,
)

Log = Callable[[str], None]
DEFAULT_TIMEOUT = 600.0  # seconds a rollout inside a strategy step may take


@dataclass(frozen=True)
class Release:
    """What to deploy: one environment's rendered manifests.

    Attributes:
        app: the application's name (finds the Deployment when ``deployment`` is None).
        environment: the environment's name (for messages).
        namespace: where the objects go.
        objects: the rendered manifests (not modified).
        image: the image reference being released (for messages and the state).
        annotations: release history (``tasks.kube_apply.HISTORY_ANNOTATIONS``) put on
            the Deployments the strategy writes.
        deployment: the app's Deployment in the manifests; default: the one named
            ``app``, else the only one.
        service: the Service in front of it; default: the one selecting its pods.
    """

    app: str
    environment: str
    namespace: str
    objects: list[dict[str, Any]]
    image: str
    annotations: dict[str, str] = field(default_factory=dict)
    deployment: str | None = None
    service: str | None = None


@dataclass
class DeployState:
    """What a deploy changed, for promote, finish and rollback.

    Attributes:
        kind: the strategy.
        namespace: where it happened.
        deployment: the app's Deployment name in the manifests (blue-green runs it as
            ``<deployment>-<colour>``, canary as ``<deployment>`` and
            ``<deployment>-canary``).
        service: the active Service (blue-green) or the VirtualService's host (canary).
        previous_revision: revision of the Deployment (canary: the stable one) before
            the deploy; None on a first deploy.
        active_colour: blue-green: the colour serving before the deploy (None: first).
        idle_colour: blue-green: the colour the new release went to.
        preview_service: blue-green: the Service showing ``idle_colour``.
        canary_weight: canary: the percent of traffic the canary has now.
        detail: strategy specifics (names, counts, what has been done).
    """

    kind: StrategyKind
    namespace: str
    deployment: str
    service: str | None = None
    previous_revision: int | None = None
    active_colour: str | None = None
    idle_colour: str | None = None
    preview_service: str | None = None
    canary_weight: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def release_service(self) -> str | None:
        """The Service in front of the new release's pods before it takes traffic (where
        smoke tests go): blue-green's preview Service; canary's ``<svc>-canary``, or
        ``<svc>-stable`` on a first deploy (the release is the stable, the canary has no
        pods); None for rolling (the app's own Service serves the release)."""
        if self.kind == "blue_green":
            return self.preview_service
        if self.kind == "canary":
            key = "stable_service" if self.detail.get("first_deploy") else "canary_service"
            return str(self.detail[key])
        return None


def state_of(exc: BaseException) -> DeployState | None:
    """The state a failed deploy had reached, when ``exc`` came from one."""
    state = getattr(exc, "deploy_state", None)
    return state if isinstance(state, DeployState) else None


# --- shared steps ------------------------------------------------------------------------


def _app_deployment(release: Release) -> dict[str, Any]:
    name = release.deployment
    if name is None and any(
        o.get("kind") == "Deployment" and o.get("metadata", {}).get("name") == release.app
        for o in release.objects
    ):
        name = release.app
    deployment = find_deployment(release.objects, name)
    namespace = deployment.get("metadata", {}).get("namespace")
    if namespace and namespace != release.namespace:
        raise DeployError(
            f"Deployment {deployment['metadata']['name']} says namespace {namespace!r} but "
            f"environment {release.environment} deploys to {release.namespace!r}"
        )
    return deployment


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.get("kind") == b.get("kind") and a.get("metadata", {}).get("name") == b.get(
        "metadata", {}
    ).get("name")


def _others(release: Release, *replaced: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rendered objects the strategy applies as they are."""
    return [o for o in release.objects if not any(_same(o, r) for r in replaced)]


def _with_history(deployment: dict[str, Any], release: Release) -> dict[str, Any]:
    """Release history on the Deployment's metadata (the controller copies it to the
    ReplicaSet, so rollout history shows it)."""
    if release.annotations:
        meta = deployment.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), **release.annotations}
    return deployment


def _apply(
    api: ApiClient,
    release: Release,
    objects: Sequence[dict[str, Any]],
    *,
    create_namespace: bool = False,
    log: Log,
) -> None:
    if objects:
        apply_objects(
            api, objects, namespace=release.namespace, create_namespace=create_namespace, log=log
        )


def _live_deployment(api: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    return get_object(api, "apps/v1", "Deployment", name, namespace)


def _revision(deployment: Mapping[str, Any] | None) -> int | None:
    if not deployment:
        return None
    value = (deployment.get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _replicas(deployment: Mapping[str, Any]) -> int:
    value = deployment.get("spec", {}).get("replicas")
    return 1 if value is None else int(value)


def _wait(api: ApiClient, state: DeployState, name: str, *, timeout: float, log: Log) -> None:
    """Wait for a rollout; a failure carries the state so the caller can roll back."""
    try:
        wait_for_rollout(api, state.namespace, name, timeout=timeout, log=log)
    except DeployError as exc:
        exc.deploy_state = state  # type: ignore[attr-defined]
        raise


def _scale(api: ApiClient, namespace: str, name: str, replicas: int, *, log: Log) -> None:
    patch_object(
        api, "apps/v1", "Deployment", name, namespace, {"spec": {"replicas": replicas}}, log=log
    )
    log(f"deployment/{name} in {namespace} scaled to {replicas}")


def _merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) turning ``old`` into ``new``: keys only in
    ``old`` become null, so the result is exactly ``new``."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            patch[key] = _merge_patch(old[key], value)
    return patch


# --- rolling -------------------------------------------------------------------------------


def deploy_rolling(
    api: ApiClient,
    release: Release,
    spec: RollingSpec,
    *,
    create_namespace: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    log: Log,
) -> DeployState:
    """Apply the manifests with the spec's surge / unavailability and wait for the rollout.

    Raises:
        RolloutFailed, RolloutTimeout: the rollout did not complete (:func:`state_of`
            has the state, for :func:`rollback_rolling`).
        DeployError: the manifests have no such Deployment, or the cluster refused them.
    """
    rendered = _app_deployment(release)
    name = rendered["metadata"]["name"]
    desired = _with_history(
        with_rolling_strategy(rendered, spec.max_surge, spec.max_unavailable), release
    )
    before = _revision(_live_deployment(api, release.namespace, name))
    objects = [desired if _same(o, rendered) else o for o in release.objects]
    state = DeployState(
        kind="rolling",
        namespace=release.namespace,
        deployment=name,
        previous_revision=before,
        detail={"image": release.image},
    )
    log(f"rolling update of deployment/{name} in {release.namespace} to {release.image}")
    _apply(api, release, objects, create_namespace=create_namespace, log=log)
    _wait(api, state, name, timeout=timeout, log=log)
    state.detail["revision"] = _revision(_live_deployment(api, release.namespace, name))
    return state


def rollback_rolling(
    api: ApiClient, state: DeployState, *, to_revision: int | None = None, log: Log
) -> None:
    """``kubectl rollout undo --to-revision``: to ``to_revision``, else to the revision
    that ran before the deploy (wait for it with ``wait_for_rollout``).

    Raises:
        DeployError: a first deploy (nothing before it) and no ``to_revision``, or a
            revision the Deployment no longer has.
    """
    target = to_revision or state.previous_revision
    if target is None:
        raise DeployError(
            f"deployment/{state.deployment} in {state.namespace} had no revision before this "
            "deploy: nothing to roll back to"
        )
    live = _revision(_live_deployment(api, state.namespace, state.deployment))
    if to_revision is None and live == target:
        log(f"deployment/{state.deployment} still runs revision {target}: nothing to undo")
        return
    undo_rollout(api, state.namespace, state.deployment, to_revision=target, log=log)


# --- blue-green ----------------------------------------------------------------------------


def deploy_blue_green(
    api: ApiClient,
    release: Release,
    spec: BlueGreenSpec,
    *,
    create_namespace: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    log: Log,
) -> DeployState:
    """Deploy to the idle colour, wait for it, point the preview Service at it.

    The active Service keeps its colour (first deploy: nothing serves yet, so it
    selects the new colour at once, once that is ready).

    Raises:
        RolloutFailed, RolloutTimeout: the new colour did not roll out (the active
            Service was not touched; :func:`state_of` has the state).
        DeployError: no Service selects the Deployment's pods, or the cluster refused.
    """
    ns = release.namespace
    rendered = _app_deployment(release)
    service = find_service(release.objects, rendered, spec.service or release.service)
    name, svc = rendered["metadata"]["name"], service["metadata"]["name"]
    preview = spec.preview_service or f"{svc}-preview"
    live_service = get_object(api, "v1", "Service", svc, ns)
    active = service_colour(live_service)
    new = other_colour(active) if active else "blue"
    previous_selector = (live_service or {}).get("spec", {}).get("selector")
    state = DeployState(
        kind="blue_green",
        namespace=ns,
        deployment=name,
        service=svc,
        previous_revision=_revision(_live_deployment(api, ns, f"{name}-{new}")),
        active_colour=active,
        idle_colour=new,
        preview_service=preview,
        detail={
            "image": release.image,
            "previous_selector": previous_selector,
            "selector": dict(service.get("spec", {}).get("selector") or {}),
            "scale_down_delay_seconds": spec.scale_down_delay_seconds,
            "replicas": _replicas(rendered),
        },
    )
    log(
        f"blue-green: {release.image} goes to {name}-{new} in {ns}; service/{svc} "
        + (f"stays on {active} until promoted" if active else "has no colour yet")
    )
    deployment = _with_history(coloured_deployment(rendered, new), release)
    others = _others(release, rendered, service)
    _apply(api, release, [*others, deployment], create_namespace=create_namespace, log=log)
    _wait(api, state, deployment["metadata"]["name"], timeout=timeout, log=log)
    if live_service is None:
        active_service = coloured_service(service, new)
        state.detail["promoted"] = True
        log(f"first deploy: service/{svc} selects {new} from the start")
    elif active is None:
        # A Service from before blue-green (no colour): keep what it selects until promoted.
        active_service = copy.deepcopy(service)
        active_service.setdefault("spec", {})["selector"] = previous_selector
        if _live_deployment(api, ns, name) is not None:
            log(f"deployment/{name} from before blue-green is left running; delete it once "
                f"service/{svc} has been switched to {new}")  # fmt: skip
    else:
        active_service = coloured_service(service, active)
    _apply(api, release, [active_service, coloured_service(service, new, name=preview)], log=log)
    return state


def _selector_patch(current: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, Any]:
    return {"spec": {"selector": _merge_patch(dict(current), dict(desired))}}


def _switch(api: ApiClient, state: DeployState, desired: Mapping[str, str], *, log: Log) -> None:
    """Make the active Service select exactly ``desired`` and check the API says so."""
    assert state.service is not None
    live = get_object(api, "v1", "Service", state.service, state.namespace)
    if live is None:
        raise DeployError(f"service/{state.service} is gone from {state.namespace}")
    current = live.get("spec", {}).get("selector") or {}
    if current == dict(desired):
        return
    answer = patch_object(
        api, "v1", "Service", state.service, state.namespace,
        _selector_patch(current, desired), log=log,
    )  # fmt: skip
    if (answer.get("spec", {}).get("selector") or {}) != dict(desired):
        raise DeployError(f"service/{state.service} did not take selector {dict(desired)}")


def _colour_selector(state: DeployState, colour: str) -> dict[str, str]:
    """The manifests' selector of the active Service, plus the colour."""
    base = dict(state.detail.get("selector") or {})
    if not base:
        raise DeployError(f"service/{state.service}: no selector recorded for the deploy")
    return {**base, COLOUR_LABEL: colour}


def promote_blue_green(api: ApiClient, state: DeployState, *, log: Log) -> None:
    """Switch the active Service to the new colour (idempotent)."""
    assert state.idle_colour is not None
    if state.detail.get("previous_selector") is None:
        log(f"service/{state.service} already selects {state.idle_colour} (first deploy)")
    else:
        _switch(api, state, _colour_selector(state, state.idle_colour), log=log)
        log(f"service/{state.service} in {state.namespace} now selects {state.idle_colour}")
    state.detail["promoted"] = True


def rollback_blue_green(
    api: ApiClient, state: DeployState, *, timeout: float = DEFAULT_TIMEOUT, log: Log
) -> float:
    """Point the active Service back at what it selected before the deploy.

    Returns the seconds from this call to the API confirming the selector. The old
    colour normally still runs (``finish_blue_green`` has not scaled it down yet);
    if it was scaled down it is first scaled up and waited for (``timeout``).

    Raises:
        DeployError: a first deploy: there is nothing to switch back to.
    """
    started = time.monotonic()
    previous = state.detail.get("previous_selector")
    if previous is None:
        raise DeployError(
            f"service/{state.service} in {state.namespace} did not exist before this deploy: "
            "nothing to switch back to"
        )
    if state.active_colour is not None:
        old = f"{state.deployment}-{state.active_colour}"
        live = _live_deployment(api, state.namespace, old)
        if live is not None and _replicas(live) == 0:
            log(f"deployment/{old} was scaled down; scaling it up before switching back")
            _scale(api, state.namespace, old, int(state.detail.get("replicas", 1)), log=log)
            _wait(api, state, old, timeout=timeout, log=log)
    _switch(api, state, previous, log=log)
    seconds = time.monotonic() - started
    back = state.active_colour or "the pods it selected before"
    log(f"service/{state.service} in {state.namespace} back on {back} after {seconds:.2f} s")
    state.detail["rolled_back"] = True
    return seconds


def finish_blue_green(
    api: ApiClient,
    state: DeployState,
    *,
    log: Log,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """After ``scale_down_delay_seconds``, scale the old colour to 0 (unless the active
    Service has meanwhile been switched back to it)."""
    if state.active_colour is None:
        log("blue-green: no old colour to scale down")
        return
    delay = float(state.detail.get("scale_down_delay_seconds", 0))
    if delay > 0:
        log(f"blue-green: keeping {state.active_colour} for {delay:g} s before scaling it down")
        sleep(delay)
    assert state.service is not None
    live = get_object(api, "v1", "Service", state.service, state.namespace)
    if service_colour(live) == state.active_colour:
        log(f"service/{state.service} selects {state.active_colour} again: not scaling it down")
        return
    _scale(api, state.namespace, f"{state.deployment}-{state.active_colour}", 0, log=log)


# --- canary ----------------------------------------------------------------------------------


def deploy_canary(
    api: ApiClient,
    release: Release,
    spec: CanarySpec,
    *,
    create_namespace: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    log: Log,
) -> DeployState:
    """Start the canary with one pod, reachable only through the header route.

    First deploy (no stable Deployment yet): the release becomes the stable, the
    canary Deployment is created with 0 pods and the steps have nothing to compare
    (``detail["first_deploy"]``).

    Raises:
        RolloutFailed, RolloutTimeout: the canary (or first stable) did not roll out;
            no traffic moved (:func:`state_of` has the state).
        DeployError: no Service selects the Deployment's pods, or the cluster refused.
    """
    ns = release.namespace
    rendered, service, state = _canary_state(release, spec)
    name, svc, detail = state.deployment, str(state.service), state.detail
    vs_name, canary = detail["virtual_service"], detail["canary"]
    stable_svc, canary_svc = detail["stable_service"], detail["canary_service"]
    live_stable = _live_deployment(api, ns, name)
    state.previous_revision = _revision(live_stable)
    detail["first_deploy"] = live_stable is None
    replicas = int(detail["replicas"])
    others = _others(release, rendered)
    base_vs = next(
        (o for o in others if o.get("kind") == "VirtualService" and _name_of(o) == vs_name), None
    )
    if base_vs is not None:
        others = [o for o in others if o is not base_vs]
    if live_stable is None:
        log(f"canary: first deploy of {name} in {ns}: {release.image} becomes the stable")
        stable = _with_history(track_deployment(rendered, "stable", name=name, replicas=replicas),
                               release)  # fmt: skip
        _apply(api, release, [*others, stable], create_namespace=create_namespace, log=log)
        _wait(api, state, name, timeout=timeout, log=log)
        canary_pods = 0
    else:
        _apply(api, release, others, create_namespace=create_namespace, log=log)
        _label_stable(api, state, live_stable, timeout=timeout, log=log)
        canary_pods = 1
        log(f"canary: {release.image} starts as deployment/{canary} in {ns} (0 % of traffic)")
    labels = rendered.get("metadata", {}).get("labels") or {}
    canary_deployment = _with_history(
        track_deployment(rendered, "canary", name=canary, replicas=canary_pods), release
    )
    routes = canary_routes(
        stable_host=stable_svc, canary_host=canary_svc, weight=0,
        header=spec.header, header_value=spec.header_value,
    )  # fmt: skip
    routing = [
        track_service(service, "stable", stable_svc),
        track_service(service, "canary", canary_svc),
        virtual_service(vs_name, host=svc, routes=routes, labels=labels, base=base_vs),
    ]
    # Weights at 0 % canary before the canary starts, so an abort always finds them.
    _apply(api, release, [*routing, canary_deployment], log=log)
    _wait(api, state, canary, timeout=timeout, log=log)
    if live_stable is not None:
        log(f"canary reachable with header {spec.header}: {spec.header_value}")
    return state


def _canary_state(
    release: Release, spec: CanarySpec
) -> tuple[dict[str, Any], dict[str, Any], DeployState]:
    """The rendered Deployment and Service, and the names the canary uses."""
    rendered = _app_deployment(release)
    service = find_service(release.objects, rendered, release.service)
    name, svc = rendered["metadata"]["name"], service["metadata"]["name"]
    state = DeployState(
        kind="canary",
        namespace=release.namespace,
        deployment=name,
        service=svc,
        detail={
            "image": release.image,
            "canary": f"{name}-canary",
            "stable_service": f"{svc}-stable",
            "canary_service": f"{svc}-canary",
            "virtual_service": spec.virtual_service or svc,
            "header": spec.header,
            "header_value": spec.header_value,
            "replicas": _replicas(rendered),
        },
    )
    return rendered, service, state


def _name_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _label_stable(
    api: ApiClient, state: DeployState, live: Mapping[str, Any], *, timeout: float, log: Log
) -> None:
    """A stable Deployment from before canary (no track label on its pods) gets the label,
    so ``<svc>-stable`` finds its pods; its selector is immutable and stays as it is."""
    labels = live.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
    if labels.get(TRACK_LABEL) == "stable":
        return
    log(f"deployment/{state.deployment}: labelling its pods {TRACK_LABEL}=stable (a restart)")
    patch = {"spec": {"template": {"metadata": {"labels": {TRACK_LABEL: "stable"}}}}}
    patch_object(api, "apps/v1", "Deployment", state.deployment, state.namespace, patch, log=log)
    _wait(api, state, state.deployment, timeout=timeout, log=log)


def _set_routes(api: ApiClient, state: DeployState, weight: int, *, log: Log) -> None:
    detail = state.detail
    routes = canary_routes(
        stable_host=detail["stable_service"], canary_host=detail["canary_service"],
        weight=weight, header=detail["header"], header_value=detail["header_value"],
    )  # fmt: skip
    answer = patch_object(
        api, VIRTUAL_SERVICE_API, "VirtualService", detail["virtual_service"], state.namespace,
        {"spec": {"http": routes}}, log=log,
    )  # fmt: skip
    if (answer.get("spec", {}).get("http") or []) != routes:
        raise DeployError(f"virtualservice/{detail['virtual_service']} did not take the weights")
    state.canary_weight = weight


def set_canary_weight(
    api: ApiClient,
    state: DeployState,
    weight: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    log: Log,
) -> None:
    """Send ``weight`` percent of traffic to the canary, with
    ``ceil(replicas * weight / 100)`` canary pods: scaled (and ready) before a rise,
    scaled down after a fall, so the canary never takes traffic it has no pods for."""
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be 0-100, got {weight}")
    canary = state.detail["canary"]
    pods = canary_replicas(int(state.detail["replicas"]), weight)
    if weight > state.canary_weight:
        _scale(api, state.namespace, canary, pods, log=log)
        _wait(api, state, canary, timeout=timeout, log=log)
        _set_routes(api, state, weight, log=log)
    else:
        _set_routes(api, state, weight, log=log)
        _scale(api, state.namespace, canary, pods, log=log)
    log(f"canary {canary}: {weight} % of traffic, {pods} pod(s)")


def run_canary_steps(
    api: ApiClient,
    state: DeployState,
    spec: CanarySpec,
    *,
    analyse: Callable[[int], bool],
    log: Log,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """Walk the steps: set the weight, pause, then (if the step says so) ask
    ``analyse(weight)``. A False answer aborts the canary at once (every request back
    on the stable, canary scaled to 0) and returns False; True when every step passed.
    A first deploy has no canary to step through and returns True."""
    if state.detail.get("first_deploy"):
        log("canary: first deploy, nothing to compare with; steps skipped")
        return True
    for number, step in enumerate(spec.steps, start=1):
        log(f"canary step {number}/{len(spec.steps)}: weight {step.weight} %")
        set_canary_weight(api, state, step.weight, timeout=timeout, log=log)
        if step.pause_seconds:
            sleep(step.pause_seconds)
        if step.analysis and not analyse(step.weight):
            log(f"canary step {number}: analysis failed at {step.weight} %; aborting")
            abort_canary(api, state, log=log)
            return False
    return True


def promote_canary(
    api: ApiClient, state: DeployState, *, timeout: float = DEFAULT_TIMEOUT, log: Log
) -> None:
    """Give the stable Deployment the canary's pod template (a rolling update), wait for
    it, send all traffic to the stable and scale the canary to 0."""
    detail, ns = state.detail, state.namespace
    if not detail.get("first_deploy"):
        canary = _live_deployment(api, ns, detail["canary"])
        stable = _live_deployment(api, ns, state.deployment)
        if canary is None or stable is None:
            raise DeployError(f"canary or stable deployment of {state.deployment} is gone")
        template = copy.deepcopy(canary["spec"]["template"])
        template["metadata"]["labels"][TRACK_LABEL] = "stable"
        history = {
            k: v
            for k, v in (canary["metadata"].get("annotations") or {}).items()
            if k.startswith("slipway.dev/") or k == "kubernetes.io/change-cause"
        }
        patch: dict[str, Any] = {"spec": {"template": _merge_patch(stable["spec"]["template"],
                                                                   template)}}  # fmt: skip
        if history:
            patch["metadata"] = {"annotations": history}
        patch_object(api, "apps/v1", "Deployment", state.deployment, ns, patch, log=log)
        log(f"canary: deployment/{state.deployment} takes {detail['image']}")
        _wait(api, state, state.deployment, timeout=timeout, log=log)
    _set_routes(api, state, 0, log=log)
    _scale(api, ns, detail["canary"], 0, log=log)
    detail["promoted"] = True


def abort_canary(api: ApiClient, state: DeployState, *, log: Log) -> float:
    """Every request back on the stable (weights 100/0), then the canary scaled to 0.
    Returns the seconds from this call to the API confirming the weights."""
    started = time.monotonic()
    _set_routes(api, state, 0, log=log)
    seconds = time.monotonic() - started
    log(f"canary aborted: 0 % to {state.detail['canary']} after {seconds:.2f} s")
    _scale(api, state.namespace, state.detail["canary"], 0, log=log)
    state.detail["aborted"] = True
    return seconds


# --- rollback ------------------------------------------------------------------------------


def rollback(
    api: ApiClient, state: DeployState, *, to_revision: int | None = None, log: Log
) -> float:
    """Undo the deploy by its strategy; the seconds from this call until the API
    confirmed the change that moves traffic back.

    rolling: ``rollout undo`` to ``to_revision``, else the revision before the deploy;
    blue-green: the Service selector back (no revisions to choose from); canary:
    weights back to 0 % canary, or, once promoted, the stable Deployment undone to
    ``to_revision``, else its revision before the deploy. Wait for an undo with
    ``wait_for_rollout``.

    Raises:
        DeployError: nothing to go back to (a first deploy), or a revision the
            Deployment does not have, or ``to_revision`` for blue-green.
    """
    started = time.monotonic()
    if state.kind == "rolling":
        rollback_rolling(api, state, to_revision=to_revision, log=log)
        return time.monotonic() - started
    if state.kind == "blue_green":
        if to_revision is not None:
            raise DeployError("a blue-green rollback switches colours; it takes no revision")
        return rollback_blue_green(api, state, log=log)
    if state.detail.get("first_deploy") and to_revision is None:
        raise DeployError(
            f"deployment/{state.deployment} in {state.namespace} is a first deploy: nothing to "
            "roll back to"
        )
    if state.detail.get("promoted") or to_revision is not None:
        if not state.detail.get("aborted") and state.canary_weight:
            abort_canary(api, state, log=log)
        rollback_rolling(api, state, to_revision=to_revision, log=log)
        return time.monotonic() - started
    return abort_canary(api, state, log=log)


def observe_state(
    api: ApiClient, release: Release, strategy: StrategySpec, *, log: Log
) -> DeployState:
    """The state a rollback needs, read from the cluster: for a rollback a person
    starts when the deploy's own state is gone. ``release`` gives the names (its
    manifests, as rendered for the environment).

    rolling: the previous revision is the newest one before the current; blue-green:
    back to the colour the active Service does not select; canary: an abort while the
    canary has pods or weight, else the stable's previous revision.

    Raises:
        DeployError: the app is not deployed with this strategy, or has nothing to go
            back to.
    """
    ns = release.namespace
    rendered = _app_deployment(release)
    name = rendered["metadata"]["name"]
    if strategy.kind == "rolling":
        return DeployState(
            kind="rolling",
            namespace=ns,
            deployment=name,
            previous_revision=_previous_revision(api, ns, name),
        )
    if strategy.blue_green is not None:
        return _observe_blue_green(api, release, rendered, strategy.blue_green, log=log)
    assert strategy.canary is not None
    _, _, state = _canary_state(release, strategy.canary)
    detail = state.detail
    if _live_deployment(api, ns, name) is None:
        raise DeployError(f"deployment/{name} is not in {ns}: nothing to roll back")
    vs = get_object(api, VIRTUAL_SERVICE_API, "VirtualService", detail["virtual_service"], ns)
    state.canary_weight = canary_weight(vs, detail["canary_service"]) or 0
    canary = _live_deployment(api, ns, detail["canary"])
    if state.canary_weight or (canary is not None and _replicas(canary) > 0):
        log(f"canary {detail['canary']} is running ({state.canary_weight} %): aborting it")
    else:
        state.previous_revision = _previous_revision(api, ns, name)
        detail["promoted"] = True
    return state


def _previous_revision(api: ApiClient, namespace: str, name: str) -> int | None:
    """The newest revision of the Deployment other than the one it runs (kubectl's
    "previous"), or None."""
    current = _revision(_live_deployment(api, namespace, name))
    if current is None:
        raise DeployError(f"deployment/{name} is not in {namespace}: nothing to roll back")
    older = [r.number for r in rollout_history(api, namespace, name) if r.number != current]
    return max(older) if older else None


def _observe_blue_green(
    api: ApiClient,
    release: Release,
    rendered: dict[str, Any],
    spec: BlueGreenSpec,
    *,
    log: Log,
) -> DeployState:
    ns, name = release.namespace, rendered["metadata"]["name"]
    service = find_service(release.objects, rendered, spec.service or release.service)
    svc = service["metadata"]["name"]
    live = get_object(api, "v1", "Service", svc, ns)
    colour = service_colour(live)
    if live is None or colour is None:
        raise DeployError(f"service/{svc} in {ns} selects no colour: nothing to switch back to")
    old = other_colour(colour)
    if _live_deployment(api, ns, f"{name}-{old}") is None:
        raise DeployError(f"deployment/{name}-{old} is not in {ns}: nothing to switch back to")
    log(f"service/{svc} selects {colour}; a rollback switches it to {old}")
    return DeployState(
        kind="blue_green",
        namespace=ns,
        deployment=name,
        service=svc,
        active_colour=old,
        idle_colour=colour,
        preview_service=spec.preview_service or f"{svc}-preview",
        detail={
            "previous_selector": {**(live["spec"].get("selector") or {}), COLOUR_LABEL: old},
            "selector": dict(service.get("spec", {}).get("selector") or {}),
            "replicas": _replicas(rendered),
            "scale_down_delay_seconds": spec.scale_down_delay_seconds,
            "promoted": True,
        },
    )
