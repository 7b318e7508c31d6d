"""deliver, further: canary releases through a mesh, and bad input at every door.

Canary: production walks 25 % -> 50 % -> 100 % with an analysis at each step, on the
canary's own pods (``{version}`` is the release label ``slipway_dev_release`` that
deliver puts on every pod it deploys). Requests go through :class:`~tests.servers.mesh.Mesh`,
the Istio data-plane stand-in, so the canary takes the share of real traffic its
weight says; the analysis counts only ``/`` requests, so a canary that received no
traffic would be Inconclusive, never promoted.

Bad input: an image reference built to inject, manifest paths leading out of the
repository, a cluster that does not answer, an approval from someone the policy does
not name, an approval after the deadline. Each test checks what the error names, and
that nothing reached the cluster or stayed in git.

Same world as tests/flows/test_deliver.py (its ``stack`` fixture and helpers).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID, uuid4

import git
import httpx
import pydantic
import pytest
import yaml
from kubernetes import client as k8s
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from slipway.blocks.approval import ApprovalPolicy, EnvironmentApproval
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.deploy_spec import DeploySpec
from slipway.exceptions import ApprovalClosed, ConfigError
from slipway.flows.deliver import RELEASE_LABEL, load_delivery_blocks
from slipway.redact import Redactor
from slipway.report import EnvironmentOutcome
from slipway.tasks.approval import approve_run
from slipway.tasks.gitops import parse_trailers
from slipway.tasks.kube_apply import ANNOTATION_APPROVER
from slipway.tasks.strategy_objects import canary_weight
from tests.approvers import approver, decision
from tests.flows.prefect_api import artifacts, logs
from tests.flows.test_deliver import (
    APP,
    BAD,
    GOOD,
    GOOD_2,
    IMAGE_ENV,
    REGISTRY,
    SERVICE,
    Running,
    Stack,
    deployment,
    production,
    running_image,
    stack,  # noqa: F401  (the fixture)
    staging,
)
from tests.servers.git_http import commit_files
from tests.servers.mesh import DESTINATION_HEADER, Mesh
from tests.servers.ports import free_port

pytestmark = [pytest.mark.usefixtures("flow_env"), pytest.mark.kube_standin_only("pod runner")]

# The canary's own error rate, over requests to '/' only: readiness probes and scrapes
# would dilute it, and a canary that took no traffic must be Inconclusive, not 0.
CANARY_ERROR_RATE = (
    '(sum(rate(http_requests_total{namespace="{namespace}",slipway_dev_release="{version}",'
    'path="/",code=~"5.."}[10s])) or vector(0)) / sum(rate(http_requests_total{'
    'namespace="{namespace}",slipway_dev_release="{version}",path="/"}[10s]))'
)
CANARY_STEPS = (25, 50, 100)
STABLE_HOST, CANARY_HOST = f"{APP}-stable", f"{APP}-canary"
# Seconds after a weight change before requests count towards that step's share: the
# mesh reads the VirtualService every 0.2 s, the watcher every 0.1 s.
SETTLE_SECONDS = 0.5


def canary_production(**extra: Any) -> dict[str, Any]:
    """Production on canary, 25 -> 50 -> 100 %, an analysis of the canary's pods at each.

    Prometheus takes up to 5 s to start scraping a pod that appeared in its file_sd
    file (its discovery manager sends updates at most every 5 s), so the first step,
    whose canary pod is new, pauses longer, and an analysis tolerates two measurements
    without data before the first with data.
    """
    steps = [{"weight": w, "pause_seconds": 4 if i == 0 else 1} for i, w in enumerate(CANARY_STEPS)]
    return production(
        approval=False,
        strategy={"canary": {"steps": steps}},
        analysis={
            "name": "canary-errors",
            "query": CANARY_ERROR_RATE,
            "success_condition": "result < 0.05",
            "initial_delay": 1,
            "interval": 1,
            "count": 3,
            "failure_limit": 0,
            "inconclusive_limit": 2,
        },
        **extra,
    )


def rolling_production(**extra: Any) -> dict[str, Any]:
    """Production without the slow parts (blue-green, analysis): for the input tests."""
    spec = production(strategy={"rolling": {"max_surge": 1, "max_unavailable": 0}}, **extra)
    spec.pop("analysis")
    return spec


def deliver_unattended(delivery: Any) -> dict[str, EnvironmentOutcome]:
    return Running(delivery).outcomes()


def bumps(world: Stack) -> list[dict[str, str]]:
    """Trailers of every slipway commit in the manifests repository, newest first."""
    return [t for _summary, t in world.log() if t.get("Slipway-App")]


def unreverted_bumps(world: Stack) -> list[str]:
    """Bump commits still in effect: a deploy no revert commit undid."""
    repo = git.Repo(world.manifests_repo)
    reverted = set()
    left = []
    for commit in repo.iter_commits("main"):
        trailers = parse_trailers(commit.message)
        if "Slipway-Reverts" in trailers:
            reverted.add(trailers["Slipway-Reverts"])
        elif trailers.get("Slipway-App") and commit.hexsha not in reverted:
            left.append(commit.hexsha)
    return left


def bumps_sha(world: Stack, image: str) -> str:
    """The commit that bumped ``image`` in."""
    repo = git.Repo(world.manifests_repo)
    return next(
        c.hexsha
        for c in repo.iter_commits("main")
        if parse_trailers(c.message).get("Slipway-Image") == image
        and "Slipway-Reverts" not in parse_trailers(c.message)
    )


def deployments(world: Stack) -> list[str]:
    """``namespace/name`` of every Deployment in the environments' namespaces."""
    apps = world.apps()
    return [
        f"{ns}/{d.metadata.name}"
        for ns in ("staging", "production")
        for d in apps.list_namespaced_deployment(ns).items
    ]


