"""``latest.md``: the benchmark's results as tables ready to paste into the README."""

from __future__ import annotations

from typing import Any

from bench.sync import sync_lines


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _ratio_row(label: str, block: dict[str, Any]) -> str:
    pipe = _median(block["pipeline_walls"])
    plain = _median(block["plain_walls"])
    return f"| {label} | {block['ratio']:.2f}× | {pipe:.2f} s | {plain:.2f} s |"


def render_markdown(data: dict[str, Any]) -> str:
    if "sequential" in data:
        lines = pipeline_lines(data)
    else:
        lines = ["## Benchmarks", "", "The pipeline benchmarks have not run: `bench/run pipeline`."]
    lines += delivery_lines(data.get("delivery"), data.get("targets", []))
    lines += sync_lines(data.get("sync"))
    return "\n".join(lines) + "\n"


def pipeline_lines(data: dict[str, Any]) -> list[str]:
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
        if row["key"].startswith("cd_"):
            continue  # in the delivery section
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
            f"The example app's cached re-run and memory run use {len(example['stages_run'])} "
            f"stages ({', '.join(example['stages_run'])}); "
            f"{', '.join(example['stages_skipped'])} (the image stages, never cached, which "
            "would dominate both) are skipped there; they are measured below.",
        ]
    if data["notes"]:
        lines += ["", "Where the time goes:", ""]
        lines += [f"- {note}" for note in data["notes"]]
    lines += image_lines(data.get("images"))
    return lines


# --- issue 3: image build and push, the CI flow against its critical path ---------------------


def _runs(values: list[float], unit: str = "s") -> str:
    return ", ".join(f"{v:.2f}" if v < 10 else f"{v:.1f}" for v in values) + f" {unit}"


