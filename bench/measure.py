"""The measurements: each pipeline run timed, its stalls counted, its timeline read.

Every pipeline run goes through :meth:`Bench.pipeline`, which also takes the
Prefect client's retries (HTTP 503 back-offs) that happened during that run, so
each figure can be given with and without those stalls.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from prefect import flow, task
from prefect.client.schemas.objects import State

from bench.harness import (
    BenchError,
    ClientRetries,
    PipelineRun,
    PrefectServer,
    Sandbox,
    Sandboxes,
    TimedRun,
    Timeline,
    median,
    median_segments,
    parallel_spec,
    read_timeline,
    run_timed_flow,
    run_timed_pipeline,
    segments,
    sequential_spec,
    spec_remote,
    time_command,
)
from slipway.example import EXAMPLE_DIR
from slipway.spec_loader import load_pipeline

ROOT = Path(__file__).resolve().parent.parent

SEQ_STAGES = 20
SEQ_SLEEP = 0.5
PAR_SLEEP = 2.0
PAR_SUITES = (3, 8)
REPS = 3
FIXED_REPS = 5


def r3(value: float) -> float:
    return round(value, 3)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# --- plain Prefect flows: the heartbeat-join comparison -----------------------------------


@task(name="noop")
def noop() -> None:
    return None


@flow(name="bench-sync-noop", persist_result=False)
def sync_noop_flow() -> None:
    noop()


@flow(name="bench-async-noop", persist_result=False)
async def async_noop_flow() -> None:
    noop()


def call_sync_flow() -> State:
    return sync_noop_flow(return_state=True)


def call_async_flow() -> State:
    return asyncio.run(async_noop_flow(return_state=True))  # type: ignore[arg-type]


# --- the bench ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A pipeline run, and the seconds the Prefect client spent backing off during it."""

    run: PipelineRun
    stalled: float

    @property
    def wall(self) -> float:
        return self.run.wall

    @property
    def wall_without_stalls(self) -> float:
        return self.run.wall - self.stalled


@dataclass
class Bench:
    out: TextIO
    boxes: Sandboxes
    remotes: Path
    scratch: Path
    retries: ClientRetries
    stalls: dict[str, dict[str, Any]] = field(default_factory=dict)

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=self.out, flush=True)

    def _account(self, phase: str) -> float:
        taken = self.retries.take()
        into = self.stalls.setdefault(
            phase, {"retries": 0, "seconds_waited": 0.0, "causes": Counter()}
        )
        into["retries"] += taken["retries"]
        into["seconds_waited"] = round(into["seconds_waited"] + taken["seconds_waited"], 2)
        into["causes"].update(taken["causes"])
        return float(taken["seconds_waited"])

    def pipeline(self, phase: str, url: str, box: Sandbox, **parameters: Any) -> Measured:
        self.retries.take()  # whatever came before (our own API reads) is not this run's
        run = run_timed_pipeline(url, box, **parameters)
        stalled = self._account(phase)
        read_timeline(run.flow_run_id, expect_tasks=2 + leaf_count(run))  # let it settle
        return Measured(run, stalled)

    def flow(self, phase: str, kind: str) -> tuple[TimedRun, float, Timeline]:
        self.retries.take()
        call = call_sync_flow if kind == "sync" else call_async_flow
        run = run_timed_flow(call, self.boxes.fresh(f"{kind}-flow"))
        stalled = self._account(phase)
        return run, stalled, read_timeline(run.flow_run_id, 1)

    def stall_report(self) -> dict[str, Any]:
        return {
            phase: {**data, "causes": dict(data["causes"])} for phase, data in self.stalls.items()
        }


def leaf_count(run: PipelineRun) -> int:
    groups = {s.group for s in run.report.stages if s.group}
    return sum(1 for s in run.report.stages if s.name not in groups)


def pipeline_timeline(run: PipelineRun) -> Timeline:
    """checkout + load-spec + one task run per leaf stage."""
    return read_timeline(run.flow_run_id, expect_tasks=2 + leaf_count(run))


