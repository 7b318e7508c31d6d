"""The CD half end to end: GitOps bump, deploy, smoke, approval, analysis, rollback.

Real: git (the manifests repository), the Prefect API (harness) with its pause/resume
and concurrency limits, Prometheus scraping the pods, the example app serving every
pod as a local process, Slack over HTTP (a local receiver). Stand-in: the Kubernetes
API (no apiserver runs here), reached through the real kubernetes client. A "bad
release" is an image whose ENV sets ERROR_RATE (here told to the pod runner, which
has no engine to read the image from).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import git
import httpx
import pytest
import yaml
from kubernetes import client as k8s
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency
from prefect.context import get_run_context
from prefect.states import State
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
from prefect_slack import SlackWebhook

from slipway.blocks.approval import ApprovalPolicy, EnvironmentApproval
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.blocks.notifications import SlackNotifier
from slipway.blocks.prometheus import PrometheusServer
from slipway.deploy_spec import DeploySpec
from slipway.flows.deliver import Delivery, deliver, ensure_deploy_slot_limit, slot_name
from slipway.redact import Redactor
from slipway.report import EnvironmentOutcome
from slipway.tasks.approval import approve_run
from slipway.tasks.gitops import parse_trailers
from slipway.tasks.kube_apply import ANNOTATION_APPROVER, ANNOTATION_IMAGE
from tests.approvers import approver, decision
from tests.servers.example_manifests import app_deployment, app_service
from tests.servers.git_http import commit_files, make_bare_repo
from tests.servers.kube_api import KubeCluster
from tests.servers.pod_runner import PodRunner
from tests.servers.prometheus import PrometheusProcess
from tests.servers.slack_receiver import SlackReceiver

pytestmark = [pytest.mark.usefixtures("flow_env"), pytest.mark.kube_standin_only("pod runner")]

APP = "shop"
REGISTRY = "127.0.0.1:5000/shop"
GOOD = f"{REGISTRY}@sha256:{'a' * 64}"
GOOD_2 = f"{REGISTRY}@sha256:{'c' * 64}"
BAD = f"{REGISTRY}@sha256:{'b' * 64}"
BROKEN = f"{REGISTRY}@sha256:{'d' * 64}"  # readiness never passes: exits at start
FAILING = f"{REGISTRY}@sha256:{'e' * 64}"  # every '/' answers 500
IMAGE_ENV = {
    GOOD: {"APP_VERSION": "1.0.0"},
    GOOD_2: {"APP_VERSION": "1.1.0"},
    BAD: {"APP_VERSION": "2.0.0", "ERROR_RATE": "0.6"},
    BROKEN: {"APP_VERSION": "3.0.0", "ERROR_RATE": "not-a-number"},
    FAILING: {"APP_VERSION": "4.0.0", "ERROR_RATE": "1"},
}
# No 5xx series at all is a rate of 0, not "no data": hence the `or vector(0)`.
ERROR_RATE_QUERY = (
    '(sum(rate(http_requests_total{namespace="{namespace}",slipway_dev_release="{version}",'
    'code=~"5.."}[10s])) or vector(0)) / sum(rate(http_requests_total{namespace="{namespace}",'
    'slipway_dev_release="{version}"}[10s]))'
)


def deployment(replicas: int) -> dict[str, Any]:
    return app_deployment(APP, f"{REGISTRY}:placeholder", replicas)


SERVICE = app_service(APP)


@dataclass
class Stack:
    """One test's world: manifests repo, cluster, pods, Prometheus, Slack, Prefect blocks."""

    kube: KubeCluster
    pods: PodRunner
    manifests_repo: Path
    manifests: ManifestsRepository
    prometheus: PrometheusProcess
    slack: SlackReceiver
    workspace: Path
    cluster_block: str
    builds: Iterator[int] = field(default_factory=lambda: iter(range(1, 1000)))

    def delivery(self, spec: dict[str, Any], image: str, branch: str = "main") -> Delivery:
        deploy = DeploySpec.model_validate(
            {"manifests": "unused", "prometheus": "p", "approval_policy": "a", **spec}
        )
        build = next(self.builds)
        return Delivery(
            spec=deploy,
            app=APP,
            image=image,
            source_commit=f"{build:040x}",
            branch=branch,
            run_id=str(uuid4()),
            run_url=None,
            build_number=build,
            workspace=self.workspace / f"build-{build}",
            redactor=Redactor(),
            manifests=self.manifests,
            approvals=ApprovalPolicy(
                environments={
                    "production": EnvironmentApproval(
                        approvers=[approver("alice")], timeout_seconds=20, branches=["main"]
                    )
                }
            ),
            prometheus=PrometheusServer(url=self.prometheus.url),
            notifier=SlackNotifier(webhook=SlackWebhook(url=self.slack.webhook_url)),
            default_cluster=self.cluster_block,
            approval_poll=0.5,
        )

    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.kube.api_client())

    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.kube.api_client())

    def log(self) -> list[tuple[str, dict[str, str]]]:
        repo = git.Repo(self.manifests_repo)
        return [(c.summary, parse_trailers(c.message)) for c in repo.iter_commits("main")]


