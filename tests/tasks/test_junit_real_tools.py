"""JUnit reports written by the real tools (pytest, go test + gotestsum / go-junit-report,
Maven Surefire, jest-junit, mocha-junit-reporter, googletest + ctest) on the demo projects
in tests/junit_tools/projects, read by slipway and checked three ways: against what each
demo test is written to do, against a count made independently of the product (a DOM
walk with xml.dom.minidom), and against the tool's own summary on its console. Failed
tests' names are pasted back into the tool to show that they run exactly that test.

Each tool runs once per project source and version (tests/junit_tools caches the work
folder); a missing tool fails with what to install, it never skips.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from xml.dom import minidom

import pytest

from slipway.tasks.junit_reports import FileReport, parse_junit_file
from tests.junit_tools import ToolRun, go_binary, go_tool, node_tools, require, runners


@pytest.fixture(scope="session")
def pytest_run() -> ToolRun:
    return runners.pytest_reports()


@pytest.fixture(scope="session")
def go_run() -> ToolRun:
    return runners.go_reports()


@pytest.fixture(scope="session")
def maven_run() -> ToolRun:
    return runners.maven_reports()


@pytest.fixture(scope="session")
def jest_run() -> ToolRun:
    return runners.jest_reports()


@pytest.fixture(scope="session")
def mocha_run() -> ToolRun:
    return runners.mocha_reports()


@pytest.fixture(scope="session")
def gtest_run() -> ToolRun:
    return runners.gtest_reports()


def parsed(tool: ToolRun, report: str) -> FileReport:
    return parse_junit_file(tool.reports[report], display=report, workspace=tool.workdir)


def outcomes(report: FileReport) -> dict[str, str]:
    return {c.id: c.outcome for c in report.cases}


def counts(report: FileReport) -> Counter[str]:
    return Counter(c.outcome for c in report.cases)


def dom_count(path: Path) -> dict[str, int]:
    """An independent count: every <testcase> element by DOM search, and how many name
    distinct tests (classname, name, file) and hold a failure, error or skipped child."""
    document = minidom.parse(str(path))  # the reports here are the tools', not hostile
    elements = document.getElementsByTagName("testcase")
    distinct = {
        (e.getAttribute("classname"), e.getAttribute("name"), e.getAttribute("file"))
        for e in elements
    }
    children = [{c.tagName for c in e.childNodes if c.nodeType == c.ELEMENT_NODE} for e in elements]
    return {
        "elements": len(elements),
        "distinct": len(distinct),
        "failure": sum("failure" in c for c in children),
        "error": sum("error" in c for c in children),
        "skipped": sum("skipped" in c for c in children),
    }


def summary_numbers(text: str, pattern: str) -> dict[str, int]:
    """``{"failed": 2, ...}`` from a tool's (last) summary line."""
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    assert matches, f"no summary line matching {pattern!r} in:\n{text[-2000:]}"
    match = matches[-1]
    return {k: int(v) for k, v in match.groupdict(default="0").items()}


# ---- pytest -----------------------------------------------------------------------------

PYTEST_EXPECTED = {
    "tests/test_flaky.py::test_flaky_once": "flaky",
    "tests/test_x.py::test_passes": "passed",
    "tests/test_x.py::test_fails": "failed",
    "tests/test_x.py::test_skipped": "skipped",
    "tests/test_x.py::test_errors": "error",
    # <skipped> comes before <error> in this testcase: precedence, not order, decides
    "tests/test_x.py::test_skipped_with_broken_teardown": "error",
    "tests/test_x.py::test_known_bug": "skipped",
    "tests/test_x.py::test_param[1]": "passed",
    "tests/test_x.py::test_param[2]": "passed",
    "tests/test_x.py::TestY::test_z": "failed",
}


