"""Reading JUnit XML test reports safely and summarising them.

"JUnit XML" is a family of dialects, each written by a different tool; this module
reads what the common ones really write (see the README's reporter table):

- **Where testcases live.** ``<testsuites>`` inside ``<testsuites>`` (jest projects,
  merged reports), ``<testsuite>`` inside ``<testsuite>`` (Ant, pytest-xdist merges),
  ``<testcase>`` directly under ``<testsuites>``: every ``<testcase>`` is read wherever
  it is, with an explicit stack (never recursion) and a depth limit.
- **Outcome by precedence, not order.** failure > error > skipped > passed: pytest
  writes ``<skipped>`` *then* ``<error>`` for a skipped test whose teardown broke.
  Disabled tests (googletest ``status="notrun" result="suppressed"``, ctest
  ``status="disabled"``) carry no child element and count as skipped, never passed.
- **Flaky tests.** A test that failed and then passed in the same report is *flaky*,
  not failed: Surefire's ``<flakyFailure>``/``<flakyError>``, and retries written as
  repeated testcases (gotestsum ``--rerun-fails``). Each keeps its number of attempts.
- **Totals that lie.** A suite's own ``tests=``/``failures=``/``skipped=`` are compared
  with the testcases it holds (mocha-junit-reporter drops pending tests, jest-junit
  counts ``test.todo`` as a pass, Surefire's reruns rewrite the totals); a mismatch
  becomes a note in the stage log and the artifact, the testcases are what counts.
- **Names to paste back.** :func:`runnable_name` names a test the way its tool takes
  it: pytest node ids, ``Class#method`` for Maven, ``TestX/sub (package)`` for Go,
  ``Suite.Test`` for googletest, ``file > full name`` for JavaScript, else
  ``Class::method`` (PHPUnit's ``--filter``).

Reports are written by the code under test, so they are untrusted: defusedxml parses
them (DTD entities and external entities are refused before anything expands), files
above :data:`MAX_REPORT_BYTES` are refused unread, and anything malformed (broken
XML, a foreign root, nesting beyond :data:`MAX_DEPTH`) is a :class:`ReportError`
naming the file. Time values are read leniently (``"1,234.5"``, ``"1.5s"``; ``""``
or ``"N/A"`` is an unknown time), because real tools write them that way.

junitparser (which slipway used before) assumes one dialect: it stops at the first
result element, reads no nested ``<testsuites>``, knows no flaky elements and raises
``ValueError`` on a time of ``"N/A"``; the walk here is small enough to own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from slipway.exceptions import ReportError

MAX_REPORT_BYTES = 50 * 1024 * 1024
MESSAGE_CHARS = 300
# no real tool nests suites this deep; a hostile report that does is refused
MAX_DEPTH = 100
MAX_NOTES_PER_FILE = 5

Outcome = Literal["passed", "failed", "error", "skipped", "flaky"]
# the order that decides a testcase with several result elements
PRECEDENCE: tuple[Outcome, ...] = ("failed", "error", "skipped", "passed")
DISABLED_MARKERS = {"disabled", "notrun", "not_run", "suppressed", "todo", "pending"}


@dataclass(frozen=True)
class CaseResult:
    """One test: its outcome, how many attempts it took, and the name to rerun it by."""

    classname: str
    name: str
    seconds: float | None
    outcome: Outcome
    message: str = ""
    attempts: int = 1
    ref: str = ""  # the tool's own name for it (see runnable_name); "" = classname::name

    @property
    def id(self) -> str:
        if self.ref:
            return self.ref
        return f"{self.classname}::{self.name}" if self.classname else self.name


@dataclass(frozen=True)
class FileReport:
    """One JUnit file: its tests, and what its own totals claim that they do not show."""

    cases: tuple[CaseResult, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuiteReport:
    """One test suite (one stage) built from one or more JUnit files."""

    suite: str
    files: tuple[str, ...]
    cases: tuple[CaseResult, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()

    def count(self, outcome: Outcome) -> int:
        return sum(1 for c in self.cases if c.outcome == outcome)

    @property
    def tests(self) -> int:
        return len(self.cases)

    @property
    def seconds(self) -> float:
        return round(sum(c.seconds or 0.0 for c in self.cases), 3)

    @property
    def problems(self) -> list[CaseResult]:
        return [c for c in self.cases if c.outcome in ("failed", "error")]

    @property
    def flaky(self) -> list[CaseResult]:
        return [c for c in self.cases if c.outcome == "flaky"]

    def slowest(self, n: int = 5) -> list[CaseResult]:
        timed = [c for c in self.cases if c.seconds is not None]
        return sorted(timed, key=lambda c: c.seconds or 0.0, reverse=True)[:n]

    def counts_text(self) -> str:
        """``"12 passed, 1 failed, 2 skipped, 1 flaky"``: the parts that are not zero."""
        parts = [f"{self.count('passed')} passed"]
        failed = len(self.problems)
        for label, number in (
            ("failed", failed),
            ("skipped", self.count("skipped")),
            ("flaky", self.count("flaky")),
        ):
            if number:
                parts.append(f"{number} {label}")
        return ", ".join(parts)


def _local(tag: object) -> str:
    """An element's name without a namespace (``{ns}testcase`` -> ``testcase``)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def parse_seconds(value: str | None) -> float | None:
    """A ``time`` attribute as seconds; None when unknown ("", "N/A", "NaN", garbage).

    Real tools write ``"1,234.5"`` (thousands separators) and ``"1.5s"``; a time is
    never worth failing a report over.
    """
    if value is None:
        return None
    text = value.strip().lower().removesuffix("s").strip()
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass(frozen=True)
class _Context:
    """What the enclosing elements tell about a testcase: the dialect, suite and file."""

    dialect: str
    suite: str = ""
    file: str = ""


