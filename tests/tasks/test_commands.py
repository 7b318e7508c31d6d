"""Stage commands: real bash processes, streamed and redacted, killed on time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slipway.exceptions import ConfigError, StageCancelled, StageFailed, StageTimeout
from slipway.redact import Redactor
from slipway.tasks import process_tree
from slipway.tasks.commands import run_commands
from slipway.tasks.process_tree import kill_grace_seconds, pids_with_cookie

SECRET = "tok-9f8e7d6c5b4a"


def run(commands, tmp_path: Path, *, env=None, timeout=None, cwd=None, lines=None, grace=0.5):
    return run_commands(
        commands,
        stage="build",
        cwd=cwd or tmp_path,
        env={"PATH": os.environ["PATH"], **(env or {})},
        timeout=timeout,
        redactor=Redactor([SECRET]),
        log=(lines if lines is not None else []).append,
        kill_grace=grace,
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


# --- every process a stage starts ends with it, whatever it did to escape -------------

SHOW_COOKIE = 'echo "$SLIPWAY_STAGE_COOKIE" > cookie'
# a classic daemon: fork, setsid, fork again, stdio closed; only its pid file is left
DAEMON = (
    "python3 -c 'import os, time\n"
    "if os.fork(): os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork(): os._exit(0)\n"
    "fd = os.open(os.devnull, os.O_RDWR)\n"
    "[os.dup2(fd, n) for n in (0, 1, 2)]\n"
    'open("daemon", "w").write(str(os.getpid()))\n'
    "time.sleep(300)'; until [ -s daemon ]; do sleep 0.02; done"
)


@pytest.fixture(params=["cgroup", "subreaper+cookie"])
def containment(request, monkeypatch) -> str:
    """Both nets: a cgroup v2 per stage where this machine allows one, and without it.

    SLIPWAY_STAGE_CGROUPS=off is the setting a machine without a writable cgroup2
    hierarchy behaves as; it stands in for no component.
    """
    if request.param == "cgroup":
        probe = process_tree._make_cgroup(f"probe-{os.getpid()}")
        if probe is None:
            pytest.skip("this machine gives no writable cgroup v2 hierarchy with cgroup.kill")
        probe.rmdir()
        monkeypatch.setenv(process_tree.CGROUP_ENV, "auto")
    else:
        monkeypatch.setenv(process_tree.CGROUP_ENV, "off")
    return request.param


@pytest.fixture(autouse=True)
def no_cancellation():
    process_tree.reset_cancel()
    yield
    process_tree.reset_cancel()


def wait_gone(pid: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return gone(pid)


def assert_nothing_survives(tmp_path: Path, *pid_files: str) -> None:
    cookie = (tmp_path / "cookie").read_text().strip()
    assert len(cookie) >= 16
    assert pids_with_cookie(cookie) == set(), "processes of the stage survived it"
    base = process_tree._cgroup2_base()
    if base is not None:
        assert not (base / f"slipway-{cookie}").exists(), "the stage's cgroup was left behind"
    for name in pid_files:
        pid = int((tmp_path / name).read_text())
        assert gone(pid), f"{name} ({pid}) survived the stage"


def test_a_background_sleep_in_a_passing_stage_is_killed_and_logged(tmp_path, containment):
    lines: list[str] = []

    # were the leftover waited for, this would take 3015 s (pytest-timeout fails it)
    result = run([SHOW_COOKIE, "sleep 3015 & echo $! > leftover; echo done"], tmp_path, lines=lines)

    assert result.exit_code == 0
    assert_nothing_survives(tmp_path, "leftover")
    pid = (tmp_path / "leftover").read_text().strip()
    killed = [line for line in lines if line.startswith("slipway: killed 1 leftover")]
    # named by its pid; its command line is `sleep 3015`, or still the forking shell's
    # when the command ended before the child had exec'd
    assert len(killed) == 1 and f": {pid} " in killed[0], lines


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, containment):
    command = "bash -c 'trap \"\" TERM; echo $$ > ignorer; sleep 300' & sleep 300"

    with pytest.raises(StageTimeout):
        run([SHOW_COOKIE, command], tmp_path, timeout=1.0, grace=0.3)

    assert_nothing_survives(tmp_path, "ignorer")


def test_setsid_nohup_and_double_fork_escapes_are_killed(tmp_path, containment):
    commands = [
        SHOW_COOKIE,
        "setsid sleep 301 & echo $! > setsid",
        "nohup sleep 302 > /dev/null 2>&1 & echo $! > nohup",
        DAEMON,
    ]
    lines: list[str] = []

    run(commands, tmp_path, lines=lines)

    assert_nothing_survives(tmp_path, "setsid", "nohup", "daemon")
    assert sum("leftover process(es)" in line for line in lines) == 3, lines


def test_escapes_are_killed_at_a_timeout(tmp_path, containment):
    command = f"setsid sleep 301 & echo $! > setsid; {DAEMON}; sleep 300"

    with pytest.raises(StageTimeout):
        run([SHOW_COOKIE, command], tmp_path, timeout=1.0)

    assert_nothing_survives(tmp_path, "setsid", "daemon")


def test_processes_orphaned_to_pid_1_are_found_by_their_cookie(tmp_path, containment):
    # the command SIGKILLs its own wrapper: its children go to PID 1, beyond any
    # subreaper; the stage's cookie (and cgroup) still find them
    command = "sleep 303 & echo $! > orphan; kill -9 $PPID; sleep 300"
    lines: list[str] = []

    with pytest.raises(StageFailed, match="exit code -9"):
        run([SHOW_COOKIE, command], tmp_path, lines=lines)

    assert_nothing_survives(tmp_path, "orphan")
    assert any("slipway: stopped" in line and "sleep 303" in line for line in lines), lines


def test_a_cancelled_run_stops_the_running_command(tmp_path, containment):
    threading.Timer(1.0, process_tree.request_cancel).start()

    with pytest.raises(StageCancelled, match="cancelled while running"):
        run([SHOW_COOKIE, "setsid sleep 301 & echo $! > setsid; sleep 300", "echo never"], tmp_path)

    assert_nothing_survives(tmp_path, "setsid")


def test_a_cancelled_run_starts_no_more_commands(tmp_path):
    process_tree.request_cancel()
    lines: list[str] = []

    with pytest.raises(StageCancelled):
        run(["echo never"], tmp_path, lines=lines)

    assert lines == []


def test_the_tree_ends_when_slipway_itself_is_killed(tmp_path, containment):
    """SIGKILL leaves no handler to run: the wrapper sees its stdin close and stops the tree."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from slipway.redact import Redactor\n"
        "from slipway.tasks.commands import run_commands\n"
        "run_commands([sys.argv[1]], stage='build', cwd=Path('.'),"
        " env={'PATH': os.environ['PATH']}, timeout=None, redactor=Redactor(),"
        " log=print, kill_grace=0.5)\n"
    )
    command = f"{SHOW_COOKIE}; setsid sleep 301 & echo $! > setsid; {DAEMON}; sleep 300"
    worker = subprocess.Popen(
        [sys.executable, "-c", script, command], cwd=tmp_path, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "daemon").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "daemon").exists(), "the command did not start"

    worker.kill()
    worker.wait()

    cookie = (tmp_path / "cookie").read_text().strip()
    deadline = time.monotonic() + 10
    while pids_with_cookie(cookie) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_nothing_survives(tmp_path, "setsid", "daemon")


def test_the_grace_period_is_configurable_and_checked(monkeypatch):
    monkeypatch.delenv(process_tree.GRACE_ENV, raising=False)
    assert kill_grace_seconds() == 10.0
    monkeypatch.setenv(process_tree.GRACE_ENV, "2.5")
    assert kill_grace_seconds() == 2.5
    monkeypatch.setenv(process_tree.GRACE_ENV, "soon")
    with pytest.raises(ConfigError, match="SLIPWAY_KILL_GRACE_SECONDS .* got 'soon'"):
        kill_grace_seconds()


def test_a_failing_command_is_named_by_its_own_last_line_not_the_cleanup_note(tmp_path):
    lines: list[str] = []

    with pytest.raises(StageFailed) as caught:
        run(["sleep 300 & echo 'error: broken'; exit 2"], tmp_path, lines=lines)

    assert str(caught.value).endswith(": error: broken")
    assert lines[-1].startswith("slipway: killed 1 leftover process(es)")
