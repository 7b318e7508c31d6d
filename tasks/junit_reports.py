"""Reading JUnit XML test reports safely and summarising them.

Reports are written by the code under test, so they are untrusted input: they are
parsed by junitparser on top of defusedxml's parser, which refuses DTDs with
entities (no "billion laughs", no external entities) before expanding anything,
and files above :data:`MAX_REPORT_BYTES` are refused without being read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from junitparser import Error, Failure, JUnitXml, Skipped
from junitparser.junitparser import JUnitXmlError

from slipway.exceptions import ReportError

MAX_REPORT_BYTES = 50 * 1024 * 1024
MESSAGE_CHARS = 300

Outcome = Literal["passed", "failed", "error", "skipped"]


@dataclass(frozen=True)
class CaseResult:
    classname: str
    name: str
    seconds: float
    outcome: Outcome
    message: str = ""

    @property
    def id(self) -> str:
        return f"{self.classname}::{self.name}" if self.classname else self.name


@dataclass(frozen=True)
class SuiteReport:
    """One test suite (one stage) built from one or more JUnit files."""

    suite: str
    files: tuple[str, ...]
    cases: tuple[CaseResult, ...] = field(default_factory=tuple)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for c in self.cases if c.outcome == outcome)

    @property
    def tests(self) -> int:
        return len(self.cases)

    @property
    def seconds(self) -> float:
        return round(sum(c.seconds for c in self.cases), 3)

    @property
    def problems(self) -> list[CaseResult]:
        return [c for c in self.cases if c.outcome in ("failed", "error")]

    def slowest(self, n: int = 5) -> list[CaseResult]:
        return sorted(self.cases, key=lambda c: c.seconds, reverse=True)[:n]


def _outcome(case: object) -> tuple[Outcome, str]:
    for result in getattr(case, "result", []) or []:
        text = (result.message or result.text or "").strip()
        if isinstance(result, Failure):
            return "failed", text[:MESSAGE_CHARS]
        if isinstance(result, Error):
            return "error", text[:MESSAGE_CHARS]
        if isinstance(result, Skipped):
            return "skipped", text[:MESSAGE_CHARS]
    return "passed", ""


def parse_junit_file(path: Path, *, display: str | None = None) -> list[CaseResult]:
    """Every test case of one JUnit XML file."""
    shown = display or str(path)
    size = path.stat().st_size
    if size > MAX_REPORT_BYTES:
        raise ReportError(f"{shown}: {size} bytes is over the {MAX_REPORT_BYTES} byte limit")
    try:
        xml = JUnitXml.fromfile(str(path), parse_func=SafeET.parse)
    except DefusedXmlException as exc:
        raise ReportError(f"{shown}: refused unsafe XML ({type(exc).__name__})") from None
    except (SafeET.ParseError, JUnitXmlError) as exc:
        raise ReportError(f"{shown}: not a JUnit XML report ({exc})") from None
    cases: list[CaseResult] = []
    for suite in xml:
        for case in suite:
            outcome, message = _outcome(case)
            cases.append(
                CaseResult(
                    classname=case.classname or "",
                    name=case.name or "",
                    seconds=float(case.time or 0.0),
                    outcome=outcome,
                    message=message,
                )
            )
    return cases


def collect_suite(suite: str, workspace: Path, files: Sequence[Path]) -> SuiteReport:
    cases: list[CaseResult] = []
    names = []
    for path in files:
        display = str(path.relative_to(workspace))
        names.append(display)
        cases.extend(parse_junit_file(path, display=display))
    return SuiteReport(suite=suite, files=tuple(names), cases=tuple(cases))


def summary_rows(reports: Iterable[SuiteReport]) -> list[dict[str, object]]:
    """Per-suite rows and a total row, for a Prefect table artifact."""
    rows: list[dict[str, object]] = []
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "seconds": 0.0}
    for r in reports:
        row = {
            "suite": r.suite,
            "tests": r.tests,
            "passed": r.count("passed"),
            "failed": r.count("failed"),
            "skipped": r.count("skipped"),
            "errors": r.count("error"),
            "seconds": r.seconds,
        }
        rows.append(row)
        for key in totals:
            totals[key] += row[key]  # type: ignore[operator]
    total_tests = sum(int(r["tests"]) for r in rows)  # type: ignore[call-overload]
    rows.append(
        {"suite": "TOTAL", "tests": total_tests, **totals, "seconds": round(totals["seconds"], 3)}
    )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:MESSAGE_CHARS]


def summary_markdown(reports: Sequence[SuiteReport], *, slowest: int = 5) -> str:
    rows = summary_rows(reports)
    lines = ["## Tests", "", "| suite | tests | passed | failed | skipped | errors | seconds |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        lines.append(
            "| {suite} | {tests} | {passed} | {failed} | {skipped} | {errors} | {seconds} |".format(
                **row
            )
        )
    problems = [(r.suite, c) for r in reports for c in r.problems]
    if problems:
        lines += [
            "",
            "### Failed tests",
            "",
            "| suite | test | outcome | message |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {s} | `{_cell(c.id)}` | {c.outcome} | {_cell(c.message)} |" for s, c in problems
        ]
    slow = sorted(((r.suite, c) for r in reports for c in r.cases), key=lambda p: -p[1].seconds)
    if slow:
        lines += ["", f"### Slowest {min(slowest, len(slow))}", "", "| suite | test | seconds |"]
        lines += ["|---|---|---:|"]
        lines += [f"| {s} | `{_cell(c.id)}` | {c.seconds:.3f} |" for s, c in slow[:slowest]]
    return "\n".join(lines)