def _dialect(root: Element) -> str:
    """Which tool wrote the file, from the marks it leaves (names, schema, attributes)."""
    name = root.get("name", "")
    schema = "".join(v for k, v in root.attrib.items() if k.endswith("noNamespaceSchemaLocation"))
    tags = {_local(e.tag) for e in root.iter()}
    if "surefire" in schema or tags & {"flakyFailure", "flakyError", "rerunFailure", "rerunError"}:
        return "maven"
    if name.startswith("pytest") or any(
        _local(s.tag) == "testsuite" and s.get("name") == "pytest" for s in root.iter()
    ):
        return "pytest"
    if name in ("jest tests", "Mocha Tests"):
        return "js"
    if name == "AllTests" or any(
        _local(c.tag) == "testcase" and c.get("result") and c.get("status") for c in root.iter()
    ):
        return "gtest"
    if any(_local(p.tag) == "property" and p.get("name") == "go.version" for p in root.iter()):
        return "go"
    return ""


_GO_TEST = re.compile(r"^(Test|Example|Fuzz|Benchmark)")
_CLASS = re.compile(r"^[A-Z]")


def _pytest_node_id(classname: str, name: str, file: str) -> str:
    """``tests/test_x.py::TestY::test_z`` from what pytest's junitxml writes.

    With ``junit_family=xunit1`` the file is given; with the default xunit2 the module
    path is the classname's segments before the first class (classes start upper-case,
    modules by pytest's convention do not).
    """
    parts = classname.split(".") if classname else []
    if file:
        module = PurePosixPath(file).with_suffix("").as_posix().replace("/", ".")
        classes = parts[len(module.split(".")) :] if classname.startswith(module) else []
        path = file
    else:
        cut = next((i for i, p in enumerate(parts) if _CLASS.match(p)), len(parts))
        path = "/".join(parts[:cut]) + ".py" if cut else ""
        classes = parts[cut:]
    return "::".join([p for p in (path, *classes) if p] + [name])


def runnable_name(classname: str, name: str, context: _Context, file: str = "") -> str:
    """The name a developer pastes back into the tool to run this one test again."""
    file = file or context.file
    if context.dialect == "pytest":
        return _pytest_node_id(classname, name, file)
    if context.dialect == "maven":
        return f"{classname}#{name}" if classname else name
    if context.dialect == "gtest":
        # gtest's own XML: Suite + Test; ctest's: the full "Suite.Test" in both attributes
        return name if not classname or classname == name else f"{classname}.{name}"
    package = classname or context.suite
    if context.dialect == "go" or (_GO_TEST.match(name) and package and package == context.suite):
        return f"{name} ({package})" if package else name
    # JavaScript reporters repeat the full name as the classname (jest-junit's default
    # "{classname} {title}" for both) or put the title there (mocha): say the full name
    # (describe blocks and title, what `jest -t` / `mocha --grep` match) once, after the
    # file when known; a classname that is only the describe blocks goes in front
    title, group = name.strip(), classname.strip()
    full = title if not group or group in title else f"{group} {title}"
    if context.dialect == "js" or (file and full == title):
        return f"{file} > {full}" if file else full
    return f"{classname}::{name}" if classname and classname != name else name