def plain_script(path: Path, lines: list[str]) -> Path:
    path.write_text("#!/usr/bin/env bash\nset -e\n" + "\n".join(lines) + "\n")
    return path


# --- 0. warm-up -----------------------------------------------------------------------------


def warm_up(bench: Bench) -> float:
    url = spec_remote(bench.remotes, "warm-up", sequential_spec("warm-up", 1, "true"))
    measured = bench.pipeline("warm_up", url, bench.boxes.fresh("warm-up"))
    for kind in ("sync", "async"):
        bench.flow("warm_up", kind)
    return measured.wall


# --- 2. fixed cost ----------------------------------------------------------------------------


def measure_fixed_cost(bench: Bench) -> tuple[dict[str, Any], dict[str, Any]]:
    url = spec_remote(bench.remotes, "one-true", sequential_spec("one-true", 1, "true"))
    command = median(
        [time_command(["bash", "-eo", "pipefail", "-c", "true"]) for _ in range(FIXED_REPS)]
    )
    runs: list[Measured] = []
    segs = []
    flows: dict[str, list[float]] = {"sync": [], "async": []}
    flow_segs: dict[str, list[list[tuple[str, float]]]] = {"sync": [], "async": []}
    for i in range(FIXED_REPS):
        measured = bench.pipeline("fixed", url, bench.boxes.fresh("fixed"))
        runs.append(measured)
        segs.append(segments(measured.run, pipeline_timeline(measured.run)))
        for kind in ("sync", "async"):
            timed, _stalled, timeline = bench.flow("flows", kind)
            flows[kind].append(timed.wall)
            flow_segs[kind].append(segments(timed, timeline))
        bench.say(
            f"fixed cost {i + 1}/{FIXED_REPS}: pipeline {measured.wall:.2f} s"
            + (f" ({measured.stalled:.1f} s of 503 back-off)" if measured.stalled else "")
            + f", sync flow {flows['sync'][-1]:.2f} s, async flow {flows['async'][-1]:.2f} s"
        )
    fixed = {
        "pipeline_walls": [r3(m.wall) for m in runs],
        "stalled_seconds": [r3(m.stalled) for m in runs],
        "command_true_seconds": r3(command),
        "seconds": r3(median([m.wall for m in runs]) - command),
        "seconds_without_stalls": r3(median([m.wall_without_stalls for m in runs]) - command),
        "breakdown": [(n, r3(v)) for n, v in median_segments(segs)],
    }
    flow_result = {
        "sync_walls": [r3(w) for w in flows["sync"]],
        "async_walls": [r3(w) for w in flows["async"]],
        "sync_seconds": r3(median(flows["sync"])),
        "async_seconds": r3(median(flows["async"])),
        "heartbeat_join_seconds": r3(median(flows["sync"]) - median(flows["async"])),
        "sync_breakdown": [(n, r3(v)) for n, v in median_segments(flow_segs["sync"])],
        "async_breakdown": [(n, r3(v)) for n, v in median_segments(flow_segs["async"])],
    }
    return fixed, flow_result


# --- 1 and 3. sequential stages: ratio to bash, per-stage overhead ------------------------------