def slack_texts(world: Stack) -> list[str]:
    return [str(r.body.get("text", "")) for r in world.slack.received]


# --- canary: traffic through the mesh ----------------------------------------------------------


@dataclass
class MeshTraffic:
    """Requests to '/' through the mesh, and the canary weight the VirtualService had."""

    stack: Stack
    mesh: Mesh
    answers: list[tuple[float, str, str]] = field(default_factory=list)  # time, host, version
    weights: list[tuple[float, int | None]] = field(default_factory=list)  # time, weight
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> MeshTraffic:
        for target in (self._hit, self._watch):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _hit(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self._stop.wait(0.02):
                try:
                    answer = http.get(f"{self.mesh.url}/")
                    ok = answer.status_code == 200
                    version = str(answer.json().get("version", "")) if ok else ""
                except (httpx.HTTPError, ValueError):
                    continue
                host = answer.headers.get(DESTINATION_HEADER, "")
                self.answers.append((time.monotonic(), host, version))

    def _watch(self) -> None:
        custom = k8s.CustomObjectsApi(self.stack.kube.api_client())
        while not self._stop.wait(0.1):
            try:
                vs = custom.get_namespaced_custom_object(
                    "networking.istio.io", "v1beta1", "production", "virtualservices", APP
                )
            except k8s.ApiException:
                continue
            weight = canary_weight(vs, CANARY_HOST)
            if not self.weights or self.weights[-1][1] != weight:
                self.weights.append((time.monotonic(), weight))

    def steps_seen(self) -> list[int | None]:
        return [weight for _at, weight in self.weights]

    def canary_share(self, weight: int) -> tuple[float, int]:
        """Share of answered requests the canary served while the VirtualService gave it
        ``weight`` (first such period, settled), and how many requests that was."""
        periods = [
            (at, self.weights[i + 1][0] if i + 1 < len(self.weights) else float("inf"))
            for i, (at, w) in enumerate(self.weights)
            if w == weight
        ]
        start, end = periods[0]
        hosts = [h for at, h, _v in self.answers if start + SETTLE_SECONDS <= at < end and h]
        return (hosts.count(CANARY_HOST) / len(hosts) if hosts else 0.0), len(hosts)


@pytest.fixture
def canary_first(stack: Stack) -> Iterator[tuple[Stack, Mesh]]:  # noqa: F811
    """Production on canary, first release (GOOD) deployed: it is the stable, 2 pods,
    weights 100/0; the mesh in front of the app's VirtualService."""
    first = deliver_unattended(stack.delivery({"environments": [canary_production()]}, GOOD))
    assert first["production"].status == "deployed", first["production"]
    assert running_image(stack, "production", APP) == GOOD
    with Mesh(stack.kube.api_client(), "production", APP, seed=11) as mesh:
        yield stack, mesh


def virtual_service_weights(world: Stack) -> dict[str, int]:
    vs = k8s.CustomObjectsApi(world.kube.api_client()).get_namespaced_custom_object(
        "networking.istio.io", "v1beta1", "production", "virtualservices", APP
    )
    weighted = next(r for r in vs["spec"]["http"] if not r.get("match"))
    return {d["destination"]["host"]: d["weight"] for d in weighted["route"]}


def replicas(world: Stack, name: str) -> int:
    return world.apps().read_namespaced_deployment(name, "production").spec.replicas


def versions_through_mesh(mesh: Mesh, count: int = 20) -> set[tuple[str, str]]:
    mesh.refresh()
    seen = set()
    with httpx.Client(timeout=5) as http:
        for _ in range(count):
            answer = http.get(f"{mesh.url}/")
            assert answer.status_code == 200, answer.text
            seen.add((answer.headers[DESTINATION_HEADER], answer.json()["version"]))
    return seen


def test_a_good_canary_walks_every_step_and_is_promoted(canary_first: tuple[Stack, Mesh]) -> None:
    world, mesh = canary_first
    traffic = MeshTraffic(world, mesh).start()
    try:
        outcome = deliver_unattended(
            world.delivery({"environments": [canary_production()]}, GOOD_2)
        )["production"]
    finally:
        traffic.stop()

    assert outcome.status == "deployed", outcome
    assert outcome.analysis and outcome.analysis.startswith("Successful"), outcome.analysis
    # the weights walked the steps, and back to 0 % canary once the stable took the release
    assert traffic.steps_seen() == [0, *CANARY_STEPS, 0], traffic.weights
    # the canary really took its share of the traffic at each step
    for weight in CANARY_STEPS:
        share, requests = traffic.canary_share(weight)
        assert requests >= 15, (weight, requests)
        low, high = (weight - 20) / 100, (weight + 20) / 100
        assert low <= share <= high, (weight, share, requests)
    # promoted: the stable runs the new image, weights 100/0, no canary pods
    assert running_image(world, "production", APP) == GOOD_2
    assert virtual_service_weights(world) == {STABLE_HOST: 100, CANARY_HOST: 0}
    assert replicas(world, CANARY_HOST) == 0
    assert replicas(world, APP) == 2
    world.kube.wait_for(
        lambda: versions_through_mesh(mesh) == {(STABLE_HOST, IMAGE_ENV[GOOD_2]["APP_VERSION"])},
        message="every request served by the promoted stable",
    )
    # git: the bump stays; the manifests name the new image
    assert bumps(world)[0]["Slipway-Image"] == GOOD_2
    assert "Slipway-Reverts" not in bumps(world)[0]
    text = git.Repo(world.manifests_repo).git.show("main:production/deployment.yaml")
    assert GOOD_2 in text and GOOD not in text
    assert not any("rolled back" in m for m in slack_texts(world))


def test_a_bad_canary_is_aborted_at_the_first_step(canary_first: tuple[Stack, Mesh]) -> None:
    world, mesh = canary_first
    traffic = MeshTraffic(world, mesh).start()
    try:
        outcome = deliver_unattended(world.delivery({"environments": [canary_production()]}, BAD))[
            "production"
        ]
    finally:
        traffic.stop()

    assert outcome.status == "rolled-back", outcome
    assert outcome.analysis and outcome.analysis.startswith("Failed"), outcome.analysis
    assert "canary analysis Failed" in outcome.reason, outcome.reason
    assert outcome.rollback_seconds is not None and outcome.rollback_seconds < 5
    # aborted at 25 %: the later steps never happened
    assert traffic.steps_seen() == [0, 25, 0], traffic.weights
    share, requests = traffic.canary_share(25)
    assert requests >= 10 and 0.05 <= share <= 0.45, (share, requests)
    # the canary's measured error rate is the bad release's (~0.6), not diluted by stable
    measured = [float(v) for v in re.findall(r"values: ([0-9.]+)", outcome.analysis)]
    assert measured and max(measured) > 0.3, outcome.analysis
    # ... measured on the canary's pods, which carry the release label {version} names
    canary = world.apps().read_namespaced_deployment(CANARY_HOST, "production")
    assert canary.spec.template.metadata.labels[RELEASE_LABEL] == BAD.rsplit(":", 1)[1][:12]
    # the cluster: all traffic on the stable, which still runs GOOD; canary at 0 pods
    assert virtual_service_weights(world) == {STABLE_HOST: 100, CANARY_HOST: 0}
    assert replicas(world, CANARY_HOST) == 0
    assert running_image(world, "production", APP) == GOOD
    assert versions_through_mesh(mesh) == {(STABLE_HOST, IMAGE_ENV[GOOD]["APP_VERSION"])}
    # git: the bad bump reverted, the manifests say GOOD again
    assert outcome.manifests_commit and outcome.revert_commit
    assert bumps(world)[0].get("Slipway-Reverts") == outcome.manifests_commit
    assert unreverted_bumps(world) == [bumps_sha(world, GOOD)]
    text = git.Repo(world.manifests_repo).git.show("main:production/deployment.yaml")
    assert GOOD in text and BAD not in text
    # Slack: what was rolled back, why, with the measured values
    told = [m for m in slack_texts(world) if "rolled back in production" in m]
    assert len(told) == 1, slack_texts(world)
    told_values = [float(v) for v in re.findall(r"values: ([0-9.]+)", told[0])]
    assert "canary" in told[0] and told_values and max(told_values) > 0.3, told[0]
    assert outcome.revert_commit[:12] in told[0]


# --- bad input -------------------------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64
# Image references built to inject: into a shell ({marker} would be created), into git
# (an option), or into the commit message (a forged trailer).
INJECTIONS = (
    f"{REGISTRY}@sha256:abc;rm -rf /",
    f"{REGISTRY}@{DIGEST};touch {{marker}}",
    f"{REGISTRY}:$(touch {{marker}})",
    f"{REGISTRY}:`touch {{marker}}`@{DIGEST}",
    f"{REGISTRY}@{DIGEST}\nSlipway-Approver: mallory",
    f"--upload-pack=touch {{marker}}@{DIGEST}",
)


def test_an_image_reference_built_to_inject_is_refused_before_anything_changes(
    stack: Stack,  # noqa: F811
) -> None:
    marker = stack.workspace.parent / "pwned"
    for template in INJECTIONS:
        image = template.format(marker=marker)
        outcomes = deliver_unattended(
            stack.delivery({"environments": [staging(), rolling_production()]}, image)
        )

        first = outcomes["staging"]
        assert first.status == "failed", (image, first)
        assert "invalid image reference" in first.reason, (image, first.reason)
        assert repr(image) in first.reason, (image, first.reason)  # names the value
        assert outcomes["production"].status == "not-run", image
        assert not marker.exists(), image
        assert deployments(stack) == [], image
        assert bumps(stack) == [], image  # nothing committed


def test_a_manifests_path_leading_out_of_the_repository_is_refused(
    stack: Stack,  # noqa: F811
) -> None:
    # The block refuses it, naming the path ...
    for path in ("../x", "production/../../x", "/etc"):
        with pytest.raises(pydantic.ValidationError) as caught:
            ManifestsRepository(
                url=stack.manifests.url,
                environments={"production": EnvironmentManifests(path=path)},
            )
        assert repr(path) in str(caught.value)

    # ... and a block that skipped its validation is stopped by the bump, before a commit.
    sneaky = ManifestsRepository.model_construct(
        **{
            **dict(stack.manifests),
            "environments": {"production": EnvironmentManifests.model_construct(path="../x")},
        }
    )
    delivery = replace(
        stack.delivery({"environments": [rolling_production(approval=False)]}, GOOD),
        manifests=sneaky,
    )
    outcome = deliver_unattended(delivery)["production"]
    assert outcome.status == "failed", outcome
    assert "'../x'" in outcome.reason and "outside" in outcome.reason, outcome.reason
    assert deployments(stack) == []
    assert bumps(stack) == []

    # A block document saved around the client's validation (the API stores any JSON,
    # as from a form or a script) is refused when the pipeline loads its blocks, with
    # an error naming the block and what is wrong in it.
    name = asyncio.run(_save_manifests_block_with_path(stack, "../x"))
    spec = DeploySpec.model_validate(
        {"manifests": name, "environments": [rolling_production(approval=False)]}
    )
    with pytest.raises(ConfigError) as loading:
        asyncio.run(load_delivery_blocks(spec, Redactor()))
    assert "'../x'" in str(loading.value) and name in str(loading.value)


async def _save_manifests_block_with_path(world: Stack, path: str) -> str:
    """Save a valid manifests block, then set an environment's path through the API."""
    name = f"manifests-{uuid4().hex[:8]}"
    block = ManifestsRepository(
        url=world.manifests.url,
        environments={"production": EnvironmentManifests(path="production")},
    )
    await block.save(name)
    async with get_client() as c:
        document = await c.read_block_document_by_name(name, block.get_block_type_slug())
        data = {**document.data, "environments": {"production": {"path": path}}}
        await c.update_block_document(
            document.id, BlockDocumentUpdate(data=data, merge_existing_data=False)
        )
    return name


def test_a_kustomization_resource_outside_the_repository_is_refused(
    stack: Stack,  # noqa: F811
) -> None:
    # A manifest waiting just outside the clone: rendering it would deploy "evil".
    evil = deployment(1)
    evil["metadata"]["name"] = "evil"
    (stack.workspace.parent / "outside.yaml").write_text(yaml.safe_dump(evil))
    # clone root = <tmp>/ws/build-N/manifests/production; the overlay is one folder down
    escape = "../../../../../outside.yaml"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["deployment.yaml", "service.yaml", escape],
        "images": [{"name": REGISTRY, "newTag": "placeholder"}],
    }
    commit_files(
        stack.manifests_repo,
        {
            "overlay/kustomization.yaml": yaml.safe_dump(kustomization),
            "overlay/deployment.yaml": yaml.safe_dump(deployment(2)),
            "overlay/service.yaml": yaml.safe_dump(SERVICE),
        },
        "a kustomize overlay",
    )
    manifests = ManifestsRepository(
        url=stack.manifests.url,
        environments={"production": EnvironmentManifests(path="overlay", kind="kustomize")},
    )
    delivery = replace(
        stack.delivery({"environments": [rolling_production(approval=False)]}, GOOD),
        manifests=manifests,
    )
    outcome = deliver_unattended(delivery)["production"]

    assert outcome.status == "failed", outcome
    assert escape in outcome.reason and "outside the manifests repository" in outcome.reason
    assert deployments(stack) == []
    assert unreverted_bumps(stack) == []