def _message(element: Element) -> str:
    """The message attribute, or the element's text when the attribute says nothing
    more than the outcome (Go's reporters write ``message="Failed"``)."""
    message = (element.get("message") or "").strip()
    if message.lower() in ("", "failed", "skipped", "error"):
        message = (element.text or "").strip() or message
    return message


def _result_of(case: Element) -> tuple[Outcome, str, int, int]:
    """Outcome, message, attempts and how many of them failed, from one testcase element.

    The result elements are ranked (failure > error > skipped), never read in order.
    """
    found: dict[str, Element] = {}
    flaky: list[Element] = []
    reruns = 0  # Surefire's rerunFailure/rerunError: more failed attempts of a failed test
    for child in case:
        tag = _local(child.tag)
        if tag in ("failure", "error", "skipped"):
            found.setdefault(tag, child)
        elif tag in ("flakyFailure", "flakyError"):
            flaky.append(child)
        elif tag in ("rerunFailure", "rerunError"):
            reruns += 1
    for outcome, tag in (("failed", "failure"), ("error", "error")):
        if tag in found:
            return outcome, _message(found[tag])[:MESSAGE_CHARS], 1 + reruns, 1 + reruns  # type: ignore[return-value]
    if "skipped" in found:
        return "skipped", _message(found["skipped"])[:MESSAGE_CHARS], 1, 0
    marks = {case.get("status", "").lower(), case.get("result", "").lower()}
    if marks & DISABLED_MARKERS:
        return "skipped", "disabled", 1, 0
    if flaky:
        return "flaky", _message(flaky[0])[:MESSAGE_CHARS], 1 + len(flaky), len(flaky)
    return "passed", "", 1, 0


@dataclass(frozen=True)
class _Try:
    """What one testcase element says (it may hold several attempts: Surefire's reruns)."""

    outcome: Outcome
    message: str
    attempts: int
    failed_attempts: int
    seconds: float | None


@dataclass
class _Attempts:
    """Every testcase element of one test in one file (retries repeat it)."""

    classname: str
    name: str
    ref: str
    tries: list[_Try] = field(default_factory=list)

    def merged(self, dialect: str) -> CaseResult:
        tries = self.tries
        if dialect == "pytest" and len(tries) > 1 and tries[-1].outcome == "passed":
            # pytest node ids are unique in a session: a repeated one is a rerun
            # (pytest-rerunfailures), whose failed tries it writes without any detail
            reruns = len(tries) - 1
            note = f"failed {reruns} time(s) and was rerun (pytest keeps no detail of it)"
            tries = [_Try("failed", note, 1, 1, t.seconds) for t in tries[:-1]] + tries[-1:]
        attempts = sum(t.attempts for t in tries)
        known = [t.seconds for t in tries if t.seconds is not None]
        seconds = round(sum(known), 6) if known else None
        last = tries[-1]
        if last.outcome in ("passed", "flaky") and any(t.failed_attempts for t in tries):
            # a retry tool stops at the first pass: a pass after failures is flaky
            message = next(t.message for t in tries if t.failed_attempts) or last.message
            return CaseResult(
                self.classname, self.name, seconds, "flaky", message, attempts, self.ref
            )
        outcomes = {t.outcome for t in tries}
        outcome = next(o for o in PRECEDENCE if o in outcomes) if len(tries) > 1 else last.outcome
        message = next(t.message for t in tries if t.outcome == outcome)
        return CaseResult(self.classname, self.name, seconds, outcome, message, attempts, self.ref)


def _raw_counts(case: Element) -> tuple[int, int, int]:
    """(1, failed?, skipped?) for one testcase, the way a reporter counts its totals."""
    tags = {_local(c.tag) for c in case}
    marks = {case.get("status", "").lower(), case.get("result", "").lower()}
    failed = bool(tags & {"failure", "error"})
    skipped = "skipped" in tags or (bool(marks & DISABLED_MARKERS) and not failed)
    return 1, int(failed), int(skipped)