def measure_sequential(
    bench: Bench, fixed: dict[str, Any]
) -> tuple[dict[str, Any], tuple[Measured, Sandbox, str]]:
    app = f"seq{SEQ_STAGES}"
    url = spec_remote(bench.remotes, app, sequential_spec(app, SEQ_STAGES, f"sleep {SEQ_SLEEP}"))
    script = plain_script(bench.scratch / f"{app}.sh", [f"sleep {SEQ_SLEEP}"] * SEQ_STAGES)
    plain: list[float] = []
    runs: list[Measured] = []
    from_report: list[float] = []
    in_task: list[float] = []
    gaps: list[float] = []
    tags: set[str] = set()
    last: tuple[Measured, Sandbox, str] | None = None
    for i in range(REPS):
        plain.append(time_command(["bash", str(script)]))
        box = bench.boxes.fresh(app)
        measured = bench.pipeline("sequential", url, box)
        runs.append(measured)
        from_report += [
            s.seconds - SEQ_SLEEP for s in measured.run.report.stages if s.name.startswith("s")
        ]
        timeline = pipeline_timeline(measured.run)
        stages = [timeline.task(f"s{n:02d}") for n in range(1, SEQ_STAGES + 1)]
        tags.update(t for span in timeline.tasks for t in span.tags)
        in_task += [s.seconds - SEQ_SLEEP for s in stages]
        gaps += [b.start - a.end for a, b in zip(stages, stages[1:], strict=False)]
        last = (measured, box, url)
        bench.say(
            f"{SEQ_STAGES} x sleep {SEQ_SLEEP} {i + 1}/{REPS}: pipeline {measured.wall:.2f} s"
            + (f" ({measured.stalled:.1f} s of 503 back-off)" if measured.stalled else "")
            + f", plain bash {plain[-1]:.2f} s"
        )
    assert last is not None
    ratios = [m.wall / b for m, b in zip(runs, plain, strict=True)]
    per_stage = (median([m.wall for m in runs]) - fixed["seconds"] - median(plain)) / SEQ_STAGES
    per_stage_clean = (
        median([m.wall_without_stalls for m in runs])
        - fixed["seconds_without_stalls"]
        - median(plain)
    ) / SEQ_STAGES
    result = {
        "stages": SEQ_STAGES,
        "command": f"sleep {SEQ_SLEEP}",
        "pipeline_walls": [r3(m.wall) for m in runs],
        "stalled_seconds": [r3(m.stalled) for m in runs],
        "plain_walls": [r3(w) for w in plain],
        "ratios": [r3(x) for x in ratios],
        "ratio": r3(median(ratios)),
        "per_stage_ms_from_wall": ms(per_stage),
        "per_stage_ms_from_wall_without_stalls": ms(per_stage_clean),
        "per_stage_ms_from_report": ms(median(from_report)),
        "per_stage_ms_from_report_mean": ms(sum(from_report) / len(from_report)),
        "per_stage_ms_inside_task_run": ms(median(in_task)),
        "per_stage_ms_between_task_runs": ms(median(gaps)),
        "task_run_tags": sorted(tags),
    }
    return result, last


# --- 1 and 4. one parallel group: ratio to bash & + wait, efficiency ----------------------------


