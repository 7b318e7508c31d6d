"""A SIMULATED Kubernetes cluster and a Prometheus for the main job (no apiserver runs here).

``slipway example`` deploys the example app to a cluster. None can run on these
machines, so this module starts, in the background, and leaves running for the next
run (the way :mod:`slipway.local_server` and :mod:`slipway.local_docker` do):

- the Kubernetes API stand-in of slipway's own test suite
  (``python -m tests.servers.kube_api`` from the source checkout: it needs ``tests/``),
  on real time, whose pods are real local processes of the example app
  (``pods="process"``) or the pods' images on the local Docker engine
  (``pods="docker"``). The product reaches it with the official ``kubernetes``
  client through the kubeconfig it writes, exactly as it would reach a cluster;
- Debian's ``prometheus`` on 127.0.0.1, scraping every running pod every second
  through the file_sd JSON the stand-in keeps (the labels a ``kubernetes_sd`` pod job
  would give: ``namespace``, ``pod`` and the pod's labels).

State lives in ``$SLIPWAY_HOME/local-cluster/``: ``state.json`` (pids, URLs, the pod
mode), ``kubeconfig``, ``pods.json`` (file_sd), ``prometheus.yml``, the TSDB, and
logs (``kube-api.log``, ``prometheus.log``, ``pods/``). A second call reuses what
still answers; :func:`stop_local_cluster` stops both. Every start says plainly, in
one line, that the cluster is SIMULATED.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from slipway.exceptions import ConfigError, RemoteUnavailable
from slipway.local_docker import require
from slipway.workspace import slipway_home

ROOT = Path(__file__).resolve().parent.parent
STANDIN_MODULE = "tests.servers.kube_api"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMETHEUS_RETENTION = "2d"  # a local sandbox: keep the disk small
DEFAULT_NAMESPACES = ("default", "staging", "production")
PodMode = Literal["process", "docker"]


@dataclass(frozen=True)
class LocalCluster:
    """Where the local (simulated) cluster answers.

    Attributes:
        kubeconfig: a kubeconfig whose current context reaches the API (bearer token).
        api_url: the Kubernetes API's URL (plain http on 127.0.0.1).
        prometheus_url: Prometheus' URL (its HTTP API under ``/api/v1``).
        simulated: True: the API is slipway's stand-in, not a real cluster.
    """

    kubeconfig: Path
    api_url: str
    prometheus_url: str
    simulated: bool = True


def cluster_dir(home: Path | None = None) -> Path:
    return (home or slipway_home()) / "local-cluster"


def ensure_local_cluster(
    home: Path | None = None,
    *,
    pods: PodMode = "process",
    namespaces: Sequence[str] = DEFAULT_NAMESPACES,
    log: Callable[[str], None] = print,
) -> LocalCluster:
    """The local simulated cluster and its Prometheus, started when not running.

    Args:
        home: slipway's home (default ``$SLIPWAY_HOME``); state goes to ``local-cluster/``.
        pods: what backs a pod: ``"process"`` (the example app from source) or
            ``"docker"`` (the pod's image on ``$DOCKER_HOST``). A running cluster in the
            other mode is restarted.
        namespaces: created at start (the first is the kubeconfig's namespace).
        log: where the one-line notices go.

    Raises:
        ConfigError: not a source checkout (``tests/`` missing), or ``prometheus`` missing.
        RemoteUnavailable: the stand-in or Prometheus did not start.
    """
    if pods not in ("process", "docker"):
        raise ConfigError(f"local cluster pods must be 'process' or 'docker', got {pods!r}")
    standin_source = ROOT / "tests" / "servers" / "kube_api.py"
    if not standin_source.is_file():
        raise ConfigError(
            f"the simulated cluster needs a source checkout of slipway: {standin_source} "
            f"is missing (run from the git repository, or give a real cluster's kubeconfig)"
        )
    prometheus = require(PROMETHEUS_BINARY, "prometheus")
    folder = cluster_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        state = _read_state(folder)
        api_url = _standin_answering(folder, state)
        if api_url is not None and state.get("pods") != pods:
            log(f"restarting the simulated cluster: its pods were {state.get('pods')}")
            _stop_standin(state)
            api_url = None
        if api_url is None:
            _stop_standin(state)  # a stale pidfile's leftovers (pods of a killed stand-in)
            state = {k: v for k, v in state.items() if not k.startswith("standin_")}
            api_url, pid = _start_standin(folder, pods, namespaces)
            state.update(standin_pid=pid, api_url=api_url, pods=pods)
            started = True
        else:
            started = False
        _write_state(folder, state)
        prometheus_url = _prometheus_answering(state)
        if prometheus_url is None:
            _stop_pid(state.get("prometheus_pid"), "prometheus")
            prometheus_url, pid = _start_prometheus(prometheus, folder)
            state.update(prometheus_pid=pid, prometheus_url=prometheus_url)
            _write_state(folder, state)
    backing = "local processes" if pods == "process" else "containers on the local Docker engine"
    verb = "started" if started else "reusing"
    log(
        f"SIMULATED cluster ({verb}): Kubernetes API stand-in at {api_url}, not a real "
        f"cluster; pods are {backing}; Prometheus at {prometheus_url}; state in {folder}"
    )
    return LocalCluster(folder / "kubeconfig", api_url, prometheus_url, simulated=True)


def stop_local_cluster(home: Path | None = None) -> bool:
    """Stop the stand-in (and its pods) and Prometheus; True when something was running."""
    folder = cluster_dir(home)
    if not folder.is_dir():
        return False
    with _locked(folder):
        state = _read_state(folder)
        stopped = _stop_standin(state)
        stopped = _stop_pid(state.get("prometheus_pid"), "prometheus") or stopped
        (folder / "state.json").unlink(missing_ok=True)
    return stopped


# --- the stand-in ------------------------------------------------------------------------------


def _start_standin(folder: Path, pods: PodMode, namespaces: Sequence[str]) -> tuple[str, int]:
    kubeconfig = folder / "kubeconfig"
    kubeconfig.unlink(missing_ok=True)
    if pods == "docker":
        from slipway.local_docker import ensure_engine

        engine = ["--docker-host", ensure_engine()[0]]
    else:  # a release's image sets APP_VERSION / ERROR_RATE when the engine has it
        from slipway.local_docker import SOCKET

        engine = ["--image-env-from", os.environ.get("DOCKER_HOST") or f"unix://{SOCKET}"]
    argv = [
        sys.executable, "-m", STANDIN_MODULE,
        "--kubeconfig", str(kubeconfig),
        "--pods", pods,
        "--file-sd", str(folder / "pods.json"),
        "--pod-logs", str(folder / "pods"),
        *engine,
    ]  # fmt: skip
    for namespace in namespaces:
        argv += ["--namespace", namespace]
    with (folder / "kube-api.log").open("ab") as output:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # its own process group: the pods' processes join it, so stopping the group
            # stops them even if the stand-in died without cleaning up
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        api_url = _standin_answering(folder, {"standin_pid": proc.pid})
        if api_url is not None:
            return api_url, proc.pid
        time.sleep(0.1)
    _stop_group(proc.pid)
    raise RemoteUnavailable(
        f"the Kubernetes API stand-in did not start; last lines of {folder / 'kube-api.log'}:\n"
        + _tail(folder / "kube-api.log")
    )


def _standin_answering(folder: Path, state: dict[str, Any]) -> str | None:
    """The stand-in's URL when its process lives and the API answers with its token."""
    if not _alive(state.get("standin_pid"), STANDIN_MODULE):
        return None
    try:
        config = yaml.safe_load((folder / "kubeconfig").read_text())
        api_url = config["clusters"][0]["cluster"]["server"]
        token = config["users"][0]["user"]["token"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None
    request = urllib.request.Request(
        f"{api_url}/version", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as answer:
            return str(api_url) if answer.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _stop_standin(state: dict[str, Any]) -> bool:
    pid = state.get("standin_pid")
    if not isinstance(pid, int):
        return False
    stopped = _stop_pid(pid, STANDIN_MODULE)  # it stops its pods on SIGTERM
    _stop_group(pid)  # pods it left behind when it was killed
    return stopped


# --- Prometheus --------------------------------------------------------------------------------


def prometheus_config(file_sd: Path) -> str:
    """Scrape every pod in the file_sd JSON each second (labels come from the file)."""
    return (
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: kubernetes-pods\n"
        "    file_sd_configs:\n"
        f"      - files: [{json.dumps(str(file_sd))}]\n"
        "        refresh_interval: 5s\n"
    )


def _start_prometheus(binary: str, folder: Path) -> tuple[str, int]:
    config = folder / "prometheus.yml"
    file_sd = folder / "pods.json"
    if not file_sd.exists():
        file_sd.write_text("[]\n")
    config.write_text(prometheus_config(file_sd))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (folder / "prometheus.log").open("ab") as output:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'prometheus-data'}",
                f"--storage.tsdb.retention.time={PROMETHEUS_RETENTION}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _answers(f"{url}/-/ready"):
            return url, proc.pid
        time.sleep(0.1)
    _stop_pid(proc.pid, "prometheus")
    raise RemoteUnavailable(
        f"prometheus did not start; last lines of {folder / 'prometheus.log'}:\n"
        + _tail(folder / "prometheus.log")
    )


def _prometheus_answering(state: dict[str, Any]) -> str | None:
    url = state.get("prometheus_url")
    if not isinstance(url, str) or not _alive(state.get("prometheus_pid"), "prometheus"):
        return None
    return url if _answers(f"{url}/-/ready") else None


# --- processes and state -----------------------------------------------------------------------


def _alive(pid: object, marker: str) -> bool:
    """The pid runs a command line containing ``marker`` (not a recycled pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and marker.encode() in cmdline


def _stop_pid(pid: object, marker: str) -> bool:
    """SIGTERM the process if it is still the one we started; SIGKILL after a while."""
    if not isinstance(pid, int) or not _alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _alive(pid, marker):
        _reap(pid)
        time.sleep(0.1)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _stop_group(pgid: int) -> None:
    """Kill the example-app processes left in the stand-in's process group."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[2]) == pgid and b"example_app" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def _reap(pid: int) -> None:
    """Collect our own child's exit status (else it lingers as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    partial = folder / ".state.json.partial"
    partial.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    os.replace(partial, folder / "state.json")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One ensure or stop at a time (two commands starting at once share one cluster)."""
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
