"""Cluster access from kubeconfigs and prefect-kubernetes blocks, against the ``kube`` fixture."""

from __future__ import annotations

import asyncio
import copy
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from slipway.exceptions import ClusterUnreachable, ConfigError, DeployError
from slipway.tasks.kube_client import (
    api_base_url,
    api_client_from_block,
    api_client_from_config_dict,
    api_client_from_kubeconfig,
    auth_headers,
    check_reachable,
    load_cluster,
)
from tests.servers.kube_api import KubeCluster
from tests.servers.ports import free_port

WRONG_TOKEN = "wrong-token-0123456789abcdef"


def kubeconfig_of(kube: KubeCluster) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(kube.kubeconfig.read_text())
    return loaded


def with_server(config: dict[str, Any], server: str, token: str) -> dict[str, Any]:
    """The kubeconfig's current context, pointed at ``server`` with ``token``."""
    changed = copy.deepcopy(config)
    current = next(c for c in changed["contexts"] if c["name"] == changed["current-context"])
    cluster = next(c for c in changed["clusters"] if c["name"] == current["context"]["cluster"])
    cluster["cluster"]["server"] = server
    user = next(u for u in changed["users"] if u["name"] == current["context"]["user"])
    user["user"] = {"token": token}
    return changed


def namespace_names(api: client.ApiClient, namespace: str) -> str:
    return str(client.CoreV1Api(api).read_namespace(namespace).metadata.name)


def test_client_from_the_kubeconfig_file(kube: KubeCluster) -> None:
    api = api_client_from_kubeconfig(kube.kubeconfig)
    version = check_reachable(api)
    assert version.startswith("v1.")
    assert namespace_names(api, kube.namespace) == kube.namespace
    assert api_base_url(api) == kube.api_url.rstrip("/")


def test_client_for_a_named_context(kube: KubeCluster) -> None:
    config = kubeconfig_of(kube)
    elsewhere = with_server(config, f"http://127.0.0.1:{free_port()}", WRONG_TOKEN)
    both = copy.deepcopy(config)
    both["clusters"].append({"name": "nowhere", "cluster": elsewhere["clusters"][0]["cluster"]})
    both["users"].append({"name": "nowhere", "user": {"token": WRONG_TOKEN}})
    both["contexts"].append(
        {"name": "nowhere", "context": {"cluster": "nowhere", "user": "nowhere"}}
    )
    both["current-context"] = "nowhere"
    real_context = config["current-context"]

    api = api_client_from_config_dict(both, real_context)
    assert namespace_names(api, kube.namespace) == kube.namespace
    with pytest.raises(ClusterUnreachable):
        check_reachable(api_client_from_config_dict(both))
    with pytest.raises(ConfigError, match="context 'staging'") as caught:
        api_client_from_config_dict(both, "staging")
    assert WRONG_TOKEN not in str(caught.value)


def test_unreadable_kubeconfig_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read kubeconfig .*missing.yaml"):
        api_client_from_kubeconfig(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- not\n- a kubeconfig\n")
    with pytest.raises(ConfigError, match=r"list.yaml is not a mapping"):
        api_client_from_kubeconfig(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ConfigError, match=r"empty.yaml: kubeconfig unusable"):
        api_client_from_kubeconfig(tmp_path / "empty.yaml")


def test_client_from_prefect_kubernetes_blocks(kube: KubeCluster) -> None:
    cluster_config = KubernetesClusterConfig.from_file(kube.kubeconfig)
    api = api_client_from_block(cluster_config)
    assert namespace_names(api, kube.namespace) == kube.namespace
    credentials = KubernetesCredentials(cluster_config=cluster_config)
    assert namespace_names(api_client_from_block(credentials), kube.namespace) == kube.namespace
    explicit = KubernetesClusterConfig(
        config=kubeconfig_of(kube), context_name=kubeconfig_of(kube)["current-context"]
    )
    assert check_reachable(api_client_from_block(explicit)).startswith("v1.")
    with pytest.raises(ConfigError, match="got str"):
        api_client_from_block("my-cluster")  # type: ignore[arg-type]


def test_credentials_without_cluster_config_use_the_default_kubeconfig(
    kube: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # where the client looks for ~/.kube/config: pointed at the stand-in's kubeconfig
    # (the real lookup runs), so the test never reads or writes the user's home
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kube.kubeconfig)
    )
    api = api_client_from_block(KubernetesCredentials())
    assert namespace_names(api, kube.namespace) == kube.namespace

    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", "/nonexistent/kubeconfig"
    )
    with pytest.raises(ConfigError, match="no cluster_config"):
        api_client_from_block(KubernetesCredentials())


def test_load_cluster_by_block_name(prefect_harness: None, kube: KubeCluster) -> None:
    suffix = uuid.uuid4().hex[:8]
    cluster_config = KubernetesClusterConfig.from_file(kube.kubeconfig)
    cluster_config.save(f"cluster-{suffix}", overwrite=True)
    KubernetesCredentials(cluster_config=cluster_config).save(f"creds-{suffix}", overwrite=True)

    for name in (f"cluster-{suffix}", f"creds-{suffix}"):
        api = asyncio.run(load_cluster(name))
        assert namespace_names(api, kube.namespace) == kube.namespace
    with pytest.raises(ConfigError, match=f"no KubernetesCredentials or .* named 'gone-{suffix}'"):
        asyncio.run(load_cluster(f"gone-{suffix}"))


def nowhere(url: str) -> dict[str, Any]:
    return with_server(
        {
            "clusters": [{"name": "c", "cluster": {}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        },
        url,
        WRONG_TOKEN,
    )


def test_unknown_host_is_unreachable() -> None:
    url = "https://kube-api.slipway.invalid:6443"
    with pytest.raises(ClusterUnreachable) as caught:
        check_reachable(api_client_from_config_dict(nowhere(url)))
    assert str(caught.value) == f"the Kubernetes API at {url} did not answer (unknown host)"


def test_nothing_listening_is_unreachable_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = nowhere(url)
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable) as caught:
        check_reachable(api_client_from_config_dict(config))
    assert time.monotonic() - started < 5
    assert str(caught.value) == f"the Kubernetes API at {url} did not answer (connection refused)"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_silent_server_is_unreachable_after_the_timeout(silent_server: str) -> None:
    config = nowhere(silent_server)
    started = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=r"did not answer \(no answer in time\)"):
        check_reachable(api_client_from_config_dict(config), read_timeout=0.5)
    assert time.monotonic() - started < 3


def test_a_refused_token_is_a_deploy_error_without_the_token(kube: KubeCluster) -> None:
    config = kubeconfig_of(kube)
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    user = next(u for u in config["users"] if u["name"] == current["context"]["user"])
    user["user"] = {"token": WRONG_TOKEN}
    with pytest.raises(DeployError, match="refused the credentials .401") as caught:
        check_reachable(api_client_from_config_dict(config))
    assert WRONG_TOKEN not in str(caught.value)
    assert kube.api_url.rstrip("/") in str(caught.value)


def test_auth_headers_reach_the_api_directly(kube: KubeCluster) -> None:
    api = api_client_from_kubeconfig(kube.kubeconfig)
    headers = auth_headers(api)
    url = f"{api_base_url(api)}/api/v1/namespaces/{kube.namespace}"
    answer = api.rest_client.pool_manager.request("GET", url, headers=headers)
    assert answer.status == 200 and answer.json()["metadata"]["name"] == kube.namespace
    if kube.standin is not None:
        assert headers == {"Authorization": f"Bearer {kube.standin.token}"}
        assert api.rest_client.pool_manager.request("GET", url).status == 401
