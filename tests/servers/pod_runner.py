"""Pods of the Kubernetes API stand-in backed by real local processes (a pod hook).

:class:`PodRunner` is a pod hook for :class:`tests.servers.kube_api.KubeApiStandIn`
(``standin.pod_hook = runner`` or ``kube.set_pod_hook(runner)``). For every pod the
stand-in starts it runs the pod's main container for real:

- ``mode="process"``: ``python -m example_app`` from ``examples/example-app/src``
  whatever the image says (there is no container runtime to run the image), with a
  clean environment like a container's: the container's literal ``env`` values;
  for what the image would have set, ``APP_VERSION`` and ``ERROR_RATE`` from the
  image's own ``ENV`` when ``image_env_from`` names a Docker engine that has the image
  (a release built as a bad one stays bad), else ``APP_VERSION`` = the image tag; and
  ``HOST`` / ``PORT`` set to the pod IP and the container port;
- ``mode="docker"``: ``docker run --rm --network host`` of the pod's image on
  ``docker_host`` with the same environment (values go through the CLI's
  environment, never its argv), ``command`` / ``args`` as the pod spec says.

The main container is the first one that declares a port (else the first one); other
containers are not run. ``valueFrom`` env entries are not resolved (the hook does not
read ConfigMaps or Secrets). Each pod binds its own loopback address (the stand-in's
``127.o.x.y``; another free ``127.a.b.c`` when something else already listens there,
reported back as the pod IP), so two pods, or two stand-ins on one machine, never
fight over a port.

Readiness is the pod's ``readinessProbe.httpGet`` (path and port; default
``GET /readyz`` on the container port), probed every 0.1 s until it passes and every
second afterwards, like a kubelet with a short period; a process that exited is
unready and its exit is logged with the tail of its output. Stopping a pod sends
SIGTERM (``docker rm -f`` in docker mode) and kills it after
:data:`STOP_GRACE_SECONDS`.

With ``file_sd`` the runner keeps a Prometheus ``file_sd_configs`` JSON file listing
every pod that has been ready once and still runs: ``ip:port`` (the
``prometheus.io/port`` annotation, else the container port) with the labels a
``kubernetes_sd`` pod job with the usual ``labelmap`` relabelling gives: ``namespace``,
``pod`` and each pod label with its name sanitised (``app.kubernetes.io/name`` ->
``app_kubernetes_io_name``), plus ``__metrics_path__`` from ``prometheus.io/path``.
Pods annotated ``prometheus.io/scrape: "false"`` are left out.

Example:
    ```python
    def test_app(kube: KubeCluster, process_pods: PodRunner) -> None:
        apps.create_namespaced_deployment(kube.namespace, example_app_deployment)
        kube.wait_for(lambda: len(process_pods.ready_pods()) == 2)
    ```
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import pytest

from tests.servers.kube_api import KubeCluster, PodEvent, PodStarted

__all__ = ["PodRunner", "RunningPod", "prometheus_label_name", "process_pods"]

EXAMPLE_SRC = Path(__file__).resolve().parents[2] / "examples" / "example-app" / "src"
DEFAULT_PORT = 8080
DEFAULT_READINESS_PATH = "/readyz"
PROBE_UNREADY_SECONDS = 0.1  # how often to probe a pod that is not ready yet
PROBE_READY_SECONDS = 1.0  # ... and one that is
PROBE_TIMEOUT_SECONDS = 0.5  # the probe runs on the stand-in's controller thread
STOP_GRACE_SECONDS = 5.0
CONTAINER_PREFIX = "slipway-pod-"
IMAGE_ENV_KEYS = ("APP_VERSION", "ERROR_RATE")  # the example app's knobs an image sets
Mode = Literal["process", "docker"]
# What a process-mode pod inherits from the runner's environment (a container starts bare).
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")


def prometheus_label_name(name: str) -> str:
    """A Kubernetes label name as ``kubernetes_sd`` turns it into a Prometheus one."""
    sanitised = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return f"_{sanitised}" if sanitised[:1].isdigit() else sanitised


def image_tag(image: str) -> str:
    """The tag of an image reference (``registry:5000/app:1.2`` -> ``1.2``), else its digest's
    first 12 hex digits, else ``latest``."""
    if "@" in image:
        return image.rsplit("@", 1)[1].split(":", 1)[-1][:12]
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


@dataclass
class RunningPod:
    """One pod's process (or ``docker run`` client) and what the runner knows about it."""

    namespace: str
    name: str
    uid: str
    ip: str
    port: int
    image: str
    env: dict[str, str]
    labels: dict[str, str]
    annotations: dict[str, str]
    proc: subprocess.Popen[bytes]
    readiness_url: str
    log_path: Path | None = None
    container: str | None = None
    ready: bool = False
    ever_ready: bool = False
    exit_logged: bool = False
    last_probe: float = field(default=0.0)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