def test_a_cluster_that_does_not_answer_fails_naming_the_server_not_the_token(
    stack: Stack,  # noqa: F811
) -> None:
    token = f"tok-{uuid4().hex}"
    assert stack.kube.standin is not None
    config = stack.kube.standin.kubeconfig("production", token)
    nowhere = f"http://127.0.0.1:{free_port()}"
    config["clusters"][0]["cluster"]["server"] = nowhere
    block = f"nowhere-{uuid4().hex[:8]}"
    KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(
            config=config, context_name=config["current-context"]
        )
    ).save(block)

    delivery = stack.delivery(
        {"environments": [rolling_production(approval=False, cluster=block)]}, GOOD
    )
    running = Running(delivery)
    outcome = running.outcomes()["production"]

    assert outcome.status == "failed", outcome
    assert nowhere in outcome.reason, outcome.reason
    assert "did not answer" in outcome.reason and "refused" in outcome.reason, outcome.reason
    assert token not in outcome.reason
    run_logs = logs(running.run_id)
    assert nowhere in run_logs  # the log says what failed ...
    assert token not in run_logs  # ... and never with what credentials
    assert not any(token in m for m in slack_texts(stack))
    assert deployments(stack) == []
    assert unreverted_bumps(stack) == []


# --- approvals -------------------------------------------------------------------------------