def _int_attr(element: Element, *names: str) -> int | None:
    values = [element.get(n) for n in names]
    if all(v is None for v in values):
        return None
    try:
        return sum(int(float(v)) for v in values if v not in (None, ""))
    except ValueError:
        return None


def _totals_note(suite: Element, held: Sequence[int], display: str) -> str | None:
    """Say so when a suite's own totals disagree with the testcases it holds."""
    declared_tests = _int_attr(suite, "tests")
    if declared_tests is None:
        return None
    declared_failures = _int_attr(suite, "failures", "errors")
    # googletest's <testsuites> gives disabled= without skipped=: no claim to check
    has_skipped = suite.get("skipped") is not None
    declared_skipped = _int_attr(suite, "skipped", "disabled") if has_skipped else None
    tests, failures, skipped = held
    wrong = []
    if declared_tests != tests:
        wrong.append(f"tests={declared_tests} but holds {tests} testcase(s)")
    if declared_failures is not None and declared_failures != failures:
        wrong.append(f"failures+errors={declared_failures} but {failures} failed")
    if declared_skipped is not None and declared_skipped != skipped:
        wrong.append(f"skipped={declared_skipped} but {skipped} skipped")
    if not wrong:
        return None
    name = suite.get("name") or _local(suite.tag)
    return (
        f"{display}: suite {name!r} says {'; '.join(wrong)}; the testcases are counted "
        "(a reporter dropping pending or todo tests, or rewriting totals on reruns)"
    )


@dataclass
class _Suite:
    """A suite element met on the walk, the suite around it, and what it holds."""

    element: Element
    parent: int | None
    held: list[int] = field(default_factory=lambda: [0, 0, 0])


_CONTAINERS = ("testcase", "testsuite", "testsuites")


def _walk(root: Element, dialect: str) -> tuple[list[tuple[Element, _Context]], list[_Suite]]:
    """Every testcase with its context, wherever it sits, and every suite with the
    testcases it holds (its own and its nested suites'). A stack, never recursion."""
    cases: list[tuple[Element, _Context]] = []
    suites: list[_Suite] = []
    stack: list[tuple[Element, _Context, int | None]] = [(root, _Context(dialect), None)]
    while stack:
        element, context, parent = stack.pop()
        tag = _local(element.tag)
        if tag == "testcase":
            cases.append((element, context))
            if parent is not None:
                counted = _raw_counts(element)
                held = suites[parent].held
                for i in range(3):
                    held[i] += counted[i]
            continue
        suites.append(_Suite(element, parent))
        index = len(suites) - 1
        if tag == "testsuite":
            context = _Context(dialect, element.get("name", context.suite), context.file)
        file = element.get("file") or element.get("filepath")
        if file:
            context = _Context(dialect, context.suite, file)
        children = [c for c in element if _local(c.tag) in _CONTAINERS]
        stack.extend((c, context, index) for c in reversed(children))
    # suites were met parents first: adding each into its parent, last first, sums subtrees
    for suite in reversed(suites):
        if suite.parent is not None:
            held = suites[suite.parent].held
            for i in range(3):
                held[i] += suite.held[i]
    return cases, suites


def _relative(file: str, workspace: Path | None) -> str:
    if not file or workspace is None or not file.startswith("/"):
        return file
    for base in (workspace.resolve(), workspace):
        try:
            return Path(file).relative_to(base).as_posix()
        except ValueError:
            continue
    return file


def _read_tree(path: Path, shown: str) -> Element:
    """The parsed file; refused as soon as nesting passes MAX_DEPTH, before the rest of
    a hostile file is even read."""
    depth = 0
    root: Element | None = None
    try:
        for event, element in SafeET.iterparse(str(path), events=("start", "end")):
            if event == "end":
                depth -= 1
                continue
            depth += 1
            root = element if root is None else root
            if depth > MAX_DEPTH:
                raise ReportError(f"{shown}: elements nested deeper than {MAX_DEPTH} levels")
    except DefusedXmlException as exc:
        raise ReportError(f"{shown}: refused unsafe XML ({type(exc).__name__})") from None
    except SafeET.ParseError as exc:
        raise ReportError(f"{shown}: not a JUnit XML report ({exc})") from None
    if root is None:
        raise ReportError(f"{shown}: not a JUnit XML report (no element)")
    return root