@pytest.mark.parametrize("family", ["xunit2", "xunit1"])
def test_pytest_report(pytest_run, family):
    report = parsed(pytest_run, family)
    independent = dom_count(pytest_run.reports[family])
    tool = summary_numbers(
        pytest_run.output[family],
        r"(?P<failed>\d+) failed, (?P<passed>\d+) passed, (?P<skipped>\d+) skipped, "
        r"(?P<xfailed>\d+) xfailed, (?P<errors>\d+) errors, (?P<rerun>\d+) rerun",
    )

    assert outcomes(report) == PYTEST_EXPECTED  # node ids, pasteable: see below
    assert len(report.cases) == independent["distinct"] == independent["elements"] - tool["rerun"]
    n = counts(report)
    assert n["failed"] == tool["failed"] == independent["failure"]
    assert n["error"] == tool["errors"] == independent["error"]
    assert n["passed"] + n["flaky"] == tool["passed"]  # pytest counts a rerun pass as passed
    # pytest counts the skipped test whose teardown broke under both skipped and errors
    assert n["skipped"] == tool["skipped"] + tool["xfailed"] - 1
    flaky = next(c for c in report.cases if c.outcome == "flaky")
    assert flaky.attempts == 1 + tool["rerun"]
    teardown = next(c for c in report.cases if c.name == "test_skipped_with_broken_teardown")
    assert "teardown exploded" in teardown.message


def test_pytest_node_ids_run_that_test_again(pytest_run):
    """A failed test's name, pasted into pytest, runs exactly that test."""
    failed = [c.id for c in parsed(pytest_run, "xunit2").cases if c.outcome == "failed"]
    assert failed == ["tests/test_x.py::test_fails", "tests/test_x.py::TestY::test_z"]

    rerun = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *failed],
        cwd=pytest_run.workdir,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        check=False,
    )

    assert re.search(r"^2 failed in ", rerun.stdout, re.MULTILINE), rerun.stdout[-2000:]


# ---- Go ---------------------------------------------------------------------------------

GO_PACKAGE = "example.com/calc/calc"


def test_go_junit_report(go_run):
    report = parsed(go_run, "go-junit-report")
    verbose = go_run.output["go test -v"]
    tool = Counter(re.findall(r"--- (PASS|FAIL|SKIP): ", verbose))

    assert outcomes(report) == {
        f"TestAdd ({GO_PACKAGE})": "passed",
        f"TestSubtractWrongly ({GO_PACKAGE})": "failed",
        f"TestSkipped ({GO_PACKAGE})": "skipped",
        f"TestTable ({GO_PACKAGE})": "failed",
        f"TestTable/positive ({GO_PACKAGE})": "passed",
        f"TestTable/negative ({GO_PACKAGE})": "failed",
        f"TestFlaky ({GO_PACKAGE})": "passed",  # not flaky without its marker variable
    }
    n = counts(report)
    assert (n["passed"], n["failed"], n["skipped"]) == (tool["PASS"], tool["FAIL"], tool["SKIP"])
    assert len(report.cases) == dom_count(go_run.reports["go-junit-report"])["distinct"]
    negative = next(c for c in report.cases if c.name == "TestTable/negative")
    assert "-1 + -1 is not -3" in negative.message  # the text, not go's bare "Failed"


def test_gotestsum_reruns_make_one_flaky_test(go_run):
    """--rerun-fails writes every attempt as its own testcase: merged per test, a pass
    after a failure is flaky, three failures are one failed test."""
    report = parsed(go_run, "gotestsum")
    tool = summary_numbers(
        go_run.output["gotestsum"],
        r"^DONE (?P<runs>\d+) runs, (?P<tests>\d+) tests, (?P<skipped>\d+) skipped, "
        r"(?P<failures>\d+) failures",
    )
    independent = dom_count(go_run.reports["gotestsum"])
    cases = {c.id: c for c in report.cases}

    flaky = cases[f"TestFlaky ({GO_PACKAGE})"]
    assert (flaky.outcome, flaky.attempts) == ("flaky", 2)
    assert "fails the first time only" in flaky.message
    wrong = cases[f"TestSubtractWrongly ({GO_PACKAGE})"]
    assert (wrong.outcome, wrong.attempts) == ("failed", tool["runs"])
    assert len(report.cases) == independent["distinct"] == 7
    assert sum(c.attempts for c in report.cases) == tool["tests"] == independent["elements"]
    failed_attempts = sum(c.attempts for c in report.cases if c.outcome == "failed")
    assert failed_attempts + (flaky.attempts - 1) == tool["failures"] == independent["failure"]
    assert counts(report)["skipped"] == tool["skipped"]


