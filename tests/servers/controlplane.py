"""Fixtures on the real Kubernetes control plane (slipway/controlplane.py): one per session.

``control_plane`` starts etcd, kube-apiserver, kube-controller-manager and
kube-scheduler from the binaries ``.ci/controlplane/build`` made, once per test
session, and stops them at its end. ``real_kube`` gives each test a fresh namespace
on it as a :class:`~tests.servers.kube_api.KubeCluster` (the type the ``kube``
fixture yields), reached as ``slipway`` (bound to cluster-admin through RBAC).

Tests that use them carry the ``controlplane`` marker. When the binaries are missing
they FAIL with a message naming the build script: ``tests/run`` deselects the marker
in that case and says so in one line (the README's "What runs for real" says when
this lane runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from slipway.controlplane import ControlPlane, require_binaries, start_control_plane
from slipway.exceptions import ConfigError
from tests.servers.kube_api import KubeCluster


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's control plane (started on first use)."""
    try:
        require_binaries()
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    plane = start_control_plane(tmp_path_factory.mktemp("controlplane"), log=lambda _line: None)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def real_kube(control_plane: ControlPlane, tmp_path: Path) -> Iterator[KubeCluster]:
    """A fresh namespace on the real control plane (deleted afterwards)."""
    from kubernetes import client, config

    namespace = f"slipway-test-{uuid.uuid4().hex[:8]}"
    admin = config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        yield KubeCluster(
            control_plane.kubeconfig, control_plane.api_url, namespace, None,
            tmp_path / "kube-discovery.json",
        )  # fmt: skip
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")
        admin.close()
