"""Targets with PASS/MISS, and for each miss a note on where the time went."""

from __future__ import annotations

from typing import Any

from bench.delivery import TARGET_APPROVAL_S, TARGET_ROLLBACK_S
from bench.harness import median
from bench.measure import FIXED_REPS, PAR_SLEEP, PAR_SUITES, REPS, SEQ_STAGES

TARGET_PER_STAGE_MS = 100.0
TARGET_FIXED_S = 1.5
TARGET_PAR_EFFICIENCY = 0.90
TARGET_CACHED_RATIO = 0.15


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _row(
    key: str,
    measure: str,
    value: float,
    shown: str,
    clean: str,
    target: str,
    ok: bool,
) -> dict[str, Any]:
    return {
        "key": key,
        "measure": measure,
        "value": value,
        "shown": shown,
        "without_stalls": clean,
        "target": target,
        "verdict": verdict(ok),
    }


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = pipeline_targets(data) if "sequential" in data else []
    delivery = data.get("delivery") or {}
    if "approval" in delivery:
        rows += delivery_targets(delivery)
    return rows


def pipeline_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    seq, fixed = data["sequential"], data["fixed"]
    par = data["parallel"][str(PAR_SUITES[-1])]
    ex, sq = data["cached"]["example"], data["cached"]["sequential"]
    cached_target = f"<= {TARGET_CACHED_RATIO * 100:.0f} %"
    stage_target = f"<= {TARGET_PER_STAGE_MS:.0f} ms"
    return [
        _row(
            "fixed",
            "fixed cost of a pipeline run (1 stage `true`)",
            fixed["seconds"],
            f"{fixed['seconds']:.2f} s",
            f"{fixed['seconds_without_stalls']:.2f} s",
            f"<= {TARGET_FIXED_S} s",
            fixed["seconds"] <= TARGET_FIXED_S,
        ),
        _row(
            "per_stage",
            f"per-stage overhead, {SEQ_STAGES} sequential stages (from wall time)",
            seq["per_stage_ms_from_wall"],
            f"{seq['per_stage_ms_from_wall']:.0f} ms",
            f"{seq['per_stage_ms_from_wall_without_stalls']:.0f} ms",
            stage_target,
            seq["per_stage_ms_from_wall"] <= TARGET_PER_STAGE_MS,
        ),
        _row(
            "per_stage",
            "per-stage overhead, from the report (stage seconds − 0.5), median",
            seq["per_stage_ms_from_report"],
            f"{seq['per_stage_ms_from_report']:.0f} ms",
            "—",
            stage_target,
            seq["per_stage_ms_from_report"] <= TARGET_PER_STAGE_MS,
        ),
        _row(
            "parallel",
            f"test-stage parallel efficiency, {PAR_SUITES[-1]} suites (suite time / stage time)",
            par["efficiency"],
            f"{par['efficiency'] * 100:.0f} %",
            f"{par['efficiency_best'] * 100:.0f} % (best run)",
            f">= {TARGET_PAR_EFFICIENCY * 100:.0f} %",
            par["efficiency"] >= TARGET_PAR_EFFICIENCY,
        ),
        _row(
            "cached_example",
            "cached re-run, example app (second / first)",
            ex["ratio"],
            f"{ex['ratio'] * 100:.0f} % ({ex['second_seconds']:.1f} s / "
            f"{ex['first_seconds']:.1f} s)",
            f"{ex['ratio_without_stalls'] * 100:.0f} %",
            cached_target,
            ex["ratio"] <= TARGET_CACHED_RATIO,
        ),
        _row(
            "cached_sequential",
            f"cached re-run, {SEQ_STAGES}-stage spec (second / first)",
            sq["ratio"],
            f"{sq['ratio'] * 100:.0f} % ({sq['second_seconds']:.1f} s / "
            f"{sq['first_seconds']:.1f} s)",
            f"{sq['ratio_without_stalls'] * 100:.0f} %",
            cached_target,
            sq["ratio"] <= TARGET_CACHED_RATIO,
        ),
    ]


