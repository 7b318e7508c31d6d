"""``latest.md``: the benchmark's results as tables ready to paste into the README."""

from __future__ import annotations

from typing import Any


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _ratio_row(label: str, block: dict[str, Any]) -> str:
    pipe = _median(block["pipeline_walls"])
    plain = _median(block["plain_walls"])
    return f"| {label} | {block['ratio']:.2f}× | {pipe:.2f} s | {plain:.2f} s |"


def render_markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    seq, flows, fixed, mem = data["sequential"], data["flows"], data["fixed"], data["memory"]
    load = " / ".join(f"{x:.2f}" for x in m["load_average_before"])
    dirty = " plus uncommitted changes" if m.get("dirty") else ""
    stalls = list(data["client_retries"].values())
    stall_count = sum(s["retries"] for s in stalls)
    stall_seconds = sum(s["seconds_waited"] for s in stalls)
    lines = [
        "## Benchmarks",
        "",
        f"`bench/run` on {data['started'][:10]} at commit `{m['commit'][:12]}`{dirty}: "
        f"{m['nproc']} cores, load average {load} before the start, Python {m['python']}, "
        f"Prefect {m['prefect']}, a private local `prefect server` (SQLite). Wall times are "
        "taken around `run_pipeline(...)` in one process after a warm-up run (so import costs "
        "are excluded); every run has a fresh `SLIPWAY_HOME` and result store except the "
        'cached re-runs. Medians of 3 runs, 5 for the fixed cost. "Without 503 stalls" '
        "subtracts the time the Prefect client slept before retrying a request the server "
        "had refused with 503 "
        + (
            f"({stall_count} retries, {stall_seconds:.1f} s in this run; see below)."
            if stall_count
            else "(none in this run)."
        ),
        "",
        "| measure | result | without 503 stalls | target | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for row in data["targets"]:
        lines.append(
            f"| {row['measure']} | {row['shown']} | {row['without_stalls']} | {row['target']} "
            f"| {row['verdict']} |"
        )
    lines += [
        "",
        "| pipeline against plain bash | ratio | pipeline | bash |",
        "|---|---:|---:|---:|",
        _ratio_row(f"{seq['stages']} stages, each `{seq['command']}`, one after another", seq),
    ]
    for suites, block in data["parallel"].items():
        lines.append(
            _ratio_row(
                f"one parallel group of {suites} suites, each `{block['command']}` "
                "(bash: `&` and `wait`)",
                block,
            )
        )
    lines += ["", "| other measurements | value |", "|---|---:|"]
    for suites, block in data["parallel"].items():
        lines.append(
            f"| parallel efficiency, {suites} suites: suite time / stage time "
            f"(median; best run) | {block['efficiency'] * 100:.0f} % "
            f"({block['efficiency_best'] * 100:.0f} %) |"
        )
        lines.append(
            f"| {suites} suites: mean member seconds / test stage seconds (report) | "
            f"{block['member_overlap'] * 100:.0f} % |"
        )
    lines += [
        f"| per-stage overhead from the report (stage seconds − {seq['command'].split()[-1]}), "
        f"mean | {seq['per_stage_ms_from_report_mean']:.0f} ms |",
        f"| per stage: inside its task run, beyond the command (median) | "
        f"{seq['per_stage_ms_inside_task_run']:.0f} ms |",
        f"| per stage: from one stage's task run ending to the next one's start (median) | "
        f"{seq['per_stage_ms_between_task_runs']:.0f} ms |",
        "| plain Prefect flow with 1 no-op task: sync / async "
        f"| {flows['sync_seconds']:.2f} s / {flows['async_seconds']:.2f} s |",
    ]
    tree = mem.get("process_tree_peak_mb")
    lines.append(
        f"| peak RSS of the example pipeline's process | {mem['process_peak_mb']:.0f} MB |"
    )
    if tree:
        lines.append(f"| … with its stage commands (`/usr/bin/time`) | {tree:.0f} MB |")
    if mem.get("server_peak_mb"):
        lines.append(f"| peak RSS of `prefect server` | {mem['server_peak_mb']:.0f} MB |")
    startup = data["server"]["startup_seconds"]
    lines.append(f"| `prefect server` start on a fresh database | {startup:.1f} s |")
    lines += [
        "",
        "Fixed cost = median wall of a 1-stage `run_pipeline` (`true`, "
        f"{fixed['command_true_seconds'] * 1000:.0f} ms by itself, subtracted). Per-stage "
        f"overhead from wall time = (pipeline wall − fixed cost − bash wall) / {seq['stages']}. "
        "Parallel efficiency = the suites' own time (the same commands run by bash with `&` and "
        "`wait`) / the test stage's seconds in the report. The sync/async flow pair shows the "
        "heartbeat join Prefect does at the end of a sync flow run "
        f"({flows['heartbeat_join_seconds']:.2f} s here); slipway's pipeline flow is async.",
    ]
    example = data["cached"]["example"]
    if example.get("stages_skipped"):
        lines += [
            "",
            f"The example app runs {len(example['stages_run'])} stages "
            f"({', '.join(example['stages_run'])}); "
            f"{', '.join(example['stages_skipped'])} need a Docker engine and a registry, "
            "which the benchmark does not start, and are skipped (also in the memory run).",
        ]
    if data["notes"]:
        lines += ["", "Where the time goes:", ""]
        lines += [f"- {note}" for note in data["notes"]]
    return "\n".join(lines) + "\n"
