"""Continuous-delivery benchmarks: approval latency, blue-green rollback, automatic rollback.

Run with ``bench/run delivery`` (plain ``bench/run`` runs it after the pipeline
benchmarks, on the same private Prefect server). The world is the one
``tests/flows/test_deliver.py`` builds, without Slack:

- the Kubernetes API stand-in (:class:`tests.servers.kube_api.KubeApiStandIn`, its
  simulated cluster clock at the tests' 10x) whose pods are processes of the example
  app (:class:`tests.servers.pod_runner.PodRunner`), both in a child process: their
  threads (HTTP server, controllers, readiness probes, the service proxy carrying the
  traffic) then do not compete for this process' GIL with the flow being timed, as an
  apiserver and its pods run elsewhere than a Prefect worker;
- a real Prometheus scraping those pods every second through the runner's file_sd;
- a bare git repository holding the manifests (the GitOps bump and revert are real);
- the private ``prefect server`` of ``bench/run``: the pause and its run input, the
  deploy slot's global concurrency limit, the cluster block;
- :func:`slipway.flows.deliver.deliver` in a flow run on a thread of its own, as a
  worker runs it, while this thread approves, sends traffic and watches the Service.

What is measured (the times of day are this machine's clock throughout: log records,
the client-side task-run timestamps Prefect stores, the traffic and poller threads):

1. **Approval latency.** Good releases to ``production`` (blue-green, approval,
   smoke test, no analysis), after one unmeasured warm-up run (also the first deploy).
   Once a run is Paused with its form saved, the approval is sent ``0.5 + i/N`` poll
   intervals later (i = 0..N-1), so the N approvals land at evenly spread points of
   the paused run's 1 s poll, as a person's click would, through
   :func:`~slipway.tasks.approval.approve_run`. Latency: from ``approve_run``
   returning to the ``bump-production`` task run being Running (its ``start_time`` on
   the API): the first thing production does after the approval. Split at the paused
   run's ``Resuming flow run execution!`` log record (when its poll saw the decision).
2. **Blue-green rollback.** Bad releases (the example app with ``ERROR_RATE=0.6``: 3
   of every 5 ``GET /`` answer 500) to ``production`` (blue-green, smoke test,
   analysis, no approval) under traffic; each one's analysis fails and ``deliver``
   rolls back. Reported: the seconds :func:`~slipway.tasks.strategies.rollback`
   returns (``EnvironmentOutcome.rollback_seconds``: its call to the API confirming
   the selector), and independently, from the flow's ``rolling back:`` log record
   (the decision) to a poller (a GET of the Service every 25 ms) first seeing the
   selector on the old colour again, and to the last response the traffic got from
   the bad release.
3. **Detection.** In the same runs, from the first 500 the traffic got from the bad
   release to the ``rolling back:`` record, against ``initial_delay + interval x
   failure_limit`` (the earliest the analysis can fail: ``failure_limit + 1``
   failed measurements, the first one ``initial_delay`` after it starts). Each run also
   records when Prometheus first held two samples of the release's pods (what ``rate()``
   needs; read back with an ``up[10m]`` query), which explains Inconclusive first
   measurements.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.context import get_run_context
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from bench.harness import (
    BenchError,
    PrefectServer,
    git_describe,
    median,
    sandboxed,
    server_retryable_errors,
)
from bench.measure import Bench, r3
from slipway.blocks.approval import ApprovalPolicy, EnvironmentApproval
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.blocks.prometheus import PrometheusServer
from slipway.deploy_spec import DeploySpec
from slipway.flows.deliver import Delivery, deliver
from slipway.redact import Redactor
from slipway.report import EnvironmentOutcome
from slipway.tasks.approval import approve_run
from slipway.tasks.strategy_objects import COLOUR_LABEL, other_colour
from tests.approvers import approver, decision
from tests.servers.example_manifests import app_deployment, app_service
from tests.servers.git_http import commit_files, make_bare_repo
from tests.servers.prometheus import PROMETHEUS_BINARY, PrometheusProcess

ROOT = Path(__file__).resolve().parent.parent

APP = "shop"
ENVIRONMENT = NAMESPACE = "production"
REGISTRY = "127.0.0.1:5000/shop"
APPROVER = "alice"

APPROVAL_REPS = 5
APPROVAL_POLL = 1.0  # seconds; Delivery.approval_poll's default, the poll interval
BAD_REPS = 5
BAD_ERROR_RATE = "0.6"
TRAFFIC_PERIOD = 0.05  # seconds between requests at the active Service
SELECTOR_POLL = 0.025  # seconds between reads of the active Service
RUN_TIMEOUT = 180.0  # seconds a deliver run may take before the benchmark gives up

TARGET_APPROVAL_S = 2.0
TARGET_ROLLBACK_S = 5.0

# No 5xx series at all is a rate of 0, not "no data": hence the `or vector(0)`.
ERROR_RATE_QUERY = (
    '(sum(rate(http_requests_total{namespace="{namespace}",slipway_dev_release="{version}",'
    'code=~"5.."}[10s])) or vector(0)) / sum(rate(http_requests_total{namespace="{namespace}",'
    'slipway_dev_release="{version}"}[10s]))'
)
ANALYSIS: dict[str, Any] = {
    "query": ERROR_RATE_QUERY,
    "success_condition": "result < 0.05",
    "initial_delay": 3,
    "interval": 2,
    "count": 5,
    "failure_limit": 1,
    "inconclusive_limit": 2,
}


def expected_detection_seconds(analysis: dict[str, Any] = ANALYSIS) -> float:
    """The earliest an analysis can fail: its first measurement after ``initial_delay``,
    then ``failure_limit`` more, ``interval`` apart, all failing."""
    return float(analysis["initial_delay"] + analysis["interval"] * analysis["failure_limit"])


# --- the manifests and the environment ---------------------------------------------------------


def deployment_manifest(replicas: int) -> dict[str, Any]:
    return app_deployment(APP, f"{REGISTRY}:placeholder", replicas)


SERVICE_MANIFEST = app_service(APP)


def production(*, approval: bool, analysis: dict[str, Any] | None) -> dict[str, Any]:
    """Blue-green production with two replicas, a readiness smoke test on the preview."""
    return {
        "name": ENVIRONMENT,
        "namespace": NAMESPACE,
        "create_namespace": True,
        "branches": ["main"],
        "approval": approval,
        "rollout_timeout": 60,
        "strategy": {"blue_green": {"scale_down_delay_seconds": 0}},
        "smoke": {"checks": [{"url": "{base_url}/readyz", "retries": 10, "retry_delay": 0.2}]},
        **({"analysis": analysis} if analysis else {}),
    }


@dataclass(frozen=True)
class Image:
    ref: str
    version: str  # the APP_VERSION its pods report in every answer
    env: dict[str, str]


def images(kind: str, count: int, **env: str) -> list[Image]:
    """Fresh digests: each release has its own ``slipway.dev/release`` label, so no
    Prometheus series of an earlier release leaks into its analysis."""
    out = []
    for i in range(count):
        digest = os.urandom(32).hex()
        version = f"{kind}-{i}"
        out.append(Image(f"{REGISTRY}@sha256:{digest}", version, {"APP_VERSION": version, **env}))
    return out


# --- the cluster, in a child process -----------------------------------------------------------

CLUSTER_CHILD = """
import json, signal, sys, threading
from pathlib import Path
from tests.servers.kube_api import KubeApiStandIn
from tests.servers.pod_runner import PodRunner