@pytest.fixture
def stack(
    kube: KubeCluster, tmp_path: Path, start_prometheus: Callable[..., PrometheusProcess]
) -> Iterator[Stack]:
    runner = PodRunner(
        file_sd=tmp_path / "pods.json", log_dir=tmp_path / "pod-logs", image_env=IMAGE_ENV
    )
    kube.set_pod_hook(runner)
    remote = make_bare_repo(tmp_path / "git", "manifests.git")
    files = {}
    for env, replicas in (("staging", 1), ("production", 2)):
        files[f"{env}/deployment.yaml"] = "# the shop\n" + yaml.safe_dump(deployment(replicas))
        files[f"{env}/service.yaml"] = yaml.safe_dump(SERVICE)
    commit_files(remote, files, "manifests")
    config = yaml.safe_load(kube.kubeconfig.read_text())
    block = f"cluster-{uuid4().hex[:8]}"
    KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(
            config=config, context_name=config["current-context"]
        )
    ).save(block)
    manifests = ManifestsRepository(
        url=remote.as_uri(),
        environments={
            "staging": EnvironmentManifests(path="staging"),
            "production": EnvironmentManifests(path="production"),
        },
    )
    prometheus = start_prometheus(file_sd=tmp_path / "pods.json")
    with SlackReceiver() as slack:
        try:
            yield Stack(kube, runner, remote, manifests, prometheus, slack, tmp_path / "ws", block)
        finally:
            runner.close()


def staging(**extra: Any) -> dict[str, Any]:
    return {
        "name": "staging",
        "namespace": "staging",
        "create_namespace": True,
        "strategy": {"rolling": {"max_surge": 1, "max_unavailable": 0}},
        "rollout_timeout": 60,
        "smoke": {
            "checks": [
                {"url": "{base_url}/readyz", "retries": 10, "retry_delay": 0.2},
                {"url": "{base_url}/", "retries": 0},
            ]
        },
        **extra,
    }


def production(**extra: Any) -> dict[str, Any]:
    return {
        "name": "production",
        "namespace": "production",
        "create_namespace": True,
        "branches": ["main"],
        "approval": True,
        "rollout_timeout": 60,
        "strategy": {"blue_green": {"scale_down_delay_seconds": 0}},
        "smoke": {"checks": [{"url": "{base_url}/readyz", "retries": 10, "retry_delay": 0.2}]},
        "analysis": {
            "query": ERROR_RATE_QUERY,
            "success_condition": "result < 0.05",
            "initial_delay": 4,
            "interval": 1,
            "count": 3,
            "failure_limit": 1,
            "inconclusive_limit": 3,
        },
        **extra,
    }


# --- running deliver in a flow, in a thread (as a worker would) ------------------------------

_DELIVERIES: dict[str, Delivery] = {}
_RUN_IDS: dict[str, queue.Queue[UUID]] = {}


@flow(name="deliver-test")
async def deliver_flow(token: str) -> tuple[EnvironmentOutcome, ...]:
    _RUN_IDS[token].put(get_run_context().flow_run.id)  # type: ignore[union-attr]
    return await deliver(_DELIVERIES[token])