def _paused_since(run_id: UUID, timeout: float = 30) -> float:
    """Wait until the run is paused for approval; the monotonic time it was seen so."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as c:
        while time.monotonic() < deadline:
            state = c.read_flow_run(run_id).state
            if state is not None and state.is_paused():
                return time.monotonic()
            time.sleep(0.05)
    raise AssertionError(f"flow run {run_id} did not pause for approval in {timeout} s")


def _approval_markdown(run_id: UUID) -> str:
    found = artifacts(run_id)
    return str(getattr(found[f"{APP}-approval-production"], "data", ""))


def test_an_approval_from_someone_not_in_the_policy_is_refused_then_an_approver_releases(
    stack: Stack,  # noqa: F811
) -> None:
    running = Running(stack.delivery({"environments": [rolling_production()]}, GOOD))
    for who, approve in (("mallory", True), ("eve", False)):
        approve_run(
            running.run_id,
            decision(who, approve=approve, reason=f"{who} says so"),
            timeout=60,
        )
        # a refused decision changes nothing: the run waits again, nothing deployed
        _paused_since(running.run_id)
        assert deployments(stack) == []
        assert bumps(stack) == []
    approve_run(
        running.run_id,
        decision("alice", reason="checked the canary"),
        timeout=60,
    )
    outcome = running.outcomes()["production"]

    assert outcome.status == "deployed", outcome
    assert outcome.approver == "alice"
    assert running_image(stack, "production", APP) == GOOD
    dep = stack.apps().read_namespaced_deployment(APP, "production")
    assert dep.metadata.annotations[ANNOTATION_APPROVER] == "alice"
    (bump,) = bumps(stack)
    assert bump["Slipway-Approver"] == "alice"
    # the refusals are recorded: in the approval artifact and in the run's log
    record = _approval_markdown(running.run_id)
    assert "mallory" in record and "eve" in record and "Refused" in record, record
    assert "'mallory' is not an approver of production" in record
    run_logs = logs(running.run_id)
    assert "'mallory' is not an approver" in run_logs and "'eve' is not an approver" in run_logs
    assert not any("mallory" in t or "eve" in t for t in bump.values())


def test_an_approval_after_the_deadline_is_refused_and_nothing_reaches_production(
    stack: Stack,  # noqa: F811
) -> None:
    timeout = 2
    delivery = replace(
        stack.delivery({"environments": [rolling_production()]}, GOOD),
        approvals=ApprovalPolicy(
            environments={
                "production": EnvironmentApproval(
                    approvers=[approver("alice")], timeout_seconds=timeout, branches=["main"]
                )
            }
        ),
    )
    running = Running(delivery)
    paused_at = _paused_since(running.run_id)
    time.sleep(max(0.0, paused_at + timeout + 0.2 - time.monotonic()))  # past the deadline
    with pytest.raises(ApprovalClosed):
        approve_run(
            running.run_id,
            decision("alice", reason="too late"),
            timeout=30,
        )
    late = running.outcomes()["production"]
    assert late.status == "rejected", late
    assert "no approval before the deadline" in late.reason, late.reason
    assert deployments(stack) == []
    assert bumps(stack) == []
    assert "timed-out" in _approval_markdown(running.run_id) or "⌛" in _approval_markdown(
        running.run_id
    )
    assert any("not released to production" in m for m in slack_texts(stack)), slack_texts(stack)
