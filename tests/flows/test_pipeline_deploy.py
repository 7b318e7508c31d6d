"""The pipeline flow with a ``deploy:`` section, end to end: CI, image, staging, approval,
production.

Real: git (the app's repository and the manifests repository), a Docker engine and a
registry (the image is built and pushed; environments get it by digest), the Prefect
API (harness) with its pause, suspend and resume, and the example app serving every
pod as a local process. Stand-in: the Kubernetes API (no apiserver runs here). The
image is ``FROM scratch`` and never runs: the pods are processes, and only their
readiness matters here.

A production approval either keeps the process waiting (*pause*, a run started by
hand) or ends it (*suspend*, a run from a deployment). A suspended run executes again
from the top once approved, here in a new process; it must not rerun its stages (no
second test run, no rebuild or push of the image) nor take a new build number.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import git
import pytest
import yaml
from kubernetes import client as k8s
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Pause
from prefect.flow_engine import run_flow_async, run_flow_in_subprocess
from prefect.states import State
from prefect_docker import DockerHost
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from slipway.blocks.approval import ApprovalPolicy, EnvironmentApproval
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.flows.pipeline import pipeline
from slipway.report import PipelineReport
from slipway.tasks.approval import approve_run
from slipway.tasks.gitops import parse_trailers
from slipway.tasks.kube_apply import ANNOTATION_APPROVER, ANNOTATION_BUILD, ANNOTATION_IMAGE
from tests.approvers import approver, decision
from tests.flows.test_deliver import SERVICE, deployment
from tests.servers.docker_engine import Registry
from tests.servers.git_http import commit_files, make_bare_repo
from tests.servers.kube_api import KubeCluster
from tests.servers.pod_runner import PodRunner

pytestmark = [pytest.mark.usefixtures("flow_env"), pytest.mark.kube_standin_only("pod runner")]

APP = "shop"  # the manifests' Deployment, Service and container are named after it
APPROVER = "alice"


def pipeline_file(registry: str, blocks: str) -> str:
    """Test, image, then staging (rolling) and production (approval, blue-green)."""
    return textwrap.dedent(
        f"""
        app: {APP}
        docker_host: docker-{blocks}
        stages:
          - name: test
            run: echo "tested $SLIPWAY_BUILD_NUMBER" >> "$COUNTER"
          - name: image
            build_image:
              repository: {APP}
              registry_url: {registry}
        deploy:
          manifests: manifests-{blocks}
          approval_policy: approvals-{blocks}
          environments:
            - name: staging
              cluster: cluster-{blocks}
              namespace: staging
              create_namespace: true
              rollout_timeout: 60
              strategy:
                rolling: {{max_surge: 1, max_unavailable: 0}}
              smoke:
                checks:
                  - {{url: "{{base_url}}/readyz", retries: 20, retry_delay: 0.2}}
                  - {{url: "{{base_url}}/", retries: 0}}
            - name: production
              cluster: cluster-{blocks}
              namespace: production
              create_namespace: true
              approval: true
              rollout_timeout: 60
              strategy:
                blue_green: {{scale_down_delay_seconds: 0}}
              smoke:
                checks:
                  - {{url: "{{base_url}}/readyz", retries: 20, retry_delay: 0.2}}
        """
    ).lstrip()


@dataclass
class World:
    """One test's app repository, manifests repository, cluster and registry."""

    url: str
    counter: Path
    manifests_repo: Path
    kube: KubeCluster
    registry: Registry

    def parameters(self, **extra: Any) -> dict[str, Any]:
        # the counter is outside the workspace: a rerun of the stage would show there
        return {"repository": self.url, "env": {"COUNTER": str(self.counter)}, **extra}

    def bumps(self) -> list[dict[str, str]]:
        """The manifests repository's bump commits, oldest first: trailers and ``commit``."""
        repo = git.Repo(self.manifests_repo)
        found = [{**parse_trailers(c.message), "commit": c.hexsha} for c in repo.iter_commits()]
        return [b for b in reversed(found) if b.get("Slipway-App") == APP]

    def deployment(self, namespace: str, name: str) -> k8s.V1Deployment:
        return k8s.AppsV1Api(self.kube.api_client()).read_namespaced_deployment(name, namespace)

    def serving(self, namespace: str) -> k8s.V1Deployment:
        """The Deployment the app's Service sends traffic to (blue-green: the active one)."""
        core = k8s.CoreV1Api(self.kube.api_client())
        colour = core.read_namespaced_service(APP, namespace).spec.selector.get(
            "slipway.dev/colour"
        )
        return self.deployment(namespace, f"{APP}-{colour}" if colour else APP)


