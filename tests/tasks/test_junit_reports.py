"""JUnit reports: the parser's rules on the layouts and quirks real tools write (each
rule also has a real tool's report in test_junit_real_tools.py), hostile XML refused
quickly and by name, the summary artifact, and the stage's verdict (flaky passes, an
empty report fails unless allow_empty)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from slipway.exceptions import ReportError, StageFailed
from slipway.report import StageOutcome, stage_line
from slipway.spec import Stage
from slipway.tasks import junit_reports
from slipway.tasks.flaky_history import (
    MAX_RUNS_PER_TEST,
    read_flaky_history,
    record_flaky_tests,
)
from slipway.tasks.junit_reports import (
    CaseResult,
    FileReport,
    SuiteReport,
    collect_suite,
    parse_junit_file,
    parse_seconds,
    summary_markdown,
    summary_rows,
)
from slipway.tasks.stages import StageContext, execute_stage

SAMPLE_TESTS = """
import time

import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")


def test_passes():
    time.sleep(0.05)


def test_fails():
    assert 1 + 1 == 3, "arithmetic | is hard"


@pytest.mark.skip(reason="not on this platform")
def test_skipped():
    pass


def test_errors(broken):
    pass
"""


@pytest.fixture(scope="module")
def pytest_report(tmp_path_factory) -> Path:
    """A JUnit file written by a real pytest run (pass, fail, skip, error)."""
    root = tmp_path_factory.mktemp("sample-project")
    (root / "test_sample.py").write_text(SAMPLE_TESTS)
    report = root / "reports" / "unit.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--rootdir={root}",
            f"--junitxml={report}",
            "test_sample.py",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        # no third-party plugins: they only slow the run down and could change the report
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert result.returncode == 1, result.stdout + result.stderr  # one test failed, as meant
    return report


def test_real_pytest_report(pytest_report):
    cases = {c.name: c for c in parse_junit_file(pytest_report).cases}

    assert {n: c.outcome for n, c in cases.items()} == {
        "test_passes": "passed",
        "test_fails": "failed",
        "test_skipped": "skipped",
        "test_errors": "error",
    }
    assert cases["test_passes"].id == "test_sample.py::test_passes"
    assert cases["test_passes"].message == ""
    assert cases["test_fails"].message.startswith("AssertionError: arithmetic | is hard")
    assert cases["test_skipped"].message == "not on this platform"
    assert "fixture exploded" in cases["test_errors"].message
    assert (cases["test_passes"].seconds or 0.0) >= 0.05


def test_collect_suite_counts_and_slowest(pytest_report):
    workspace = pytest_report.parent.parent

    report = collect_suite("unit", workspace, [pytest_report])

    assert report.files == ("reports/unit.xml",)
    assert report.tests == 4
    assert [report.count(o) for o in ("passed", "failed", "skipped", "error")] == [1, 1, 1, 1]
    assert [c.name for c in report.problems] == ["test_fails", "test_errors"]
    assert report.slowest(1)[0].name == "test_passes"
    assert report.seconds >= 0.05


def test_report_with_a_testsuite_root(tmp_path):
    path = tmp_path / "one.xml"
    path.write_text(
        '<testsuite name="one"><testcase classname="c" name="t" time="1.5"/>'
        '<testcase name="bare"/></testsuite>'
    )

    cases = parse_junit_file(path).cases

    assert cases == (
        CaseResult("c", "t", 1.5, "passed", ref="c::t"),
        CaseResult("", "bare", None, "passed", ref="bare"),
    )
    assert cases[1].id == "bare"


def billion_laughs() -> str:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE testsuites [\n'
        + "\n".join(entities)
        + '\n]>\n<testsuites><testsuite name="s"><testcase name="&lol9;"/></testsuite>'
        "</testsuites>\n"
    )


def test_entity_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_text(billion_laughs())

    with pytest.raises(ReportError, match="refused unsafe XML") as caught:
        parse_junit_file(path, display="reports/bomb.xml")

    assert str(caught.value).startswith("reports/bomb.xml: ")


def test_external_entity_is_refused_and_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:TOP-SECRET-CONTENT\n")
    path = tmp_path / "xxe.xml"
    path.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE t [<!ENTITY x SYSTEM "{secret.as_uri()}">'
        '<!ENTITY p SYSTEM "file:///etc/passwd">]>\n'
        '<testsuite name="s"><testcase name="t"><failure message="&x;">&p;</failure>'
        "</testcase></testsuite>\n"
    )

    with pytest.raises(ReportError, match="refused unsafe XML") as caught:
        parse_junit_file(path)

    assert "TOP-SECRET-CONTENT" not in str(caught.value)
    assert "root:" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('<testsuite><testcase name="t">', "not a JUnit XML report"),
        ("not xml at all", "not a JUnit XML report"),
        ("", "not a JUnit XML report"),
        ("<html><body/></html>", "not a JUnit XML report"),
    ],
    ids=["truncated", "text", "empty", "html-root"],
)
def test_unreadable_reports_name_the_file(tmp_path, content, expected):
    path = tmp_path / "report.xml"
    path.write_text(content)

    with pytest.raises(ReportError) as caught:
        parse_junit_file(path, display="reports/report.xml")

    assert str(caught.value).startswith(f"reports/report.xml: {expected}")


def test_oversized_report_is_refused_unread(tmp_path, monkeypatch):
    # Shrinking the limit is what makes this fast: writing a real 50 MiB file would cost
    # far more than the check it exercises. The function reads the constant at call time.
    monkeypatch.setattr(junit_reports, "MAX_REPORT_BYTES", 100)
    path = tmp_path / "big.xml"
    path.write_text('<testsuite name="s">' + '<testcase name="t"/>' * 10 + "</testsuite>")

    with pytest.raises(ReportError, match=r"big.xml: \d+ bytes is over the 100 byte limit"):
        parse_junit_file(path)


def suites() -> list[SuiteReport]:
    unit = SuiteReport(
        "unit",
        ("reports/unit.xml",),
        (
            CaseResult("pkg.test_a", "test_ok", 0.25, "passed"),
            CaseResult("pkg.test_a", "test_pipe", 1.5, "failed", "expected a | b\ngot c"),
            CaseResult("pkg.test_b", "test_skip", 0.0, "skipped", "later"),
        ),
    )
    integration = SuiteReport(
        "integration",
        ("reports/it.xml",),
        (
            CaseResult("it", "test_db", 3.0, "error", "connection refused"),
            CaseResult("it", "test_api", 0.5, "passed"),
        ),
    )
    return [unit, integration]


def test_summary_rows_total():
    rows = summary_rows(suites())

    assert rows == [
        {
            "suite": "unit",
            "tests": 3,
            "passed": 1,
            "failed": 1,
            "skipped": 1,
            "errors": 0,
            "flaky": 0,
            "seconds": 1.75,
        },
        {
            "suite": "integration",
            "tests": 2,
            "passed": 1,
            "failed": 0,
            "skipped": 0,
            "errors": 1,
            "flaky": 0,
            "seconds": 3.5,
        },
        {
            "suite": "TOTAL",
            "tests": 5,
            "passed": 2,
            "failed": 1,
            "skipped": 1,
            "errors": 1,
            "flaky": 0,
            "seconds": 5.25,
        },
    ]
    assert summary_rows([]) == [
        {
            "suite": "TOTAL",
            "tests": 0,
            "passed": 0,
            "failed": 0,
            "skipped": 0,
            "errors": 0,
            "flaky": 0,
            "seconds": 0.0,
        },
    ]


def test_summary_markdown():
    text = summary_markdown(suites(), slowest=2)
    lines = text.splitlines()

    assert lines[0] == "## Tests"
    assert "| unit | 3 | 1 | 1 | 1 | 0 | 0 | 1.75 |" in lines
    assert "| TOTAL | 5 | 2 | 1 | 1 | 1 | 0 | 5.25 |" in lines
    failed = lines.index("### Failed tests")
    assert lines[failed + 2 : failed + 6] == [
        "| suite | test | outcome | message |",
        "|---|---|---|---|",
        "| unit | `pkg.test_a::test_pipe` | failed | expected a \\| b got c |",
        "| integration | `it::test_db` | error | connection refused |",
    ]
    slow = lines.index("### Slowest 2")
    assert lines[slow + 4 :] == [
        "| integration | `it::test_db` | 3.000 |",
        "| unit | `pkg.test_a::test_pipe` | 1.500 |",
    ]
    # every table row keeps its column count: no unescaped '|' leaked from a message
    for line in lines:
        if line.startswith("| unit | `pkg.test_a::test_pipe` | failed"):
            assert line.replace("\\|", "").count("|") == 5


def test_summary_markdown_without_failures():
    passing = SuiteReport("unit", (), (CaseResult("c", "t", 0.1, "passed"),))

    text = summary_markdown([passing])

    assert "### Failed tests" not in text
    assert "### Slowest 1" in text


# ---- the parser's rules, on the layouts real tools write ----------------------------------


def parse_text(tmp_path: Path, text: str, name: str = "report.xml") -> FileReport:
    path = tmp_path / name
    path.write_text(text)
    return parse_junit_file(path, display=f"reports/{name}")


def by_name(report: FileReport) -> dict[str, str]:
    return {c.name: c.outcome for c in report.cases}


@pytest.mark.parametrize(
    "children",
    [
        '<skipped message="s"/><error message="teardown broke"/>',  # pytest's own order
        '<error message="teardown broke"/><skipped message="s"/>',
    ],
    ids=["skipped-first", "error-first"],
)
def test_outcome_is_decided_by_precedence_not_order(tmp_path, children):
    report = parse_text(
        tmp_path, f'<testsuite><testcase name="t">{children}</testcase></testsuite>'
    )

    assert by_name(report) == {"t": "error"}
    assert report.cases[0].message == "teardown broke"


def test_failure_outranks_error_and_skipped(tmp_path):
    report = parse_text(
        tmp_path,
        '<testsuite><testcase name="t"><skipped/><error message="e"/><failure message="f"/>'
        "</testcase></testsuite>",
    )

    assert (report.cases[0].outcome, report.cases[0].message) == ("failed", "f")


@pytest.mark.parametrize(
    "attributes",
    [
        'status="notrun" result="suppressed"',  # googletest's DISABLED_
        'status="disabled"',  # ctest
        'result="suppressed"',
        'status="notrun"',
    ],
)
def test_disabled_tests_are_skipped_never_passed(tmp_path, attributes):
    report = parse_text(tmp_path, f'<testsuite><testcase name="t" {attributes}/></testsuite>')

    assert (report.cases[0].outcome, report.cases[0].message) == ("skipped", "disabled")


LAYOUTS = {
    # <testsuites> inside <testsuites>: merged reports, jest projects
    "nested-testsuites": (
        '<testsuites name="all"><testsuites name="unit"><testsuite name="a">'
        '<testcase name="t1"/></testsuite></testsuites><testsuites name="it">'
        '<testsuite name="b"><testcase name="t2"><failure/></testcase></testsuite>'
        "</testsuites></testsuites>"
    ),
    # <testcase> straight under <testsuites>
    "case-under-testsuites": '<testsuites><testcase name="t1"/><testcase name="t2"><failure/>'
    "</testcase></testsuites>",
    # <testsuite> inside <testsuite> (PHPUnit, Ant merges), cases at two levels
    "nested-testsuite": '<testsuite name="root"><testcase name="t1"/><testsuite name="inner">'
    '<testsuite name="deeper"><testcase name="t2"><failure/></testcase></testsuite>'
    "</testsuite></testsuite>",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_testcase_is_found_wherever_it_sits(tmp_path, layout):
    report = parse_text(tmp_path, LAYOUTS[layout])

    assert by_name(report) == {"t1": "passed", "t2": "failed"}


def test_namespaced_elements_are_read(tmp_path):
    report = parse_text(
        tmp_path,
        '<x:testsuite xmlns:x="urn:junit"><x:testcase name="t"><x:failure message="m"/>'
        "</x:testcase></x:testsuite>",
    )

    assert by_name(report) == {"t": "failed"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1.5", 1.5),
        ("1,234.5", 1234.5),  # thousands separators (some .NET and Java tools)
        ("1.5s", 1.5),
        ("", None),
        ("N/A", None),
        ("NaN", None),
        ("-1", None),
        ("inf", None),
        (None, None),
    ],
)
def test_time_values_real_tools_write_are_tolerated(value, seconds):
    assert parse_seconds(value) == seconds


def test_an_unknown_time_never_fails_the_report(tmp_path):
    report = parse_text(
        tmp_path,
        '<testsuite time="N/A"><testcase name="a" time="N/A"/><testcase name="b" time="1.5s"/>'
        '<testcase name="c" time=""/></testsuite>',
    )
    suite = SuiteReport("unit", ("r.xml",), report.cases)

    assert [c.seconds for c in report.cases] == [None, 1.5, None]
    assert suite.seconds == 1.5
    assert [c.name for c in suite.slowest()] == ["b"]


@pytest.mark.parametrize("depth", [101, 200_000])
def test_hostile_nesting_is_a_report_error_naming_the_file(tmp_path, depth):
    text = "<testsuites>" * depth + '<testcase name="t"/>' + "</testsuites>" * depth

    with pytest.raises(ReportError) as caught:
        parse_text(tmp_path, text, "deep.xml")

    assert str(caught.value) == "reports/deep.xml: elements nested deeper than 100 levels"


def test_nesting_within_the_limit_is_read(tmp_path):
    text = "<testsuites>" * 99 + '<testcase name="t"/>' + "</testsuites>" * 99

    assert by_name(parse_text(tmp_path, text)) == {"t": "passed"}


def test_failed_then_passed_in_repeated_testcases_is_flaky(tmp_path):
    """Retries written as repeated testcases (gotestsum --rerun-fails, retry plugins)."""
    report = parse_text(
        tmp_path,
        '<testsuite name="p"><testcase classname="p" name="A"><failure message="boom"/></testcase>'
        '<testcase classname="p" name="B"><failure/></testcase>'
        '<testcase classname="p" name="A"/>'
        '<testcase classname="p" name="B"><failure/></testcase></testsuite>',
    )
    cases = {c.name: c for c in report.cases}

    assert (cases["A"].outcome, cases["A"].attempts, cases["A"].message) == ("flaky", 2, "boom")
    assert (cases["B"].outcome, cases["B"].attempts) == ("failed", 2)


def test_passed_then_failed_is_a_failure_not_flaky(tmp_path):
    """A retry tool stops at the first pass: a failure after it is a real one (go -count=2)."""
    report = parse_text(
        tmp_path,
        '<testsuite><testcase name="A"/><testcase name="A"><failure/></testcase></testsuite>',
    )

    assert (report.cases[0].outcome, report.cases[0].attempts) == ("failed", 2)


def test_skipped_then_passed_is_not_flaky(tmp_path):
    """Only a failed attempt makes a test flaky; a skip before a pass does not."""
    report = parse_text(
        tmp_path,
        '<testsuite><testcase name="A"><skipped/></testcase><testcase name="A"/></testsuite>',
    )

    assert (report.cases[0].outcome, report.cases[0].attempts) == ("skipped", 2)


def test_surefire_flaky_and_rerun_elements(tmp_path):
    report = parse_text(
        tmp_path,
        '<testsuite name="d.T"><testcase classname="d.T" name="f">'
        '<flakyFailure message="first"/><flakyError message="second"/></testcase>'
        '<testcase classname="d.T" name="g"><failure message="x"/><rerunFailure/>'
        "</testcase></testsuite>",
    )
    cases = {c.name: c for c in report.cases}

    assert (cases["f"].outcome, cases["f"].attempts, cases["f"].message) == ("flaky", 3, "first")
    assert (cases["g"].outcome, cases["g"].attempts) == ("failed", 2)
    assert cases["g"].id == "d.T#g"


def test_totals_that_disagree_are_noted_not_believed(tmp_path):
    report = parse_text(
        tmp_path,
        '<testsuites tests="4" failures="1" skipped="2"><testsuite name="Router" tests="4" '
        'failures="1" skipped="2"><testcase name="a"/><testcase name="b"><failure/>'
        "</testcase></testsuite></testsuites>",
    )

    assert len(report.cases) == 2
    assert report.notes == (
        "reports/report.xml: suite 'testsuites' says tests=4 but holds 2 testcase(s); "
        "skipped=2 but 0 skipped; the testcases are counted (a reporter dropping pending or "
        "todo tests, or rewriting totals on reruns)",
        "reports/report.xml: suite 'Router' says tests=4 but holds 2 testcase(s); skipped=2 "
        "but 0 skipped; the testcases are counted (a reporter dropping pending or todo "
        "tests, or rewriting totals on reruns)",
    )


def test_totals_that_agree_say_nothing(tmp_path):
    report = parse_text(
        tmp_path,
        '<testsuites tests="3" failures="1" errors="0" skipped="1"><testsuite tests="3" '
        'failures="1" skipped="1"><testcase name="a"/><testcase name="b"><failure/></testcase>'
        '<testcase name="c"><skipped/></testcase></testsuite></testsuites>',
    )

    assert report.notes == ()


def test_todo_marked_by_the_reporter_is_skipped(tmp_path):
    report = parse_text(tmp_path, '<testsuite><testcase name="later" status="todo"/></testsuite>')

    assert by_name(report) == {"later": "skipped"}


@pytest.mark.parametrize(
    ("suite_name", "classname", "name", "file", "expected"),
    [
        ("pytest", "tests.test_x.TestY", "test_z", "", "tests/test_x.py::TestY::test_z"),
        ("pytest", "tests.test_x", "test_a[1]", "", "tests/test_x.py::test_a[1]"),
        (
            "pytest",
            "tests.test_x.TestY",
            "test_z",
            "tests/test_x.py",
            "tests/test_x.py::TestY::test_z",
        ),
        ("x", "res sends", "res sends", "", "res sends"),  # jest-junit's doubled default
        ("x", "res sends", "res sends", "test/res.js", "test/res.js > res sends"),
        # jest-junit with classNameTemplate "{classname}" and titleTemplate "{title}"
        ("jest", "res .json()", "sends", "test/res.js", "test/res.js > res .json() sends"),
        ("x", "a.b.C", "m", "", "a.b.C::m"),
        ("x", "CalcTest", "testAdds", "tests/CalcTest.php", "CalcTest::testAdds"),  # PHPUnit
    ],
)
def test_names_to_paste_back(tmp_path, suite_name, classname, name, file, expected):
    file_attribute = f' file="{file}"' if file else ""
    report = parse_text(
        tmp_path,
        # "jest" stands for a jest-junit report, whose root jest-junit names "jest tests"
        f'<testsuites name="{suite_name} tests"><testsuite name="{suite_name}">'
        f'<testcase classname="{classname}" '
        f'name="{name}"{file_attribute}/></testsuite></testsuites>',
    )

    assert report.cases[0].id == expected


def test_absolute_file_paths_become_relative_to_the_workspace(tmp_path):
    path = tmp_path / "reports" / "mocha.xml"
    path.parent.mkdir()
    path.write_text(
        f'<testsuites name="Mocha Tests"><testsuite name="Router" file="{tmp_path}/test/r.js">'
        '<testcase name="Router matches" classname="matches"/></testsuite></testsuites>'
    )

    report = collect_suite("unit", tmp_path, [path])

    assert report.cases[0].id == "test/r.js > Router matches"


# ---- the summary artifact and the CLI's stage table -------------------------------------


def flaky_suite() -> SuiteReport:
    return SuiteReport(
        "unit",
        ("reports/unit.xml",),
        (
            CaseResult("p", "TestOk", 0.1, "passed", ref="TestOk (p)"),
            CaseResult("p", "TestFlaky", 0.2, "flaky", "fails first", 2, "TestFlaky (p)"),
            CaseResult("p", "TestSkip", None, "skipped", "disabled", ref="TestSkip (p)"),
        ),
        notes=("reports/unit.xml: suite 'p' says tests=2 but holds 3 testcase(s)",),
    )


def test_summary_lists_flaky_tests_with_attempts_history_and_notes():
    text = summary_markdown([flaky_suite()], flaky_runs={"unit::TestFlaky (p)": 4})
    lines = text.splitlines()

    assert "| unit | 3 | 1 | 0 | 1 | 0 | 1 | 0.3 |" in lines
    flaky = lines.index("### Flaky tests (failed, then passed on a retry)")
    assert lines[flaky + 4] == "| unit | `TestFlaky (p)` | 2 | 4 | fails first |"
    assert "- reports/unit.xml: suite 'p' says tests=2 but holds 3 testcase(s)" in lines
    assert "### Failed tests" not in text


def test_stage_table_line_shows_the_suite_counts():
    outcome = StageOutcome("unit", "passed", 1.5, group="test", tests=flaky_suite())

    assert stage_line(outcome) == (
        "    unit               ✅ passed        1.50 s  [1 passed, 1 skipped, 1 flaky]"
    )
    assert stage_line(StageOutcome("lint", "passed", 0.2)) == (
        "  lint               ✅ passed        0.20 s"
    )


# ---- the stage's verdict ----------------------------------------------------------------


def run_stage(workspace: Path, **fields: object) -> object:
    stage = Stage.model_validate({"name": "unit", **fields})
    ctx = StageContext(workspace=workspace, env=dict(os.environ), default_timeout=120)
    return execute_stage(stage, ctx, log=LOG.append)


LOG: list[str] = []

FLAKY_PROJECT = """
import os
from pathlib import Path