def delivery_targets(cd: dict[str, Any]) -> list[dict[str, Any]]:
    """The CD rows; judged on the worst repetition (a promise about every run)."""
    app, rb, det = cd["approval"], cd["rollback"], cd["detection"]
    a = det["analysis"]
    return [
        _row(
            "cd_approval",
            f"approval → production bump starts (task run Running), poll "
            f"{app['poll_interval_seconds']:g} s, max of {app['repetitions']} (median)",
            app["max"],
            f"{app['max']:.2f} s ({app['median']:.2f} s)",
            f"{app['max_without_stalls']:.2f} s",
            f"<= {TARGET_APPROVAL_S:g} s",
            app["max"] <= TARGET_APPROVAL_S,
        ),
        _row(
            "cd_rollback",
            "blue-green rollback, as `rollback` reports it (call → API confirms the "
            f"selector), max of {rb['repetitions']} (median)",
            rb["reported_max"],
            f"{rb['reported_max']:.2f} s ({rb['reported_median']:.2f} s)",
            "—",
            f"<= {TARGET_ROLLBACK_S:g} s",
            rb["reported_max"] <= TARGET_ROLLBACK_S,
        ),
        _row(
            "cd_rollback",
            "blue-green rollback, observed: `rolling back` log record → a poller sees the "
            f"old colour, max of {rb['repetitions']} (median)",
            rb["observed_max"],
            f"{rb['observed_max']:.2f} s ({rb['observed_median']:.2f} s)",
            "—",
            f"<= {TARGET_ROLLBACK_S:g} s",
            rb["observed_max"] <= TARGET_ROLLBACK_S,
        ),
        {
            "key": "cd_detection",
            "measure": "automatic rollback: first 500 from the bad release → rollback "
            f"starts, median of {det['repetitions']} (max)",
            "value": det["median"],
            "shown": f"{det['median']:.2f} s ({det['max']:.2f} s) = {det['ratio']:.2f}× expected",
            "without_stalls": "—",
            "target": f"expected {det['expected_seconds']:g} s = initial_delay "
            f"{a['initial_delay']:g} + interval {a['interval']:g} × failure_limit "
            f"{a['failure_limit']}",
            "verdict": "—",
        },
    ]


def _top(breakdown: list[tuple[str, float]], n: int = 3) -> str:
    top = sorted(breakdown, key=lambda x: -x[1])[:n]
    return ", ".join(f"{name} {value:.2f} s" for name, value in top)


def _causes(stalls: dict[str, Any]) -> str:
    return ", ".join(f"{why} × {n}" for why, n in stalls.get("causes", {}).items())


def _stalls(data: dict[str, Any], phase: str) -> str:
    s = data["client_retries"].get(phase, {})
    if not s.get("retries"):
        return ""
    return (
        f"the Prefect client retried {s['retries']} requests ({_causes(s)}) after waiting "
        f"{s['seconds_waited']:.1f} s in all"
    )


def stall_cause(data: dict[str, Any]) -> str:
    """The server's own account of the 503s it answered, in words."""
    errors: dict[str, int] = data["api"].get("server_retryable_errors", {})
    total = sum(errors.values())
    if not total:
        return ""
    top, count = next(iter(errors.items()))
    where, _, why = top.partition(": ")
    text = (
        f"The 503s: over the whole benchmark the server answered {total} requests with 503, "
        f"{count} of them in `{where}` with `{why}`"
    )
    if "increment_active_slots_with_lease" in where:
        probe = data["api"].get("probe", {})
        tags = ", ".join(f"`{t}`" for t in data["sequential"].get("task_run_tags", []))
        text += (
            " — the concurrency-slot request Prefect makes at the start of every task run that "
            f"has tags ({tags or 'none on the stage task runs'}), made although no such limit "
            f"exists ({probe.get('tag_concurrency_slots_ms', 0):.0f} ms on an idle server); "
            "its SQLite write collides with the server's own writes, and the client backs off "
            "about 2 s before retrying"
        )
    return text + "."


