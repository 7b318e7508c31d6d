"""How much slipway's pipeline flow costs on top of the commands it runs; then CD.

Run with ``bench/run`` (or ``python -m bench.pipeline_overhead`` inside the
project's virtualenv, from the repository root). It starts its own
``prefect server`` (SQLite, temporary PREFECT_HOME, free port), gives every
pipeline run a fresh SLIPWAY_HOME and result store (except the cached re-runs,
which reuse the first run's), then measures the example app's image build and
push and its whole CI flow against its critical path on a real Docker engine and
registry (:mod:`bench.images`), then the continuous-delivery measurements
(:mod:`bench.delivery`), and writes ``bench/results/latest.json`` and
``bench/results/latest.md``; then the GitOps sync measurements (:mod:`bench.sync`).
``bench/run pipeline``, ``bench/run delivery`` or ``bench/run sync`` runs one part
(or several); the other parts' previous results are kept from ``latest.json``.
Prefect's own log output goes to ``bench/results/bench-log.tmp`` (git-ignored).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
from pathlib import Path

_LOAD_BEFORE = os.getloadavg()  # before this process has done anything heavy
_SCRATCH = Path(tempfile.mkdtemp(prefix="slipway-bench-"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PORT = _free_port()
# Set before prefect is imported: keep the client away from the developer's
# ~/.prefect, and make the process-wide settings point at our server too. The
# client is pointed at it with temporary_settings(), which only threads that
# carry the context see; a thread started without it (slipway's command output
# reader logs from one) would otherwise spawn an ephemeral API of its own and
# send its logs there, costing seconds of CPU in the middle of a measurement.
os.environ["PREFECT_HOME"] = str(_SCRATCH / "client-prefect-home")
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PORT}/api"
# the server runs with API authentication (slipway.local_server), so every client and
# child process of the benchmark sends this string
os.environ["PREFECT_API_AUTH_STRING"] = f"bench:{secrets.token_urlsafe(24)}"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_API_LOG_RETRYABLE_ERRORS"] = "true"  # the server says what it answered 503

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any, TextIO  # noqa: E402

import prefect  # noqa: E402

from bench.delivery import measure_delivery  # noqa: E402
from bench.harness import (  # noqa: E402
    ClientRetries,
    PrefectServer,
    Sandboxes,
    counting_client_retries,
    flush_to_server,
    git_describe,
    prefect_server,
    probe_api_calls,
    server_peak_rss_kb,
    server_retryable_errors,
)
from bench.images import measure_images  # noqa: E402
from bench.judge import judge  # noqa: E402
from bench.markdown import render_markdown  # noqa: E402
from bench.measure import (  # noqa: E402
    PAR_SUITES,
    Bench,
    measure_cached,
    measure_fixed_cost,
    measure_memory,
    measure_parallel,
    measure_sequential,
    warm_up,
)
from bench.sync import measure_sync  # noqa: E402
from slipway.example import publish_example  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PARTS = ("pipeline", "delivery", "sync")
# the parts with a key of their own in latest.json; "pipeline" owns everything else
SEPARATE_PARTS = ("delivery", "sync")


def machine_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in _LOAD_BEFORE],
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "platform": platform.platform(),
        **git_describe(),
    }


def run_all(
    data: dict[str, Any], out: TextIO, log: TextIO, retries: ClientRetries, parts: set[str]
) -> None:
    bench = Bench(out, Sandboxes(_SCRATCH / "runs"), _SCRATCH / "git", _SCRATCH, retries)
    bench.say(f"starting a private prefect server (home {_SCRATCH / 'server'})")
    with prefect_server(_SCRATCH / "server", _PORT) as server:
        bench.say(f"server healthy after {server.startup_seconds:.1f} s at {server.url}")
        if "pipeline" in parts:
            data["server"] = {"url": server.url, "startup_seconds": server.startup_seconds}
            run_pipeline_part(data, bench, server, log)
        if "delivery" in parts:
            data["delivery"] = measure_delivery(bench, _SCRATCH / "delivery", server)
        if "sync" in parts:
            data["sync"] = measure_sync(bench, _SCRATCH / "sync", server)
        flush_to_server()
        if "pipeline" in parts:
            data["api"]["server_retryable_errors"] = server_retryable_errors(server)
            data["client_retries"] = bench.stall_report()
    data["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]


def run_pipeline_part(
    data: dict[str, Any], bench: Bench, server: PrefectServer, log: TextIO
) -> None:
    wall = warm_up(bench)
    bench.say(f"warm-up run (imports, first flow registration): {wall:.2f} s")
    data["api"]["probe"] = probe_api_calls(20)

    data["fixed"], data["flows"] = measure_fixed_cost(bench)
    data["sequential"], first_sequential = measure_sequential(bench, data["fixed"])
    for suites in PAR_SUITES:
        data["parallel"][str(suites)] = measure_parallel(bench, suites)
    data["cached"] = measure_cached(bench, first_sequential, publish_example)

    data["memory"] = measure_memory(server, bench.boxes.fresh("memory"), log)
    peak = server_peak_rss_kb(server)
    data["memory"]["server_peak_mb"] = round(peak / 1024, 1) if peak else None
    bench.say(f"peak RSS of the example pipeline process: {data['memory']['process_peak_mb']} MB")
    data["images"] = measure_images(bench, _SCRATCH / "images", publish_example)


def merge_previous(data: dict[str, Any], previous: dict[str, Any], parts: set[str]) -> dict:
    """Keep the results of the parts that did not run from the previous ``latest.json``."""
    if "pipeline" not in parts:
        kept = {k: v for k, v in previous.items() if k not in (*SEPARATE_PARTS, "targets", "notes")}
        data = {**kept, **{p: data[p] for p in SEPARATE_PARTS if p in data}}
    for part in SEPARATE_PARTS:
        if part not in parts and part in previous:
            data[part] = previous[part]
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.* go")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="part",
        help=f"what to run: any of {', '.join(PARTS)} (default: all); the other parts' "
        "results are kept from the previous latest.json",
    )
    args = parser.parse_args(argv)
    parts = set(args.parts or PARTS)
    if parts - set(PARTS):
        parser.error(f"unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; know {PARTS}")

    out = sys.stdout
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "bench-log.tmp"
    log = log_path.open("w")
    # Prefect's console logging goes to stderr: send it to the log file, keep stdout clean.
    os.dup2(log.fileno(), 2)
    data: dict[str, Any] = {
        "machine": machine_info(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": (
            "wall time around run_pipeline(...) in this process, after a warm-up run; "
            "fresh SLIPWAY_HOME and result storage per run except cached re-runs; "
            "private prefect server (SQLite); 'without stalls' subtracts the seconds the "
            "Prefect client slept before retrying requests the server answered 503"
        ),
        "api": {},
        "parallel": {},
    }
    m = data["machine"]
    print(
        f"{m['nproc']} cores, load {m['load_average_before']}, Prefect {m['prefect']}; "
        f"Prefect's log: {log_path}",
        file=out,
        flush=True,
    )
    t0 = time.monotonic()
    try:
        with counting_client_retries() as retries:
            run_all(data, out, log, retries, parts)
    except Exception:
        print(traceback.format_exc(), file=out, flush=True)
        print(f"benchmark failed; scratch kept at {_SCRATCH}, log at {log_path}", file=out)
        return 1
    json_path, md_path = args.out / "latest.json", args.out / "latest.md"
    seconds = round(time.monotonic() - t0, 1)
    if "pipeline" in parts:
        data["seconds_total"] = seconds
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    data = merge_previous(data, previous, parts)
    judge(data)
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(render_markdown(data))
    print("\n" + md_path.read_text(), file=out)
    print(f"wrote {json_path} and {md_path} in {seconds:.0f} s", file=out)
    if not args.keep:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