def _s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def image_lines(images: dict[str, Any] | None) -> list[str]:
    lines = ["", "### Image build and push; the CI flow against its critical path", ""]
    if not images:
        return lines + ["Not measured in this run."]
    if "unavailable" in images:
        return lines + [f"Not measured: no Docker engine ({images['unavailable']})."]
    eng, bp = images["engine"], images["build_push"]
    reps = bp["repetitions"]
    lines += [
        "The example app's image (`examples/example-app` as the pipeline checks it out, "
        "`wheels/` filled by `pip download` as its build stage does; "
        f"`FROM {eng['base_image']}`, "
        f"{eng['base_image_mb']:.0f} MB base, {bp['image_mb']:.0f} MB image) built by "
        "`slipway.tasks.images.build_image` and pushed by `push_image` (two tags) on Docker "
        f"{eng['server_version']} with the **{eng['storage_driver']}** storage driver "
        f"({'started by the benchmark' if eng['started_by_the_bench'] else 'already running'}) "
        f"into Debian's `docker-registry`; {reps} repetitions, medians. Cold build: every "
        "`example-app` image removed from the engine and the build cache pruned, the base "
        "image kept; warm: the same build again right after (same image: "
        f"{'yes' if bp['warm_is_same_image'] else 'NO'}). Cold push: into a registry started "
        "empty for that repetition; warm: the same image again. Load average "
        f"{' / '.join(f'{x:.2f}' for x in images.get('load_average_before', []))} at the "
        "start of this part and "
        f"{' / '.join(f'{x:.2f}' for x in images.get('load_average_after', []))} at its end "
        "(the engine is shared with whatever else runs on the machine).",
        "",
        f"| image measurement | median of {reps} | runs |",
        "|---|---:|---:|",
        f"| build, cold | {_s(bp['build_cold'])} | {_runs(bp['build_cold_seconds'])} |",
        f"| build, warm (layer cache) | {_s(bp['build_warm'])} | "
        f"{_runs(bp['build_warm_seconds'])} |",
        f"| push, cold (empty registry) | {_s(bp['push_cold'])} | "
        f"{_runs(bp['push_cold_seconds'])} |",
        f"| push, warm (layers already there) | {_s(bp['push_warm'])} | "
        f"{_runs(bp['push_warm_seconds'])} |",
    ]
    probe = bp["container_create_probe"]
    steps = bp["cold_steps"]
    layer_steps = [s for s in steps if s["instruction"] in ("RUN", "COPY", "ADD")]
    run_steps = [s for s in steps if s["instruction"] == "RUN"]
    hits = max(bp["build_cold_cached_steps"])
    hit_steps = [f"{s['step']}. {s['instruction']}" for s in steps if s.get("cached")]
    if not hits:
        hit_text = "none: every step was built"
    elif all(s["instruction"] == "ARG" for s in steps if s.get("cached")):
        hit_text = (
            f"{hits} ({', '.join(hit_steps)}: configuration-only steps right after FROM, "
            "shared with other repositories' builds on the same base; no work lost)"
        )
    else:
        hit_text = (
            f"{hits} ({', '.join(hit_steps)}) — other images on the engine still hold part "
            "of this build's layer cache"
        )
    lines += [
        "",
        f"Where a cold build's {_s(bp['build_cold'])} go (median seconds per Dockerfile step, "
        "from the arrival of the engine's streamed `Step k/N` lines):",
        "",
        "| step | seconds |",
        "|---|---:|",
    ]
    lines += [
        f"| {s['step']}. `{s['text']}`{' (cache)' if s.get('cached') else ''} | "
        f"{s['seconds']:.2f} |"
        for s in steps
    ]
    lines += [
        "",
        f"{bp['cold_config_only_steps']} of the {len(steps)} steps only change the image's "
        "configuration (ARG, ENV, WORKDIR, USER, EXPOSE, HEALTHCHECK, CMD, LABEL) and still "
        f"take {_s(bp['cold_config_only_seconds'])} of it; the {len(layer_steps)} steps that "
        f"write files take {_s(bp['cold_layer_steps_seconds'])}, of which the `pip install` "
        f"RUN is {_s(sum(s['seconds'] for s in run_steps))}. The engine's classic builder "
        "makes a container for every step, and on vfs a new container's filesystem is a full "
        f"copy of the image's root filesystem: creating one container of the base image "
        f"takes {_s(probe['create_median_seconds'])} here and removing it "
        f"{_s(probe['remove_median_seconds'])}. The {bp['cold_label_steps']} LABEL steps are "
        "the OCI labels `build_image` passes as build labels (the engine appends one step per "
        f"label): {_s(bp['cold_label_seconds'])}, and since `created` and `revision` change "
        "with every commit, every pipeline run on a new commit pays them even when every other "
        f"layer comes from cache. Cache hits in the cold builds: {hit_text}. "
        f"The cold push uploads {max(bp['push_cold_layers_uploaded'])} layers, almost all of "
        f"it the {eng['base_image_mb']:.0f} MB base layer, which the engine compresses as it "
        f"uploads (≈ {bp['image_mb'] / bp['push_cold']:.0f} MB/s); the second tag and the "
        "warm push only find every layer present. Preparing the build context "
        f"(`pip download` of the wheels) took {_s(bp['context_wheel_download_seconds'])}.",
    ]
    flows = images.get("ci_flow") or {}
    if not flows:
        return lines
    names = list(flows)
    reg = images.get("pipeline_registry", {})
    header = " | ".join(f"{n} layer cache" for n in names)
    lines += [
        "",
        "The whole CI flow: the example app's full pipeline (`run_pipeline`, every stage "
        "including image, image-scan and push, to the registry on "
        f"{reg.get('host', '127.0.0.1:5000')}"
        f"{', started by the benchmark' if reg.get('started_by_the_bench') else ''}; its "
        "`deploy:` left out with `environments=[]`, the CD section below measures it), fresh "
        "`SLIPWAY_HOME` and result store, once with the layer cache the image benchmark "
        "left (warm) and once after removing the example's images (cold). Critical path = "
        "the longest path through the stage graph (`needs`) weighted by each stage's own work "
        "time (`StageOutcome.own_seconds`: its commands, build, scan or push without "
        "orchestration; a parallel group counts its longest member; skipped = 0).",
        "",
        f"| CI flow | {header} |",
        "|---|" + "---:|" * len(names),
    ]

    def row(label: str, key: str, fmt: Any = _s) -> str:
        return f"| {label} | " + " | ".join(fmt(flows[n][key]) for n in names) + " |"

    def ratio(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}×"

    lines += [
        row("wall time (`run_pipeline` call to return)", "wall_seconds"),
        row("critical path (sum of own times along it)", "critical_path_seconds"),
        row("**wall / critical path**", "ratio", ratio),
        row("… without 503 back-offs", "ratio_without_stalls", ratio),
        row("sum of all stages' own times (a sequential run)", "sequential_seconds"),
        row("sum of own times / wall", "sequential_over_wall", ratio),
        row("wall − critical path", "outside_critical_path_seconds"),
        row(
            "call → first stage starts (flow run, checkout, load-spec)", "until_first_stage_seconds"
        ),
        row("last stage ends → call returns", "after_last_stage_seconds"),
        "| image steps rebuilt (not from the layer cache) | "
        + " | ".join(_rebuilt(flows[n]["image_steps_rebuilt"]) for n in names)
        + " |",
    ]
    first = flows[names[0]]
    own = {n: {s["name"]: s["own_seconds"] or 0.0 for s in flows[n]["stages"]} for n in names}
    image_share = ", ".join(
        f"{own[n].get('image', 0.0) / flows[n]['wall_seconds'] * 100:.0f} % ({n})" for n in names
    )
    pushes = " / ".join(_s(own[n].get("push")) for n in names)
    lines += [
        "",
        f"The image stage alone is {image_share} of the wall time, and nothing runs beside "
        "it: the stages that do run in parallel (unit ‖ integration, quality ‖ security, "
        "manifests next to everything) are short, so running them in parallel saves little "
        "(sum of own times / wall above). The pipeline's push ("
        f"{pushes}) is a warm push: the registry on {reg.get('host', '127.0.0.1:5000')} "
        "lives across runs and already holds the base layer, so only the small application "
        "layers and the manifest travel; against an empty registry it would cost about "
        f"{_s(bp['push_cold'])} (the cold push above).",
        "",
        f"Critical path ({names[0]}): {' → '.join(first['critical_path'])}"
        + "".join(
            f"; ({n}): {' → '.join(flows[n]['critical_path'])}"
            for n in names[1:]
            if flows[n]["critical_path"] != first["critical_path"]
        )
        + ". Per stage (seconds = from submission to end, as in the report; own = "
        "`own_seconds`; ● = on the critical path):",
        "",
        "| stage | status | " + " | ".join(f"{n}: seconds | {n}: own" for n in names) + " | path |",
        "|---|---|" + "---:|---:|" * len(names) + "---|",
    ]
    by_name = [{s["name"]: s for s in flows[n]["stages"]} for n in names]
    for s in first["stages"]:
        label = f"↳ {s['name']}" if s["group"] else s["name"]
        cells = []
        for table in by_name:
            other = table.get(s["name"], {})
            cells += [_s(other.get("seconds")), _s(other.get("own_seconds"))]
        mark = "●" if any(t.get(s["name"], {}).get("critical") for t in by_name) else ""
        lines.append(f"| {label} | {s['status']} | " + " | ".join(cells) + f" | {mark} |")
    return lines


