"""Rollback on request: a person takes an app in one environment back to its previous release.

Started from the Prefect UI (deployment ``rollback/manual``) or a script::

    prefect deployment run 'rollback/manual' -p app=shop -p environment=production \\
        -p namespace=shop-prod -p cluster=prod-cluster -p manifests=manifests \\
        -p reason="5xx after 1.4.0" -p requested_by=alice

The automatic rollback in :mod:`slipway.flows.deliver` acts on the deploy it has just
made; this flow starts cold, long after the deploy, and rebuilds what it needs from
the two places that remember: the manifests repository (GitOps is the source of
truth) and the cluster.

**Order.** Nothing is changed until everything has been checked:

1. input: names (app, environment, namespace, Deployment, Service) against what
   Kubernetes and slipway accept; the blocks exist (manifests, cluster, notifier);
   the manifests block knows the environment; the cluster answers.
2. the deploy slot of the app and environment (the Prefect concurrency limit
   ``deliver`` holds while it deploys, :func:`~slipway.flows.deliver.slot_name`), so
   a rollback never interleaves with a deploy; a deploy still holding it after
   ``busy_timeout`` seconds fails the run with :class:`DeployBusy`.
3. reading and planning: a clone of the manifests repository gives the app's
   release history in the environment (slipway's bump and revert commits, told
   apart by their trailers) and the rendered manifests (the names of the app's
   Deployment and Service); the cluster shows the strategy serving the app (a
   Service selecting a colour: blue-green; a ``<deployment>-canary``: canary; else
   rolling), what it runs, and what it would go back to
   (:func:`~slipway.tasks.strategies.observe_state`). A bad revision, a strategy the
   cluster does not show, or nothing to go back to fails the run here.
4. the cluster first, so traffic is back in seconds
   (:func:`~slipway.tasks.strategies.rollback`: rolling ``rollout undo``; blue-green
   the Service selector back; canary the weights back to the stable, or a promoted
   stable undone), then the rollout is waited for where there is one.
5. git: the release's bump commit is reverted, with the reason and who asked, so a
   later sync never re-applies it. Once the cluster was told to go back, git follows
   even if the rollout then fails; a revert git refuses (a conflict with later
   changes) fails the run after the cluster step, and running the flow again
   retries just the revert (the cluster no longer runs the release).
6. a markdown artifact (from which image and revision to which, seconds, revert
   commits) and, with a notifier, a Slack message.

**What is rolled back** (:func:`decide`; git is the ledger):

- The newest slipway commit of the app in the environment is a bump: that release
  is undone. The cluster is rolled back if it runs the bump's image (otherwise the
  release never reached it, and the cluster is left alone, saying so); the bump is
  reverted.
- It is a revert: a rollback already happened (the automatic one, or an earlier run
  of this flow). The cluster is rolled back only if it still runs the reverted
  image (a rollback that stopped half-way); otherwise there is nothing to do and the
  run says so. Running the flow twice is therefore harmless; going back further
  takes ``to_revision``.
- No slipway commit at all: the cluster alone is rolled back.
- ``to_revision`` (rolling only, as ``kubectl rollout undo --to-revision``): the
  cluster goes to that revision; in git the live bumps newer than the newest one
  naming that revision's image are reverted, newest first. When no live bump names
  it the run fails before changing anything (``revert_manifests=false`` rolls back
  the cluster alone).

The pipeline file (with the environment's strategy spec) lives in the app's
repository, which this flow does not read: a canary's VirtualService is found by its
default name (the app's Service), and blue-green's preview Service by its default.

No ``from __future__ import annotations``: a flow sent to another process (Prefect's
runner) must resolve its parameter annotations there.
"""

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import git
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.asyncio import concurrency
from prefect.context import get_run_context
from prefect.states import Failed
from prefect.utilities.urls import url_for
from pydantic import Field

from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.blocks.notifications import SlackNotifier
from slipway.exceptions import (
    ConfigError,
    DeployBusy,
    DeployError,
    ManifestRepoError,
    SlipwayError,
    UnsafeInputError,
    retry_temporary_errors,
)
from slipway.flows.deliver import ensure_deploy_slot_limit, slot_name
from slipway.redact import Redactor
from slipway.spec_types import NAME_PATTERN
from slipway.tasks.gitops import (
    HISTORY_SCAN_LIMIT,
    TRAILER_APP,
    TRAILER_ENVIRONMENT,
    TRAILER_IMAGE,
    TRAILER_REVERTED_IMAGE,
    TRAILER_REVERTS,
    BumpResult,
    latest_live_bump,
    parse_trailers,
    revert_bump,
)
from slipway.tasks.kube_apply import get_object
from slipway.tasks.kube_client import ApiClient, check_reachable, load_cluster
from slipway.tasks.manifests_render import render_manifests
from slipway.tasks.notify import send_slack_message
from slipway.tasks.rollout import rollout_history, rollout_status, wait_for_rollout
from slipway.tasks.strategies import DeployState, Release, observe_state
from slipway.tasks.strategies import rollback as undo_deploy
from slipway.tasks.strategy_objects import (
    VIRTUAL_SERVICE_API,
    canary_weight,
    find_deployment,
    find_service,
    service_colour,
)
from slipway.tasks.strategy_spec import (
    SERVICE_NAME,
    STRATEGY_KINDS,
    BlueGreenSpec,
    CanarySpec,
    CanaryStepSpec,
    RollingSpec,
    StrategyKind,
    StrategySpec,
)
from slipway.workspace import new_workspace