def measure_parallel(bench: Bench, suites: int) -> dict[str, Any]:
    app = f"par{suites}"
    url = spec_remote(bench.remotes, app, parallel_spec(app, suites, f"sleep {PAR_SLEEP}"))
    script = plain_script(bench.scratch / f"{app}.sh", [f"sleep {PAR_SLEEP} &"] * suites + ["wait"])
    phase = f"parallel_{suites}"
    plain: list[float] = []
    runs: list[Measured] = []
    group_seconds: list[float] = []
    efficiencies: list[float] = []
    overlaps: list[float] = []
    spreads: list[float] = []
    to_first: list[float] = []
    to_last: list[float] = []
    spans: list[float] = []
    member_in_task: list[float] = []
    for i in range(REPS):
        plain.append(time_command(["bash", str(script)]))
        measured = bench.pipeline(phase, url, bench.boxes.fresh(app))
        runs.append(measured)
        report = measured.run.report
        members = [s for s in report.stages if s.group == "test"]
        group = report.stage("test")
        group_seconds.append(group.seconds)
        # a suite's own time: the same commands, run by bash with & and wait
        efficiencies.append(plain[-1] / group.seconds)
        overlaps.append(sum(m.seconds for m in members) / len(members) / group.seconds)
        timeline = pipeline_timeline(measured.run)
        tasks = [timeline.task(f"suite{n}") for n in range(1, suites + 1)]
        submitted = timeline.task("load-spec").end  # the group is submitted right after
        to_first.append(min(t.start for t in tasks) - submitted)
        to_last.append(max(t.start for t in tasks) - submitted)
        spreads.append(max(t.start for t in tasks) - min(t.start for t in tasks))
        spans.append(max(t.end for t in tasks) - min(t.start for t in tasks))
        member_in_task += [t.seconds for t in tasks]
        bench.say(
            f"{suites} x sleep {PAR_SLEEP} in parallel {i + 1}/{REPS}: pipeline "
            f"{measured.wall:.2f} s (test stage {group.seconds:.2f} s)"
            + (f" ({measured.stalled:.1f} s of 503 back-off)" if measured.stalled else "")
            + f", plain bash {plain[-1]:.2f} s"
        )
    ratios = [m.wall / b for m, b in zip(runs, plain, strict=True)]
    return {
        "suites": suites,
        "command": f"sleep {PAR_SLEEP}",
        "pipeline_walls": [r3(m.wall) for m in runs],
        "stalled_seconds": [r3(m.stalled) for m in runs],
        "plain_walls": [r3(w) for w in plain],
        "ratios": [r3(x) for x in ratios],
        "ratio": r3(median(ratios)),
        "test_stage_seconds": [r3(x) for x in group_seconds],
        "efficiency_definition": "suite time (the suites run by bash with & and wait) "
        "/ test stage seconds (the group's StageOutcome.seconds)",
        "efficiencies": [r3(x) for x in efficiencies],
        "efficiency": r3(median(efficiencies)),
        "efficiency_best": r3(max(efficiencies)),
        "member_overlap_definition": "mean member StageOutcome.seconds / group seconds",
        "member_overlaps": [r3(x) for x in overlaps],
        "member_overlap": r3(median(overlaps)),
        "load_spec_end_to_first_running_ms": ms(median(to_first)),
        "load_spec_end_to_last_running_ms": ms(median(to_last)),
        "task_start_spread_ms": ms(median(spreads)),
        "task_runs_span_seconds": r3(median(spans)),
        "member_task_run_seconds": r3(median(member_in_task)),
    }


# --- 5. cached re-runs -------------------------------------------------------------------------


def cached_pair(
    bench: Bench, phase: str, first: Measured, box: Sandbox, url: str, **parameters: Any
) -> dict[str, Any]:
    """Re-run with the same SLIPWAY_HOME and result store: every stage that ran is cached."""
    if any(s.status == "cached" for s in first.run.report.stages):
        raise BenchError(f"the first run of {url} reused cached stages: not a first run")
    again = bench.pipeline(phase, url, box, **parameters)
    report = again.run.report
    groups = {s.group for s in report.stages if s.group}
    leaves = [s for s in report.stages if s.name not in groups]
    if "cached" not in {s.status for s in leaves} or not report.status == "success":
        raise BenchError(f"re-run of {url} reused nothing: {[s.status for s in leaves]}")
    # a stage that is not cacheable by design (e.g. a scan whose allowances expire) reruns
    reran = [s for s in leaves if s.status == "passed"]
    timeline = pipeline_timeline(again.run)
    stages = [t for t in timeline.tasks if t.name not in ("checkout", "load-spec")]
    first_start = min(t.start for t in stages)
    last_end = max(t.end for t in stages)
    cached_spans = [t.seconds for t in stages if t.state == "Cached"]
    rerun_seconds = sum(s.seconds for s in reran)
    return {
        "first_seconds": r3(first.wall),
        "first_stalled_seconds": r3(first.stalled),
        "second_seconds": r3(again.wall),
        "second_stalled_seconds": r3(again.stalled),
        "ratio": r3(again.wall / first.wall),
        "ratio_without_stalls": r3(again.wall_without_stalls / first.wall_without_stalls),
        "reran_stages": {s.name: r3(s.seconds) for s in reran},
        "stage_count": len(stages),
        "cached_task_runs": len(cached_spans),
        "cached_task_run_ms": ms(median(cached_spans)) if cached_spans else None,
        "ratio_without_reruns": r3(max(again.wall - rerun_seconds, 0.0) / first.wall),
        "until_first_stage_seconds": r3(first_start - again.run.called_at),
        "stages_seconds": r3(last_end - first_start),
        "after_last_stage_seconds": r3(again.run.returned_at - last_end),
        "breakdown": [(n, r3(v)) for n, v in segments(again.run, timeline)],
    }