class Running:
    def __init__(self, delivery: Delivery) -> None:
        token = uuid4().hex
        _DELIVERIES[token] = delivery
        _RUN_IDS[token] = queue.Queue()
        self.state: State | None = None
        self.result: tuple[EnvironmentOutcome, ...] = ()
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run, token), daemon=True)
        self._thread.start()
        self.run_id = _RUN_IDS[token].get(timeout=30)

    def _run(self, token: str) -> None:
        async def flow_and_result() -> None:
            self.state = await deliver_flow(token, return_state=True)  # type: ignore[misc]
            if self.state.is_completed():
                self.result = await self.state.aresult()

        asyncio.run(flow_and_result())

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)

    def outcomes(self, timeout: float = 120) -> dict[str, EnvironmentOutcome]:
        self.join(timeout)
        assert self.state is not None, "deliver did not finish"
        assert self.state.is_completed(), self.state
        return {o.name: o for o in self.result}


def run(delivery: Delivery, approver: str | None = "alice", approve: bool = True) -> dict:
    running = Running(delivery)
    if approver is not None:
        approve_run(
            running.run_id,
            decision(approver, approve=approve, reason="looks right"),
            timeout=90,
        )
    return running.outcomes()


def traffic(stack: Stack, namespace: str, stop: threading.Event) -> threading.Thread:
    """Requests through the API server's service proxy to the app's active Service."""
    api = stack.kube.api_client()
    token = api.configuration.api_key.get("authorization") or api.configuration.api_key.get(
        "BearerToken", ""
    )
    headers = {"Authorization": token if token.startswith("Bearer") else f"Bearer {token}"}
    url = f"{stack.kube.api_url}/api/v1/namespaces/{namespace}/services/{APP}:http/proxy/"

    def hit() -> None:
        with httpx.Client(timeout=2, headers=headers) as http:
            while not stop.wait(0.05):
                try:
                    http.get(url)
                except httpx.HTTPError:
                    pass

    thread = threading.Thread(target=hit, daemon=True)
    thread.start()
    return thread


def selector_colour(stack: Stack, namespace: str) -> str:
    service = stack.core().read_namespaced_service(APP, namespace)
    return service.spec.selector["slipway.dev/colour"]


def running_image(stack: Stack, namespace: str, name: str) -> str:
    dep = stack.apps().read_namespaced_deployment(name, namespace)
    return dep.spec.template.spec.containers[0].image


# --- tests ---------------------------------------------------------------------------------