import pytest


@pytest.mark.flaky(reruns=2)
def test_once_broken():
    marker = Path(os.environ["MARKER"])
    if not marker.exists():
        marker.write_text("first try")
        pytest.fail("fails the first time only")


def test_fine():
    pass
"""


def test_a_flaky_only_suite_passes_its_stage_and_says_so(tmp_path):
    """Real pytest with pytest-rerunfailures: the stage passes, the test is flaky."""
    (tmp_path / "test_demo.py").write_text(FLAKY_PROJECT)
    LOG.clear()

    result = run_stage(
        tmp_path,
        run=f"{sys.executable} -m pytest -q -p no:cacheprovider -p pytest_rerunfailures "
        "--junitxml=reports/unit.xml test_demo.py",
        junit=["reports/unit.xml"],
        env={"MARKER": str(tmp_path / "marker"), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )

    tests = result.tests  # type: ignore[attr-defined]
    assert [(c.id, c.outcome, c.attempts) for c in tests.flaky] == [
        ("test_demo.py::test_once_broken", "flaky", 2)
    ]
    assert tests.counts_text() == "1 passed, 1 flaky"
    assert any(
        line.startswith("flaky test test_demo.py::test_once_broken: passed after 2") for line in LOG
    )


def test_an_empty_report_fails_the_stage_unless_allowed(tmp_path):
    """A real tool's empty report: pytest with a -k that matches nothing (exit 5 is
    accepted by the command, the report then holds zero testcases)."""
    (tmp_path / "test_demo.py").write_text("def test_fine():\n    pass\n")
    command = (
        f"{sys.executable} -m pytest -q -p no:cacheprovider -k nothing_matches "
        "--junitxml=reports/unit.xml test_demo.py || test $? -eq 5"
    )

    quiet = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the venv's plugins only cost time here

    with pytest.raises(StageFailed, match=r"the JUnit report \(reports/unit.xml\) holds no test"):
        run_stage(tmp_path, run=command, junit=["reports/unit.xml"], env=quiet)

    LOG.clear()
    result = run_stage(
        tmp_path, run=command, junit=["reports/unit.xml"], allow_empty=True, env=quiet
    )
    assert result.tests.tests == 0  # type: ignore[attr-defined]
    assert any("allow_empty" in line for line in LOG)


def test_allow_empty_goes_with_junit_only():
    with pytest.raises(ValueError, match="'allow_empty' goes with 'junit' only"):
        Stage.model_validate({"name": "lint", "run": "true", "allow_empty": True})


# ---- the flaky history ------------------------------------------------------------------


def test_flaky_history_counts_runs_once_each_and_stays_bounded(tmp_path):
    suite = flaky_suite()

    first = record_flaky_tests("app", [suite], "run-1", home=tmp_path)
    again = record_flaky_tests("app", [suite], "run-1", home=tmp_path)  # resumed run
    second = record_flaky_tests("app", [suite], "run-2", home=tmp_path)

    key = "unit::TestFlaky (p)"
    assert (first[key].flaky_runs, again[key].flaky_runs, second[key].flaky_runs) == (1, 1, 2)
    assert second[key].attempts == 2
    for n in range(3, MAX_RUNS_PER_TEST + 10):
        record_flaky_tests("app", [suite], f"run-{n}", home=tmp_path)
    entry = read_flaky_history("app", home=tmp_path)[key]
    assert entry["flaky_runs"] == MAX_RUNS_PER_TEST + 9
    assert len(entry["runs"]) == MAX_RUNS_PER_TEST
    assert (tmp_path / "flaky-tests" / "app.json").is_file()
    assert record_flaky_tests("app", [SuiteReport("unit", (), ())], "run-x", home=tmp_path) == {}


def test_flaky_history_keeps_the_most_recent_tests(tmp_path, monkeypatch):
    # a small cap keeps the test fast; the function reads the constant at call time
    from slipway.tasks import flaky_history

    monkeypatch.setattr(flaky_history, "MAX_TESTS", 3)
    for n in range(5):
        case = CaseResult("p", f"T{n}", 0.1, "flaky", "x", 2, f"T{n}")
        stamp = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n)
        record_flaky_tests(
            "app", [SuiteReport("unit", (), (case,))], f"r{n}", home=tmp_path, now=stamp
        )

    assert sorted(read_flaky_history("app", home=tmp_path)) == ["unit::T2", "unit::T3", "unit::T4"]


def test_a_damaged_history_file_is_started_afresh(tmp_path):
    (tmp_path / "flaky-tests").mkdir()
    (tmp_path / "flaky-tests" / "app.json").write_text("{not json")

    records = record_flaky_tests("app", [flaky_suite()], "run-1", home=tmp_path)

    assert records["unit::TestFlaky (p)"].flaky_runs == 1
