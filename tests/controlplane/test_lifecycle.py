"""Starting, stopping and restarting the real control plane (slipway/controlplane.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from kubernetes import client, config

from slipway.controlplane import (
    COMPONENTS,
    ControlPlane,
    start_control_plane,
    stop_control_plane,
)
from slipway.exceptions import RemoteUnavailable

pytestmark = pytest.mark.controlplane


def gone(pid: int) -> bool:
    """The process no longer runs (or is a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state == "Z"


def running_from(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (the components started there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(folder).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in found if not gone(pid)]


def refused(url: str) -> bool:
    host, port = url.removeprefix("https://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_a_component_that_cannot_start_is_named_with_its_log_and_the_rest_stopped(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "plane" / "pki"
    pki.mkdir(parents=True)
    for name in ("kube-apiserver.crt", "kube-apiserver.key"):  # kept: only missing ones are made
        (pki / name).write_text("not a certificate\n")
    started: list[str] = []

    with pytest.raises(RemoteUnavailable) as caught:
        start_control_plane(tmp_path / "plane", log=started.append)

    message = str(caught.value)
    assert message.startswith("control plane: kube-apiserver exited with 1")
    assert str(tmp_path / "plane" / "logs" / "kube-apiserver.log") in message
    assert "failed to find any PEM data in certificate input" in message  # from its log
    assert started == [started[0]] and started[0].startswith("controlplane: etcd healthy")
    assert not (tmp_path / "plane" / "state.json").exists()
    assert running_from(tmp_path / "plane") == []  # etcd, which had started, is stopped


def test_stop_by_folder_then_restart_keeps_the_data_and_the_identities(tmp_path: Path) -> None:
    folder = tmp_path / "plane"
    first = start_control_plane(folder, log=lambda _line: None)
    try:
        assert set(first.pids) == set(COMPONENTS)
        assert all(size > 0 for size in first.rss_bytes().values())
        admin = config.new_client_from_config(config_file=str(first.admin_kubeconfig))
        client.CoreV1Api(admin).create_namespaced_config_map(
            "default", {"metadata": {"name": "kept"}, "data": {"a": "1"}}
        )
        restricted = first.write_kubeconfig(tmp_path / "auditor.kubeconfig", "auditor")
    finally:
        # as another process would: by the folder's state.json, not the Popen handles
        assert stop_control_plane(folder) is True
    assert all(gone(pid) for pid in first.pids.values())
    assert refused(first.api_url)
    assert stop_control_plane(folder) is False  # nothing left to stop

    second: ControlPlane = start_control_plane(folder, log=lambda _line: None)
    try:
        admin = config.new_client_from_config(config_file=str(second.admin_kubeconfig))
        kept = client.CoreV1Api(admin).read_namespaced_config_map("kept", "default")
        assert kept.data == {"a": "1"}
        # the CA was kept: a kubeconfig made before the restart still authenticates
        # (pointed at the new port), and RBAC still says what it may do
        text = restricted.read_text().replace(first.api_url, second.api_url)
        restricted.write_text(text)
        auditor = config.new_client_from_config(config_file=str(restricted))
        with pytest.raises(client.ApiException) as caught:
            client.CoreV1Api(auditor).list_namespaced_config_map("default")
        assert caught.value.status == 403
        assert 'User "auditor"' in json.loads(caught.value.body)["message"]
    finally:
        second.stop()
    assert all(gone(pid) for pid in second.pids.values())