# A DNS-1123 label: what Kubernetes accepts as a namespace name.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A DNS-1123 subdomain: what Kubernetes accepts as a Deployment name.
DEPLOYMENT_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
# What Prefect accepts as a block document name.
BLOCK_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,127}$"
DEFAULT_ROLLOUT_TIMEOUT = 600.0  # seconds the cluster may take to roll back
DEFAULT_BUSY_TIMEOUT = 60.0  # seconds to wait for a running deploy to free the slot
MAX_REASON_CHARS = 2000
MAX_REQUESTER_CHARS = 200

_NAME_RE = re.compile(NAME_PATTERN)
_NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)
_DEPLOYMENT_RE = re.compile(DEPLOYMENT_PATTERN)
_SERVICE_RE = re.compile(SERVICE_NAME)
_SHA_RE = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
# a newline in a name written into a commit message would forge a trailer
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
BlockName = Annotated[str, Field(pattern=BLOCK_NAME_PATTERN)]
Log = Callable[[str], None]
Commit = tuple[str, dict[str, str]]  # (sha, trailers)
RollbackStatus = Literal["rolled-back", "nothing-to-do", "failed"]


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Serving:
    """What takes (or will take) the app's traffic in the cluster.

    Attributes:
        what: the Deployment(s), e.g. ``deployment/shop`` or ``deployment/shop-green (green)``.
        revision: its ``deployment.kubernetes.io/revision`` (None before the controller
            numbered it).
        images: the container images of its pod template.
    """

    what: str
    revision: int | None
    images: tuple[str, ...]

    def describe(self) -> str:
        revision = f" revision {self.revision}" if self.revision else ""
        return f"{self.what}{revision} ({', '.join(self.images) or 'no images'})"


@dataclass(frozen=True)
class Revert:
    """One bump commit the rollback reverted (``commit`` None: it needed no revert)."""

    bump: str
    commit: str | None
    note: str = ""


