"""Pods of the Kubernetes API stand-in backed by real processes of the example app.

Driven through the official kubernetes client, as the product drives a cluster; the
pods are real ``python -m example_app`` processes (or containers, in docker mode) on
their own loopback addresses. Stand-in only: a real cluster runs its own pods.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.servers.docker_engine import BASE_IMAGE
from tests.servers.kube_api import KubeCluster
from tests.servers.pod_runner import (
    EXAMPLE_SRC,
    PodRunner,
    image_tag,
    prometheus_label_name,
)
from tests.servers.pod_runner import process_pods as process_pods_fixture

process_pods = process_pods_fixture

pytestmark = pytest.mark.kube_standin_only("pods backed by local processes")
APP_IMAGE = "registry.local/example-app:1.4.2"


def example_app(
    name: str,
    replicas: int = 1,
    *,
    env: dict[str, str] | None = None,
    image: str = APP_IMAGE,
    readiness_path: str = "/readyz",
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, "slipway.dev/colour": "blue"}
    container: dict[str, Any] = {
        "name": "example-app",
        "image": image,
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "readinessProbe": {"httpGet": {"path": readiness_path, "port": "http"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"prometheus.io/path": "/metrics"}},
                "spec": {"containers": [container]},
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    }


class Apis:
    def __init__(self, kube: KubeCluster) -> None:
        api = kube.api_client()
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.ns = kube.namespace

    def deploy(self, manifest: dict[str, Any], with_service: bool = True) -> None:
        self.apps.create_namespaced_deployment(self.ns, manifest)
        if with_service:
            self.core.create_namespaced_service(self.ns, service(manifest["metadata"]["name"]))

    def ready(self, name: str) -> int:
        return self.apps.read_namespaced_deployment(name, self.ns).status.ready_replicas or 0

    def pods(self, name: str) -> list[Any]:
        selector = f"app.kubernetes.io/name={name}"
        return self.core.list_namespaced_pod(self.ns, label_selector=selector).items

    def proxy(self, name: str, path: str) -> Any:
        """The JSON a pod answers through the API's service proxy (the client would turn
        it into a Python repr string when asked to deserialise it)."""
        answer = self.core.connect_get_namespaced_service_proxy_with_path(
            f"{name}:80", self.ns, path, _preload_content=False
        )
        return json.loads(answer.data)


def get(url: str) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=2) as answer:
        return answer.status, json.loads(answer.read())


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # it may be reaped between the two looks
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pods_are_ready_when_their_process_answers_the_readiness_probe(
    kube: KubeCluster, process_pods: PodRunner
) -> None:
    c = Apis(kube)
    c.deploy(example_app("web", 2))
    kube.wait_for(lambda: c.ready("web") == 2, message="two ready pods")

    pods = c.pods("web")
    running = {p.name: p for p in process_pods.pods.values()}
    assert {p.metadata.name for p in pods} == set(running)
    for pod in pods:
        backing = running[pod.metadata.name]
        assert pod.status.pod_ip == backing.ip and backing.ip.startswith("127.")
        assert alive(backing.pid)
        assert get(f"http://{backing.ip}:8080/readyz") == (
            200,
            {"status": "ready", "version": "1.4.2"},  # the image tag stands for the version
        )

    # a process that runs but fails its readiness probe never makes its pod Ready
    c.deploy(example_app("unready", readiness_path="/not-served"), with_service=False)
    kube.wait_for(lambda: len(process_pods.pods) == 3, message="the third process")
    kube.advance(5)
    assert c.ready("unready") == 0
    backing = next(p for p in process_pods.pods.values() if p.name.startswith("unready-"))
    kube.wait_for(lambda: answers(f"http://{backing.ip}:8080/healthz"), message="serving")
    assert c.ready("unready") == 0  # it serves, just not ready


def test_a_process_that_exits_leaves_its_pod_unready_and_says_why(
    kube: KubeCluster, tmp_path: Path
) -> None:
    lines: list[str] = []
    runner = PodRunner(log_dir=tmp_path / "logs", log=lines.append)
    kube.set_pod_hook(runner)
    try:
        c = Apis(kube)
        c.deploy(example_app("broken", env={"ERROR_RATE": "lots"}), with_service=False)
        kube.wait_for(lambda: any("exited with 2" in line for line in lines), message="the exit")
        assert c.ready("broken") == 0
        exit_line = next(line for line in lines if "exited with 2" in line)
        assert "ERROR_RATE" in exit_line and "'lots'" in exit_line  # the app's own message
    finally:
        runner.close()


def test_the_service_proxy_reaches_the_pods_with_their_env(
    kube: KubeCluster, process_pods: PodRunner
) -> None:
    c = Apis(kube)
    c.deploy(example_app("good", 2, env={"APP_VERSION": "2.0.0"}))
    c.deploy(example_app("bad", env={"APP_VERSION": "2.0.1", "ERROR_RATE": "1"}))
    kube.wait_for(lambda: c.ready("good") == 2 and c.ready("bad") == 1, message="ready pods")

    assert c.proxy("good", "healthz") == {"status": "ok", "version": "2.0.0"}
    assert c.proxy("good", "")["message"] == "Hello from example-app"
    with pytest.raises(ApiException) as caught:
        c.proxy("bad", "")
    assert caught.value.status == 500
    assert json.loads(caught.value.body) == {"error": "injected failure", "version": "2.0.1"}
    assert c.proxy("bad", "healthz")["version"] == "2.0.1"  # only / fails


def test_scaling_down_stops_processes_and_updates_the_file_sd(
    kube: KubeCluster, process_pods: PodRunner, tmp_path: Path
) -> None:
    c = Apis(kube)
    c.deploy(example_app("web", 2))
    kube.wait_for(lambda: c.ready("web") == 2, message="two ready pods")
    kube.wait_for(lambda: len(process_pods.file_sd_groups()) == 2, message="two targets")
    pids = {p.name: p.pid for p in process_pods.pods.values()}

    groups = json.loads((tmp_path / "pods.json").read_text())
    assert sorted(g["labels"]["pod"] for g in groups) == sorted(pids)
    for group in groups:
        pod = next(p for p in process_pods.pods.values() if p.name == group["labels"]["pod"])
        assert group["targets"] == [f"{pod.ip}:8080"]
        assert group["labels"]["namespace"] == kube.namespace
        assert group["labels"]["app_kubernetes_io_name"] == "web"
        assert group["labels"]["slipway_dev_colour"] == "blue"
        assert group["labels"]["__metrics_path__"] == "/metrics"
        assert "pod_template_hash" in group["labels"]

    c.apps.patch_namespaced_deployment_scale("web", kube.namespace, {"spec": {"replicas": 1}})
    kube.wait_for(lambda: len(process_pods.pods) == 1, message="one pod left")
    (gone,) = set(pids) - {p.name for p in process_pods.pods.values()}
    kube.wait_for(lambda: not alive(pids[gone]), message="the scaled-away process to exit")
    assert [g["labels"]["pod"] for g in json.loads((tmp_path / "pods.json").read_text())] == [
        name for name in pids if name != gone
    ]

    c.apps.delete_namespaced_deployment("web", kube.namespace)
    kube.wait_for(lambda: not any(alive(pid) for pid in pids.values()), message="all stopped")
    assert json.loads((tmp_path / "pods.json").read_text()) == []
    assert kube.standin is not None and kube.standin.errors == []


def test_a_pod_whose_address_is_taken_moves_to_a_free_one(
    kube: KubeCluster, process_pods: PodRunner
) -> None:
    # something else listens where the stand-in puts its first pod already
    assert kube.standin is not None
    first = f"127.{kube.standin.simulation.loopback_octet}.0.3"
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind((first, 8080))
            squatter.listen()
        except OSError:
            pass  # taken by someone else: just as good
        c = Apis(kube)
        c.deploy(example_app("web"))
        kube.wait_for(lambda: c.ready("web") == 1, message="a ready pod")
        (pod,) = c.pods("web")
        assert pod.status.pod_ip != first
        assert c.proxy("web", "readyz")["status"] == "ready"


def test_label_names_and_image_tags() -> None:
    assert prometheus_label_name("app.kubernetes.io/name") == "app_kubernetes_io_name"
    assert prometheus_label_name("8ball") == "_8ball"
    assert image_tag("127.0.0.1:5000/team/app:3f2a9c1d7e6b") == "3f2a9c1d7e6b"
    assert image_tag("127.0.0.1:5000/team/app") == "latest"
    assert image_tag("127.0.0.1:5000/team/app@sha256:" + "ab" * 32) == "ab" * 6


# --- docker mode ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_image(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example app on the base image, with prometheus_client copied in (no index)."""
    import prometheus_client

    context = tmp_path_factory.mktemp("pod-image")
    shutil.copytree(EXAMPLE_SRC / "example_app", context / "src" / "example_app",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(Path(prometheus_client.__file__).parent, context / "deps" / "prometheus_client",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "COPY src/ /app/src/\nCOPY deps/ /app/deps/\n"
        "ENV PYTHONPATH=/app/src:/app/deps HOST=0.0.0.0 PORT=8080 APP_VERSION=from-image"
        " ERROR_RATE=0.5\n"
        'CMD ["python3", "-m", "example_app"]\n'
    )
    engine = docker.DockerClient(base_url=docker_host)
    try:
        engine.images.build(path=str(context), tag="slipway-test/pod-runner-app:1", rm=True)
    finally:
        engine.close()
    return "slipway-test/pod-runner-app:1"


def test_docker_mode_runs_the_pod_image_on_the_host_network(
    kube: KubeCluster, docker_host: str, app_image: str
) -> None:
    runner = PodRunner(mode="docker", docker_host=docker_host)
    kube.set_pod_hook(runner)
    try:
        c = Apis(kube)
        c.deploy(example_app("web", image=app_image, env={"ERROR_RATE": "1"}))
        kube.wait_for(lambda: c.ready("web") == 1, timeout=60, message="the container ready")
        assert c.proxy("web", "healthz")["version"] == "from-image"  # the image's own ENV
        with pytest.raises(ApiException) as caught:
            c.proxy("web", "")  # ERROR_RATE=1 from the pod spec, not the image's 0.5
        assert caught.value.status == 500
        (pod,) = runner.pods.values()
        assert pod.container is not None

        c.apps.patch_namespaced_deployment_scale("web", kube.namespace, {"spec": {"replicas": 0}})
        kube.wait_for(lambda: not runner.pods, message="the pod stopped")
        runner.close()
        listed = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name={pod.container}"],
            env={**os.environ, "DOCKER_HOST": docker_host},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert listed.stdout.strip() == ""
    finally:
        runner.close()


def test_process_mode_takes_the_image_env_from_an_engine_that_has_the_image(
    kube: KubeCluster, docker_host: str, app_image: str
) -> None:
    runner = PodRunner(image_env_from=docker_host)
    kube.set_pod_hook(runner)
    try:
        c = Apis(kube)
        c.deploy(example_app("web", image=app_image))
        c.deploy(example_app("other", image="127.0.0.1:5000/not/on/the-engine:7.7"))
        kube.wait_for(lambda: c.ready("web") == 1 and c.ready("other") == 1, message="ready")
        assert c.proxy("web", "healthz")["version"] == "from-image"
        assert c.proxy("web", "")["version"] == "from-image"  # ERROR_RATE=0.5: 1st passes,
        with pytest.raises(ApiException):
            c.proxy("web", "")  # the 2nd fails
        assert c.proxy("other", "healthz")["version"] == "7.7"  # not there: the tag
        (pid,) = [p.pid for p in runner.pods.values() if p.name.startswith("web-")]
        assert alive(pid)  # a local process, not a container
    finally:
        runner.close()
