"""A Kubernetes API stand-in (no apiserver can run here) and the ``kube`` fixture.

The product reaches the stand-in exactly as it reaches a cluster: through the
official ``kubernetes`` client (``config.load_kube_config(config_file=...)``,
``AppsV1Api``, ``CoreV1Api``, ``CustomObjectsApi``, ``DynamicClient``) over HTTP on
127.0.0.1, with a kubeconfig whose bearer token the stand-in checks. Nothing is
patched or mocked on the client side.

What it serves (details in the ``kube_standin`` modules' docstrings):

- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``
  for core v1, ``apps/v1``, ``networking.istio.io/v1beta1`` (VirtualService) and
  ``argoproj.io/v1alpha1`` (Rollout);
- namespaces, pods, services, endpoints, configmaps, secrets, deployments,
  replicasets, virtualservices, rollouts: get, list (label selectors with equality
  and set-based requirements, ``fieldSelector`` on metadata.name/namespace, limit
  and continue), watch, create (409 AlreadyExists, generateName), replace (409
  Conflict on a stale resourceVersion), patch (merge, strategic merge for built-in
  kinds, JSON patch, server-side apply with ``fieldManager`` and ``force`` and 409
  apply conflicts), delete (finalizers; Background, Foreground and Orphan
  propagation through ownerReferences), deletecollection, ``dryRun=All``;
  ``/status`` and ``/scale`` subresources; ``services|pods/<name>[:port]/proxy``;
- ``metadata.uid``, ``creationTimestamp``, ``resourceVersion`` (one counter for the
  whole cluster), ``generation`` bumped on spec changes, ``managedFields``;
  defaults the apiserver applies (Deployment strategy 25 %/25 %,
  revisionHistoryLimit 10, progressDeadlineSeconds 600, pod spec defaults, Service
  clusterIP); validation with 422 ``Invalid`` and causes for what the product can
  get wrong (names, labels, selectors that do not match the template, immutable
  selectors, containers without image, Service ports);
- failures as ``Status`` objects with the apiserver's reasons and messages
  (NotFound, AlreadyExists, Conflict, Invalid, BadRequest, Forbidden, Unauthorized,
  UnsupportedMediaType for strategic merge on custom resources, Expired);
- simulated controllers on a simulated clock (``speed`` cluster seconds per real
  second): Deployment -> ReplicaSets with revision annotations and rollbacks to an
  old template, rolling updates with maxSurge / maxUnavailable, pods that become
  Running and Ready, Deployment status and conditions including
  ProgressDeadlineExceeded, Endpoints for Services, garbage collection.

What it deliberately does not do: TLS (plain http; the kubeconfig says so), RBAC
beyond read-only tokens (:meth:`KubeApiStandIn.add_token`), admission webhooks, CRD
registration (the two custom kinds are built in) and CRD schema validation, an Argo
Rollouts or Istio controller (Rollouts and VirtualServices are stored, nothing acts on
them), pod logs and exec,
scheduling (one node), graceful pod termination (a deleted pod is gone at once),
StatefulSets, Jobs, HPA, EndpointSlices, protobuf, aggregated discovery, the
``status`` field ownership of server-side apply, and exact managedFields for
updates (an update owns the leaves it changed).

The ``kube`` fixture yields a :class:`KubeCluster`: a kubeconfig, the API URL and a
fresh namespace, on a new stand-in per test, or on the real cluster named by
``--kubeconfig`` / ``$SLIPWAY_TEST_KUBECONFIG`` (the same tests then run there).
Helpers work on both where they can (``broken_image()`` names an image from a
``.invalid`` registry, which never pulls anywhere; ``advance(s)`` sleeps on a real
cluster); those only the stand-in can offer (``break_image``, ``set_pod_hook``) skip
the test on a real cluster, as does the marker ``@pytest.mark.kube_standin_only``.

Pod hook (``kube.set_pod_hook(hook)``): ``hook(PodEvent)`` is called from the
controller thread, outside the store's lock, with ``action="start"`` when a pod is
due to start and ``"stop"`` when it is gone (deleted, scaled away, its namespace
deleted, the stand-in stopped). ``event.pod_ip`` is a loopback address of its own
(``127.o.x.y``, the second octet random per stand-in): bind the pod's process there
at its container ports, and Endpoints and ``services/<name>:<port>/proxy/...`` on the
API reach it. Return ``PodStarted(ready=callable)`` to gate readiness on the process
(a readiness probe); an exception fails the pod (CrashLoopBackOff) and lands in ``standin.errors``.

Example:
    ```python
    def test_rollout(kube: KubeCluster) -> None:
        config.load_kube_config(config_file=str(kube.kubeconfig))
        apps = client.AppsV1Api()
        apps.create_namespaced_deployment(kube.namespace, deployment)
        kube.wait_for(lambda: rollout_done(apps, kube.namespace), timeout=10)
    ```

Run ``python -m tests.servers.kube_api --kubeconfig /tmp/kubeconfig`` (from the repo
root) for a stand-in in its own process, on real time, until SIGTERM or SIGINT; its
pods run the example app as local processes (``--pods process``, the default; see
:mod:`tests.servers.pod_runner`), the pod's image on a Docker engine (``--pods
docker``) or nothing (``--pods none``), and ``--file-sd PATH`` keeps a Prometheus
file_sd JSON of the running pods. ``slipway.local_cluster`` starts it this way.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest
import yaml

from tests.servers.kube_standin.controllers import (
    BrokenHow,
    PodEvent,
    PodHook,
    PodStarted,
    Simulation,
)
from tests.servers.kube_standin.resources import NAMESPACES
from tests.servers.kube_standin.server import ApiServer
from tests.servers.kube_standin.store import SimulatedClock, Store

__all__ = [
    "KubeApiStandIn",
    "KubeCluster",
    "PodEvent",
    "PodStarted",
    "PodHook",
    "RUNNABLE_IMAGES",
    "kube",
]

ENV_KUBECONFIG = "SLIPWAY_TEST_KUBECONFIG"
DEFAULT_SPEED = 10.0
# Images that run on a real cluster too (the stand-in runs anything that is not broken).
RUNNABLE_IMAGES = ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.10")
# An image no registry serves (``.invalid`` never resolves): ImagePullBackOff, on a real
# cluster and on the stand-in alike.
BROKEN_IMAGE_PREFIX = "registry.invalid/slipway-broken"

T = TypeVar("T")


class KubeApiStandIn:
    """The stand-in on ``127.0.0.1`` (a free port), as a context manager.

    Args:
        token: the bearer token that may do everything.
        read_only_token: a token that may only get, list and watch (403 otherwise).
        speed: simulated cluster seconds per real second.
        pod_start_seconds: cluster seconds from pod creation to Running and Ready.
        tick: the longest the controllers sleep, in real seconds (they also run on every
            change and whenever a timed transition is due).
        pod_hook: called when a pod starts and stops; see :class:`PodEvent`.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        read_only_token: str | None = None,
        speed: float = DEFAULT_SPEED,
        pod_start_seconds: float = 1.0,
        tick: float = 1.0,
        pod_hook: PodHook | None = None,
    ) -> None:
        self.token = token or f"standin-{secrets.token_hex(16)}"
        self.clock = SimulatedClock(speed)
        self.store = Store(self.clock)
        self.simulation = Simulation(
            self.store,
            self.clock,
            pod_start_seconds=pod_start_seconds,
            tick=tick,
            pod_hook=pod_hook,
        )
        tokens = {self.token: ("slipway-admin", True)}
        if read_only_token:
            tokens[read_only_token] = ("slipway-viewer", False)
        self._server = ApiServer(("127.0.0.1", 0), self.store, tokens)
        self._thread: threading.Thread | None = None

    def add_token(self, token: str, *, user: str, read_only: bool = False) -> None:
        """Accept another bearer token (``read_only``: get, list and watch only)."""
        self._server.tokens[token] = (user, not read_only)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of the requests served so far (the latest 10000)."""
        return list(self._server.requests)

    @property
    def pod_hook(self) -> PodHook | None:
        return self.simulation.pod_hook

    @pod_hook.setter
    def pod_hook(self, hook: PodHook | None) -> None:
        self.simulation.pod_hook = hook

    @property
    def errors(self) -> list[str]:
        """What went wrong in the simulation: exceptions the pod hook raised (a failed
        start also fails the pod) and controller writes the store refused."""
        return self.simulation.errors

    def start(self) -> KubeApiStandIn:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="kube-standin-http", daemon=True,
        )  # fmt: skip
        self._thread.start()
        self.simulation.start()
        return self

    def stop(self) -> None:
        """Stop serving (open watches end) and stop every hooked pod."""
        self._server.stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self.simulation.stop()

    def __enter__(self) -> KubeApiStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kubeconfig(self, namespace: str = "default", token: str | None = None) -> dict[str, Any]:
        """A kubeconfig for this stand-in (plain http, bearer token)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "slipway-standin", "cluster": {"server": self.url}}],
            "users": [{"name": "slipway-standin", "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "slipway-standin",
                    "context": {
                        "cluster": "slipway-standin",
                        "user": "slipway-standin",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "slipway-standin",
        }

    def write_kubeconfig(
        self, path: Path, namespace: str = "default", token: str | None = None
    ) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace, token), sort_keys=False))
        path.chmod(0o600)
        return path

    def create_namespace(self, name: str) -> None:
        self.store.create(NAMESPACES, "", {"metadata": {"name": name}}, manager="slipway-tests")

    def break_image(self, image: str, how: BrokenHow = "crash") -> None:
        """Pods started from now on with ``image`` never become ready: ``crash``
        (CrashLoopBackOff), ``pull`` (ImagePullBackOff, Pending) or ``unready``."""
        self.simulation.broken[image] = how

    def advance(self, seconds: float) -> None:
        """Move cluster time forward and let the controllers catch up before returning."""
        self.clock.advance(seconds)
        self.simulation.reconcile()

    def settle(self) -> None:
        """Run controller passes now until nothing changes (no time passes)."""
        self.simulation.reconcile()


