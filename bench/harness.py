"""Building blocks of the benchmarks: a private Prefect server, git remotes that
carry a pipeline file, timed pipeline runs, and the timeline a run left on the API.

Nothing here is a stand-in: the server is ``prefect server start`` (SQLite), the
remotes are bare git repositories, and the pipeline is slipway's own flow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State, TaskRun
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)

from slipway.flows.pipeline import run_pipeline
from slipway.local_server import local_auth_string, start_server, wait_healthy
from slipway.report import PipelineReport
from tests.servers.git_http import commit_files, make_bare_repo

SERVER_START_TIMEOUT = 120.0
TIMELINE_TIMEOUT = 30.0


class BenchError(RuntimeError):
    """A benchmark could not measure what it meant to (a run failed, the API lagged)."""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --- the server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PrefectServer:
    url: str
    pid: int
    home: Path
    startup_seconds: float


def _peak_rss_kb(pid: int) -> int | None:
    """VmHWM of a live process and its direct children (``prefect server`` may fork)."""
    total = 0
    pids = [pid]
    try:
        for task_dir in Path(f"/proc/{pid}/task").iterdir():
            children = (task_dir / "children").read_text().split()
            pids.extend(int(c) for c in children)
    except OSError:
        pass
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]))
        except OSError:
            continue
    return total or None


@contextmanager
def prefect_server(home: Path, port: int | None = None) -> Iterator[PrefectServer]:
    """Our own ``prefect server start`` on a free port; the client points at it meanwhile."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    started = time.monotonic()
    auth = os.environ.get("PREFECT_API_AUTH_STRING") or local_auth_string(home)
    proc = start_server("127.0.0.1", port, home, auth_string=auth)
    try:
        wait_healthy(url, SERVER_START_TIMEOUT, proc)
        server = PrefectServer(url, proc.pid, home, round(time.monotonic() - started, 2))
        # start_server turned API authentication on; the client sends the string
        with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
            yield server
    finally:
        # start_server made it a session (and group) leader: end that group, ours alone.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def flush_to_server() -> None:
    """Send the logs and events Prefect's background workers still hold while the server
    is up: left for interpreter exit, they retry a stopped server for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    EventsWorker.drain_all()


def server_peak_rss_kb(server: PrefectServer) -> int | None:
    return _peak_rss_kb(server.pid)


_API_FRAME = re.compile(r'prefect/server/api/(?!server\.py)(\w+)\.py", line \d+, in (\w+)')
_DB_ERROR = re.compile(r"^\w+(?:\.\w+)*(?:Error|Exception): (.+)$", re.MULTILINE)


def server_retryable_errors(server: PrefectServer) -> dict[str, int]:
    """Requests the server answered 503 ("retryable"), by API function and cause.

    Needs PREFECT_API_LOG_RETRYABLE_ERRORS=true in the server's environment.
    """
    log = server.home / "server.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    found: Counter[str] = Counter()
    for chunk in text.split("Encountered retryable exception in request")[1:]:
        chunk = chunk.split(" | ERROR ", 1)[0]
        frame = _API_FRAME.search(chunk)
        cause = _DB_ERROR.search(chunk)
        where = f"{frame.group(1)}.{frame.group(2)}" if frame else "?"
        why = cause.group(1).strip()[:60] if cause else "?"
        found[f"{where}: {why}"] += 1
    return dict(found.most_common())


def probe_api_calls(samples: int) -> dict[str, float]:
    """What a task-run start pays the API: building a client (Prefect's task engine builds
    two per task run, each with a TLS context made from certifi's CA bundle, even for an
    http:// URL), a trivial round trip, and the concurrency-slot request Prefect makes for
    every task run that has tags (``tag:<tag>`` limits, made whether or not one exists)."""
    hello: list[float] = []
    slots: list[float] = []
    construct: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        get_client(sync_client=True)  # built, never entered: what the constructor costs
        construct.append(time.perf_counter() - t0)
    with get_client(sync_client=True) as client:
        for _ in range(samples):
            t0 = time.perf_counter()
            client.hello()
            hello.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.increment_concurrency_slots_with_lease(
                names=["tag:slipway", "tag:stage"],
                slots=1,
                mode="concurrency",
                lease_duration=60,
            )
            slots.append(time.perf_counter() - t0)
    return {
        "client_construction_ms": round(median(construct) * 1000, 1),
        "hello_ms": round(median(hello) * 1000, 1),
        "tag_concurrency_slots_ms": round(median(slots) * 1000, 1),
        "tag_concurrency_slots_max_ms": round(max(slots) * 1000, 1),
    }


class ClientRetries(logging.Filter):
    """Counts the retries the Prefect client logs (at DEBUG) without letting DEBUG through."""

    _WAIT = re.compile(r"Another attempt will be made in ([0-9.]+)s")
    _CODE = re.compile(r"retryable status code (\d+)")

    def __init__(self, passthrough_level: int) -> None:
        super().__init__()
        self.passthrough_level = passthrough_level
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.retries = 0
        self.seconds = 0.0
        self.causes: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        wait = self._WAIT.search(message)
        if wait:
            code = self._CODE.search(message)
            with self._lock:
                self.retries += 1
                self.seconds += float(wait.group(1))
                self.causes[f"HTTP {code.group(1)}" if code else "connection error"] += 1
        return record.levelno >= self.passthrough_level

    def take(self) -> dict[str, Any]:
        """What was counted since the last call."""
        with self._lock:
            taken = {
                "retries": self.retries,
                "seconds_waited": round(self.seconds, 2),
                "causes": dict(self.causes),
            }
            self._reset()
        return taken


@contextmanager
def counting_client_retries() -> Iterator[ClientRetries]:
    logger = logging.getLogger("prefect.client")
    level = logger.level
    counter = ClientRetries(logger.getEffectiveLevel())
    logger.addFilter(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)
        logger.setLevel(level)


# --- git remotes with a pipeline file ---------------------------------------------------


def spec_remote(root: Path, name: str, spec: str) -> str:
    """A bare repository whose one commit holds ``slipway.yaml``; returns its file:// URL."""
    bare = make_bare_repo(root / "remotes", f"{name}.git")
    commit_files(bare, {"slipway.yaml": spec}, f"{name}: pipeline file for the benchmark")
    return bare.as_uri()


def sequential_spec(app: str, stages: int, command: str) -> str:
    """``stages`` stages one after the other (each needs the one before, the default)."""
    lines = ["version: 1", f"app: {app}", "stages:"]
    for i in range(1, stages + 1):
        lines += [f"  - name: s{i:02d}", f"    run: {json.dumps(command)}"]
    return "\n".join(lines) + "\n"


def parallel_spec(app: str, suites: int, command: str) -> str:
    """One parallel group ``test`` of ``suites`` members (commands quoted: JSON is YAML)."""
    lines = ["version: 1", f"app: {app}", f"max_parallel: {max(suites, 1)}", "stages:"]
    lines += ["  - name: test", "    parallel:"]
    for i in range(1, suites + 1):
        lines += [f"      - name: suite{i}", f"        run: {json.dumps(command)}"]
    return "\n".join(lines) + "\n"


# --- sandboxes: SLIPWAY_HOME and result storage per run ----------------------------------


@dataclass(frozen=True)
class Sandbox:
    home: Path
    results: Path


class Sandboxes:
    """Hands out fresh (SLIPWAY_HOME, result storage) pairs under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._count = 0

    def fresh(self, label: str) -> Sandbox:
        self._count += 1
        base = self.root / f"{self._count:03d}-{label}"
        box = Sandbox(base / "slipway-home", base / "results")
        box.home.mkdir(parents=True)
        box.results.mkdir(parents=True)
        return box


@contextmanager
def sandboxed(box: Sandbox) -> Iterator[None]:
    previous = os.environ.get("SLIPWAY_HOME")
    os.environ["SLIPWAY_HOME"] = str(box.home)
    try:
        with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: box.results}):
            yield
    finally:
        if previous is None:
            os.environ.pop("SLIPWAY_HOME", None)
        else:
            os.environ["SLIPWAY_HOME"] = previous


# --- timed runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedRun:
    """One call, wall-timed in this process; epoch stamps to line up with the API."""

    wall: float
    called_at: float
    returned_at: float
    flow_run_id: UUID


@dataclass(frozen=True)
class PipelineRun(TimedRun):
    report: PipelineReport


def run_timed_pipeline(url: str, box: Sandbox, **parameters: Any) -> PipelineRun:
    """``run_pipeline(repository=url)`` under ``box``; the run must succeed."""
    with sandboxed(box):
        called_at = time.time()
        t0 = time.perf_counter()
        state = run_pipeline(repository=url, **parameters)
        wall = time.perf_counter() - t0
        returned_at = time.time()
        report = state.result(raise_on_failure=False)
    if not state.is_completed() or not isinstance(report, PipelineReport):
        raise BenchError(f"pipeline on {url} ended {state.name}: {state.message}")
    if report.status != "success":
        raise BenchError(f"pipeline on {url} failed at {report.failed_stage}: {report.reason}")
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return PipelineRun(wall, called_at, returned_at, flow_run_id, report)


def run_timed_flow(call: Callable[[], State], box: Sandbox) -> TimedRun:
    """Time a plain Prefect flow call that returns its state."""
    with sandboxed(box):
        called_at = time.time()
        t0 = time.perf_counter()
        state = call()
        wall = time.perf_counter() - t0
        returned_at = time.time()
    if not state.is_completed():
        raise BenchError(f"flow ended {state.name}: {state.message}")
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return TimedRun(wall, called_at, returned_at, flow_run_id)


def time_command(argv: Sequence[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(list(argv), cwd=cwd, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


# --- what the run left on the API --------------------------------------------------------


@dataclass(frozen=True)
class Span:
    name: str
    start: float
    end: float
    state: str
    tags: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Timeline:
    flow: Span
    tasks: tuple[Span, ...]  # by start time

    def task(self, name: str) -> Span:
        for span in self.tasks:
            if span.name == name:
                return span
        raise KeyError(name)


_SUFFIX = re.compile(r"-[0-9a-f]{3}$")


def _stamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _task_span(run: TaskRun) -> Span | None:
    state = run.state
    end = _stamp(run.end_time) or (
        _stamp(state.timestamp) if state is not None and state.is_final() else None
    )
    start = _stamp(run.start_time) or end
    if start is None or end is None:
        return None
    return Span(
        _SUFFIX.sub("", run.name),
        start,
        end,
        (state.name if state else None) or "?",
        tuple(run.tags),
    )


def read_timeline(flow_run_id: UUID, expect_tasks: int) -> Timeline:
    """The flow run and its task runs, once the server has recorded all of them.

    Task-run states reach the server as events and are written after the fact, so
    this polls until ``expect_tasks`` task runs have ended; it doubles as a barrier
    that lets the server settle before the next measurement.
    """
    deadline = time.monotonic() + TIMELINE_TIMEOUT
    seen = 0
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            spans = [s for s in (_task_span(r) for r in runs) if s is not None]
            seen = len(spans)
            start, end = _stamp(flow_run.start_time), _stamp(flow_run.end_time)
            if seen >= expect_tasks and start is not None and end is not None:
                flow = Span("flow", start, end, flow_run.state_name or "?")
                return Timeline(flow, tuple(sorted(spans, key=lambda s: s.start)))
            if time.monotonic() > deadline:
                raise BenchError(
                    f"flow run {flow_run_id}: {seen} of {expect_tasks} task runs recorded "
                    f"after {TIMELINE_TIMEOUT:.0f} s"
                )
            time.sleep(0.2)


def segments(run: TimedRun, timeline: Timeline) -> list[tuple[str, float]]:
    """Where a sequential run's wall time went, in order, from the caller's view."""
    out = [("call → flow Running", timeline.flow.start - run.called_at)]
    cursor = timeline.flow.start
    for span in timeline.tasks:
        out.append((f"gap → {span.name}", span.start - cursor))
        out.append((f"task {span.name}", span.seconds))
        cursor = max(cursor, span.end)
    out.append(("last task → flow end", timeline.flow.end - cursor))
    out.append(("flow end → call returns", run.returned_at - timeline.flow.end))
    return out


def median_segments(runs: Sequence[list[tuple[str, float]]]) -> list[tuple[str, float]]:
    """Per-segment medians over runs with the same shape (names from the first run)."""
    names = [name for name, _ in runs[0]]
    table: dict[str, list[float]] = {name: [] for name in names}
    for run in runs:
        for name, value in run:
            if name in table:
                table[name].append(value)
    return [(name, median(table[name])) for name in names]


def git_describe() -> dict[str, Any]:
    """The commit a benchmark measured, and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