@pytest.fixture
def world(
    git_remote: Any,
    kube: KubeCluster,
    process_pods: PodRunner,
    registry: Registry,
    docker_host: str,
    tmp_path: Path,
) -> World:
    blocks = uuid4().hex[:8]  # the harness's database lives for the whole session
    DockerHost(base_url=docker_host).save(f"docker-{blocks}")
    config = yaml.safe_load(kube.kubeconfig.read_text())
    KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(
            config=config, context_name=config["current-context"]
        )
    ).save(f"cluster-{blocks}")
    manifests = make_bare_repo(tmp_path / "git", "manifests.git")
    files = {}
    for env, replicas in (("staging", 1), ("production", 1)):
        files[f"{env}/deployment.yaml"] = yaml.safe_dump(deployment(replicas))
        files[f"{env}/service.yaml"] = yaml.safe_dump(SERVICE)
    commit_files(manifests, files, "manifests")
    ManifestsRepository(
        url=manifests.as_uri(),
        environments={
            "staging": EnvironmentManifests(path="staging"),
            "production": EnvironmentManifests(path="production"),
        },
    ).save(f"manifests-{blocks}")
    ApprovalPolicy(
        environments={
            "production": EnvironmentApproval(
                approvers=[approver(APPROVER)], timeout_seconds=300, branches=["main"]
            )
        }
    ).save(f"approvals-{blocks}")
    _bare, url = git_remote(
        {
            "slipway.yaml": pipeline_file(registry.host, blocks),
            "Dockerfile": "FROM scratch\nCOPY version.txt /version.txt\n",
            "version.txt": "1.0.0\n",
        },
        name=f"{APP}.git",
    )
    return World(url, tmp_path / "counter.txt", manifests, kube, registry)


def approve(run_id: Any) -> None:
    approve_run(run_id, decision(APPROVER, reason="staging green"))


def read_run(run_id: Any) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


