"""JUnit reports: a real pytest report parses; hostile XML is refused quickly and safely."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slipway.exceptions import ReportError
from slipway.tasks import junit_reports
from slipway.tasks.junit_reports import (
    CaseResult,
    SuiteReport,
    collect_suite,
    parse_junit_file,
    summary_markdown,
    summary_rows,
)

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
    cases = {c.name: c for c in parse_junit_file(pytest_report)}

    assert {n: c.outcome for n, c in cases.items()} == {
        "test_passes": "passed",
        "test_fails": "failed",
        "test_skipped": "skipped",
        "test_errors": "error",
    }
    assert cases["test_passes"].id == "test_sample::test_passes"
    assert cases["test_passes"].message == ""
    assert cases["test_fails"].message.startswith("AssertionError: arithmetic | is hard")
    assert cases["test_skipped"].message == "not on this platform"
    assert "fixture exploded" in cases["test_errors"].message
    assert cases["test_passes"].seconds >= 0.05


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

    cases = parse_junit_file(path)

    assert cases == [CaseResult("c", "t", 1.5, "passed"), CaseResult("", "bare", 0.0, "passed")]
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


def test_entity_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_text(billion_laughs())
    started = time.monotonic()

    with pytest.raises(ReportError, match="refused unsafe XML") as caught:
        parse_junit_file(path, display="reports/bomb.xml")

    assert time.monotonic() - started < 0.5
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
            "seconds": 1.75,
        },
        {
            "suite": "integration",
            "tests": 2,
            "passed": 1,
            "failed": 0,
            "skipped": 0,
            "errors": 1,
            "seconds": 3.5,
        },
        {
            "suite": "TOTAL",
            "tests": 5,
            "passed": 2,
            "failed": 1,
            "skipped": 1,
            "errors": 1,
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
            "seconds": 0.0,
        },
    ]


def test_summary_markdown():
    text = summary_markdown(suites(), slowest=2)
    lines = text.splitlines()

    assert lines[0] == "## Tests"
    assert "| unit | 3 | 1 | 1 | 1 | 0 | 1.75 |" in lines
    assert "| TOTAL | 5 | 2 | 1 | 1 | 1 | 5.25 |" in lines
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