@dataclass(frozen=True)
class RollbackReport:
    """How one rollback ended: the flow's result, and what the artifact shows.

    Attributes:
        status: ``rolled-back`` (the cluster or git changed), ``nothing-to-do`` (both
            were already where a rollback takes them) or ``failed`` (``error`` says why).
        strategy: the strategy serving the app (given, or what the cluster shows).
        before: what served before; ``after``: what serves now (None: cluster untouched).
        seconds: from the decision to the API confirming the change that moves traffic
            back. ``rollout_seconds``: from then until the rollout was done (None where
            there is nothing to wait for).
        reverts: the bump commits reverted, newest first, with their revert commits.
        notes: what the person should know (cluster left alone, git not reverted...).
    """

    app: str
    environment: str
    namespace: str
    status: RollbackStatus
    reason: str
    requested_by: str | None
    strategy: StrategyKind | None = None
    before: Serving | None = None
    after: Serving | None = None
    seconds: float | None = None
    rollout_seconds: float | None = None
    reverts: tuple[Revert, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None
    run_url: str | None = None
    total_seconds: float = 0.0

    @property
    def revert_commits(self) -> tuple[str, ...]:
        return tuple(r.commit for r in self.reverts if r.commit)


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` chose: roll the cluster back or not, which bumps to revert."""

    cluster: bool
    reverts: tuple[Commit, ...] = ()
    notes: tuple[str, ...] = ()
    nothing_to_do: str | None = None


@dataclass(frozen=True)
class ManifestsView:
    """What the manifests repository says about the app in the environment."""

    head: str
    history: tuple[Commit, ...]  # slipway's bumps and reverts, newest first
    objects: list[dict[str, Any]] = field(repr=False)  # the rendered manifests


@dataclass(frozen=True)
class Plan:
    """The cluster's side of a rollback, read before anything changes.

    ``state`` and ``target`` (what will serve afterwards) are filled in only when the
    cluster is to be rolled back.
    """

    strategy: StrategyKind
    deployment: str
    before: Serving
    serving_images: frozenset[str]
    state: DeployState | None = None
    target: Serving | None = None


# ----------------------------------------------------------------------------- input


def check_inputs(
    *,
    app: str,
    environment: str,
    namespace: str,
    strategy: str | None,
    to_revision: int | None,
    reason: str,
    requested_by: str | None,
    deployment: str | None = None,
    service: str | None = None,
) -> tuple[str, str | None]:
    """Refuse unsafe or impossible input before anything is loaded; returns the reason
    and the requester, stripped.

    Raises:
        UnsafeInputError: a name Kubernetes or slipway would refuse, or control
            characters in the requester's name.
        ConfigError: an empty reason, a revision below 1, an unknown strategy, or
            ``to_revision`` with a strategy other than rolling.
    """
    for label, value in (("app", app), ("environment", environment)):
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise UnsafeInputError(
                f"invalid {label} name {str(value)[:80]!r}: 1-63 letters, digits, '.', '_', '-'"
            )
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise UnsafeInputError(
            f"invalid namespace {str(namespace)[:80]!r}: a DNS label (lower-case letters, "
            "digits and '-', at most 63)"
        )
    if deployment is not None and not _DEPLOYMENT_RE.match(deployment):
        raise UnsafeInputError(f"invalid deployment name {deployment[:80]!r}: a DNS subdomain")
    if service is not None and not _SERVICE_RE.match(service):
        raise UnsafeInputError(f"invalid service name {service[:80]!r}: a DNS label")
    if strategy is not None and strategy not in STRATEGY_KINDS:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGY_KINDS)}, got {strategy!r}")
    if to_revision is not None:
        if isinstance(to_revision, bool) or not isinstance(to_revision, int) or to_revision < 1:
            raise ConfigError(f"to_revision must be a revision number (1 or more): {to_revision!r}")
        if strategy not in (None, "rolling"):
            raise ConfigError(
                "to_revision is for rolling deploys (kubectl rollout undo --to-revision); "
                f"a {strategy} rollback takes no revision"
            )
    reason = (reason or "").strip()
    if not reason:
        raise ConfigError("a rollback needs a reason; it is recorded in git and the artifact")
    if len(reason) > MAX_REASON_CHARS:
        raise ConfigError(f"the reason is longer than {MAX_REASON_CHARS} characters")
    requested_by = (requested_by or "").strip() or None
    if requested_by and (len(requested_by) > MAX_REQUESTER_CHARS or _CONTROL.search(requested_by)):
        raise UnsafeInputError(
            f"invalid requested_by {requested_by[:80]!r}: 1-{MAX_REQUESTER_CHARS} characters, "
            "no control characters"
        )
    return reason, requested_by


def _load_error(kind: str, name: str, exc: Exception) -> ConfigError:
    """A block that cannot be loaded, named without echoing its content (it holds secrets)."""
    missing = "Unable to find" in str(exc)
    why = "no such block" if missing else f"it does not load ({type(exc).__name__})"
    return ConfigError(f"{kind} block {name!r}: {why}")


async def load_blocks(
    *, manifests: str, environment: str, notifier: str | None, redactor: Redactor
) -> tuple[ManifestsRepository, EnvironmentManifests, SlackNotifier | None]:
    """The manifests block (which must know ``environment``) and the notifier, if named.

    Raises:
        ConfigError: a block is missing or invalid, or the environment is unknown.
    """
    try:
        repo = await ManifestsRepository.aload(manifests)
    except ValueError as exc:
        raise _load_error("ManifestsRepository", manifests, exc) from None
    redactor.add(*repo.secret_values())
    target = repo.environments.get(environment)
    if target is None:
        known = ", ".join(sorted(repo.environments)) or "none"
        raise ConfigError(
            f"environment {environment!r} is not in manifests block {manifests!r} (it has: {known})"
        )
    slack = None
    if notifier:
        try:
            slack = await SlackNotifier.aload(notifier)
        except ValueError as exc:
            raise _load_error("SlackNotifier", notifier, exc) from None
        redactor.add(*slack.secret_values())
    return repo, target, slack


# ----------------------------------------------------------------------------- git (read)


def release_history(workdir: Path, path: str, *, app: str, environment: str) -> list[Commit]:
    """slipway's commits (bumps and reverts) of ``app`` in ``environment`` in the clone at
    ``workdir``, newest first, with their trailers: the commits that touched ``path``, as
    far back as :data:`~slipway.tasks.gitops.HISTORY_SCAN_LIMIT` (what
    :func:`~slipway.tasks.gitops.latest_live_bump` reads)."""
    try:
        out = git.Repo(workdir).git.log(
            f"--max-count={HISTORY_SCAN_LIMIT}",
            "-z",
            "--format=%H%n%B",
            "HEAD",
            "--",
            path,
            env={"GIT_LITERAL_PATHSPECS": "1"},
        )
    except git.GitCommandError as exc:
        raise ManifestRepoError(
            f"manifests repository: cannot read the history of {path!r} (git exit {exc.status})"
        ) from None
    found: list[Commit] = []
    for record in str(out).split("\0"):
        sha, _, message = record.strip("\n").partition("\n")
        trailers = parse_trailers(message)
        if (
            _SHA_RE.match(sha)
            and trailers.get(TRAILER_APP) == app
            and trailers.get(TRAILER_ENVIRONMENT) == environment
        ):
            found.append((sha, trailers))
    return found


def live_bumps(history: Sequence[Commit]) -> list[Commit]:
    """The bumps of ``history`` (newest first) that no later revert undid."""
    reverted: set[str] = set()
    live: list[Commit] = []
    for sha, trailers in history:
        if TRAILER_REVERTS in trailers:
            reverted.add(trailers[TRAILER_REVERTS])
        elif sha not in reverted:
            live.append((sha, trailers))
    return live


def read_manifests(
    repo: ManifestsRepository,
    target: EnvironmentManifests,
    *,
    app: str,
    environment: str,
    workdir: Path,
    redactor: Redactor,
    log: Log,
) -> ManifestsView:
    """Clone (or refresh) the manifests repository: the app's history and rendered objects."""
    newest = latest_live_bump(
        repo, app=app, environment=environment, workdir=workdir, redactor=redactor
    )
    head = git.Repo(workdir).head.commit.hexsha
    history = release_history(workdir, target.path, app=app, environment=environment)
    live = live_bumps(history)
    ours, theirs = (live[0][0] if live else None), (newest[0] if newest else None)
    if ours != theirs:  # two readings of one clone disagree: never guess what to revert
        raise ManifestRepoError(
            f"manifests repository: the newest live bump of {app} in {environment} is "
            f"{theirs} to latest_live_bump but {ours} to the history read here"
        )
    objects = render_manifests(workdir, target.path, target.kind)
    log(
        f"manifests at {head[:12]}: {len(history)} slipway commit(s) of {app} in {environment}"
        + (f", the newest {history[0][0][:12]}" if history else "")
    )
    return ManifestsView(head=head, history=tuple(history), objects=objects)


# ----------------------------------------------------------------------------- decision


def decide(
    history: Sequence[Commit],
    serving_images: frozenset[str],
    *,
    app: str,
    environment: str,
    revert_manifests: bool = True,
    revision_images: Sequence[str] | None = None,
) -> Decision:
    """What a rollback does, from git's history and what the cluster runs (no I/O).

    ``revision_images``: the images of the revision ``to_revision`` names (None without
    one). The rules are in the module docstring.

    Raises:
        ConfigError: no live bump names ``to_revision``'s image, so git could not be
            made to match the cluster (unless ``revert_manifests`` is false).
    """
    where = f"{app} in {environment}"
    keep_git = () if revert_manifests else ("revert_manifests is false: git is left as it is",)
    if revision_images is not None:
        live = live_bumps(history)
        for index, (_sha, trailers) in enumerate(live):
            if trailers.get(TRAILER_IMAGE) in revision_images:
                reverts = tuple(live[:index]) if revert_manifests else ()
                return Decision(cluster=True, reverts=reverts, notes=keep_git)
        if live and revert_manifests:
            raise ConfigError(
                f"that revision runs {', '.join(revision_images)}, which no live bump of {where} "
                f"names (the newest names {live[0][1].get(TRAILER_IMAGE)}): git cannot be made "
                "to match; run with revert_manifests=false to roll back the cluster alone"
            )
        return Decision(cluster=True, notes=keep_git)
    if not history:
        return Decision(cluster=True, notes=(f"git has no slipway bump of {where} to revert",))
    sha, trailers = history[0]
    if TRAILER_REVERTS not in trailers:
        image = trailers.get(TRAILER_IMAGE)
        runs = image is None or image in serving_images
        left = () if runs else (f"the cluster does not run {image}: it is left as it is",)
        reverts = ((sha, trailers),) if revert_manifests else ()
        return Decision(cluster=runs, reverts=reverts, notes=left + keep_git)
    image = trailers.get(TRAILER_REVERTED_IMAGE)
    done = f"commit {sha[:12]} already reverted {trailers[TRAILER_REVERTS][:12]}" + (
        f" ({image})" if image else ""
    )
    if image is not None and image in serving_images:
        return Decision(cluster=True, notes=(f"{done}; the cluster still runs it: rolling back",))
    return Decision(
        cluster=False,
        nothing_to_do=f"nothing to roll back: {done}, and the cluster does not run it",
    )


# ----------------------------------------------------------------------------- cluster (read)


def _deployment_name(release: Release) -> str:
    """The app's Deployment in the manifests, picked as the strategies pick it."""
    name = release.deployment
    if name is None and any(
        o.get("kind") == "Deployment" and o.get("metadata", {}).get("name") == release.app
        for o in release.objects
    ):
        name = release.app
    return str(find_deployment(release.objects, name)["metadata"]["name"])


def _service_name(release: Release, deployment: str) -> str:
    rendered = find_deployment(release.objects, deployment)
    return str(find_service(release.objects, rendered, release.service)["metadata"]["name"])


def _serving(api: ApiClient, namespace: str, name: str, what: str | None = None) -> Serving:
    status = rollout_status(api, namespace, name)
    return Serving(what or f"deployment/{name}", status.revision or None, status.images)


def detect_strategy(api: ApiClient, release: Release, deployment: str) -> StrategyKind:
    """The strategy the cluster shows for the app: a Service selecting a colour is
    blue-green, a ``<deployment>-canary`` is canary, the Deployment alone is rolling.

    Raises:
        DeployError: none of them is in the namespace.
    """
    ns = release.namespace
    try:
        service: str | None = _service_name(release, deployment)
    except DeployError:
        service = None  # no Service in front of the Deployment: it cannot be blue-green
    if service is not None and service_colour(get_object(api, "v1", "Service", service, ns)):
        return "blue_green"
    if get_object(api, "apps/v1", "Deployment", f"{deployment}-canary", ns) is not None:
        return "canary"
    if get_object(api, "apps/v1", "Deployment", deployment, ns) is not None:
        return "rolling"
    raise DeployError(
        f"{release.app} is not deployed in namespace {ns}: no deployment/{deployment} "
        f"(rolling), {deployment}-blue/-green behind a coloured Service, or {deployment}-canary"
    )


def _strategy_spec(kind: StrategyKind) -> StrategySpec:
    """What :func:`observe_state` needs to know the names by. The environment's own spec
    is in the app's repository, so the defaults stand in (a canary needs one step to be
    valid; it is never walked)."""
    if kind == "blue_green":
        return StrategySpec(blue_green=BlueGreenSpec())
    if kind == "canary":
        return StrategySpec(canary=CanarySpec(steps=[CanaryStepSpec(weight=100)]))
    return StrategySpec(rolling=RollingSpec())


def plan_cluster(
    api: ApiClient, release: Release, strategy: StrategyKind | None, *, log: Log
) -> Plan:
    """What serves the app now, and with which strategy (reads only).

    Raises:
        ConfigError: ``strategy`` is not the one the cluster shows.
        DeployError: the app is not deployed in the namespace.
    """
    ns = release.namespace
    name = _deployment_name(release)
    observed = detect_strategy(api, release, name)
    if strategy is not None and strategy != observed:
        raise ConfigError(
            f"strategy {strategy} was given, but the cluster shows {observed} for {release.app} "
            f"in {ns}; leave strategy empty to use what the cluster shows"
        )
    if observed == "rolling":
        before = _serving(api, ns, name)
        images = set(before.images)
    elif observed == "blue_green":
        service = get_object(api, "v1", "Service", _service_name(release, name), ns)
        colour = service_colour(service)
        before = _serving(api, ns, f"{name}-{colour}", f"deployment/{name}-{colour} ({colour})")
        images = set(before.images)
    else:
        before = _serving(api, ns, name, f"deployment/{name} (stable)")
        images = set(before.images)
        svc = _service_name(release, name)
        vs = get_object(api, VIRTUAL_SERVICE_API, "VirtualService", svc, ns)
        weight = canary_weight(vs, f"{svc}-canary") or 0
        canary = get_object(api, "apps/v1", "Deployment", f"{name}-canary", ns) or {}
        if weight or (canary.get("spec") or {}).get("replicas"):
            running = rollout_status(api, ns, f"{name}-canary").images
            images |= set(running)
            before = replace(
                before,
                what=f"{before.what} and deployment/{name}-canary at {weight} %",
                images=tuple(dict.fromkeys((*running, *before.images))),
            )
    log(f"{release.app} in {ns} is deployed {observed}; serving: {before.describe()}")
    return Plan(observed, name, before, frozenset(images))


def plan_target(
    api: ApiClient, release: Release, plan: Plan, to_revision: int | None, *, log: Log
) -> Plan:
    """Where the cluster goes back to, and the state the rollback needs (reads only).

    Raises:
        ConfigError: the Deployment has no revision ``to_revision``, or its strategy
            takes none.
        DeployError: nothing to go back to (a first deploy).
    """
    ns, name = release.namespace, plan.deployment
    if to_revision is not None and plan.strategy != "rolling":
        raise ConfigError(
            f"to_revision is for rolling deploys; {release.app} in {ns} is deployed {plan.strategy}"
        )
    state = observe_state(api, release, _strategy_spec(plan.strategy), log=log)
    if plan.strategy == "blue_green":
        old = f"{name}-{state.active_colour}"
        target = _serving(api, ns, old, f"deployment/{old} ({state.active_colour})")
        return replace(plan, state=state, target=target)
    if plan.strategy == "canary" and not state.detail.get("promoted"):
        return replace(plan, state=state, target=_serving(api, ns, name, f"deployment/{name}"))
    revisions = {r.number: r for r in rollout_history(api, ns, name)}
    if to_revision is not None and to_revision not in revisions:
        raise ConfigError(
            f"deployment/{name} in {ns} has no revision {to_revision}; its revisions: "
            f"{', '.join(map(str, sorted(revisions))) or 'none'}"
        )
    wanted = to_revision or state.previous_revision
    if wanted is None or wanted not in revisions:
        raise DeployError(
            f"deployment/{name} in {ns} has no revision before {plan.before.revision}: "
            "nothing to roll back to"
        )
    target = Serving(f"deployment/{name}", wanted, revisions[wanted].images)
    return replace(plan, state=state, target=target)


# ----------------------------------------------------------------------------- cluster (act)


def roll_back_cluster(api: ApiClient, plan: Plan, to_revision: int | None, *, log: Log) -> float:
    """The change that moves traffic back; seconds until the API confirmed it."""
    assert plan.state is not None
    return undo_deploy(api, plan.state, to_revision=to_revision, log=log)


def settle_cluster(
    api: ApiClient, plan: Plan, *, timeout: float, log: Log
) -> tuple[Serving, float | None]:
    """What serves after the rollback, once its rollout is done (rolling, a promoted
    canary); the seconds the rollout took, or None when there was none to wait for."""
    assert plan.state is not None and plan.target is not None
    ns, name = plan.state.namespace, plan.deployment
    if plan.strategy == "blue_green":
        old = f"{name}-{plan.state.active_colour}"
        return _serving(api, ns, old, plan.target.what), None
    if plan.strategy == "canary" and not plan.state.detail.get("promoted"):
        return _serving(api, ns, name, f"deployment/{name} (stable, all traffic)"), None
    started = time.monotonic()
    status = wait_for_rollout(api, ns, name, timeout=timeout, log=log)
    what = f"deployment/{name}, back on revision {plan.target.revision}'s template, now"
    return Serving(what, status.revision or None, status.images), time.monotonic() - started


# ----------------------------------------------------------------------------- the flow


async def _step(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` as a Prefect task named ``name`` (a step in the UI); its result or error.
    Temporary errors (a lost push race, an API that did not answer) are retried twice."""
    step = task(
        name=name,
        cache_policy=NO_CACHE,
        retries=2,
        retry_delay_seconds=[2, 10],
        retry_condition_fn=retry_temporary_errors,
    )(fn)
    future = step.submit(*args, **kwargs)
    await asyncio.to_thread(future.wait)
    return await future.state.aresult()


@dataclass(frozen=True)
class _Request:
    """The flow's parameters, checked."""

    app: str
    environment: str
    namespace: str
    reason: str
    requested_by: str | None
    strategy: StrategyKind | None
    to_revision: int | None
    revert_manifests: bool
    deployment: str | None
    service: str | None
    rollout_timeout: float
    run_url: str | None


@flow(
    name="rollback",
    flow_run_name="rollback-{app}-{environment}",
    persist_result=True,
    description="Roll an app back in one environment: the cluster first, then a revert "
    "commit in the GitOps manifests repository.",
)
async def rollback(
    app: Name,
    environment: Name,
    namespace: Annotated[str, Field(pattern=NAMESPACE_PATTERN)],
    cluster: BlockName,
    manifests: BlockName,
    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON_CHARS)],
    requested_by: Annotated[str | None, Field(max_length=MAX_REQUESTER_CHARS)] = None,
    strategy: StrategyKind | None = None,
    to_revision: Annotated[int | None, Field(ge=1)] = None,
    revert_manifests: bool = True,
    notifier: BlockName | None = None,
    deployment: Annotated[str | None, Field(pattern=DEPLOYMENT_PATTERN)] = None,
    service: Annotated[str | None, Field(pattern=SERVICE_NAME)] = None,
    rollout_timeout: Annotated[float, Field(gt=0, le=86400)] = DEFAULT_ROLLOUT_TIMEOUT,
    busy_timeout: Annotated[float, Field(gt=0, le=3600)] = DEFAULT_BUSY_TIMEOUT,
) -> RollbackReport:
    """Roll an app back in one environment: the cluster first, then a revert commit in the
    manifests repository (the module docstring says how and what).

    The parameters' constraints are in their types; their descriptions are here, where
    Prefect reads them for the form in the UI (it drops ``Field(description=...)`` given
    in ``Annotated``).

    Args:
        app: Application name, as in its pipeline file and the bump commits' trailers.
        environment: Environment to roll back; the manifests block has a path for it.
        namespace: Namespace the app runs in.
        cluster: KubernetesCredentials (or KubernetesClusterConfig) block name.
        manifests: ManifestsRepository block name (the GitOps repository).
        reason: Why; recorded in the revert commit, the artifact and the Slack message.
        requested_by: Who asks for the rollback; recorded with the reason. Default: none.
        strategy: How the app is deployed (rolling, blue_green, canary). Default: what
            the cluster shows.
        to_revision: Rolling only: the Deployment revision to go back to, as
            `kubectl rollout undo --to-revision`. Default: the revision before the
            current one.
        revert_manifests: Revert the release's bump commit in git, so a later sync does
            not re-apply it. Default: true.
        notifier: SlackNotifier block name to tell the team. Default: none.
        deployment: The app's Deployment in the manifests. Default: the one named like
            the app, else the only one.
        service: The app's Service in the manifests. Default: the one selecting the
            Deployment's pods.
        rollout_timeout: Seconds the rollback's rollout may take. Default: 600.
        busy_timeout: Seconds to wait for a running deploy of the app to this
            environment to finish before giving up. Default: 60.
    """
    started = time.monotonic()
    reason, requested_by = check_inputs(
        app=app,
        environment=environment,
        namespace=namespace,
        strategy=strategy,
        to_revision=to_revision,
        reason=reason,
        requested_by=requested_by,
        deployment=deployment,
        service=service,
    )
    redactor = Redactor()
    logger = get_run_logger()

    def log(line: str) -> None:
        logger.info(redactor.redact(line))

    repo, target, slack = await load_blocks(
        manifests=manifests, environment=environment, notifier=notifier, redactor=redactor
    )
    api = await load_cluster(cluster)
    version = await asyncio.to_thread(check_reachable, api)
    log(
        f"rollback of {app} in {environment} (namespace {namespace} on Kubernetes {version}), "
        f"requested by {requested_by or '(not given)'}: {reason}"
    )
    flow_run = get_run_context().flow_run  # type: ignore[union-attr]
    run_id = str(flow_run.id) if flow_run else "local"
    request = _Request(
        app=app,
        environment=environment,
        namespace=namespace,
        reason=reason,
        requested_by=requested_by,
        strategy=strategy,
        to_revision=to_revision,
        revert_manifests=revert_manifests,
        deployment=deployment,
        service=service,
        rollout_timeout=rollout_timeout,
        run_url=url_for(flow_run) if flow_run else None,
    )
    limit = slot_name(app, environment)
    await ensure_deploy_slot_limit(limit)
    workdir = new_workspace(app, f"rollback-{run_id}")
    holding = False
    try:
        async with concurrency(limit, occupy=1, timeout_seconds=busy_timeout, strict=True):
            holding = True
            report = await _roll_back(request, repo, target, api, workdir, redactor, log)
    except TimeoutError:
        if holding:
            raise
        raise DeployBusy(
            f"a deploy of {app} to {environment} still holds the slot {limit!r} after "
            f"{busy_timeout:g} s: wait for it (its own analysis may roll it back) or cancel "
            "that run, then start the rollback again"
        ) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = replace(report, total_seconds=round(time.monotonic() - started, 3))
    await _publish(report, slack, redactor)
    log(summary_line(report))
    if report.status == "failed":
        return Failed(  # type: ignore[return-value]
            message=redactor.redact(f"rollback of {app} in {environment} failed: {report.error}"),
            data=report,
        )
    return report