class PodRunner:
    """A pod hook running each pod as a local process or container; see the module docstring.

    Args:
        mode: ``"process"`` (the example app from source) or ``"docker"`` (the pod's image).
        file_sd: where to keep the Prometheus file_sd JSON (None: no file).
        log_dir: where each pod's output goes (``<namespace>_<pod>.log``; kept when the
            process died by itself, removed when the pod was stopped). None: discarded.
        docker_host: the engine for docker mode (default ``$DOCKER_HOST``).
        image_env_from: process mode: a Docker engine to read the image's ``ENV`` from
            (``APP_VERSION``, ``ERROR_RATE``); an engine that does not answer or lacks the
            image is skipped quietly.
        image_env: process mode: the ENV an image reference carries, for images no engine
            holds (e.g. ``{"reg/app@sha256:...": {"ERROR_RATE": "0.5"}}``: a bad release).
        app_src: the example app's source folder (process mode).
        log: where the runner reports starts, stops and exits (one line each).
    """

    def __init__(
        self,
        *,
        mode: Mode = "process",
        file_sd: Path | None = None,
        log_dir: Path | None = None,
        docker_host: str | None = None,
        image_env_from: str | None = None,
        image_env: dict[str, dict[str, str]] | None = None,
        app_src: Path = EXAMPLE_SRC,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        if mode not in ("process", "docker"):
            raise ValueError(f"pod runner mode must be 'process' or 'docker', got {mode!r}")
        self.mode: Mode = mode
        self.file_sd = file_sd
        self.log_dir = log_dir
        self.docker_host = docker_host or os.environ.get("DOCKER_HOST")
        self.image_env_from = image_env_from
        self.image_env = dict(image_env or {})
        self.app_src = app_src
        self.log = log
        self._pods: dict[str, RunningPod] = {}
        self._lock = threading.RLock()
        self._stoppers: list[threading.Thread] = []
        self._closed = False
        if mode == "docker" and shutil.which("docker") is None:
            raise ValueError("docker mode needs the docker CLI: apt-get install docker.io")
        if file_sd is not None:
            self._write_file_sd()

    # --- the hook ----------------------------------------------------------------------------

    def __call__(self, event: PodEvent) -> PodStarted | None:
        if event.action == "start":
            return self.start(event)
        self.stop(event.uid)
        return None

    def start(self, event: PodEvent) -> PodStarted:
        """Start the pod's process; readiness follows its readiness probe."""
        if self._closed:  # a pod the stand-in starts while a test tears down
            raise RuntimeError("the pod runner is closed")
        container = _main_container(event.containers)
        port = _container_port(container)
        ip = _bindable_ip(event.pod_ip, port)
        env = self._environment(container, ip, port)
        metadata = event.pod.get("metadata", {})
        log_path, output = self._output(event)
        name = None
        try:
            if self.mode == "process":
                proc = self._popen([sys.executable, "-m", "example_app"], env, output)
            else:
                name = f"{CONTAINER_PREFIX}{event.uid[:18]}"
                proc = self._popen(self._docker_argv(container, name, env), self._cli_env(env),
                                   output)  # fmt: skip
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # type: ignore[union-attr]  # the child has its own copy
        path, probe_port = _readiness(container, port)
        pod = RunningPod(
            namespace=event.namespace,
            name=event.name,
            uid=event.uid,
            ip=ip,
            port=port,
            image=str(container.get("image", "")),
            env=env,
            labels=event.labels,
            annotations=dict(metadata.get("annotations") or {}),
            proc=proc,
            readiness_url=f"http://{ip}:{probe_port}{path}",
            log_path=log_path,
            container=name,
        )
        with self._lock:
            closed = self._closed
            if not closed:
                self._pods[event.uid] = pod
        if closed:  # close() ran meanwhile: this one would outlive the runner
            self._terminate(pod)
            raise RuntimeError("the pod runner is closed")
        self.log(
            f"pod {event.namespace}/{event.name}: started {self._what(pod)} "
            f"on {pod.address} (pid {proc.pid})"
        )
        return PodStarted(pod_ip=ip, ready=lambda: self._probe(pod))

    def stop(self, uid: str) -> None:
        """Stop a pod's process (SIGTERM, then SIGKILL after the grace period) without
        waiting for it: the hook runs on the stand-in's controller thread."""
        with self._lock:
            pod = self._pods.pop(uid, None)
            if pod is None:
                return
            if pod.ever_ready:
                self._write_file_sd()
            thread = threading.Thread(
                target=self._terminate, args=(pod,), name=f"stop-{pod.name}", daemon=True
            )
            self._stoppers = [t for t in self._stoppers if t.is_alive()] + [thread]
            thread.start()  # under the lock: close() never joins an unstarted thread

    def close(self) -> None:
        """Stop every pod and wait until they are gone; start no pod after this."""
        with self._lock:
            self._closed = True
            uids = list(self._pods)
        for uid in uids:
            self.stop(uid)
        with self._lock:
            stoppers = list(self._stoppers)
        for thread in stoppers:
            thread.join(STOP_GRACE_SECONDS + 10)

    # --- what tests look at ------------------------------------------------------------------

    @property
    def pods(self) -> dict[str, RunningPod]:
        """The running pods by uid (a copy)."""
        with self._lock:
            return dict(self._pods)

    def ready_pods(self) -> list[RunningPod]:
        with self._lock:
            return [p for p in self._pods.values() if p.ready]

    def file_sd_groups(self) -> list[dict[str, Any]]:
        """What the file_sd JSON lists: one target group per pod that has been ready."""
        with self._lock:
            pods = sorted(self._pods.values(), key=lambda p: (p.namespace, p.name))
            return [_target_group(p) for p in pods if p.ever_ready and _scraped(p)]

    # --- internals ------------------------------------------------------------------------------

    def _environment(self, container: dict[str, Any], ip: str, port: int) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.mode == "process":
            env.update({k: os.environ[k] for k in _INHERITED if k in os.environ})
            env.update(PYTHONPATH=str(self.app_src), PYTHONUNBUFFERED="1",
                       PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
        declared = {
            str(item["name"]): str(item["value"])
            for item in container.get("env") or []
            if item.get("name") and item.get("value") is not None
        }
        if self.mode == "process":
            # what the image would set: its own ENV when an engine has it, else the tag
            image = str(container.get("image", ""))
            env["APP_VERSION"] = image_tag(image)
            env.update(self._image_env(image))
            env.update(self.image_env.get(image, {}))
        env.update(declared)
        env.update(HOST=ip, PORT=str(port))  # a pod binds its own IP: never 0.0.0.0 here
        return env

    def _image_env(self, image: str) -> dict[str, str]:
        if not self.image_env_from or not image:
            return {}
        import docker

        try:
            engine = docker.DockerClient(base_url=self.image_env_from, version="auto", timeout=5)
        except Exception:  # no engine there: the tag stands for the version
            return {}
        try:
            pairs = engine.images.get(image).attrs.get("Config", {}).get("Env") or []
        except Exception:  # not on that engine (or it stopped answering)
            return {}
        finally:
            engine.close()
        found = dict(str(pair).partition("=")[::2] for pair in pairs)
        return {k: v for k, v in found.items() if k in IMAGE_ENV_KEYS}

    def _cli_env(self, env: dict[str, str]) -> dict[str, str]:
        cli = {**os.environ, **env}
        if self.docker_host:
            cli["DOCKER_HOST"] = self.docker_host
        return cli

    def _docker_argv(self, container: dict[str, Any], name: str, env: dict[str, str]) -> list[str]:
        argv = ["docker", "run", "--rm", "--name", name, "--network", "host",
                "--label", "io.slipway.pod-runner=1"]  # fmt: skip
        for key in env:
            argv += ["-e", key]  # the value comes from the CLI's environment, not argv
        command = [str(c) for c in container.get("command") or []]
        args = [str(a) for a in container.get("args") or []]
        if command:
            argv += ["--entrypoint", command[0]]
        return [*argv, str(container["image"]), *command[1:], *args]

    def _popen(
        self, argv: list[str], env: dict[str, str], output: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )

    def _output(self, event: PodEvent) -> tuple[Path | None, IO[bytes] | int]:
        if self.log_dir is None:
            return None, subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{event.namespace}_{event.name}.log"
        return path, path.open("ab")

    def _what(self, pod: RunningPod) -> str:
        if self.mode == "process":
            return f"example_app (image {pod.image}, APP_VERSION={pod.env.get('APP_VERSION')})"
        return f"container {pod.container} of {pod.image}"

    def _probe(self, pod: RunningPod) -> bool:
        now = time.monotonic()
        period = PROBE_READY_SECONDS if pod.ready else PROBE_UNREADY_SECONDS
        if now - pod.last_probe < period:
            return pod.ready
        pod.last_probe = now
        if pod.proc.poll() is not None:
            self._exited(pod)
            ready = False
        else:
            try:
                with urllib.request.urlopen(
                    pod.readiness_url, timeout=PROBE_TIMEOUT_SECONDS
                ) as answer:
                    ready = 200 <= answer.status < 400
            except (urllib.error.URLError, OSError, ValueError):
                ready = False
        with self._lock:
            pod.ready = ready
            if ready and not pod.ever_ready:
                pod.ever_ready = True
                if pod.uid in self._pods:
                    self._write_file_sd()
        return ready

    def _exited(self, pod: RunningPod) -> None:
        if pod.exit_logged:
            return
        pod.exit_logged = True
        tail = ""
        if pod.log_path is not None and pod.log_path.exists():
            lines = pod.log_path.read_text(errors="replace").splitlines()[-5:]
            tail = (": " + " | ".join(lines)) if lines else ""
        self.log(f"pod {pod.namespace}/{pod.name}: process exited with {pod.proc.returncode}{tail}")

    def _terminate(self, pod: RunningPod) -> None:
        proc = pod.proc
        died_by_itself = proc.poll() is not None
        if not died_by_itself:
            proc.send_signal(signal.SIGTERM)  # docker run passes it on (--sig-proxy)
        if pod.container is not None:
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            subprocess.run(
                ["docker", "rm", "-f", pod.container],
                env=self._cli_env({}), capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.log(f"pod {pod.namespace}/{pod.name}: stopped (exit {proc.returncode})")
        if pod.log_path is not None and not died_by_itself:
            pod.log_path.unlink(missing_ok=True)

    def _write_file_sd(self) -> None:
        if self.file_sd is None:
            return
        self.file_sd.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.file_sd.with_name(f".{self.file_sd.name}.tmp")
        temporary.write_text(json.dumps(self.file_sd_groups(), indent=1, sort_keys=True) + "\n")
        os.replace(temporary, self.file_sd)  # Prometheus never reads half a file


def _main_container(containers: list[dict[str, Any]]) -> dict[str, Any]:
    if not containers:
        raise ValueError("the pod has no containers")
    return next((c for c in containers if c.get("ports")), containers[0])


def _container_port(container: dict[str, Any]) -> int:
    for port in container.get("ports") or []:
        if (port.get("protocol") or "TCP") == "TCP" and port.get("containerPort"):
            return int(port["containerPort"])
    for item in container.get("env") or []:
        if item.get("name") == "PORT" and str(item.get("value", "")).isdigit():
            return int(item["value"])
    return DEFAULT_PORT


def _readiness(container: dict[str, Any], port: int) -> tuple[str, int]:
    """The readiness probe's path and port (a named port resolved like the kubelet does)."""
    get = (container.get("readinessProbe") or {}).get("httpGet") or {}
    path = str(get.get("path") or DEFAULT_READINESS_PATH)
    wanted = get.get("port")
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit()):
        return path, int(wanted)
    for declared in container.get("ports") or []:
        if wanted and declared.get("name") == wanted:
            return path, int(declared["containerPort"])
    return path, port


def _bindable_ip(preferred: str, port: int) -> str:
    """``preferred`` when ``preferred:port`` is free, else a random free loopback address
    (another stand-in or a leftover process may hold the stand-in's address)."""
    if _can_bind(preferred, port):
        return preferred
    for _ in range(200):
        candidate = (
            f"127.{random.randint(2, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        )
        if _can_bind(candidate, port):
            return candidate
    raise RuntimeError(f"no free loopback address for port {port}")


def _can_bind(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the app's server does
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def _scraped(pod: RunningPod) -> bool:
    return pod.annotations.get("prometheus.io/scrape", "true").lower() != "false"


def _target_group(pod: RunningPod) -> dict[str, Any]:
    labels = {
        name: value
        for key, value in sorted(pod.labels.items())
        if not (name := prometheus_label_name(key)).startswith("__")
        and name not in ("namespace", "pod", "job", "instance")
    }
    labels.update(namespace=pod.namespace, pod=pod.name)
    labels["__metrics_path__"] = pod.annotations.get("prometheus.io/path", "/metrics")
    port = pod.annotations.get("prometheus.io/port", "")
    address = f"{pod.ip}:{port}" if port.isdigit() else pod.address
    return {"targets": [address], "labels": labels}


@pytest.fixture
def process_pods(kube: KubeCluster, tmp_path: Path) -> Iterator[PodRunner]:
    """Stand-in only: the ``kube`` fixture's pods run the example app as local processes.

    The file_sd JSON is ``tmp_path / "pods.json"``; pod output goes to
    ``tmp_path / "pod-logs"``.
    """
    runner = PodRunner(file_sd=tmp_path / "pods.json", log_dir=tmp_path / "pod-logs")
    kube.set_pod_hook(runner)  # skips the test on a real cluster
    try:
        yield runner
    finally:
        runner.close()