def approval_description(run_id: UUID, timeout: float = 60) -> str:
    """The Markdown above the approval form of a run paused for approval."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            keyset = state.state_details.run_input_keyset if state else None
            if state is not None and state.is_paused() and keyset:
                try:
                    return str(client.read_flow_run_input(run_id, keyset["description"]))
                except Exception:  # the form is being saved
                    pass
            time.sleep(0.2)
    raise AssertionError("the run did not pause for approval")


def test_a_release_goes_through_staging_then_production_after_approval(stack: Stack) -> None:
    stop = threading.Event()
    traffic(stack, "production", stop)
    try:
        running = Running(stack.delivery({"environments": [staging(), production()]}, GOOD))
        description = approval_description(running.run_id)
        approve_run(running.run_id, decision("alice", reason=""), timeout=60)
        outcomes = running.outcomes()
    finally:
        stop.set()

    # the approver saw what is released, how staging went, and the plan for production
    assert GOOD in description and "staging: deployed" in description
    assert "What changes in production" in description and "Deployment" in description

    assert outcomes["staging"].status == "deployed", outcomes["staging"]
    assert outcomes["production"].status == "deployed", outcomes["production"]
    assert outcomes["production"].approver == "alice"
    assert outcomes["production"].analysis and "Successful" in outcomes["production"].analysis
    assert running_image(stack, "staging", APP) == GOOD
    colour = selector_colour(stack, "production")
    assert running_image(stack, "production", f"{APP}-{colour}") == GOOD
    # GitOps: one bump commit per environment, the production one naming the approver
    log = stack.log()
    bumps = [t for _s, t in log if t.get("Slipway-App") == APP]
    assert [t["Slipway-Environment"] for t in bumps] == ["production", "staging"]
    assert bumps[0]["Slipway-Approver"] == "alice"
    assert bumps[0]["Slipway-Image"] == GOOD
    # history on the objects
    dep = stack.apps().read_namespaced_deployment(f"{APP}-{colour}", "production")
    assert dep.metadata.annotations[ANNOTATION_IMAGE] == GOOD
    assert dep.metadata.annotations[ANNOTATION_APPROVER] == "alice"


def test_a_bad_release_is_rolled_back_in_the_cluster_and_in_git(stack: Stack) -> None:
    environments = [production(approval=False)]
    stop = threading.Event()
    traffic(stack, "production", stop)
    try:
        first = run(stack.delivery({"environments": environments}, GOOD), approver=None)
        assert first["production"].status == "deployed", first["production"]
        good_colour = selector_colour(stack, "production")
        outcomes = run(stack.delivery({"environments": environments}, BAD), approver=None)
    finally:
        stop.set()

    bad = outcomes["production"]
    assert bad.status == "rolled-back", bad
    assert "Failed" in (bad.analysis or ""), bad.analysis
    assert bad.rollback_seconds is not None and bad.rollback_seconds < 5
    # traffic is back on the good colour, which still runs the good image
    assert selector_colour(stack, "production") == good_colour
    assert running_image(stack, "production", f"{APP}-{good_colour}") == GOOD
    # git: the bad bump was reverted, so the manifests say GOOD again
    log = stack.log()
    assert log[0][1].get("Slipway-Reverts") == bad.manifests_commit
    text = git.Repo(stack.manifests_repo).git.show("main:production/deployment.yaml")
    assert GOOD in text and BAD not in text
    # Slack was told, with the measured values
    messages = [r.body.get("text", "") for r in stack.slack.received]
    assert any("rolled back" in m and "values:" in m for m in messages), messages


def test_a_failed_smoke_test_rolls_staging_back_and_reverts_the_bump(stack: Stack) -> None:
    environments = [staging()]
    assert run(stack.delivery({"environments": environments}, GOOD), None)["staging"].ok
    outcome = run(stack.delivery({"environments": environments}, FAILING), None)["staging"]
    assert outcome.status == "rolled-back", outcome
    assert outcome.smoke == "Failed"
    assert running_image(stack, "staging", APP) == GOOD  # rollout undo
    assert stack.log()[0][1].get("Slipway-Reverts") == outcome.manifests_commit


def test_a_rejected_release_never_reaches_production(stack: Stack) -> None:
    outcomes = run(stack.delivery({"environments": [staging(), production()]}, GOOD), approve=False)
    assert outcomes["staging"].status == "deployed"
    assert outcomes["production"].status == "rejected"
    assert "rejected by alice" in outcomes["production"].reason
    apps = stack.apps()
    assert not apps.list_namespaced_deployment("production").items
    assert [t.get("Slipway-Environment") for _s, t in stack.log() if t] == ["staging"]


def test_a_branch_not_allowed_stops_before_production(stack: Stack) -> None:
    outcomes = run(
        stack.delivery({"environments": [staging(), production()]}, GOOD, branch="feature/x"),
        approver=None,
    )
    assert outcomes["staging"].status == "deployed"
    assert outcomes["production"].status == "skipped"
    assert "feature/x" in outcomes["production"].reason


def test_a_second_production_deploy_fails_while_the_slot_is_held(stack: Stack) -> None:
    async def hold_and_deliver() -> EnvironmentOutcome:
        limit = slot_name(APP, "production")
        await ensure_deploy_slot_limit(limit)
        async with concurrency(limit, occupy=1, strict=True):
            running = Running(
                stack.delivery({"environments": [production(approval=False, on_busy="fail")]}, GOOD)
            )
            await asyncio.to_thread(running._thread.join, 60)
            return running.outcomes()["production"]

    outcome = asyncio.run(hold_and_deliver())
    assert outcome.status == "failed"
    assert "holds the slot" in outcome.reason
    assert not stack.apps().list_namespaced_deployment("production").items


def test_a_release_that_never_becomes_ready_is_rolled_back(stack: Stack) -> None:
    environments = [staging(rollout_timeout=8)]
    assert run(stack.delivery({"environments": environments}, GOOD), None)["staging"].ok
    outcome = run(stack.delivery({"environments": environments}, BROKEN), None)["staging"]
    assert outcome.status == "rolled-back", outcome
    assert "rollout" in outcome.reason
    assert running_image(stack, "staging", APP) == GOOD


def test_deploy_slot_limits_are_created_once(stack: Stack) -> None:
    async def twice() -> int:
        name = slot_name(APP, "staging")
        await asyncio.gather(ensure_deploy_slot_limit(name), ensure_deploy_slot_limit(name))
        async with get_client() as c:
            return (await c.read_global_concurrency_limit_by_name(name)).limit

    assert asyncio.run(twice()) == 1