def test_go_names_run_that_test_again(go_run):
    """``TestTable/negative (package)`` is what `go test -run ... package` takes."""
    report = parsed(go_run, "go-junit-report")
    negative = next(c for c in report.cases if c.name == "TestTable/negative")
    test, package = re.fullmatch(r"(\S+) \((\S+)\)", negative.id).groups()  # type: ignore[union-attr]

    rerun = subprocess.run(
        [go_binary(), "test", "-count=1", "-v", "-run", f"^{test.replace('/', '$/^')}$", package],
        cwd=go_run.workdir,
        capture_output=True,
        text=True,
        check=False,
    )

    ran = re.findall(r"--- (?:PASS|FAIL): (\S+)", rerun.stdout)
    assert sorted(ran) == ["TestTable", "TestTable/negative"], rerun.stdout
    assert go_tool("gotestsum").is_file()


# ---- Maven Surefire ---------------------------------------------------------------------


def test_surefire_report(maven_run):
    report = parsed(maven_run, "surefire")
    tool = summary_numbers(
        maven_run.output["mvn"],
        r"Tests run: (?P<tests>\d+), Failures: (?P<failures>\d+), Errors: (?P<errors>\d+), "
        r"Skipped: (?P<skipped>\d+), Flakes: (?P<flakes>\d+)\s*$",
    )
    cases = {c.id: c for c in report.cases}

    assert outcomes(report) == {
        "demo.CalculatorTest#flakyOnce": "flaky",
        "demo.CalculatorTest#throwsUnexpectedly": "error",
        "demo.CalculatorTest#subtractsWrongly": "failed",
        "demo.CalculatorTest#adds": "passed",
        "demo.CalculatorTest#disabledForNow": "skipped",
        "demo.CalculatorTest#assumedAway": "skipped",
        "demo.CalculatorTest$Division#dividesByTwo": "passed",
    }
    n = counts(report)
    assert (
        len(report.cases) == tool["tests"] == dom_count(maven_run.reports["surefire"])["distinct"]
    )
    assert (n["failed"], n["error"], n["skipped"], n["flaky"]) == (
        tool["failures"],
        tool["errors"],
        tool["skipped"],
        tool["flakes"],
    )
    assert cases["demo.CalculatorTest#flakyOnce"].attempts == 2
    assert "fails the first time only" in cases["demo.CalculatorTest#flakyOnce"].message
    assert cases["demo.CalculatorTest#subtractsWrongly"].attempts == 3  # 1 + 2 reruns
    # Surefire's reruns rewrite the suite's totals (tests="2"): said, not believed
    assert len(report.notes) == 1 and "tests=2 but holds 7 testcase(s)" in report.notes[0]


# ---- jest + jest-junit ------------------------------------------------------------------

JEST_TESTS = {
    "res .json(object) should send a json body": "passed",
    "res .json(object) should set the content type": "failed",
    "res .json(object) should honour the json spaces setting": "skipped",
    # jest-junit writes test.todo as a plain pass and leaves it out of its totals
    "res .json(object) should escape html characters": "passed",
    "passes on the second try": "passed",  # jest.retryTimes leaves no trace in the report
}