kubeconfig, file_sd, pod_logs, image_env = (Path(a) for a in sys.argv[1:5])
stop = threading.Event()
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda *_: stop.set())
runner = PodRunner(file_sd=file_sd, log_dir=pod_logs, image_env=json.loads(image_env.read_text()))
try:
    with KubeApiStandIn(pod_hook=runner) as standin:
        standin.write_kubeconfig(kubeconfig)
        print("READY", flush=True)
        stop.wait()
finally:
    runner.close()
"""
CLUSTER_START_TIMEOUT = 60.0


@contextmanager
def cluster_process(root: Path, image_env: dict[str, dict[str, str]]) -> Iterator[dict[str, Any]]:
    """The stand-in and its pod runner in a child process; yields its kubeconfig (a dict)."""
    root.mkdir(parents=True, exist_ok=True)
    kubeconfig, env_file = root / "kubeconfig", root / "image-env.json"
    env_file.write_text(json.dumps(image_env))
    argv = [
        sys.executable, "-c", CLUSTER_CHILD,
        str(kubeconfig), str(root / "pods.json"), str(root / "pod-logs"), str(env_file),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], CLUSTER_START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "READY":
            raise BenchError(
                f"the cluster stand-in did not start (exit {proc.poll()}, said {line!r})"
            )
        yield yaml.safe_load(kubeconfig.read_text())
    finally:
        _end_group(proc)


def _end_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the child's group (it stops its pods), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- what the flow logs, when --------------------------------------------------------------------


class RunLog(logging.Handler):
    """Every record a flow run logs, with its ``created`` time, kept by flow run id."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: dict[str, list[tuple[float, str]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        run = getattr(record, "flow_run_id", None)
        if run is None:
            return
        self.records.setdefault(str(run), []).append((record.created, record.getMessage()))

    def matching(self, run: UUID, pattern: str) -> list[tuple[float, re.Match[str]]]:
        found = []
        for created, message in list(self.records.get(str(run), [])):
            match = re.search(pattern, message)
            if match:
                found.append((created, match))
        return found

    def first(self, run: UUID, pattern: str) -> float:
        found = self.matching(run, pattern)
        if not found:
            raise BenchError(f"flow run {run} never logged {pattern!r}")
        return found[0][0]