def notes(data: dict[str, Any], missed: set[str]) -> list[str]:
    if "sequential" not in data:
        return []
    out: list[str] = []
    seq, fixed = data["sequential"], data["fixed"]
    probe = data["api"].get("probe", {})
    tags = seq.get("task_run_tags", [])
    if "fixed" in missed:
        stalled = sum(1 for s in fixed["stalled_seconds"] if s > 0)
        waits = (
            f"{stalled} of {FIXED_REPS} runs waited out a 503 back-off (about 2 s each); "
            f"without those waits the median is {fixed['seconds_without_stalls']:.2f} s. "
            if stalled
            else ""
        )
        out.append(
            f"Fixed cost: {waits}The largest parts of a run are {_top(fixed['breakdown'])} "
            f"(median segments, task-run start/end from the API); a plain async flow with one "
            f"no-op task takes {data['flows']['async_seconds']:.2f} s."
        )
    if "per_stage" in missed:
        text = (
            f"Per stage: the median stage spends {seq['per_stage_ms_inside_task_run']:.0f} ms "
            f"in its task run beyond the command and {seq['per_stage_ms_between_task_runs']:.0f}"
            " ms between the previous stage's task run ending and its own starting (task-run "
            "timestamps from the API). In that gap Prefect's task engine builds two API "
            "clients, each making a TLS context from certifi's CA bundle even for an http:// "
            f"URL: 2 × {probe.get('client_construction_ms', 0):.0f} ms here."
        )
        stalls = _stalls(data, "sequential")
        if stalls:
            waited = data["client_retries"]["sequential"]["seconds_waited"]
            text += (
                f" On top of that, in the {REPS} × {SEQ_STAGES}-stage runs {stalls} "
                f"(≈ {waited / REPS / SEQ_STAGES * 1000:.0f} ms per stage on average): "
                f"{seq['per_stage_ms_from_wall_without_stalls']:.0f} ms per stage without them."
            )
        out.append(text)
    if "parallel" in missed:
        par = data["parallel"][str(PAR_SUITES[-1])]
        suites = PAR_SUITES[-1]
        clients = 2 * suites * probe.get("client_construction_ms", 0)
        text = (
            f"Parallel: the {suites} suites' task runs, once Running, spanned "
            f"{par['task_runs_span_seconds']:.2f} s for {PAR_SLEEP:.0f} s commands, but the test "
            f"stage took {median(par['test_stage_seconds']):.2f} s (median). Most of the rest "
            "passes before they reach Running: the first suite was Running "
            f"{par['load_spec_end_to_first_running_ms']:.0f} ms after load-spec ended, the last "
            f"{par['load_spec_end_to_last_running_ms']:.0f} ms after. Each task-run start builds "
            "two Prefect API clients, each with a TLS context from certifi's CA bundle even for "
            f"an http:// URL: {2 * suites} of them, ≈ {clients:.0f} ms of CPU under the GIL "
            f"at {probe.get('client_construction_ms', 0):.0f} ms each."
            + (
                " Each also asks the server for its `tag:` concurrency slots, requests Prefect "
                "serialises per set of tags."
                if tags
                else ""
            )
            + " The member-based ratio (mean member seconds / stage seconds) stays at "
            f"{par['member_overlap'] * 100:.0f} % because all members wait alike."
        )
        stalls = _stalls(data, f"parallel_{suites}")
        if stalls:
            text += f" In these runs {stalls}."
        out.append(text)
    for key, name in (("cached_example", "example"), ("cached_sequential", "sequential")):
        if key not in missed:
            continue
        c = data["cached"][name]
        slot = " and its concurrency-slot request" if tags else ""
        text = (
            f"Cached re-run ({name}): {c['second_seconds']:.2f} s = "
            f"{c['until_first_stage_seconds']:.2f} s until the first stage (flow run, checkout, "
            f"load-spec) + {c['stages_seconds']:.2f} s of stages + "
            f"{c['after_last_stage_seconds']:.2f} s after them (summary artifacts, end of run), "
            f"against a first run of {c['first_seconds']:.2f} s. {c['cached_task_runs']} stages "
            f"were reused; each reused task run takes a median {c['cached_task_run_ms'] or 0:.0f}"
            f" ms (its cache lookup{slot}), the rest of a stage's share is the start-up between "
            "task runs (see per stage)."
        )
        share = fixed["seconds_without_stalls"] / c["first_seconds"]
        if share > TARGET_CACHED_RATIO / 2:
            text += (
                f" The fixed cost of any run ({fixed['seconds_without_stalls']:.2f} s) is already "
                f"{share * 100:.0f} % of this first run."
            )
        if c.get("reran_stages"):
            names = ", ".join(f"{n} ({v:.1f} s)" for n, v in c["reran_stages"].items())
            text += (
                f" Not everything is reused: {names} ran again, its task not being cached "
                "(Prefect reported it Completed, not Cached); without that time the re-run "
                f"would be ≈ {c['ratio_without_reruns'] * 100:.0f} % of the first."
            )
        if c["second_stalled_seconds"] or c["first_stalled_seconds"]:
            text += (
                f" 503 back-offs: {c['first_stalled_seconds']:.1f} s in the first run, "
                f"{c['second_stalled_seconds']:.1f} s in the re-run; "
                f"{c['ratio_without_stalls'] * 100:.0f} % without them."
            )
        out.append(text)
    any_stalls = any(r.get("retries") for r in data["client_retries"].values())
    if any_stalls:
        cause = stall_cause(data)
        if cause:
            out.append(cause)
    return out


def judge(data: dict[str, Any]) -> None:
    """Fill ``targets`` and ``notes`` in the results."""
    data["targets"] = targets(data)
    missed = {row["key"] for row in data["targets"] if row["verdict"] == "MISS"}
    data["notes"] = notes(data, missed)
