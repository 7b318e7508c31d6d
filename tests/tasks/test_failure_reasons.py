"""The reason a failed stage shows is the line that explains it, from real tools' output
(npm, pytest, Python, gcc), and the last 50 lines travel to the summary artifact."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from slipway.exceptions import StageFailed
from slipway.redact import Redactor
from slipway.report import PipelineReport, StageOutcome, summary_markdown
from slipway.tasks.commands import TAIL_LINES, failure_line, run_commands


def fail(command: str, cwd: Path) -> StageFailed:
    with pytest.raises(StageFailed) as caught:
        run_commands(
            [command],
            stage="test",
            cwd=cwd,
            # no update check: the notice would reach for the registry (and print after)
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(cwd),
                "NPM_CONFIG_UPDATE_NOTIFIER": "false",
            },
            timeout=120,
            redactor=Redactor(["s3cr3t-value"]),
            log=lambda _line: None,
        )
    return caught.value


@pytest.fixture
def npm_project(tmp_path: Path) -> Path:
    if shutil.which("npm") is None:
        pytest.fail("npm is on the build machines (Node 20): it must be on PATH")
    (tmp_path / "package.json").write_text(
        json.dumps({"name": "calc", "version": "1.0.0", "scripts": {"test": "node test.js"}})
    )
    (tmp_path / "test.js").write_text(
        'const assert = require("node:assert");\n'
        "function add(a, b) { return a + b + 1; }\n"
        'assert.strictEqual(add(1, 2), 3, "add(1, 2) should be 3");\n'
    )
    return tmp_path


def test_npm_run_failing_shows_the_assertion_not_the_trailer(npm_project: Path):
    error = fail("npm run test", npm_project)

    assert str(error) == (
        "stage 'test' failed: exit code 1 from 'npm run test': "
        "AssertionError [ERR_ASSERTION]: add(1, 2) should be 3"
    )
    assert error.output_tail.splitlines()[-1].startswith("Node.js v")  # what was shown before


def test_npm_missing_script_shows_npms_own_error(npm_project: Path):
    error = fail("npm run tset", npm_project)

    assert str(error).endswith(': npm error Missing script: "tset"')


def test_pytest_failure_shows_the_failed_test(tmp_path: Path):
    (tmp_path / "test_calc.py").write_text(
        "def add(a, b):\n    return a + b + 1\n\n\n"
        "def test_ok():\n    assert add(0, 0) == 1\n\n\n"
        "def test_add():\n    assert add(1, 2) == 3\n"
    )
    error = fail(f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py", tmp_path)

    assert str(error).endswith(": FAILED test_calc.py::test_add - assert 4 == 3")
    assert "1 failed, 1 passed" in error.output_tail


def test_python_traceback_shows_the_exception_and_secrets_stay_masked(tmp_path: Path):
    script = "import json; json.loads('{bad'); print('s3cr3t-value')"
    error = fail(f'echo using s3cr3t-value; {sys.executable} -c "{script}"', tmp_path)

    assert str(error).endswith(
        ": json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)"
    )
    assert "s3cr3t-value" not in error.output_tail and "using ***" in error.output_tail


def test_compiler_error_line(tmp_path: Path):
    (tmp_path / "main.c").write_text("int main(void) { return undefined_name; }\n")
    error = fail("gcc -c main.c -o main.o", tmp_path)

    assert str(error).split(": ", 2)[-1].startswith("main.c:1:25: error: ")
    assert "undefined_name" in str(error)


def test_the_last_50_lines_are_kept(tmp_path: Path):
    error = fail("for i in $(seq 1 80); do echo line $i; done; exit 3", tmp_path)

    kept = error.output_tail.splitlines()
    assert TAIL_LINES == 50 and kept == [f"line {i}" for i in range(31, 81)]
    assert str(error).endswith(": line 80")  # nothing explains it better than the last line


def test_older_npm_trailers_and_make_noise_are_passed_over():
    npm6 = [
        "> calc@1.0.0 test /src",
        "> jest",
        "sh: 1: jest: not found",
        "npm ERR! code ELIFECYCLE",
        "npm ERR! syscall spawn",
        "npm ERR! errno ENOENT",
        "npm ERR! calc@1.0.0 test: `jest`",
        "npm ERR! spawn ENOENT",
        "npm ERR! A complete log of this run can be found in:",
        "npm ERR!     /root/.npm/_logs/2026-01-01T00_00_00_000Z-debug.log",
    ]
    assert failure_line(npm6) == "npm ERR! calc@1.0.0 test: `jest`"
    make = ["cc -c x.c", "x.c:2:1: error: expected ';' before '}' token", "make: *** [all] Error 1"]
    assert failure_line(make) == "x.c:2:1: error: expected ';' before '}' token"
    go = ["=== RUN   TestAdd", "--- FAIL: TestAdd (0.00s)", "FAIL", "FAIL\tcalc\t0.002s"]
    assert failure_line(go) == "--- FAIL: TestAdd (0.00s)"
    assert failure_line(["", "  "]) == ""


def test_the_summary_artifact_shows_a_failed_stages_last_lines():
    tail = "collected 2 items\n```not a fence end\nFAILED test_calc.py::test_add"
    report = PipelineReport(
        app="calc",
        sha="0" * 40,
        branch="main",
        status="failure",
        stages=(StageOutcome("test", "failed", 1.0, "FAILED ...", output_tail=tail),),
        failed_stage="test",
        reason="FAILED ...",
    )

    markdown = summary_markdown(report)

    assert "### `test`: last lines of output\n\n````text\n" + tail + "\n````" in markdown