@contextmanager
def capturing_run_logs() -> Iterator[RunLog]:
    logger = logging.getLogger("prefect.flow_runs")
    handler = RunLog()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# --- deliver in a flow run, on a thread of its own ----------------------------------------------

_DELIVERIES: dict[str, Delivery] = {}
_STARTED: dict[str, queue.Queue[UUID]] = {}


@flow(name="bench-deliver", persist_result=False)
async def bench_deliver(token: str) -> tuple[EnvironmentOutcome, ...]:
    _STARTED.pop(token).put(get_run_context().flow_run.id)  # type: ignore[union-attr]
    return await deliver(_DELIVERIES.pop(token))


class DeliverRun:
    """``deliver(delivery)`` in a flow run on its own thread, as a worker would run it."""

    def __init__(self, delivery: Delivery) -> None:
        token = uuid4().hex
        started: queue.Queue[UUID] = queue.Queue()
        _DELIVERIES[token], _STARTED[token] = delivery, started
        self._outcomes: tuple[EnvironmentOutcome, ...] = ()
        self._problem: str | None = None
        context = contextvars.copy_context()  # the API URL and result storage settings
        self._thread = threading.Thread(
            target=context.run, args=(self._run, token), daemon=True, name="deliver"
        )
        self._thread.start()
        try:
            self.flow_run_id = started.get(timeout=60)
        except queue.Empty:
            raise BenchError("the deliver flow run did not start within 60 s") from None

    def _run(self, token: str) -> None:
        async def flow_and_result() -> None:
            state = await bench_deliver(token, return_state=True)  # type: ignore[call-overload]
            if not state.is_completed():
                self._problem = f"the deliver flow ended {state.name}: {state.message}"
                return
            self._outcomes = await state.aresult()

        try:
            asyncio.run(flow_and_result())
        except BaseException as exc:  # reported by outcome()
            self._problem = f"the deliver flow raised {type(exc).__name__}: {exc}"

    def outcome(self, timeout: float = RUN_TIMEOUT) -> EnvironmentOutcome:
        """Production's outcome, once the run has ended."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise BenchError(f"deliver run {self.flow_run_id} still running after {timeout:g} s")
        if self._problem:
            raise BenchError(self._problem)
        by_name = {o.name: o for o in self._outcomes}
        return by_name[ENVIRONMENT]


def task_run_start(flow_run_id: UUID, name: str, timeout: float = 30.0) -> float:
    """When the task run ``name`` of the flow run became Running, per the API (task-run
    states reach the server as events, so this waits for it to be written)."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(rf"{re.escape(name)}(-[0-9a-f]{{3}})?")  # Prefect's run-name suffix
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            for run in runs:
                if pattern.fullmatch(run.name) and run.start_time:
                    return run.start_time.timestamp()
            if time.monotonic() > deadline:
                raise BenchError(f"flow run {flow_run_id}: no Running {name!r} after {timeout} s")
            time.sleep(0.2)