def measure_cached(
    bench: Bench, sequential: tuple[Measured, Sandbox, str], publish: Callable[..., str]
) -> dict[str, Any]:
    seq_first, seq_box, seq_url = sequential
    cached = {"sequential": cached_pair(bench, "cached_sequential", seq_first, seq_box, seq_url)}
    c = cached["sequential"]
    bench.say(
        f"{SEQ_STAGES}-stage cached re-run: {c['second_seconds']:.2f} s "
        f"vs {c['first_seconds']:.2f} s"
    )
    box = bench.boxes.fresh("example")
    url = publish(home=box.home)
    skip = docker_stages()
    first = bench.pipeline("example_first", url, box, skip_stages=skip)
    cached["example"] = cached_pair(bench, "cached_example", first, box, url, skip_stages=skip)
    c = cached["example"]
    c["stages_run"] = [s.name for s in first.run.report.stages if s.status != "skipped"]
    c["stages_skipped"] = skip
    bench.say(
        f"example app: first run {c['first_seconds']:.2f} s, "
        f"cached re-run {c['second_seconds']:.2f} s"
    )
    return cached


def docker_stages(spec_file: Path = EXAMPLE_DIR / "slipway.yaml") -> list[str]:
    """The example's stages that need a Docker engine or a registry (image build, image
    scan, push): never cached, they would dominate the cached re-run and the memory run,
    which skip them and say so; ``bench.images`` measures them."""
    found = []
    for stage in load_pipeline(spec_file, display_name="slipway.yaml").all_stages():
        keys = stage.model_dump(exclude_none=True)
        scan = keys.get("security_scan") or {}
        if {"build_image", "push_image"} & set(keys) or (
            isinstance(scan, dict) and scan.get("image")
        ):
            found.append(stage.name)
    return found


# --- 6. peak memory ---------------------------------------------------------------------------

MEMORY_CHILD = """
import json, resource, sys
from slipway.example import publish_example
from slipway.flows.pipeline import run_pipeline
state = run_pipeline(repository=publish_example(), skip_stages=json.loads(sys.argv[1]))
print("BENCH-RSS " + json.dumps({
    "ok": state.is_completed(),
    "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}), flush=True)
"""


def measure_memory(server: PrefectServer, box: Sandbox, log: TextIO) -> dict[str, Any]:
    """Peak RSS of a fresh process running the example pipeline."""
    env = {
        **os.environ,
        "PREFECT_API_URL": server.url,
        "SLIPWAY_HOME": str(box.home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(box.results),
    }
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    time_file = box.home / "time-maxrss.txt"
    argv = [sys.executable, "-c", MEMORY_CHILD, json.dumps(docker_stages())]
    if timer:
        argv = [timer, "-o", str(time_file), "-f", "%M", *argv]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True, timeout=600
    )
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH-RSS ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"memory run exited {done.returncode}: {done.stdout[-2000:]}")
    data = json.loads(line.removeprefix("BENCH-RSS "))
    if not data["ok"]:
        raise BenchError("the example pipeline did not complete in the memory run")
    tree_kb = int(time_file.read_text().split()[-1]) if timer else None
    return {
        "process_peak_mb": round(data["self_kb"] / 1024, 1),
        "process_tree_peak_mb": round(tree_kb / 1024, 1) if tree_kb else None,
        "rusage_children_peak_mb": round(children_kb / 1024, 1),
        "how": "ru_maxrss of the run's own process (RUSAGE_SELF, printed by it); "
        "/usr/bin/time %M of it (the largest of it and its stage commands); "
        "RUSAGE_CHILDREN of the bench process afterwards (largest child so far)",
    }
