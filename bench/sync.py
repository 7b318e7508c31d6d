"""GitOps sync benchmarks: how a sync scales with the app's size, and drift to repair.

Run with ``bench/run sync`` (plain ``bench/run`` runs it last, on the same private
Prefect server). The world:

- the Kubernetes API stand-in in a child process of its own
  (``python -m tests.servers.kube_api --pods none``: pods are simulated, no
  processes), at the tests' 10x cluster clock, so its HTTP threads do not compete
  with the sync being timed for this process' GIL, as an apiserver runs elsewhere;
- a bare git repository holding the manifests (one folder per app size);
- slipway's sync: :func:`~slipway.tasks.sync.sync_application` called directly, and
  the ``gitops-sync`` flow (:func:`~slipway.flows.sync.gitops_sync`) run in this
  process against the private ``prefect server``, blocks and artifacts included.

What is measured:

1. **Sync time by size.** An app of N ConfigMaps (N = 10, 100, 1000; 5 data keys
   each, 100 per file): the first sync (render, list, diff, create all N with
   server-side apply, read back), then a sync with nothing to do (render, list, diff:
   what every scheduled run costs), each :data:`REPS` times on fresh namespaces, and
   the whole ``gitops-sync`` flow run with nothing to do (Prefect's run, the task run,
   the artifact). Medians; per-object cost = the slope between N = 10 and N = 1000.
2. **Drift to repair.** An app (a 3-replica Deployment, a Service, a ConfigMap; self
   heal on) synced by the ``gitops-sync`` flow every :data:`INTERVAL` seconds, as an
   interval schedule would start it (here a ticker thread starts the runs in this
   process: a worker would add its polling and a process start per run). Drift
   (``kubectl scale --replicas=5``) is made :data:`DRIFT_REPS` times, at evenly spread
   points of the interval; measured: from the scale's answer to a poller (a GET every
   25 ms) seeing 3 replicas again, split into waiting for the next run and that run
   finding and reverting it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from bench.harness import BenchError, PrefectServer, git_describe, median, sandboxed
from bench.measure import Bench, r3
from slipway.application_spec import Application
from slipway.flows.sync import gitops_sync
from slipway.tasks.sync import repository_for, sync_application
from slipway.tasks.sync_source import render_revision
from tests.servers.example_manifests import app_deployment, app_service
from tests.servers.git_http import commit_files, make_bare_repo

ROOT = Path(__file__).resolve().parent.parent

SIZES = (10, 100, 1000)
REPS = 3
PER_FILE = 100
INTERVAL = 5.0  # seconds between scheduled sync runs (the interval)
DRIFT_REPS = 5
POLL = 0.025  # seconds between the repair poller's reads
REPAIR_TIMEOUT = 60.0
CLUSTER_START_TIMEOUT = 60.0


# --- the cluster, in a child process --------------------------------------------------------


@contextmanager
def standin_process(root: Path) -> Iterator[Path]:
    """The stand-in (simulated pods) in a child process; yields its kubeconfig path."""
    root.mkdir(parents=True, exist_ok=True)
    kubeconfig = root / "kubeconfig"
    argv = [
        sys.executable, "-m", "tests.servers.kube_api", "--kubeconfig", str(kubeconfig),
        "--pods", "none", "--speed", "10", "--pod-start-seconds", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT
        while not kubeconfig.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the cluster stand-in did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield kubeconfig
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- manifests ----------------------------------------------------------------------------------


def config_maps(count: int) -> dict[str, str]:
    """``count`` ConfigMaps, :data:`PER_FILE` to a file."""
    files: dict[str, str] = {}
    for start in range(0, count, PER_FILE):
        docs = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"config-{i:04d}", "labels": {"part": str(i % 7)}},
                "data": {f"key{k}": f"value {i}-{k}" for k in range(5)},
            }
            for i in range(start, min(count, start + PER_FILE))
        ]
        files[f"size-{count}/configs-{start:04d}.yaml"] = yaml.safe_dump_all(docs)
    return files


def example_app() -> dict[str, str]:
    deployment = app_deployment("shop", "registry.k8s.io/pause:3.9", 3)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-config"}}
    config_map["data"] = {"greeting": "hello"}
    return {
        "drift/deployment.yaml": yaml.safe_dump(deployment),
        "drift/service.yaml": yaml.safe_dump(app_service("shop")),
        "drift/config.yaml": yaml.safe_dump(config_map),
    }


@dataclass
class World:
    kubeconfig: Path
    remote: Path
    cluster_block: str
    folder: Path
    api: Any = None
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))

    def app(self, name: str, path: str, namespace: str, **policy: Any) -> Application:
        return Application.model_validate(
            {
                "name": name,
                "repo": self.remote.as_uri(),
                "path": path,
                "destination": {"cluster": self.cluster_block, "namespace": namespace},
                "sync_policy": {"automated": True, **policy},
                "sync_options": {"create_namespace": True},
            }
        )

    def application_file(self, app: Application) -> str:
        path = self.folder / f"{app.name}.yaml"
        spec = app.model_dump(mode="json", exclude_none=True)
        path.write_text(yaml.safe_dump({"application": spec}, sort_keys=False))
        return str(path)

    def sync(self, app: Application, workdir: Path) -> tuple[float, Any]:
        t0 = time.perf_counter()
        result = sync_application(
            self.api, app, repository_for(app), workdir=workdir, log=self.lines.append
        )
        seconds = time.perf_counter() - t0
        if not result.ok or result.sync_status != "Synced":
            raise BenchError(f"sync of {app.name} ended {result.summary()}")
        return seconds, result


def flow_run(application: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    state = asyncio.run(gitops_sync(application=application, return_state=True))  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    if not state.is_completed():
        raise BenchError(f"gitops-sync {application} ended {state.name}: {state.message}")
    return seconds, state


# --- 1. size ------------------------------------------------------------------------------------


def measure_sizes(bench: Bench, world: World, root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in SIZES:
        first, noop, flows, renders = [], [], [], []
        app = None
        for rep in range(REPS):
            app = world.app(f"size{size}-r{rep}", f"size-{size}", f"bench-size{size}-r{rep}")
            seconds, result = world.sync(app, root / "clones" / app.name)
            if len(result.applied) != size:
                raise BenchError(f"first sync of {size} applied {len(result.applied)}")
            first.append(seconds)
        assert app is not None
        for _ in range(REPS):
            seconds, result = world.sync(app, root / "clones" / app.name)
            if result.applied:
                raise BenchError(f"the no-op sync of {size} applied {len(result.applied)}")
            noop.append(seconds)
            t0 = time.perf_counter()
            render_revision(
                repository_for(app), revision="HEAD", path=app.path, kind="plain",
                workdir=root / "clones" / app.name,
            )  # fmt: skip
            renders.append(time.perf_counter() - t0)
        application = world.application_file(app)
        flow_run(application)  # the flow's first run in this process: not counted
        for _ in range(REPS):
            seconds, _state = flow_run(application)
            flows.append(seconds)
        out[str(size)] = {
            "first_seconds": [r3(s) for s in first],
            "noop_seconds": [r3(s) for s in noop],
            "flow_noop_seconds": [r3(s) for s in flows],
            "render_seconds": [r3(s) for s in renders],
            "first_median": r3(median(first)),
            "noop_median": r3(median(noop)),
            "flow_noop_median": r3(median(flows)),
            "render_median": r3(median(renders)),
        }
        bench.say(
            f"sync of {size} ConfigMaps: first {median(first):.2f} s, no-op {median(noop):.2f} s "
            f"(render {median(renders):.2f} s), flow run no-op {median(flows):.2f} s"
        )
    lo, hi = out[str(SIZES[0])], out[str(SIZES[-1])]
    span = SIZES[-1] - SIZES[0]
    out["per_object_ms"] = {
        "first": r3((hi["first_median"] - lo["first_median"]) / span * 1000),
        "noop": r3((hi["noop_median"] - lo["noop_median"]) / span * 1000),
    }
    return out


# --- 2. drift to repair -------------------------------------------------------------------------


class Ticker:
    """Starts a ``gitops-sync`` run every ``interval`` seconds (on a thread of its own), as
    an interval schedule would; records when each run started and ended."""

    def __init__(self, application: str, interval: float) -> None:
        self.application = application
        self.interval = interval
        self.runs: list[tuple[float, float, Any]] = []  # (started, ended, result)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sync-ticker", daemon=True)
        self.t0 = 0.0

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            due = self.t0 + tick * self.interval
            wait = due - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            started = time.monotonic()
            try:
                _seconds, state = flow_run(self.application)
                self.runs.append((started, time.monotonic(), state.result()[0]))
            except Exception as exc:  # recorded, the schedule goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            tick = max(tick + 1, int((time.monotonic() - self.t0) // self.interval) + 1)

    def __enter__(self) -> Ticker:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def next_tick_after(self, when: float) -> float:
        k = int((when - self.t0) // self.interval) + 1
        return self.t0 + k * self.interval


def _run_covering(
    runs: list[tuple[float, float, Any]], when: float
) -> tuple[float, float, Any] | None:
    """The (ended) run that was running at ``when``."""
    return next(((s, e, r) for s, e, r in list(runs) if s <= when <= e + POLL), None)


def measure_drift(bench: Bench, world: World, root: Path) -> dict[str, Any]:
    namespace = "bench-drift"
    app = world.app("shop", "drift", namespace, self_heal=True, prune=True)
    application = world.application_file(app)
    flow_run(application)  # creates the app (and warms the flow up)
    apps = client.AppsV1Api(world.api)
    deadline = time.monotonic() + 30
    while (apps.read_namespaced_deployment("shop", namespace).status.available_replicas or 0) < 3:
        if time.monotonic() > deadline:
            raise BenchError("the drift benchmark's Deployment never became available")
        time.sleep(0.1)
    reps: list[dict[str, Any]] = []
    with Ticker(application, INTERVAL) as ticker:
        time.sleep(INTERVAL * 1.5)  # the schedule is running
        for i in range(DRIFT_REPS):
            phase = INTERVAL * (i + 0.5) / DRIFT_REPS
            start = ticker.next_tick_after(time.monotonic())
            time.sleep(max(0.0, start + phase - time.monotonic()))
            apps.patch_namespaced_deployment_scale("shop", namespace, {"spec": {"replicas": 5}})
            drift_at = time.monotonic()
            repaired_at = None
            limit = drift_at + REPAIR_TIMEOUT
            while time.monotonic() < limit:
                if apps.read_namespaced_deployment("shop", namespace).spec.replicas == 3:
                    repaired_at = time.monotonic()
                    break
                time.sleep(POLL)
            if repaired_at is None:
                raise BenchError(f"drift {i + 1} was not repaired in {REPAIR_TIMEOUT:g} s")
            # the run that repaired it: the one running when the poller saw the repair (it
            # may have started before the drift and read the Deployment after it)
            while (found := _run_covering(ticker.runs, repaired_at)) is None:
                if time.monotonic() > limit:
                    raise BenchError("the repairing run never ended")
                time.sleep(0.05)
            started, ended, result = found
            reps.append(
                {
                    "phase_seconds": r3(phase),
                    "drift_to_repair_seconds": r3(repaired_at - drift_at),
                    "drift_to_run_start_seconds": r3(started - drift_at),
                    "run_start_to_repair_seconds": r3(repaired_at - started),
                    "run_seconds": r3(ended - started),
                    "reverted": [str(o.ref) for o in result.reverted],
                }
            )
            bench.say(
                f"drift {i + 1}: repaired {repaired_at - drift_at:.2f} s after it appeared "
                f"(by the run started {started - drift_at:+.2f} s from it, "
                f"{repaired_at - started:.2f} s into that run)"
            )
        runs = list(ticker.runs)
    if ticker.errors:
        raise BenchError(f"scheduled sync runs failed: {ticker.errors[:3]}")
    delays = [r["drift_to_repair_seconds"] for r in reps]
    in_run = [r["run_start_to_repair_seconds"] for r in reps]
    return {
        "interval_seconds": INTERVAL,
        "repetitions": DRIFT_REPS,
        "runs": reps,
        "median": r3(median(delays)),
        "max": r3(max(delays)),
        "mean": r3(sum(delays) / len(delays)),
        "run_start_to_repair_median": r3(median(in_run)),
        "scheduled_runs": len(runs),
        "scheduled_run_median_seconds": r3(median([e - s for s, e, _ in runs])),
        "expected_mean_seconds": r3(INTERVAL / 2 + median(in_run)),
    }


# --- all of it ----------------------------------------------------------------------------------


def measure_sync(bench: Bench, root: Path, server: PrefectServer) -> dict[str, Any]:
    info: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        **git_describe(),
    }
    t0 = time.monotonic()
    remote = make_bare_repo(root / "git", "manifests.git")
    files: dict[str, str] = {}
    for size in SIZES:
        files.update(config_maps(size))
    commit_files(remote, {**files, **example_app()}, "bench manifests")
    folder = root / "applications"
    folder.mkdir(parents=True, exist_ok=True)
    bench.say("sync: starting the cluster stand-in (child process, simulated pods)")
    with sandboxed(bench.boxes.fresh("sync")), standin_process(root / "cluster") as kubeconfig:
        config_dict = yaml.safe_load(kubeconfig.read_text())
        block = "bench-sync-cluster"
        KubernetesCredentials(
            cluster_config=KubernetesClusterConfig(
                config=config_dict, context_name=config_dict["current-context"]
            )
        ).save(block, overwrite=True)
        world = World(kubeconfig, remote, block, folder)
        sizes = measure_sizes(bench, world, root)
        drift = measure_drift(bench, world, root)
    return {
        **info,
        "setup": {
            "cluster": "Kubernetes API stand-in (simulated pods, clock at 10x) in a child process",
            "objects": f"ConfigMaps with 5 data keys, {PER_FILE} per file",
            "server": server.url,
        },
        "sizes": sizes,
        "drift": drift,
        "seconds": round(time.monotonic() - t0, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


# --- latest.md -----------------------------------------------------------------------------------


def sync_lines(sync: dict[str, Any] | None) -> list[str]:
    lines = ["", "### GitOps sync: time by app size, drift to repair", ""]
    if not sync:
        return lines + ["Not measured yet (`bench/run sync`)."]
    load = " / ".join(f"{x:.2f}" for x in sync["load_average_before"])
    after = " / ".join(f"{x:.2f}" for x in sync["load_average_after"])
    dirty = " plus uncommitted changes" if sync.get("dirty") else ""
    sizes, drift = sync["sizes"], sync["drift"]
    lines += [
        f"`bench/run sync` on {sync['started'][:10]} at commit `{sync['commit'][:12]}`{dirty}, "
        f"{sync['seconds']:.0f} s, load average {load} before and {after} after. The cluster is "
        "the Kubernetes API stand-in in a child process (pods simulated); the manifests are a "
        "local bare git repository; `sync_application` is called directly, and the "
        "`gitops-sync` flow runs in this process against the private `prefect server`. "
        f"Medians of {REPS}; first sync on a fresh namespace each time.",
        "",
        "| objects | first sync (creates all) | sync, nothing to do | … of it git fetch + render "
        "| `gitops-sync` flow run, nothing to do |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES:
        s = sizes[str(size)]
        lines.append(
            f"| {size} | {s['first_median']:.2f} s | {s['noop_median']:.2f} s | "
            f"{s['render_median']:.2f} s | {s['flow_noop_median']:.2f} s |"
        )
    per = sizes["per_object_ms"]
    runs = drift["runs"]
    header = " | ".join(str(i) for i in range(1, len(runs) + 1))
    lines += [
        "",
        f"Per object (slope from {SIZES[0]} to {SIZES[-1]}): {per['first']:.2f} ms to create, "
        f"{per['noop']:.2f} ms to check. A sync reads each kind it uses with one list request "
        "per namespace and each kind the cluster serves with one label-selected list, so a "
        "no-op sync costs a constant number of requests; creating costs two requests per "
        "object (`apply_objects` reads each object before applying it).",
        "",
        f"Drift to repair, `gitops-sync` every {drift['interval_seconds']:g} s (self_heal on): "
        f"median {drift['median']:.2f} s, max {drift['max']:.2f} s, mean {drift['mean']:.2f} s "
        f"(expected ≈ interval / 2 + a run's time to the repair = "
        f"{drift['expected_mean_seconds']:.2f} s).",
        "",
        f"| drift (seconds) | {header} |",
        "|---|" + "---:|" * len(runs),
        f"| drift made at, into the interval | {_cells(r['phase_seconds'] for r in runs)} |",
        f"| drift → repaired | {_cells(r['drift_to_repair_seconds'] for r in runs)} |",
        "| … drift → the repairing run starts (negative: it was already running) | "
        f"{_cells(r['drift_to_run_start_seconds'] for r in runs)} |",
        f"| … run start → repaired | {_cells(r['run_start_to_repair_seconds'] for r in runs)} |",
        f"| that run's wall time | {_cells(r['run_seconds'] for r in runs)} |",
        "",
        "Drift = `kubectl scale --replicas=5` on the 3-replica Deployment (a PATCH of its scale "
        "subresource), made at evenly spread points of the interval; repaired = a GET every "
        f"{POLL * 1000:.0f} ms sees 3 replicas again. The runs are started by a ticker thread "
        "in the benchmark process every interval, as an interval schedule would start them; "
        "a deployment on a process worker adds the worker's polling (`prefect worker start "
        "--prefetch-seconds`, 10 s by default) and a Python process start per run.",
    ]
    return lines


def _cells(values: Any) -> str:
    return " | ".join(f"{v:.2f}" for v in values)