def parse_junit_file(
    path: Path, *, display: str | None = None, workspace: Path | None = None
) -> FileReport:
    """Every test of one JUnit XML file, retries merged, with notes on lying totals.

    ``workspace`` makes absolute file paths (mocha, googletest) relative to it.
    """
    shown = display or str(path)
    size = path.stat().st_size
    if size > MAX_REPORT_BYTES:
        raise ReportError(f"{shown}: {size} bytes is over the {MAX_REPORT_BYTES} byte limit")
    root = _read_tree(path, shown)
    if _local(root.tag) not in ("testsuites", "testsuite"):
        raise ReportError(
            f"{shown}: not a JUnit XML report (root element <{_local(root.tag)}>, "
            "expected <testsuites> or <testsuite>)"
        )
    dialect = _dialect(root)
    cases, suites = _walk(root, dialect)
    tests: dict[tuple[str, str, str], _Attempts] = {}
    for element, context in cases:
        classname = element.get("classname") or ""
        name = element.get("name") or ""
        file = _relative(element.get("file") or context.file, workspace)
        key = (classname, name, file)
        if key not in tests:
            ref = runnable_name(classname, name, context, file)
            tests[key] = _Attempts(classname, name, ref)
        tests[key].tries.append(_Try(*_result_of(element), parse_seconds(element.get("time"))))
    notes = [n for s in suites if (n := _totals_note(s.element, s.held, shown))]
    merged = tuple(r.merged(dialect) for r in tests.values())
    return FileReport(merged, tuple(notes[:MAX_NOTES_PER_FILE]))


def collect_suite(suite: str, workspace: Path, files: Sequence[Path]) -> SuiteReport:
    cases: list[CaseResult] = []
    notes: list[str] = []
    names = []
    for path in files:
        display = str(path.relative_to(workspace))
        names.append(display)
        parsed = parse_junit_file(path, display=display, workspace=workspace)
        cases.extend(parsed.cases)
        notes.extend(parsed.notes)
    return SuiteReport(suite=suite, files=tuple(names), cases=tuple(cases), notes=tuple(notes))


def summary_rows(reports: Iterable[SuiteReport]) -> list[dict[str, object]]:
    """Per-suite rows and a total row, for a Prefect table artifact."""
    rows: list[dict[str, object]] = []
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "flaky": 0, "seconds": 0.0}
    for r in reports:
        row = {
            "suite": r.suite,
            "tests": r.tests,
            "passed": r.count("passed"),
            "failed": r.count("failed"),
            "skipped": r.count("skipped"),
            "errors": r.count("error"),
            "flaky": r.count("flaky"),
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


def summary_markdown(
    reports: Sequence[SuiteReport],
    *,
    slowest: int = 5,
    flaky_runs: Mapping[str, int] | None = None,
) -> str:
    """The tests artifact. ``flaky_runs`` (``suite::test`` -> runs it was flaky in, from
    the app's flaky history) adds how often each flaky test has done it before."""
    rows = summary_rows(reports)
    lines = [
        "## Tests",
        "",
        "| suite | tests | passed | failed | skipped | errors | flaky | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            "| {suite} | {tests} | {passed} | {failed} | {skipped} | {errors} | {flaky} "
            "| {seconds} |".format(**row)
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
    flaky = [(r.suite, c) for r in reports for c in r.flaky]
    if flaky:
        lines += [
            "",
            "### Flaky tests (failed, then passed on a retry)",
            "",
            "| suite | test | attempts | flaky in runs | first failure |",
            "|---|---|---:|---:|---|",
        ]
        history = flaky_runs or {}
        lines += [
            f"| {s} | `{_cell(c.id)}` | {c.attempts} | {history.get(f'{s}::{c.id}', '-')} "
            f"| {_cell(c.message)} |"
            for s, c in flaky
        ]
    notes = [n for r in reports for n in r.notes]
    if notes:
        lines += ["", "### Report totals that disagree with their testcases", ""]
        lines += [f"- {_cell(n)}" for n in notes]
    slow = sorted(
        ((r.suite, c) for r in reports for c in r.slowest(slowest)),
        key=lambda p: -(p[1].seconds or 0.0),
    )
    if slow:
        lines += ["", f"### Slowest {min(slowest, len(slow))}", "", "| suite | test | seconds |"]
        lines += ["|---|---|---:|"]
        lines += [f"| {s} | `{_cell(c.id)}` | {c.seconds or 0:.3f} |" for s, c in slow[:slowest]]
    return "\n".join(lines)