class InThread:
    """A pipeline run executing in a background thread, as in a worker's process."""

    def __init__(self, parameters: dict[str, Any]) -> None:
        with get_client(sync_client=True) as client:
            self.flow_run = client.create_flow_run(pipeline, parameters=parameters)
        self.state: State | None = None
        context = contextvars.copy_context()  # Prefect's settings live in contextvars
        self._thread = threading.Thread(target=context.run, args=(self._run,), daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.state = asyncio.run(
            run_flow_async(
                pipeline, self.flow_run, parameters=self.flow_run.parameters, return_type="state"
            )
        )

    def report(self, timeout: float = 120) -> PipelineReport:
        self._thread.join(timeout)
        assert self.state is not None, "the pipeline did not finish"
        report = self.state.result(raise_on_failure=False)
        assert self.state.is_completed(), (self.state, report)
        return report  # type: ignore[return-value]


def execute_here(flow_run: FlowRun) -> FlowRun:
    """Execute a deployment's run in this process; a suspend ends the execution."""
    with contextlib.suppress(Pause):
        asyncio.run(run_flow_async(pipeline, flow_run, parameters=flow_run.parameters))
    return read_run(flow_run.id)


def execute_in_new_process(flow_run: FlowRun) -> FlowRun:
    """Execute it as a served flow's runner does, in a new process: nothing of an earlier
    execution is in memory (the flow arrives cloudpickled)."""
    process = run_flow_in_subprocess(pipeline, flow_run, parameters=flow_run.parameters)
    process.join(120)
    assert process.exitcode is not None, "the flow process did not exit"
    return read_run(flow_run.id)


# --- tests ---------------------------------------------------------------------------------


def test_a_pipeline_takes_its_image_through_staging_and_an_approved_production(
    world: World,
) -> None:
    running = InThread(world.parameters(approval_wait="pause"))
    approve(running.flow_run.id)
    report = running.report()

    assert {s.name: s.status for s in report.stages} == {"test": "passed", "image": "passed"}
    pushed = report.pushed_image
    assert pushed is not None
    assert pushed.ref.startswith(f"{world.registry.host}/{APP}@sha256:")
    assert world.registry.manifest_digest(APP, pushed.digest) == pushed.digest
    environments = {e.name: e for e in report.environments}
    assert [e.name for e in report.environments] == ["staging", "production"]
    assert environments["staging"].status == "deployed", environments["staging"]
    assert environments["production"].status == "deployed", environments["production"]
    assert environments["production"].approver == APPROVER
    assert environments["staging"].approver is None
    # GitOps: one bump per environment, by digest, the production one naming the approver
    bumps = world.bumps()
    assert [b["Slipway-Environment"] for b in bumps] == ["staging", "production"]
    assert {b["Slipway-Image"] for b in bumps} == {pushed.ref}
    assert {b["Slipway-Source-Commit"] for b in bumps} == {report.sha}
    assert bumps[1]["Slipway-Approver"] == APPROVER
    assert [environments[b["Slipway-Environment"]].manifests_commit for b in bumps] == [
        b["commit"] for b in bumps
    ]
    # the cluster runs what the commits say, and the objects remember who let it in
    staging = world.serving("staging")
    production = world.serving("production")
    for deployed in (staging, production):
        assert deployed.metadata.annotations[ANNOTATION_IMAGE] == pushed.ref
        assert deployed.spec.template.spec.containers[0].image == pushed.ref
    assert production.metadata.annotations[ANNOTATION_APPROVER] == APPROVER
    assert world.counter.read_text().count("\n") == 1


def test_a_suspended_approval_resumes_without_rerunning_stages_or_a_new_build_number(
    world: World,
) -> None:
    # the repository is the deployment's own default: a deployment's run may build it
    deployment_id = pipeline.to_deployment(
        name=f"deploy-{uuid4().hex[:6]}", parameters={"repository": world.url}
    ).apply()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id,
            parameters=world.parameters(),  # approval_wait: auto
        )

    first = execute_here(flow_run)  # suspends before production: the execution ends
    assert first.state is not None and first.state.name == "Suspended", first.state
    [staging_bump] = world.bumps()
    assert staging_bump["Slipway-Environment"] == "staging"
    image = staging_bump["Slipway-Image"]
    assert world.serving("staging").metadata.annotations[ANNOTATION_IMAGE] == image
    assert not k8s.AppsV1Api(world.kube.api_client()).list_namespaced_deployment("production").items

    approve(flow_run.id)
    second = execute_in_new_process(first)

    assert second.state is not None and second.state.is_completed(), second.state
    report: PipelineReport = second.state.result()  # type: ignore[assignment]
    assert [(e.name, e.status) for e in report.environments] == [
        ("staging", "deployed"),
        ("production", "deployed"),
    ], report.environments
    assert report.environments[1].approver == APPROVER
    # the stages came back from their persisted results: the test ran once in two
    # executions, and the image was neither rebuilt nor pushed again
    assert world.counter.read_text().splitlines() == [f"tested {staging_bump['Slipway-Build']}"]
    assert {s.name: s.status for s in report.stages} == {"test": "cached", "image": "cached"}
    # one build from start to end: the commits, the image and the objects agree
    bumps = world.bumps()
    assert [b["Slipway-Environment"] for b in bumps] == ["staging", "production"]
    assert {b["Slipway-Build"] for b in bumps} == {staging_bump["Slipway-Build"]}
    assert {b["Slipway-Run"] for b in bumps} == {str(flow_run.id)}
    assert report.pushed_image is not None
    assert {b["Slipway-Image"] for b in bumps} == {image} == {report.pushed_image.ref}
    production = world.serving("production")
    assert production.metadata.annotations[ANNOTATION_IMAGE] == image
    assert production.metadata.annotations[ANNOTATION_BUILD] == staging_bump["Slipway-Build"]
    assert production.metadata.annotations[ANNOTATION_APPROVER] == APPROVER