def test_jest_junit_default_names_are_not_doubled(jest_run):
    report = parsed(jest_run, "default")
    tool = summary_numbers(
        jest_run.output["default"],
        r"^Tests:\s+(?P<failed>\d+) failed, (?P<skipped>\d+) skipped, (?P<todo>\d+) todo, "
        r"(?P<passed>\d+) passed, (?P<total>\d+) total",
    )

    assert outcomes(report) == JEST_TESTS
    assert not any("::" in c.id for c in report.cases)
    n = counts(report)
    assert len(report.cases) == tool["total"] == dom_count(jest_run.reports["default"])["distinct"]
    assert (n["failed"], n["skipped"], n["passed"]) == (
        tool["failed"],
        tool["skipped"],
        tool["passed"] + tool["todo"],
    )
    assert any("suite 'res' says tests=3 but holds 4 testcase(s)" in note for note in report.notes)


def test_jest_junit_file_attribute_gives_a_runnable_name(jest_run):
    report = parsed(jest_run, "file")
    failed = [c.id for c in report.cases if c.outcome == "failed"]
    assert failed == ["test/res.json.test.js > res .json(object) should set the content type"]

    file, name = failed[0].split(" > ", 1)
    modules = node_tools()
    rerun = subprocess.run(
        # -t takes a pattern: the name, escaped, as a developer pastes it into the command
        ["node", str(modules / "jest" / "bin" / "jest.js"), "--ci", file, "-t", re.escape(name)],
        cwd=jest_run.workdir,
        capture_output=True,
        text=True,
        check=False,
    )

    assert re.search(r"^Tests:\s+1 failed, 3 skipped, 4 total", rerun.stderr, re.M), rerun.stderr


# ---- mocha + mocha-junit-reporter -------------------------------------------------------


def test_mocha_junit_reporter_drops_pending_tests_and_says_so(mocha_run):
    default = parsed(mocha_run, "default")
    pending = parsed(mocha_run, "pending")
    tool = summary_numbers(
        mocha_run.output["spec"],
        r"(?P<passing>\d+) passing.*\n\s+(?P<pending>\d+) pending\n\s+(?P<failing>\d+) failing",
    )

    assert outcomes(pending) == {
        "test/router.test.js > Router matches a plain path": "passed",
        "test/router.test.js > Router matches a parameter": "failed",
        "test/router.test.js > Router matches a regular expression": "skipped",
        "test/router.test.js > Router decodes the path": "skipped",
    }
    n = counts(pending)
    assert (n["passed"], n["skipped"], n["failed"]) == (
        tool["passing"],
        tool["pending"],
        tool["failing"],
    )
    assert not pending.notes
    # without includePending=true the pending tests vanish from the testcases only
    assert len(default.cases) == dom_count(mocha_run.reports["default"])["elements"] == 2
    assert any("'Router' says tests=4 but holds 2 testcase(s)" in n for n in default.notes)


# ---- googletest + ctest -----------------------------------------------------------------


def test_googletest_disabled_and_skipped_are_never_passed(gtest_run):
    report = parsed(gtest_run, "gtest")
    own = gtest_run.output["gtest"]
    tool = {
        "passed": int(re.search(r"\[  PASSED  \] (\d+) test", own).group(1)),  # type: ignore[union-attr]
        "failed": int(re.search(r"\[  FAILED  \] (\d+) tests?, listed", own).group(1)),  # type: ignore[union-attr]
        "skipped": int(re.search(r"\[  SKIPPED \] (\d+) tests?, listed", own).group(1)),  # type: ignore[union-attr]
        "disabled": int(re.search(r"YOU HAVE (\d+) DISABLED TESTS?", own).group(1)),  # type: ignore[union-attr]
    }

    assert outcomes(report) == {
        "Calc.Adds": "passed",
        "Calc.SubtractsWrongly": "failed",
        "Calc.DISABLED_Divides": "skipped",
        "Calc.SkipsOnThisHost": "skipped",
        "Calc.Throws": "failed",
    }
    n = counts(report)
    assert (n["passed"], n["failed"]) == (tool["passed"], tool["failed"])
    assert n["skipped"] == tool["skipped"] + tool["disabled"]
    assert len(report.cases) == dom_count(gtest_run.reports["gtest"])["distinct"]
    assert next(c for c in report.cases if "DISABLED" in c.id).message == "disabled"