def _standin_only(what: str) -> None:
    pytest.skip(f"{what} needs the Kubernetes API stand-in; running against a real cluster")


@dataclass
class KubeCluster:
    """What the ``kube`` fixture yields: one namespace on the stand-in or on a real cluster.

    Attributes:
        kubeconfig: a kubeconfig file whose current context reaches the cluster.
        api_url: the API server's URL.
        namespace: a fresh namespace for this test (deleted afterwards).
        standin: the stand-in, or None on a real cluster.
    """

    kubeconfig: Path
    api_url: str
    namespace: str
    standin: KubeApiStandIn | None = None
    _dynamic_cache: Path | None = field(default=None, repr=False)

    @property
    def simulated(self) -> bool:
        return self.standin is not None

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` from :attr:`kubeconfig`."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def dynamic_client(self) -> Any:
        """A ``DynamicClient`` whose discovery cache stays in this test's temporary folder."""
        from kubernetes.dynamic import DynamicClient

        cache = str(self._dynamic_cache) if self._dynamic_cache else None
        return DynamicClient(self.api_client(), cache_file=cache)

    def broken_image(self, name: str = "app") -> str:
        """An image reference whose pods never become ready, here and on a real cluster
        (there: ImagePullBackOff from a registry that does not exist)."""
        return f"{BROKEN_IMAGE_PREFIX}/{name}:{uuid.uuid4().hex[:8]}"

    def break_image(self, image: str, how: BrokenHow = "crash") -> None:
        """Stand-in only (skips on a real cluster): see :meth:`KubeApiStandIn.break_image`."""
        if self.standin is None:
            _standin_only("break_image")
        else:
            self.standin.break_image(image, how)

    def set_pod_hook(self, hook: PodHook | None) -> None:
        """Stand-in only (skips on a real cluster): back pods with a callback."""
        if self.standin is None:
            _standin_only("a pod hook")
        else:
            self.standin.pod_hook = hook

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of cluster time pass: instantly on the stand-in, by sleeping on a
        real cluster (keep deadlines in such tests short)."""
        if self.standin is not None:
            self.standin.advance(seconds)
        else:
            time.sleep(seconds)

    def wait_for(
        self,
        check: Callable[[], T],
        *,
        timeout: float = 10.0,
        interval: float = 0.02,
        message: str = "condition",
    ) -> T:
        """Poll ``check`` until it returns something truthy; fail the test after ``timeout``
        real seconds (multiplied by 6 on a real cluster, where pods pull and start)."""
        limit = time.monotonic() + (timeout if self.simulated else timeout * 6)
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > limit:
                pytest.fail(f"timed out waiting for {message}", pytrace=False)
            time.sleep(interval if self.simulated else max(interval, 0.5))

    def require_resource(self, api_version: str, kind: str) -> None:
        """Skip when the cluster does not serve ``kind`` (a CRD that is not installed)."""
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            self.dynamic_client().resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            pytest.skip(f"the cluster does not serve {api_version} {kind} (CRD not installed)")


# --- pytest plugin --------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        default=None,
        help=f"run the Kubernetes tests against this cluster instead of the stand-in "
        f"(or set ${ENV_KUBECONFIG})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "kube_standin_only(reason): the test needs the Kubernetes API stand-in's helpers "
        "and is skipped against a real cluster",
    )


def real_kubeconfig(config: pytest.Config) -> Path | None:
    """The kubeconfig of a real cluster to test against, if one was given."""
    try:
        option = config.getoption("--kubeconfig")
    except ValueError:  # the plugin was loaded after option parsing
        option = None
    given = option or os.environ.get(ENV_KUBECONFIG)
    return Path(given).expanduser() if given else None


@pytest.fixture
def kube(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KubeCluster]:
    """A fresh namespace on the stand-in, or on the real cluster given by ``--kubeconfig``
    or ``$SLIPWAY_TEST_KUBECONFIG``."""
    namespace = f"slipway-test-{uuid.uuid4().hex[:8]}"
    cache = tmp_path / "kube-discovery.json"
    real = real_kubeconfig(request.config)
    marker = request.node.get_closest_marker("kube_standin_only")
    if real is not None:
        if marker is not None:
            reason = marker.args[0] if marker.args else "it uses stand-in helpers"
            _standin_only(f"this test ({reason})")
        yield from _on_real_cluster(real, namespace, cache)
        return
    with KubeApiStandIn() as standin:
        standin.create_namespace(namespace)
        kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig", namespace)
        yield KubeCluster(kubeconfig, standin.url, namespace, standin, cache)


def _on_real_cluster(kubeconfig: Path, namespace: str, cache: Path) -> Iterator[KubeCluster]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        yield KubeCluster(kubeconfig, api.configuration.host, namespace, None, cache)
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")


def main(argv: list[str] | None = None) -> None:
    """Serve a stand-in until SIGTERM or SIGINT; write its kubeconfig once it answers."""
    from tests.servers.pod_runner import PodRunner

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write it")
    parser.add_argument(
        "--namespace",
        action="append",
        help="a namespace to create (repeatable); the first is the kubeconfig's (default: default)",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="cluster seconds per second")
    parser.add_argument(
        "--pod-start-seconds", type=float, default=1.0, help="cluster seconds until a pod runs"
    )
    parser.add_argument(
        "--pods",
        choices=("process", "docker", "none"),
        default="process",
        help="what backs a pod: the example app as a local process, the pod's image on "
        "$DOCKER_HOST, or nothing (simulated only)",
    )
    parser.add_argument("--file-sd", type=Path, help="Prometheus file_sd JSON of the pods")
    parser.add_argument("--pod-logs", type=Path, help="folder for the pods' output")
    parser.add_argument("--docker-host", help="the engine for --pods docker ($DOCKER_HOST)")
    parser.add_argument(
        "--image-env-from",
        help="--pods process: a Docker engine to read APP_VERSION / ERROR_RATE from the image",
    )
    args = parser.parse_args(argv)
    namespaces = args.namespace or ["default"]
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def say(line: str) -> None:
        print(line, flush=True)

    runner = None
    if args.pods != "none":
        runner = PodRunner(
            mode=args.pods,
            file_sd=args.file_sd,
            log_dir=args.pod_logs,
            docker_host=args.docker_host,
            image_env_from=args.image_env_from,
            log=say,
        )
    standin = KubeApiStandIn(
        speed=args.speed, pod_start_seconds=args.pod_start_seconds, pod_hook=runner
    )
    try:
        with standin:
            for namespace in namespaces:
                if standin.store.find(NAMESPACES, "", namespace) is None:
                    standin.create_namespace(namespace)
            # write then rename: whoever waits for the file never reads half of it
            partial = args.kubeconfig.with_name(f".{args.kubeconfig.name}.partial")
            standin.write_kubeconfig(partial, namespaces[0])
            os.replace(partial, args.kubeconfig)
            backing = {"process": "local processes of the example app",
                       "docker": "containers on the local Docker engine",
                       "none": "not run (simulated only)"}[args.pods]  # fmt: skip
            say(
                f"SIMULATED cluster: Kubernetes API stand-in at {standin.url} "
                f"(speed {args.speed:g}); pods are {backing}"
            )
            stop.wait()
            say("stopping the stand-in and its pods")
    finally:
        if runner is not None:
            runner.close()


if __name__ == "__main__":
    main()