async def _roll_back(
    r: _Request,
    repo: ManifestsRepository,
    target: EnvironmentManifests,
    api: ApiClient,
    workdir: Path,
    redactor: Redactor,
    log: Log,
) -> RollbackReport:
    """Read and plan (an error there: nothing changed), then the cluster, then git."""
    view: ManifestsView = await _step(
        "read-manifests",
        read_manifests,
        repo,
        target,
        app=r.app,
        environment=r.environment,
        workdir=workdir,
        redactor=redactor,
        log=log,
    )
    release = Release(
        app=r.app,
        environment=r.environment,
        namespace=r.namespace,
        objects=view.objects,
        image="",  # observe_state reads names only
        deployment=r.deployment,
        service=r.service,
    )
    plan: Plan = await _step("read-cluster", plan_cluster, api, release, r.strategy, log=log)
    if r.to_revision is not None:
        plan = await _step("plan-target", plan_target, api, release, plan, r.to_revision, log=log)
    decision = decide(
        view.history,
        plan.serving_images,
        app=r.app,
        environment=r.environment,
        revert_manifests=r.revert_manifests,
        revision_images=plan.target.images if plan.target else None,
    )
    if decision.cluster and plan.target is None:
        plan = await _step("plan-target", plan_target, api, release, plan, None, log=log)
    notes = decision.notes + _git_follows_notes(decision, plan, view.history)
    report = RollbackReport(
        app=r.app,
        environment=r.environment,
        namespace=r.namespace,
        status="nothing-to-do",
        reason=r.reason,
        requested_by=r.requested_by,
        strategy=plan.strategy,
        before=plan.before,
        notes=((decision.nothing_to_do,) if decision.nothing_to_do else ()) + notes,
        run_url=r.run_url,
    )
    for note in report.notes:
        log(note)
    if not decision.cluster and not decision.reverts:
        return report
    report = replace(report, status="rolled-back")
    error: str | None = None
    if decision.cluster:
        try:
            seconds = await _step(
                f"rollback-{r.environment}", roll_back_cluster, api, plan, r.to_revision, log=log
            )
        except SlipwayError as exc:  # the cluster refused: git stays as it is
            return replace(report, status="failed", error=redactor.redact(str(exc)))
        report = replace(report, seconds=round(seconds, 3))
        try:
            after, rollout_seconds = await _step(
                f"wait-{r.environment}",
                settle_cluster,
                api,
                plan,
                timeout=r.rollout_timeout,
                log=log,
            )
            rounded = None if rollout_seconds is None else round(rollout_seconds, 3)
            report = replace(report, after=after, rollout_seconds=rounded)
        except SlipwayError as exc:  # told to go back: git follows, the run still fails
            error = redactor.redact(str(exc))
    asked = f" requested by {r.requested_by}" if r.requested_by else ""
    reverts: list[Revert] = []
    for sha, _trailers in decision.reverts:
        try:
            result: BumpResult = await _step(
                f"revert-{sha[:12]}",
                revert_bump,
                repo,
                commit_sha=sha,
                reason=f"manual rollback{asked}: {r.reason}",
                workdir=workdir,
                redactor=redactor,
                log=log,
            )
        except SlipwayError as exc:  # a conflict, a refused push: a person must look
            failed = redactor.redact(f"revert of {sha[:12]}: {exc}")
            error = f"{error}; {failed}" if error else failed
            break
        reverts.append(Revert(sha, result.commit_sha if result.changed else None, result.note))
    report = replace(report, reverts=tuple(reverts))
    return replace(report, status="failed", error=error) if error else report


