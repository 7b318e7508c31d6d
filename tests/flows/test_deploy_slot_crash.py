"""A deploy whose worker dies while it holds the deploy slot does not block the next one.

The slot (``slipway-deploy-<app>-<environment>``, a Prefect global concurrency limit
of 1) is held under a lease that the holder renews while it lives. Here the holder
is a real deploy: a flow run of a deployment, taken by a real process worker from a
real ``prefect server``, that has bumped the manifests and applied a release whose
pods never become ready, so it sits in the rollout wait holding the slot. Then the
worker and the flow process are killed with SIGKILL (no hook, no ``finally`` runs:
a machine gone). The next deploy, in this process, waits for the slot; it gets it
once the lease runs out (``Delivery.slot_lease``, the server's minimum of 60 s here)
and the server's repossessor, which looks every 15 s, gives the slot back; then it
deploys. The test measures that wait from what the server recorded.

Real: Prefect server, worker and flow process, git (the manifests repository).
Stand-in: the Kubernetes API (no apiserver runs here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from kubernetes import client as k8s
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.runtime import flow_run
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.deploy_spec import DeploySpec
from slipway.flows.deliver import Delivery, deliver, slot_name
from slipway.redact import Redactor
from tests.flows.prefect_api import start_process_worker
from tests.servers.example_manifests import app_deployment, app_service
from tests.servers.git_http import commit_files, make_bare_repo
from tests.servers.kube_api import BROKEN_IMAGE_PREFIX, KubeCluster

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = "tests/flows/test_deploy_slot_crash.py:deliver_release"
LEASE = 60.0  # seconds: the least the server accepts (production default: 300)
REPOSSESSOR_LOOP = 15.0  # seconds: how often the server looks for expired leases
GOOD = f"127.0.0.1:5000/shop@sha256:{'a' * 64}"
NEVER_READY = f"{BROKEN_IMAGE_PREFIX}/shop@sha256:{'d' * 64}"  # the pull fails

pytestmark = pytest.mark.timeout(300)


@flow(name="deliver-release")
async def deliver_release(
    app: str,
    image: str,
    manifests_url: str,
    cluster: str,
    namespace: str,
    build: int,
    workspace: str,
    busy_timeout: float,
) -> list[tuple[str, str, str]]:
    """One release to ``production`` through ``deliver``, as the pipeline hands it over:
    (environment, status, reason) per environment."""
    spec = DeploySpec.model_validate(
        {
            "manifests": "unused",
            "environments": [
                {
                    "name": "production",
                    "namespace": namespace,
                    "rollout_timeout": 600,
                    "on_busy": "wait",
                    "busy_timeout": busy_timeout,
                }
            ],
        }
    )
    delivery = Delivery(
        spec=spec,
        app=app,
        image=image,
        source_commit=f"{build:040x}",
        branch="main",
        run_id=str(flow_run.get_id()),
        run_url=None,
        build_number=build,
        workspace=Path(workspace),
        redactor=Redactor(),
        manifests=ManifestsRepository(
            url=manifests_url,
            environments={"production": EnvironmentManifests(path="production")},
        ),
        approvals=None,
        prometheus=None,
        notifier=None,
        default_cluster=cluster,
        slot_lease=LEASE,
    )
    return [(o.name, o.status, o.reason) for o in await deliver(delivery)]


@dataclass
class World:
    app: str
    kube: KubeCluster
    manifests_url: str
    cluster_block: str
    workspace: Path

    def parameters(self, image: str, build: int, busy_timeout: float) -> dict[str, object]:
        return {
            "app": self.app,
            "image": image,
            "manifests_url": self.manifests_url,
            "cluster": self.cluster_block,
            "namespace": self.kube.namespace,
            "build": build,
            "workspace": str(self.workspace / f"build-{build}"),
            "busy_timeout": busy_timeout,
        }

    def running_image(self) -> str | None:
        apps = k8s.AppsV1Api(self.kube.api_client())
        found = apps.list_namespaced_deployment(self.kube.namespace).items
        return found[0].spec.template.spec.containers[0].image if found else None


@pytest.fixture
def world(on_server: str, kube: KubeCluster, tmp_path: Path) -> World:
    # an app of its own, as the slot is named after the app and the server is shared;
    # its Deployment, Service and container are named after it
    app = f"crash-{uuid4().hex[:6]}"
    remote = make_bare_repo(tmp_path / "git", "manifests.git")
    deployment = app_deployment(app, "127.0.0.1:5000/shop:placeholder", 1)
    deployment["spec"]["progressDeadlineSeconds"] = 600  # the holder must still be waiting
    commit_files(
        remote,
        {
            "production/deployment.yaml": yaml.safe_dump(deployment),
            "production/service.yaml": yaml.safe_dump(app_service(app)),
        },
        "manifests",
    )
    config = yaml.safe_load(kube.kubeconfig.read_text())
    block = f"crash-cluster-{uuid4().hex[:8]}"
    KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(
            config=config, context_name=config["current-context"]
        )
    ).save(block)
    return World(app, kube, remote.as_uri(), block, tmp_path / "ws")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _process_tree(pid: int) -> list[int]:
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(_children(current))
    return tree


@pytest.fixture
def worker(on_server: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A process work pool of its own and ``prefect worker start`` on it; yields the
    deployment's name, the worker process and its log."""
    pool = f"slot-crash-{uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment_id = deliver_release.from_source(source=str(ROOT), entrypoint=ENTRYPOINT).deploy(
        name="crash-test", work_pool_name=pool, print_next_steps=False, ignore_warnings=True
    )
    log = tmp_path / "worker.log"
    proc = start_process_worker(pool, on_server, log)
    try:
        yield "deliver-release/crash-test", proc, log
    finally:
        for pid in reversed(_process_tree(proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs():
                if run.deployment_id == deployment_id:
                    client.delete_flow_run(run.id)
            client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)


def _slot(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def _acquisitions(limit: str) -> list[datetime]:
    """When the server recorded each acquisition of the slot, oldest first."""
    with get_client(sync_client=True) as client:
        limit_id = client.read_global_concurrency_limit_by_name(limit).id
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=["prefect.concurrency-limit.acquired"]),
                resource=EventResourceFilter(id=[f"prefect.concurrency-limit.{limit_id}"]),
            ),
            limit=50,
        )
    return sorted(e.occurred for e in page.events)