def test_ctest_disabled_test_is_never_passed(gtest_run):
    report = parsed(gtest_run, "ctest")
    tool = summary_numbers(
        gtest_run.output["ctest"],
        r"(?P<percent>\d+)% tests passed, (?P<failed>\d+) tests failed out of (?P<run>\d+)",
    )

    assert outcomes(report) == {
        "Calc.Adds": "passed",
        "Calc.SubtractsWrongly": "failed",
        "Calc.Divides": "skipped",  # status="disabled", no child element at all
        "Calc.SkipsOnThisHost": "skipped",
        "Calc.Throws": "failed",
    }
    n = counts(report)
    assert n["failed"] == tool["failed"]
    # ctest's "out of" leaves the disabled test out; the report holds it
    assert len(report.cases) == tool["run"] + 1 == dom_count(gtest_run.reports["ctest"])["elements"]


def test_googletest_names_run_that_test_again(gtest_run):
    failed = [c.id for c in parsed(gtest_run, "gtest").cases if c.outcome == "failed"]

    rerun = subprocess.run(
        [str(gtest_run.workdir / "build" / "calc_test"), f"--gtest_filter={failed[0]}"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert re.search(r"^\[==========\] 1 test from 1 test suite ran", rerun.stdout, re.M)
    assert f"[  FAILED  ] {failed[0]}" in rerun.stdout


# ---- PHPUnit: nested suites -------------------------------------------------------------


@pytest.fixture(scope="session")
def phpunit_run() -> ToolRun:
    return runners.phpunit_reports()


def test_phpunit_nested_suites_are_walked(phpunit_run):
    report = parsed(phpunit_run, "phpunit")
    tool = summary_numbers(
        phpunit_run.output["phpunit"],
        r"^Tests: (?P<tests>\d+), Assertions: \d+, Errors: (?P<errors>\d+), "
        r"Failures: (?P<failures>\d+), Skipped: (?P<skipped>\d+)\.",
    )
    document = minidom.parse(str(phpunit_run.reports["phpunit"]))
    deepest = max(
        len([a for a in _ancestors(e) if a.nodeName == "testsuite"])
        for e in document.getElementsByTagName("testcase")
    )

    assert deepest == 4  # the case sits in suite, suite, class and data-provider suites
    assert outcomes(report) == {
        "CalcTest::testAdds": "passed",
        "CalcTest::testSubtractsWrongly": "failed",
        "CalcTest::testSkipped": "skipped",
        "CalcTest::testThrows": "error",
        'CalcTest::testSums with data set "small"': "passed",
        'CalcTest::testSums with data set "wrong"': "failed",
    }
    n = counts(report)
    assert (len(report.cases), n["error"], n["failed"], n["skipped"]) == (
        tool["tests"],
        tool["errors"],
        tool["failures"],
        tool["skipped"],
    )
    assert report.notes == ()


def _ancestors(node: minidom.Node) -> list[minidom.Node]:
    found = []
    while node.parentNode is not None:
        node = node.parentNode
        found.append(node)
    return found


def test_phpunit_names_run_that_test_again(phpunit_run):
    failed = [c.id for c in parsed(phpunit_run, "phpunit").cases if c.outcome == "failed"]

    rerun = subprocess.run(
        ["phpunit", "--filter", re.escape(failed[0])],
        cwd=phpunit_run.workdir,
        capture_output=True,
        text=True,
        check=False,
    )

    assert re.search(r"^Tests: 1, Assertions: 1, Failures: 1\.", rerun.stdout, re.M), rerun.stdout


def test_a_missing_tool_fails_and_says_what_to_install():
    with pytest.raises(
        pytest.fail.Exception, match="slipway-no-such-tool is not installed: apt-get install it"
    ):
        require("slipway-no-such-tool", "apt-get install it")