def _rebuilt(steps: list[str]) -> str:
    if not steps:
        return "0"
    counts: dict[str, int] = {}
    for step in steps:
        counts[step] = counts.get(step, 0) + 1
    return (
        f"{len(steps)} (" + ", ".join(f"{k} × {v}" if v > 1 else k for k, v in counts.items()) + ")"
    )


# --- continuous delivery ------------------------------------------------------------------------


def _cells(values: list[Any], fmt: Any = lambda v: f"{v:.2f}") -> str:
    return " | ".join(fmt(v) for v in values)


def delivery_lines(cd: dict[str, Any] | None, targets: list[dict[str, Any]]) -> list[str]:
    lines = ["", "### Continuous delivery: approval, blue-green rollback, automatic rollback", ""]
    if not cd:
        return lines + ["Not measured yet (`bench/run delivery`)."]
    if "unavailable" in cd:
        return lines + [f"Not measured: {cd['unavailable']}."]
    app, rb, det = cd["approval"], cd["rollback"], cd["detection"]
    a = det["analysis"]
    load = " / ".join(f"{x:.2f}" for x in cd["load_average_before"])
    after = " / ".join(f"{x:.2f}" for x in cd["load_average_after"])
    dirty = " plus uncommitted changes" if cd.get("dirty") else ""
    lines += [
        f"The CD part of `bench/run` (alone: `bench/run delivery`) on {cd['started'][:10]} at "
        f"commit `{cd['commit'][:12]}`{dirty}, "
        f"{cd['seconds']:.0f} s, load average {load} before and {after} after. "
        "`slipway.flows.deliver.deliver` runs in a flow run on a thread of its own against the "
        "benchmark's private `prefect server`, as a worker would run it; production is "
        "blue-green (2 replicas a colour) with a readiness smoke test on the preview Service. "
        "The cluster is the Kubernetes API stand-in (simulated clock at 10×) with the example "
        "app as the pods' processes, in a child process of its own; Debian's Prometheus scrapes "
        "the pods every second; the manifests live in a local bare git repository (the GitOps "
        "bump and revert are real commits). Times of day come from this machine's one clock.",
        "",
        "| CD measure | result | without 503 stalls | target | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for row in targets:
        if row["key"].startswith("cd_"):
            lines.append(
                f"| {row['measure']} | {row['shown']} | {row['without_stalls']} | "
                f"{row['target']} | {row['verdict']} |"
            )
    runs = det["runs"]
    header = " | ".join(str(i) for i in range(1, len(runs) + 1))
    lines += [
        "",
        f"| per repetition (seconds) | {header} |",
        "|---|" + "---:|" * len(runs),
        f"| approval → bump Running | {_cells(app['latency_seconds'])} |",
        "| … approve_run returned → the paused run's poll saw it | "
        f"{_cells([r['to_resumed_seconds'] for r in app['runs']])} |",
        "| … poll saw it → bump Running | "
        f"{_cells([r['resumed_to_bump_seconds'] for r in app['runs']])} |",
        "| approval sent, after the run paused | "
        f"{_cells([r['approved_after_pause_seconds'] for r in app['runs']])} |",
        f"| bad release: first 500 → rollback starts | {_cells(det['seconds'])} |",
        "| … analysis measurements (S/F/I/E) | "
        f"{_cells([''.join(p[0] for p in r['measurements']) for r in runs], str)} |",
        "| … switch → first measurement | "
        f"{_cells([r['first_measurement_after_switch_seconds'] for r in runs])} |",
        "| … switch → Prometheus holds two samples of the release | "
        f"{_cells([r['switch_to_second_scrape_seconds'] for r in runs])} |",
        "| … pods ready → Prometheus holds two samples of the release | "
        f"{_cells([r['ready_to_second_scrape_seconds'] for r in runs])} |",
        f"| rollback as reported | {_cells(rb['reported_seconds'])} |",
        f"| rollback seen by the poller | {_cells(rb['observed_seconds'])} |",
        "| decision → rollback task Running | "
        f"{_cells([r['decision_to_rollback_task_seconds'] for r in runs])} |",
        "| decision → last answer from the bad release | "
        f"{_cells(rb['decision_to_last_bad_answer_seconds'])} |",
    ]
    warm = app["warm_up"]
    lines += [
        "",
        f"Approval: {app['repetitions']} good releases, each approved through `approve_run` at "
        f"a different point of the paused run's {app['poll_interval_seconds']:g} s poll (0.5 + "
        f"i/{app['repetitions']} poll intervals after it paused); latency = {app['signal']}. "
        "Prefect's `apause_flow_run` reads the run's state once per poll interval, so up to one "
        f"interval passes before the run sees the decision (median {app['to_resumed_median']:.2f}"
        " s here); after that, the "
        f"{app['resumed_to_bump_median']:.2f} s (median) until the bump is Running go to reading "
        "the decision's run input, the approval artifact, the deploy slot (a global concurrency "
        "limit) and starting the task run. The warm-up run (the process' first deploy, not "
        f"counted) took {warm['latency_seconds']:.2f} s. `approve_run` itself took "
        f"{app['approve_call_median']:.2f} s (median).{_stall_note(cd)}",
        "",
        f"Bad releases: {det['repetitions']} releases of the example app with "
        f"`ERROR_RATE={det['error_rate']}`, each with a fresh digest (so a fresh "
        "`slipway.dev/release` label and fresh Prometheus series), under "
        f"{det['traffic_per_second']:.0f} requests/s at the active Service; the analysis: "
        f"`{a['success_condition']}` over the 5xx share of the release's requests (10 s rate "
        f"window), initial_delay {a['initial_delay']:g} s, interval {a['interval']:g} s, "
        f"failure_limit {a['failure_limit']}, count {a['count']}, inconclusive_limit "
        f"{a['inconclusive_limit']}. From the first 500 to the rollback starting took "
        f"{det['median']:.2f} s (median; {det['ratio']:.2f}× the "
        f"{det['expected_seconds']:g} s the settings allow at best). The analysis task starts "
        "as the switch lands, and the first 500 came "
        f"{det['analysis_start_to_first_500_median']:.2f} s after it started (median; "
        f"{det['switch_seen_to_first_500_median']:.2f} s after the poller saw the switch); the "
        f"analysis took {det['analysis_start_to_verdict_median']:.2f} s to its verdict (the "
        "initial delay, then a query per measurement), and the `rolling back` record followed "
        f"{det['verdict_to_decision_median']:.2f} s later (the analysis artifact in between). "
        f"{_inconclusive_note(det)}Rollback reported = the seconds `rollback` returns "
        "(blue-green: read the Service, PATCH its selector, check the answer); observed = "
        "from the flow's `rolling back` log record to a GET of the Service every "
        f"{rb['selector_poll_ms']:.0f} ms first showing the old colour, so it includes starting "
        f"the rollback task run ({rb['decision_to_rollback_task_median']:.2f} s median). The "
        "traffic's last answer from the bad release came at most "
        f"{rb['decision_to_last_bad_answer_max']:.2f} s after the decision.",
    ]
    return lines


def _inconclusive_note(det: dict[str, Any]) -> str:
    runs = [i for i, r in enumerate(det["runs"], start=1) if "Inconclusive" in r["measurements"]]
    if not runs:
        return ""
    which = ", ".join(str(i) for i in runs)
    a = det["analysis"]
    return (
        f"In repetition{'s' if len(runs) > 1 else ''} {which} the first measurement was "
        "Inconclusive (no data): a query over the release has a value only once Prometheus holds "
        "two samples of one of its pods (`rate()` needs two), and that came "
        f"{det['ready_to_second_scrape_median']:.2f} s after its pods were ready (median; "
        f"{det['switch_to_second_scrape_median']:.2f} s after the switch, the rollout, smoke "
        "test and switch being quick), while the first measurement came "
        f"{det['first_measurement_after_switch_median']:.2f} s after the switch (initial_delay "
        f"{a['initial_delay']:g} s); the analysis tolerated it (inconclusive_limit "
        f"{a['inconclusive_limit']}) and failed one interval later. With the default "
        "inconclusive_limit 0 such a first measurement would end the analysis Inconclusive, "
        "and the default on_inconclusive (rollback) would roll back a good release too. "
    )


def _stall_note(cd: dict[str, Any]) -> str:
    """Which repetitions waited out a 503 back-off, and what the server said."""
    parts = []
    runs = {"approval": cd["approval"]["runs"], "bad release": cd["detection"]["runs"]}
    for label, each in runs.items():
        for i, run in enumerate(each, start=1):
            if run["client_retry_seconds"]:
                causes = ", ".join(f"{k} × {v}" for k, v in run["client_retry_causes"].items())
                parts.append(f"{label} {i} ({run['client_retry_seconds']:.1f} s; {causes})")
    if not parts:
        return ""
    errors = cd.get("server_retryable_errors") or {}
    said = "; ".join(f"`{where}` × {n}" for where, n in errors.items())
    return (
        " The Prefect client waited before retrying a request the server had refused with 503 "
        f"in {', '.join(parts)}" + (f"; the server's log names {said}" if said else "") + ". "
        '"Without 503 stalls" subtracts that wait.'
    )