def _wait(check, timeout: float, what: str, log: Path | None = None):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what} within {timeout:g} s" + (f"\n{log.read_text()}" if log else "")
            )
        time.sleep(0.2)
    return result


def test_a_slot_held_by_a_killed_worker_frees_itself_and_the_next_deploy_goes_out(
    world: World, worker
) -> None:
    deployment, worker_proc, worker_log = worker
    limit = slot_name(world.app, "production")

    # 1. a deploy, started like any pipeline run, takes the slot and applies a release
    #    whose pods never become ready: it waits in the rollout, holding the slot
    requested = time.monotonic()
    held = run_deployment(deployment, parameters=world.parameters(NEVER_READY, 1, 30), timeout=0)
    _wait(
        lambda: world.running_image() == NEVER_READY,
        150,
        "the first deploy did not apply its release",
        worker_log,
    )
    assert _slot(limit) == 1

    # 2. the worker and the flow process it started die at once, mid-deploy
    tree = _process_tree(worker_proc.pid)
    assert len(tree) >= 2, "the worker runs the flow in a process of its own"
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    print(f"\nkilled the worker {killed - requested:.1f} s after the run was requested")
    worker_proc.wait(10)
    with get_client(sync_client=True) as client:
        dead = client.read_flow_run(held.id)
    assert dead.state is not None and dead.state.is_running()  # nobody is left to say otherwise
    assert _slot(limit) == 1  # still held, by no one

    # 3. the next deploy waits for the slot, gets it when the lease runs out, deploys
    started, started_at = time.monotonic(), datetime.now(UTC)
    outcomes = asyncio.run(
        deliver_release(**world.parameters(GOOD, 2, LEASE + REPOSSESSOR_LOOP + 60))
    )
    total = time.monotonic() - started
    assert outcomes == [("production", "deployed", outcomes[0][2])], outcomes
    assert world.running_image() == GOOD

    def two_acquisitions() -> list[datetime]:
        return found if len(found := _acquisitions(limit)) >= 2 else []

    first, second = _wait(two_acquisitions, 30, "the server recorded both acquisitions")[-2:]
    held_for = (second - first).total_seconds()
    waited = (second - started_at).total_seconds()
    print(
        f"the dead deploy's slot came free {held_for:.1f} s after it took it (lease "
        f"{LEASE:g} s, repossessor every {REPOSSESSOR_LOOP:g} s); the next deploy, started "
        f"{started - killed:.1f} s after the kill, waited {waited:.1f} s for it and took "
        f"{total:.1f} s in all"
    )
    # never before the lease ran out (the dead holder was not renewing it), and about one
    # repossessor pass after that (with room for a slow machine)
    assert LEASE - 1 <= held_for <= LEASE + REPOSSESSOR_LOOP + 15
    assert 0 < waited < total
