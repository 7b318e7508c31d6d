"""Which tests of an application have been flaky, across its runs.

A flaky test (failed, then passed on a retry in the same report) lets its stage pass,
so one run's artifact is easy to overlook; the history says how often a test has done
it lately, which is what decides whether to fix or quarantine it.

Kept per app in ``$SLIPWAY_HOME/flaky-tests/<app>.json`` under an exclusive lock
(several runs of one app may finish at once), bounded: at most :data:`MAX_TESTS` tests
(the ones seen longest ago are dropped first) and :data:`MAX_RUNS_PER_TEST` recent runs
per test. A file that cannot be read (hand-edited, truncated) is started afresh rather
than failing a pipeline over bookkeeping.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slipway.tasks.junit_reports import SuiteReport
from slipway.workspace import inside, slipway_home

MAX_TESTS = 500
MAX_RUNS_PER_TEST = 20
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FlakyRecord:
    """One test's flaky history, as of the run that just recorded it."""

    suite: str
    test: str
    flaky_runs: int
    first_seen: str
    last_seen: str
    attempts: int  # this run's


def history_path(app: str, home: Path | None = None) -> Path:
    folder = (home or slipway_home()) / "flaky-tests"
    folder.mkdir(parents=True, exist_ok=True)
    return inside(folder, f"{app}.json")


def _load(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        return {}
    tests = data.get("tests")
    return tests if isinstance(tests, dict) else {}


def record_flaky_tests(
    app: str,
    suites: Sequence[SuiteReport],
    run_id: str,
    *,
    home: Path | None = None,
    now: datetime | None = None,
) -> dict[str, FlakyRecord]:
    """Add this run's flaky tests to the app's history; their records, keyed by
    ``suite::test``. A run recorded twice (resumed after an approval) counts once."""
    flaky = [(s.suite, c) for s in suites for c in s.flaky]
    if not flaky:
        return {}
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    with history_path(app, home).open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        tests = _load(handle.read())
        records: dict[str, FlakyRecord] = {}
        for suite, case in flaky:
            key = f"{suite}::{case.id}"
            entry = tests.get(key)
            if not isinstance(entry, dict):
                entry = {"suite": suite, "test": case.id, "first_seen": stamp, "runs": []}
            runs = [r for r in entry.get("runs", []) if isinstance(r, dict)]
            if all(r.get("run") != run_id for r in runs):
                runs.append({"run": run_id, "at": stamp, "attempts": case.attempts})
                entry["flaky_runs"] = int(entry.get("flaky_runs", 0)) + 1
            entry["runs"] = runs[-MAX_RUNS_PER_TEST:]
            entry["last_seen"] = stamp
            tests[key] = entry
            records[key] = FlakyRecord(
                suite, case.id, entry["flaky_runs"], entry["first_seen"], stamp, case.attempts
            )
        kept = sorted(tests.items(), key=lambda kv: str(kv[1].get("last_seen", "")))
        tests = dict(kept[-MAX_TESTS:])
        handle.seek(0)
        handle.truncate()
        json.dump({"version": FORMAT_VERSION, "app": app, "tests": tests}, handle, indent=1)
    return records


def read_flaky_history(app: str, *, home: Path | None = None) -> dict[str, dict[str, Any]]:
    """The app's whole history (``suite::test`` -> record), for reports and tests."""
    path = history_path(app, home)
    return _load(path.read_text()) if path.is_file() else {}
