"""The real control plane's fixtures for this folder (tests/servers/controlplane.py)."""

from tests.servers.controlplane import control_plane, real_kube  # noqa: F401 - fixtures