def _git_follows_notes(
    decision: Decision, plan: Plan, history: Sequence[Commit]
) -> tuple[str, ...]:
    """Say so when git, once reverted, names another image than the cluster goes back to."""
    if not decision.cluster or not decision.reverts or plan.target is None:
        return ()
    reverted = {sha for sha, _t in decision.reverts}
    remaining = [t for s, t in live_bumps(history) if s not in reverted]
    image = remaining[0].get(TRAILER_IMAGE) if remaining else None
    if image is None:
        return ("once reverted, git names no slipway image of the app any more",)
    if image not in plan.target.images:
        return (
            f"once reverted, git names {image} while the cluster goes back to "
            f"{', '.join(plan.target.images)}: a later sync deploys {image}",
        )
    return ()


# ----------------------------------------------------------------------------- reporting


def summary_line(report: RollbackReport) -> str:
    """One line: what happened (the artifact's description and the last log line)."""
    where = f"{report.app} in {report.environment}"
    if report.status == "nothing-to-do":
        return f"{where}: {report.notes[0] if report.notes else 'nothing to roll back'}"
    parts = [f"{where}: {report.status}"]
    if report.before is not None and report.after is not None:
        parts.append(f"{report.before.describe()} -> {report.after.describe()}")
    if report.seconds is not None:
        parts.append(f"traffic back in {report.seconds:.2f} s")
    if report.revert_commits:
        parts.append(f"reverted by {', '.join(c[:12] for c in report.revert_commits)}")
    if report.error:
        parts.append(f"error: {report.error}")
    return "; ".join(parts)


