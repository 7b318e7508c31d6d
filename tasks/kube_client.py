"""Cluster access: a synchronous ``kubernetes`` ApiClient from a block or a kubeconfig.

prefect-kubernetes keeps a cluster's kubeconfig in a ``KubernetesClusterConfig`` block
(optionally wrapped in ``KubernetesCredentials``) and hands out *asyncio* clients; the
deploy stages are plain synchronous functions (testable without an event loop), so this
module reads the same blocks and builds a synchronous ``kubernetes.client.ApiClient``
with ``kubernetes.config.new_client_from_config_dict``. Nothing is written back to the
kubeconfig (``persist_config=False``): refreshed tokens stay in memory.

:func:`check_reachable` is the one early probe of a cluster: ``GET /version`` with a
short connect timeout and no retries, so a kubeconfig that points nowhere fails in
seconds with :class:`~slipway.exceptions.ClusterUnreachable` naming the server URL,
and a refused token fails with :class:`~slipway.exceptions.DeployError`. Messages name
the server, never the token: :func:`auth_headers` is the only place the token leaves
the client, for HTTP the caller sends through the API server's service proxy (smoke
tests), and callers must redact those headers.

Example:
    ```python
    api = api_client_from_kubeconfig(Path("~/.kube/config").expanduser())
    print(check_reachable(api))  # "v1.31.2"
    ```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.client
import urllib3
import yaml
from kubernetes import config as kube_config
from kubernetes.config.config_exception import ConfigException
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from slipway.exceptions import ClusterUnreachable, ConfigError, DeployError

ApiClient = kubernetes.client.ApiClient

CONNECT_TIMEOUT_SECONDS = 3.0  # a cluster that does not accept a connection by then is down
READ_TIMEOUT_SECONDS = 10.0  # /version answers at once on a healthy API server


def api_client_from_config_dict(config: dict[str, Any], context: str | None = None) -> ApiClient:
    """An ApiClient for ``context`` (default: the kubeconfig's current context).

    Raises:
        ConfigError: the kubeconfig is malformed or has no such context (the message
            names the context, never a credential).
    """
    if not isinstance(config, dict):
        raise ConfigError("a kubeconfig must be a mapping (the YAML of a kubectl config file)")
    try:
        return kube_config.new_client_from_config_dict(
            config_dict=config, context=context, persist_config=False
        )
    except ConfigException as exc:
        where = f"context {context!r}" if context else "the current context"
        raise ConfigError(f"kubeconfig unusable for {where}: {_first_line(exc)}") from None


def api_client_from_block(block: KubernetesCredentials | KubernetesClusterConfig) -> ApiClient:
    """An ApiClient from a prefect-kubernetes block.

    ``KubernetesCredentials`` without a ``cluster_config`` means what it means to
    prefect-kubernetes: the in-cluster service account, else the default kubeconfig.
    """
    if isinstance(block, KubernetesClusterConfig):
        return api_client_from_config_dict(block.config, block.context_name)
    if isinstance(block, KubernetesCredentials):
        if block.cluster_config is not None:
            return api_client_from_block(block.cluster_config)
        configuration = kubernetes.client.Configuration()
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            try:
                kube_config.load_kube_config(
                    client_configuration=configuration, persist_config=False
                )
            except (ConfigException, OSError) as exc:
                raise ConfigError(
                    "KubernetesCredentials has no cluster_config, and there is neither an "
                    f"in-cluster service account nor a default kubeconfig: {_first_line(exc)}"
                ) from None
        return ApiClient(configuration=configuration)
    raise ConfigError(
        f"expected a KubernetesCredentials or KubernetesClusterConfig block, "
        f"got {type(block).__name__}"
    )


def api_client_from_kubeconfig(path: Path, context: str | None = None) -> ApiClient:
    """An ApiClient from a kubeconfig file (ConfigError naming the file when unreadable)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {type(exc).__name__}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"kubeconfig {path} is not a mapping")
    try:
        return api_client_from_config_dict(loaded, context)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


async def load_cluster(name: str) -> ApiClient:
    """The ApiClient of the ``KubernetesCredentials`` block ``name``, else of the
    ``KubernetesClusterConfig`` block of that name.

    Raises:
        ConfigError: no block of either type has that name.
    """
    for block_type in (KubernetesCredentials, KubernetesClusterConfig):
        try:
            block = await block_type.aload(name)
        except ValueError:  # Prefect: "Unable to find block document named ..."
            continue
        return api_client_from_block(block)
    raise ConfigError(
        f"no KubernetesCredentials or KubernetesClusterConfig block named {name!r}; "
        "create one (e.g. KubernetesClusterConfig.from_file(...).save(name))"
    )


def api_base_url(api: ApiClient) -> str:
    """The API server's URL, without a trailing slash."""
    return str(api.configuration.host).rstrip("/")


def auth_headers(api: ApiClient) -> dict[str, str]:
    """The headers that authenticate a request to the API server. Secrets: redact them."""
    headers: dict[str, str] = {}
    for setting in api.configuration.auth_settings().values():
        if setting.get("in") == "header" and setting.get("value"):
            headers[str(setting["key"]).title()] = str(setting["value"])
    return headers


def check_reachable(
    api: ApiClient,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
) -> str:
    """``GET /version`` once; the server's gitVersion (e.g. ``v1.31.2``).

    Raises:
        ClusterUnreachable: nothing answered at the server URL, or it answered 5xx.
        DeployError: the server refused the credentials (401/403) or answered oddly.
    """
    url = api_base_url(api)
    try:
        response = api.rest_client.pool_manager.request(
            "GET",
            f"{url}/version",
            headers={"Accept": "application/json", **auth_headers(api)},
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,
        )
    except urllib3.exceptions.HTTPError as exc:
        raise ClusterUnreachable(
            f"the Kubernetes API at {url} did not answer ({_network_reason(exc)})"
        ) from None
    if response.status in (401, 403):
        raise DeployError(
            f"the Kubernetes API at {url} refused the credentials "
            f"({response.status} {response.reason}): check the kubeconfig's user"
        )
    if response.status >= 500:
        raise ClusterUnreachable(f"the Kubernetes API at {url} answered {response.status}")
    try:
        version = response.json()
        return str(version["gitVersion"])
    except (ValueError, KeyError, TypeError):
        raise DeployError(
            f"{url}/version answered {response.status} without a Kubernetes version: "
            "is this a Kubernetes API server?"
        ) from None


def _network_reason(exc: urllib3.exceptions.HTTPError) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "unknown host"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # before its base class
        text = str(reason).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "resolution" in text or "nodename" in text:
            return "unknown host"
        return "cannot connect"
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return "TLS handshake failed"
    if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return "no answer in time"
    return type(reason).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