def wait_paused(flow_run_id: UUID, timeout: float = 60.0) -> float:
    """When this thread first saw the run Paused waiting for input."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_paused() and state.state_details.run_input_keyset:
                return time.time()
            if state is not None and state.is_final():
                raise BenchError(f"flow run {flow_run_id} ended {state.name} before it paused")
            time.sleep(0.05)
    raise BenchError(f"flow run {flow_run_id} did not pause within {timeout:g} s")


# --- traffic and the Service, seen from outside --------------------------------------------------


@dataclass(frozen=True)
class Answer:
    sent: float
    answered: float
    status: int  # 0: no answer
    version: str | None  # the release that answered (APP_VERSION), None if not the app


class Watcher:
    """Two threads against the API server: ``GET /`` on the active Service through the
    service proxy every 50 ms (the users), and a read of that Service every 25 ms."""

    def __init__(self, api_url: str, token: str) -> None:
        base = f"{api_url}/api/v1/namespaces/{NAMESPACE}/services/{APP}"
        self._app_url, self._service_url = f"{base}:http/proxy/", base
        self._headers = {"Authorization": f"Bearer {token}"}
        self.answers: list[Answer] = []
        self.colours: list[tuple[float, float, str | None]] = []  # (asked, answered, colour)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._traffic, daemon=True, name="bench-traffic"),
            threading.Thread(target=self._poll, daemon=True, name="bench-selector"),
        ]

    def _traffic(self) -> None:
        with httpx.Client(timeout=2, headers=self._headers) as http:
            while not self._stop.wait(TRAFFIC_PERIOD):
                sent = time.time()
                try:
                    answer = http.get(self._app_url)
                except httpx.HTTPError:
                    self.answers.append(Answer(sent, time.time(), 0, None))
                    continue
                try:
                    version = answer.json().get("version")
                except (ValueError, AttributeError):
                    version = None
                self.answers.append(Answer(sent, time.time(), answer.status_code, version))

    def _poll(self) -> None:
        with httpx.Client(timeout=2, headers=self._headers) as http:
            while not self._stop.wait(SELECTOR_POLL):
                asked = time.time()
                try:
                    answer = http.get(self._service_url)
                    selector = answer.json().get("spec", {}).get("selector") or {}
                    colour = selector.get(COLOUR_LABEL) if answer.status_code == 200 else None
                except (httpx.HTTPError, ValueError, AttributeError):
                    continue
                self.colours.append((asked, time.time(), colour))

    def __enter__(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10
        while not (self.colours and self.answers):
            if time.monotonic() > deadline:
                raise BenchError("no answer from the active Service within 10 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def colour_at(self, when: float) -> str | None:
        """The last colour a read asked before ``when`` saw."""
        seen = [c for asked, _answered, c in list(self.colours) if asked < when]
        return seen[-1] if seen else None

    def colour_seen(self, colour: str, asked_after: float) -> float | None:
        """When a read asked after ``asked_after`` first came back with ``colour``."""
        for asked, answered, seen in list(self.colours):
            if asked >= asked_after and seen == colour:
                return answered
        return None

    def from_release(self, version: str, after: float, status: int | None = None) -> list[Answer]:
        return [
            a
            for a in list(self.answers)
            if a.sent >= after and a.version == version and (status is None or a.status == status)
        ]

    def rate(self, start: float, end: float) -> float:
        sent = [a for a in list(self.answers) if start <= a.sent <= end]
        return len(sent) / (end - start) if end > start else 0.0


# --- the world -----------------------------------------------------------------------------------


@dataclass
class World:
    kubeconfig: dict[str, Any]
    manifests: ManifestsRepository
    prometheus: PrometheusServer
    cluster_block: str
    workspace: Path
    next_build: Callable[[], int]

    @property
    def api_url(self) -> str:
        return str(self.kubeconfig["clusters"][0]["cluster"]["server"])

    @property
    def token(self) -> str:
        return str(self.kubeconfig["users"][0]["user"]["token"])

    def delivery(self, environment: dict[str, Any], image: Image) -> Delivery:
        spec = DeploySpec.model_validate(
            {
                "manifests": "unused",
                "prometheus": "unused",
                "approval_policy": "unused",
                "environments": [environment],
            }
        )
        build = self.next_build()
        return Delivery(
            spec=spec,
            app=APP,
            image=image.ref,
            source_commit=f"{build:040x}",
            branch="main",
            run_id=str(uuid4()),
            run_url=None,
            build_number=build,
            workspace=self.workspace / f"build-{build}",
            redactor=Redactor(),
            manifests=self.manifests,
            approvals=ApprovalPolicy(
                environments={
                    ENVIRONMENT: EnvironmentApproval(
                        approvers=[approver(APPROVER)], timeout_seconds=120, branches=["main"]
                    )
                }
            ),
            prometheus=self.prometheus,
            notifier=None,
            default_cluster=self.cluster_block,
            approval_poll=APPROVAL_POLL,
        )


@contextmanager
def delivery_world(root: Path, image_env: dict[str, dict[str, str]]) -> Iterator[World]:
    remote = make_bare_repo(root / "git", "manifests.git")
    files = {
        f"{ENVIRONMENT}/deployment.yaml": "# the shop\n" + yaml.safe_dump(deployment_manifest(2)),
        f"{ENVIRONMENT}/service.yaml": yaml.safe_dump(SERVICE_MANIFEST),
    }
    commit_files(remote, files, "manifests")
    manifests = ManifestsRepository(
        url=remote.as_uri(), environments={ENVIRONMENT: EnvironmentManifests(path=ENVIRONMENT)}
    )
    builds = iter(range(1, 10_000))
    with cluster_process(root / "cluster", image_env) as kubeconfig:
        block = f"bench-cluster-{uuid4().hex[:8]}"
        KubernetesCredentials(
            cluster_config=KubernetesClusterConfig(
                config=kubeconfig, context_name=kubeconfig["current-context"]
            )
        ).save(block)
        with PrometheusProcess(file_sd=root / "cluster" / "pods.json") as prometheus:
            yield World(
                kubeconfig,
                manifests,
                PrometheusServer(url=prometheus.url),
                block,
                root / "workspace",
                lambda: next(builds),
            )


# --- 1. approval --------------------------------------------------------------------------------


def approval_run(
    bench: Bench, world: World, runlog: RunLog, image: Image, delay: float
) -> dict[str, Any]:
    """One good release to production: approved ``delay`` s after the pause; timings."""
    bench.retries.take()
    run = DeliverRun(world.delivery(production(approval=True, analysis=None), image))
    paused = wait_paused(run.flow_run_id)
    time.sleep(delay)
    approval = decision(APPROVER, reason="benchmark")  # a fresh TOTP code, before the clock
    called = time.time()
    approve_run(run.flow_run_id, approval, timeout=30)
    returned = time.time()
    outcome = run.outcome()
    if outcome.status != "deployed":
        raise BenchError(f"approved release ended {outcome.status}: {outcome.reason}")
    bump = task_run_start(run.flow_run_id, f"bump-{ENVIRONMENT}")
    resumed = [t for t, _m in runlog.matching(run.flow_run_id, "Resuming flow run") if t >= called]
    if not resumed:
        raise BenchError(f"flow run {run.flow_run_id} never logged its resumption")
    stalls = bench.retries.take()
    return {
        "approved_after_pause_seconds": r3(called - paused),
        "approve_call_seconds": r3(returned - called),
        "latency_seconds": r3(bump - returned),
        "to_resumed_seconds": r3(resumed[0] - returned),
        "resumed_to_bump_seconds": r3(bump - resumed[0]),
        "client_retry_seconds": stalls["seconds_waited"],
        "client_retry_causes": stalls["causes"],
    }


def measure_approval(bench: Bench, world: World, runlog: RunLog, good: list[Image]) -> dict:
    warm = approval_run(bench, world, runlog, good[0], 0.5 * APPROVAL_POLL)
    bench.say(
        f"approval warm-up (first deploy): production's bump started "
        f"{warm['latency_seconds']:.2f} s after the approval"
    )
    runs = []
    for i, image in enumerate(good[1 : APPROVAL_REPS + 1]):
        delay = (0.5 + i / APPROVAL_REPS) * APPROVAL_POLL
        runs.append(approval_run(bench, world, runlog, image, delay))
        bench.say(
            f"approval {i + 1}/{APPROVAL_REPS}: bump Running {runs[-1]['latency_seconds']:.2f} s "
            f"after approve_run returned (poll saw it after {runs[-1]['to_resumed_seconds']:.2f} s)"
        )
    latencies = [r["latency_seconds"] for r in runs]
    stalls = [r["client_retry_seconds"] for r in runs]
    without = [max(x - s, 0.0) for x, s in zip(latencies, stalls, strict=True)]
    return {
        "repetitions": APPROVAL_REPS,
        "poll_interval_seconds": APPROVAL_POLL,
        "signal": f"bump-{ENVIRONMENT} task run Running (start_time on the API) minus the "
        "time approve_run returned",
        "runs": runs,
        "warm_up": warm,
        "latency_seconds": latencies,
        "median": r3(median(latencies)),
        "max": r3(max(latencies)),
        "max_without_stalls": r3(max(without)),
        "to_resumed_median": r3(median([r["to_resumed_seconds"] for r in runs])),
        "resumed_to_bump_median": r3(median([r["resumed_to_bump_seconds"] for r in runs])),
        "approve_call_median": r3(median([r["approve_call_seconds"] for r in runs])),
    }


# --- 2 and 3. bad releases: detection and blue-green rollback -----------------------------------

_MEASUREMENT = r"^analysis \S+: measurement (\d+) \(\d+/\d+ counted\) (\w+):"


def bad_run(
    bench: Bench, world: World, runlog: RunLog, watch: Watcher, image: Image
) -> dict[str, Any]:
    """One bad release to production, under traffic, until it is rolled back."""
    bench.retries.take()
    start = time.time()
    good_colour = watch.colour_at(start)
    if good_colour is None:
        raise BenchError("the active Service has no colour before the bad release")
    delivery = world.delivery(production(approval=False, analysis=ANALYSIS), image)
    run = DeliverRun(delivery)
    outcome = run.outcome()
    ended = time.time()
    if outcome.status != "rolled-back" or outcome.rollback_seconds is None:
        raise BenchError(f"bad release ended {outcome.status}: {outcome.reason}")
    run_id = run.flow_run_id
    decision = runlog.first(run_id, rf"^{ENVIRONMENT}: rolling back: ")
    analysis_start = runlog.first(run_id, r"^analysis \S+: \d+ x every ")
    measured = runlog.matching(run_id, _MEASUREMENT)
    ready = runlog.first(run_id, r"successfully rolled out")
    first_scrape, second_scrape = scrape_times(world.prometheus, delivery.release_id)
    bad_colour = other_colour(good_colour)
    switched = watch.colour_seen(bad_colour, start)
    back = watch.colour_seen(good_colour, switched) if switched else None
    errors = watch.from_release(image.version, start, status=500)
    served = watch.from_release(image.version, start)
    if switched is None or back is None or not errors:
        raise BenchError(
            f"bad release {image.version}: switch seen {switched}, back seen {back}, "
            f"{len(errors)} answers 500 from it"
        )
    first_error = errors[0].answered
    if first_error > decision:
        raise BenchError(f"bad release {image.version}: rolled back before any request failed")
    stalls = bench.retries.take()
    return {
        "release": image.version,
        "analysis": outcome.analysis,
        "measurements": [m.group(2) for _t, m in measured],
        "rollback_reported_seconds": r3(outcome.rollback_seconds),
        "rollback_observed_seconds": r3(back - decision),
        "decision_to_rollback_task_seconds": r3(
            task_run_start(run_id, f"rollback-{ENVIRONMENT}") - decision
        ),
        "decision_to_last_bad_answer_seconds": r3(served[-1].answered - decision),
        "detection_seconds": r3(decision - first_error),
        "switch_seen_to_first_500_seconds": r3(first_error - switched),
        "analysis_start_to_first_500_seconds": r3(first_error - analysis_start),
        "analysis_start_to_verdict_seconds": r3(measured[-1][0] - analysis_start),
        "verdict_to_decision_seconds": r3(decision - measured[-1][0]),
        "first_measurement_after_start_seconds": r3(measured[0][0] - analysis_start),
        "first_measurement_after_switch_seconds": r3(measured[0][0] - switched),
        "ready_to_first_scrape_seconds": r3(first_scrape - ready),
        "ready_to_second_scrape_seconds": r3(second_scrape - ready),
        "ready_to_switch_seconds": r3(switched - ready),
        "switch_to_second_scrape_seconds": r3(second_scrape - switched),
        "bad_answers": len(served),
        "answers_500": len(errors),
        "traffic_per_second": round(watch.rate(start, ended), 1),
        "run_seconds": r3(ended - start),
        "client_retry_seconds": stalls["seconds_waited"],
        "client_retry_causes": stalls["causes"],
    }


def scrape_times(prometheus: PrometheusServer, release: str) -> tuple[float, float]:
    """When Prometheus first scraped a pod of ``release``, and when it first held two samples
    of one (what ``rate()`` needs before a query over the release has a value)."""
    query = f'up{{namespace="{NAMESPACE}",slipway_dev_release="{release}"}}[10m]'
    with prometheus.get_client() as client:
        answer = client.get("/api/v1/query", params={"query": query}).json()
    samples = [[float(t) for t, _v in s["values"]] for s in answer["data"]["result"]]
    if not any(len(times) >= 2 for times in samples):
        raise BenchError(f"Prometheus holds fewer than two samples of release {release}")
    return min(t[0] for t in samples), min(t[1] for t in samples if len(t) >= 2)


def measure_bad_releases(
    bench: Bench, world: World, runlog: RunLog, watch: Watcher, bad: list[Image]
) -> tuple[dict[str, Any], dict[str, Any]]:
    runs = []
    for i, image in enumerate(bad):
        runs.append(bad_run(bench, world, runlog, watch, image))
        r = runs[-1]
        bench.say(
            f"bad release {i + 1}/{len(bad)}: rollback started {r['detection_seconds']:.2f} s "
            f"after the first 500 (measurements {', '.join(r['measurements'])}); selector back "
            f"{r['rollback_observed_seconds']:.2f} s after the decision "
            f"(rollback reports {r['rollback_reported_seconds']:.2f} s)"
        )

    def column(key: str) -> list[float]:
        return [r[key] for r in runs]

    reported, observed = column("rollback_reported_seconds"), column("rollback_observed_seconds")
    rollback = {
        "repetitions": len(runs),
        "selector_poll_ms": SELECTOR_POLL * 1000,
        "reported_seconds": reported,
        "reported_median": r3(median(reported)),
        "reported_max": r3(max(reported)),
        "observed_seconds": observed,
        "observed_median": r3(median(observed)),
        "observed_max": r3(max(observed)),
        "decision_to_rollback_task_median": r3(median(column("decision_to_rollback_task_seconds"))),
        "decision_to_last_bad_answer_seconds": column("decision_to_last_bad_answer_seconds"),
        "decision_to_last_bad_answer_max": r3(max(column("decision_to_last_bad_answer_seconds"))),
    }
    expected = expected_detection_seconds()
    detection = column("detection_seconds")
    detection_data = {
        "repetitions": len(runs),
        "analysis": {k: v for k, v in ANALYSIS.items() if k != "query"},
        "query": ERROR_RATE_QUERY,
        "error_rate": BAD_ERROR_RATE,
        "expected_seconds": expected,
        "expected_definition": "initial_delay + interval x failure_limit",
        "seconds": detection,
        "median": r3(median(detection)),
        "max": r3(max(detection)),
        "ratios": [r3(x / expected) for x in detection],
        "ratio": r3(median(detection) / expected),
        "analysis_start_to_first_500_median": r3(
            median(column("analysis_start_to_first_500_seconds"))
        ),
        "switch_seen_to_first_500_median": r3(median(column("switch_seen_to_first_500_seconds"))),
        "analysis_start_to_verdict_median": r3(median(column("analysis_start_to_verdict_seconds"))),
        "ready_to_second_scrape_median": r3(median(column("ready_to_second_scrape_seconds"))),
        "switch_to_second_scrape_median": r3(median(column("switch_to_second_scrape_seconds"))),
        "first_measurement_after_switch_median": r3(
            median(column("first_measurement_after_switch_seconds"))
        ),
        "verdict_to_decision_median": r3(median(column("verdict_to_decision_seconds"))),
        "traffic_per_second": r3(median(column("traffic_per_second"))),
        "runs": runs,
    }
    return rollback, detection_data


# --- all of it -----------------------------------------------------------------------------------


def measure_delivery(bench: Bench, root: Path, server: PrefectServer) -> dict[str, Any]:
    """All three CD measurements; ``{"unavailable": why}`` when Prometheus is missing."""
    info: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        **git_describe(),
    }
    if not os.access(PROMETHEUS_BINARY, os.X_OK):
        return {**info, "unavailable": f"{PROMETHEUS_BINARY} is missing (Debian: prometheus)"}
    t0 = time.monotonic()
    good = images("good", APPROVAL_REPS + 1)
    bad = images("bad", BAD_REPS, ERROR_RATE=BAD_ERROR_RATE)
    image_env = {i.ref: i.env for i in good + bad}
    refused_before = server_retryable_errors(server)
    bench.say("CD: starting the cluster stand-in (child process) and Prometheus")
    with (
        sandboxed(bench.boxes.fresh("delivery")),
        capturing_run_logs() as runlog,
        delivery_world(root, image_env) as world,
    ):
        approval = measure_approval(bench, world, runlog, good)
        with Watcher(world.api_url, world.token) as watch:
            rollback, detection = measure_bad_releases(bench, world, runlog, watch, bad)
    return {
        **info,
        "setup": {
            "cluster": "Kubernetes API stand-in (simulated clock at 10x) in a child process; "
            "pods are example-app processes; 2 replicas per colour",
            "prometheus": "Debian prometheus, scrape and file_sd refresh every 1 s",
            "traffic": f"GET / on the active Service through the service proxy every "
            f"{TRAFFIC_PERIOD * 1000:.0f} ms",
        },
        "approval": approval,
        "rollback": rollback,
        "detection": detection,
        "seconds": round(time.monotonic() - t0, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "server_retryable_errors": {
            where: count - refused_before.get(where, 0)
            for where, count in server_retryable_errors(server).items()
            if count > refused_before.get(where, 0)
        },
    }