def rollback_markdown(report: RollbackReport) -> str:
    """The artifact: what was rolled back, from which release to which, how fast, the
    revert commits, and why."""
    icon = {"rolled-back": "↩️", "nothing-to-do": "✔️", "failed": "❌"}[report.status]
    lines = [
        f"## {icon} Rollback of {report.app} in `{report.environment}`: {report.status}",
        "",
        f"- reason: {report.reason}",
        f"- requested by: {report.requested_by or 'not given'}",
        f"- namespace `{report.namespace}`, strategy {report.strategy or 'unknown'}",
    ]
    if report.before is not None:
        lines.append(f"- before: {report.before.describe()}")
    if report.after is not None:
        lines.append(f"- after: {report.after.describe()}")
    elif report.seconds is None:
        lines.append("- cluster: not changed")
    if report.seconds is not None:
        timing = f"- traffic back {report.seconds:.2f} s after the decision"
        if report.rollout_seconds is not None:
            timing += f"; rollout done {report.rollout_seconds:.2f} s later"
        lines.append(timing)
    for revert in report.reverts:
        lines.append(
            f"- manifests: bump `{revert.bump[:12]}` reverted by `{revert.commit[:12]}`"
            if revert.commit
            else f"- manifests: bump `{revert.bump[:12]}`: {revert.note}"
        )
    if not report.reverts:
        lines.append("- manifests: nothing reverted")
    lines += [f"- note: {note}" for note in report.notes]
    if report.error:
        lines.append(f"- error: {report.error}")
    lines.append(f"- took {report.total_seconds:.1f} s")
    return "\n".join(lines)


def _key(app: str, what: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"{app}-{what}".lower()).strip("-")


async def _publish(report: RollbackReport, slack: SlackNotifier | None, redactor: Redactor) -> None:
    markdown = redactor.redact(rollback_markdown(report))
    summary = redactor.redact(summary_line(report))
    await acreate_markdown_artifact(
        key=_key(report.app, f"rollback-{report.environment}"),
        markdown=markdown,
        description=summary[:500],
    )
    if slack is None:
        return
    title = {
        "rolled-back": f":rewind: {report.app} rolled back in {report.environment}",
        "nothing-to-do": f"{report.app} in {report.environment}: nothing to roll back",
        "failed": f":x: rollback of {report.app} in {report.environment} failed",
    }[report.status]
    body = markdown.split("\n", 2)[-1]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}},
    ]
    if report.run_url:
        link = {"type": "mrkdwn", "text": f"<{report.run_url}|rollback run>"}
        blocks.append({"type": "context", "elements": [link]})
    await asyncio.to_thread(
        send_slack_message, slack, f"{title}\n{body}", blocks, redactor, what=title
    )
