"""Stage commands: real bash processes, streamed and redacted, killed on time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from slipway.exceptions import StageFailed, StageTimeout
from slipway.redact import Redactor
from slipway.tasks.commands import run_commands

SECRET = "tok-9f8e7d6c5b4a"


def run(commands, tmp_path: Path, *, env=None, timeout=None, cwd=None, lines=None):
    return run_commands(
        commands,
        stage="build",
        cwd=cwd or tmp_path,
        env={"PATH": os.environ["PATH"], **(env or {})},
        timeout=timeout,
        redactor=Redactor([SECRET]),
        log=(lines if lines is not None else []).append,
    )


def test_output_is_streamed_in_order_and_redacted(tmp_path):
    lines: list[str] = []

    result = run(
        [f"echo one; echo two >&2; echo 'token {SECRET}'", "printf 'three\\nfour'"],
        tmp_path,
        lines=lines,
    )

    assert lines == [
        "$ echo one; echo two >&2; echo 'token ***'",
        "one",
        "two",
        "token ***",
        "$ printf 'three\\nfour'",
        "three",
        "four",
    ]
    assert result.exit_code == 0
    assert result.output_tail == "one\ntwo\ntoken ***\nthree\nfour"
    assert SECRET not in result.output_tail
    assert 0 <= result.duration_seconds < 5


def test_lines_arrive_while_the_command_runs(tmp_path):
    seen: list[tuple[float, str]] = []
    started = time.monotonic()

    run_commands(
        ["echo early; sleep 0.5; echo late"],
        stage="build",
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        timeout=None,
        redactor=Redactor(),
        log=lambda line: seen.append((time.monotonic() - started, line)),
    )

    times = dict((line, at) for at, line in seen)
    assert times["late"] - times["early"] >= 0.4  # "early" was logged before the sleep ended


def test_env_is_passed_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIPWAY_TEST_LEAK", "from-the-worker")
    lines: list[str] = []

    run(
        ['echo "app=$APP_NAME leak=${SLIPWAY_TEST_LEAK:-none}"; pwd'],
        tmp_path,
        env={"APP_NAME": "demo"},
        lines=lines,
    )

    assert lines[1:] == ["app=demo leak=none", str(tmp_path)]


def test_working_directory(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "marker").write_text("x")
    lines: list[str] = []

    run(["ls"], tmp_path, cwd=tmp_path / "src", lines=lines)

    assert lines[1:] == ["marker"]


def test_non_zero_exit_fails_with_code_and_last_line(tmp_path):
    lines: list[str] = []

    with pytest.raises(StageFailed) as caught:
        run(
            [
                "echo fine",
                f"echo compiling; echo 'error: bad {SECRET}'; echo; exit 3",
                "echo never",
            ],
            tmp_path,
            lines=lines,
        )

    error = caught.value
    assert error.stage == "build"
    message = str(error)
    assert message.startswith("stage 'build' failed: exit code 3 from ")
    assert message.endswith(": error: bad ***")  # last non-empty line, redacted
    assert SECRET not in message
    assert "never" not in lines


def test_failing_pipe_fails_the_stage(tmp_path):
    with pytest.raises(StageFailed, match="exit code 1"):
        run(["false | cat", "echo after"], tmp_path)


def test_first_failing_line_stops_the_command(tmp_path):
    lines: list[str] = []
    with pytest.raises(StageFailed, match="exit code 1"):
        run(["echo a\nfalse\necho b"], tmp_path, lines=lines)
    assert "b" not in lines


def test_missing_command_says_not_found(tmp_path):
    with pytest.raises(StageFailed) as caught:
        run(["no-such-command-slipway --version"], tmp_path)

    message = str(caught.value)
    assert "exit code 127 (command not found)" in message
    assert "no-such-command-slipway" in message


def gone(pid: int) -> bool:
    """True when the process no longer exists (or is a zombie nobody has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" in state.split()[1]


def test_timeout_kills_the_whole_process_group(tmp_path):
    started = time.monotonic()

    with pytest.raises(StageTimeout) as caught:
        run(["sleep 300 & echo $! > pid; wait"], tmp_path, timeout=0.5)
    elapsed = time.monotonic() - started

    assert isinstance(caught.value, StageFailed)
    assert "timed out after 0.5 s running 'sleep 300 & echo $! > pid; wait'" in str(caught.value)
    assert elapsed < 0.5 + 1.0
    background = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 2
    while not gone(background) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(background), f"background sleep {background} survived the timeout"


def test_timeout_counts_across_commands(tmp_path):
    started = time.monotonic()
    with pytest.raises(StageTimeout):
        run(["sleep 0.4", "sleep 0.4", "sleep 5"], tmp_path, timeout=1.0)
    assert time.monotonic() - started < 2.0


def test_missing_working_directory_fails(tmp_path):
    with pytest.raises(StageFailed, match="does not exist"):
        run(["echo hi"], tmp_path, cwd=tmp_path / "missing")
