"""The main job's simulated cluster: the stand-in and a real Prometheus, started and reused.

Everything runs for real: ``python -m tests.servers.kube_api`` as its own process, the
example app's processes as its pods, Debian's Prometheus scraping them.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from slipway import local_cluster
from slipway.exceptions import ConfigError
from slipway.local_cluster import LocalCluster, ensure_local_cluster, stop_local_cluster


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A slipway home whose local cluster is stopped after the test, whatever happened."""
    home = tmp_path / "home"
    try:
        yield home
    finally:
        stop_local_cluster(home)


def state(home: Path) -> dict[str, Any]:
    return json.loads((home / "local-cluster" / "state.json").read_text())


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_for(check: Any, timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message}", pytrace=False)
        time.sleep(0.2)


def deploy_example_app(cluster: LocalCluster, namespace: str, replicas: int) -> client.AppsV1Api:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    apps = client.AppsV1Api(api)
    labels = {"app.kubernetes.io/name": "example-app"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "example-app"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "example-app",
                                "image": "127.0.0.1:5000/team/example-app:3f2a9c1d7e6b",
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                            }
                        ]
                    },
                },
            },
        },
    )
    client.CoreV1Api(api).create_namespaced_service(
        namespace,
        {"metadata": {"name": "example-app"},
         "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}},
    )  # fmt: skip

    def ready() -> bool:
        status = apps.read_namespaced_deployment("example-app", namespace).status
        return (status.ready_replicas or 0) == replicas

    wait_for(ready, 20, f"{replicas} ready pods")
    return apps


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())["data"]["result"]


def test_starts_a_simulated_cluster_that_prometheus_scrapes_then_reuses_it(home: Path) -> None:
    lines: list[str] = []
    cluster = ensure_local_cluster(home, log=lines.append)

    assert cluster.simulated and cluster.kubeconfig == home / "local-cluster" / "kubeconfig"
    (line,) = lines
    assert line.startswith("SIMULATED cluster (started): Kubernetes API stand-in at ")
    assert "pods are local processes" in line and cluster.prometheus_url in line
    assert "token" not in line
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    namespaces = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "staging", "production"} <= namespaces

    deploy_example_app(cluster, "staging", 2)
    answer = core.connect_get_namespaced_service_proxy_with_path(
        "example-app:80", "staging", "healthz", _preload_content=False
    )
    assert json.loads(answer.data) == {"status": "ok", "version": "3f2a9c1d7e6b"}

    # Prometheus picks the pods up from the file_sd JSON (it applies new targets ~5 s apart)
    pod_names = {p.metadata.name for p in core.list_namespaced_pod("staging").items}
    wait_for(
        lambda: len(query(cluster.prometheus_url, 'up{namespace="staging"} == 1')) == 2,
        timeout=20,
        message="both pods up",
    )
    up = query(cluster.prometheus_url, 'up{namespace="staging"}')
    assert {r["metric"]["pod"] for r in up} == pod_names
    assert {r["metric"]["app_kubernetes_io_name"] for r in up} == {"example-app"}
    assert {r["metric"]["job"] for r in up} == {"kubernetes-pods"}

    before = state(home)
    pod_addresses = [t for g in json.loads((home / "local-cluster" / "pods.json").read_text())
                     for t in g["targets"]]  # fmt: skip
    assert len(pod_addresses) == 2
    again: list[str] = []
    assert ensure_local_cluster(home, log=again.append) == cluster
    assert again[0].startswith("SIMULATED cluster (reusing):")
    assert state(home) == before

    assert stop_local_cluster(home) is True
    assert not alive(before["standin_pid"]) and not alive(before["prometheus_pid"])
    for address in pod_addresses:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{address}/healthz", timeout=1)
    assert json.loads((home / "local-cluster" / "pods.json").read_text()) == []
    assert stop_local_cluster(home) is False


def test_a_killed_stand_in_is_replaced_and_its_leftover_pods_stopped(home: Path) -> None:
    cluster = ensure_local_cluster(home, log=lambda _line: None)
    deploy_example_app(cluster, "default", 1)
    (group,) = json.loads((home / "local-cluster" / "pods.json").read_text())
    (address,) = group["targets"]
    first = state(home)

    os.kill(first["standin_pid"], signal.SIGKILL)  # no clean-up: its pod keeps running
    wait_for(lambda: not alive(first["standin_pid"]), 10, "the stand-in to die")
    with urllib.request.urlopen(f"http://{address}/healthz", timeout=2) as answer:
        assert answer.status == 200

    lines: list[str] = []
    replaced = ensure_local_cluster(home, log=lines.append)
    assert lines[0].startswith("SIMULATED cluster (started):")
    assert replaced.api_url != cluster.api_url
    assert replaced.prometheus_url == cluster.prometheus_url  # still running: reused
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{address}/healthz", timeout=1)
    # the new stand-in's first pod may take the same address again
    deploy_example_app(replaced, "default", 1)


def test_the_simulated_cluster_needs_a_source_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an installed slipway (site-packages) has no tests/ next to it: what a pip install sees
    monkeypatch.setattr(local_cluster, "ROOT", tmp_path / "site-packages")
    with pytest.raises(ConfigError, match="needs a source checkout of slipway"):
        ensure_local_cluster(tmp_path / "home")
    assert not (tmp_path / "home" / "local-cluster").exists()
