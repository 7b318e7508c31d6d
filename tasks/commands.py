"""Running a stage's shell commands: streamed, redacted, and every process ended.

Each command runs as ``bash -eo pipefail -c <command>`` under a small subreaper
wrapper (:mod:`slipway.tasks.subreaper`) inside the stage's process scope
(:mod:`slipway.tasks.process_tree`: a cgroup where allowed, and an environment
cookie). Whatever the command leaves running when its shell exits is killed then
(and logged), so a stray ``sleep 3015 &`` neither survives nor delays the stage. A
timeout, a cancelled run (Ctrl-C on ``slipway run``) or Prefect timing the task out
stops the whole tree: SIGTERM, then SIGKILL after the grace period
(``SLIPWAY_KILL_GRACE_SECONDS``, default 10 s), escapes included. Output is merged,
streamed line by line through the redactor to the logger, and the last lines are
kept: the reason shown is the line that explains the failure
(:func:`failure_line`), not merely the last one, which for npm or a Python traceback
is rarely the point.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slipway.exceptions import StageCancelled, StageFailed, StageTimeout
from slipway.redact import Redactor
from slipway.tasks.process_tree import (
    StageScope,
    cancel_requested,
    kill_grace_seconds,
    stage_scope,
)

TAIL_LINES = 50
_SUBREAPER = str(Path(__file__).with_name("subreaper.py"))
_WRAPPER_MARGIN_SECONDS = 5.0  # past the grace period, the wrapper itself is SIGKILLed
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class CommandResult:
    """Outcome of a stage's commands; ``output_tail`` is already redacted."""

    exit_code: int
    duration_seconds: float
    output_tail: str


def _short(command: str, limit: int = 80) -> str:
    """A command as one short line, for failure messages."""
    first = command.strip().splitlines()[0] if command.strip() else command
    more = " ..." if len(command.strip().splitlines()) > 1 or len(first) > limit else ""
    return repr(first[:limit] + more)


# Lines that say why a command failed, best first; within a kind, the first such line.
_EXPLAINING = tuple(
    re.compile(pattern)
    for pattern in (
        r"^FAILED\s",  # pytest's short test summary ("FAILED tests/x.py::test_y - ...")
        # an exception's own line: "Error: boom", "E   AssertionError: ...",
        # "AssertionError [ERR_ASSERTION]: ...", "requests.exceptions.HTTPError: 404"
        r"^(E\s+)?([\w$]+\.)*[A-Z]\w*(Error|Exception)( \[\w+\])?: ",
        # tools and compilers: "x.c:3:5: error: ...", "error[E0308]: ...", "ERROR: ...",
        # "fatal: ...", npm's "npm error Missing script" / "npm ERR! ...", the shell's own
        r"(?i)\berror(\[\w+\])?:|\bfatal:|^npm (error|ERR!) |ERR!|command not found$",
        r"^(--- )?FAIL\b",  # go test, jest
    )
)
# What npm, make and stack traces print around the real message.
_NOISE = re.compile(
    r"^npm (error|ERR!)( (code|path|command|errno|syscall|workspace|location|signal)\b"
    r"| A complete log| Lifecycle script|\s*$)|A complete log of this run|^\s+at "
    r"|^make(\[\d+\])?: \*\*\*|^Node\.js v\d"
    r"|^slipway: "  # the process tree's own cleanup notes
)


def failure_line(lines: Sequence[str]) -> str:
    """The output line that best explains a failure (``lines`` oldest first).

    The first line of the best kind in :data:`_EXPLAINING` (a test summary, an
    exception, an ``error:`` line...), else the last line that is not npm's or
    make's trailer; empty when the command printed nothing.
    """
    useful = [line.strip() for line in lines if line.strip() and not _NOISE.search(line)]
    for pattern in _EXPLAINING:
        found = next((line for line in useful if pattern.search(line)), None)
        if found is not None:
            return found
    return useful[-1] if useful else ""


def exit_failure(
    stage: str, code: int, command: str, tail: Sequence[str], redactor: Redactor
) -> StageFailed:
    """The failure of a command that exited non-zero: why, and its last output lines."""
    reason = failure_line(tail)
    hint = " (command not found)" if code == 127 else ""
    detail = f"exit code {code}{hint} from {_short(redactor.redact(command))}"
    return StageFailed(
        stage,
        detail + (f": {redactor.redact(reason)}" if reason else ""),
        output_tail=redactor.redact("\n".join(tail)),
    )


def _stop(proc: subprocess.Popen[bytes], scope: StageScope, grace: float) -> None:
    """Tell the wrapper to stop the command's tree; if it does not, kill it and sweep."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace + _WRAPPER_MARGIN_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            scope.terminate(0)
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _pump(proc: subprocess.Popen[bytes], sink: Callable[[str], None], tail: deque[str]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        tail.append(line)
        sink(line)


def run_commands(
    commands: Sequence[str],
    *,
    stage: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float | None,
    redactor: Redactor,
    log: Callable[[str], None],
    kill_grace: float | None = None,
) -> CommandResult:
    """Run commands in order; raise :class:`StageFailed` / :class:`StageTimeout`.

    Raises :class:`StageCancelled` when the run is cancelled meanwhile. ``kill_grace``
    is the SIGTERM -> SIGKILL grace in seconds (default: ``SLIPWAY_KILL_GRACE_SECONDS``
    or 10). No process the commands started outlives the call.
    """
    if not cwd.is_dir():
        raise StageFailed(stage, f"working directory {cwd} does not exist")
    grace = kill_grace_seconds() if kill_grace is None else kill_grace
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def sink(line: str) -> None:
        log(redactor.redact(line))

    with stage_scope(stage, grace=grace, log=sink) as scope:
        for command in commands:
            if cancel_requested():
                raise StageCancelled(stage, "the run was cancelled before it started")
            log(f"$ {redactor.redact(command)}")
            shown = _short(redactor.redact(command))
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    _SUBREAPER,
                    f"{grace:g}",
                    str(scope.cgroup or "-"),
                    "--",
                ]
                + ["bash", "-eo", "pipefail", "-c", command],
                cwd=cwd,
                env={**env, **scope.env()},
                stdin=subprocess.PIPE,  # never written: its end-of-file tells the wrapper we died
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            # the reader logs through the run's logger: it needs the run's context (the
            # settings that name the API); a bare thread would start a temporary API
            context = contextvars.copy_context()
            reader = threading.Thread(
                target=context.run, args=(_pump, proc, sink, tail), daemon=True
            )
            reader.start()
            try:
                while proc.poll() is None:
                    if deadline is not None and time.monotonic() > deadline:
                        _stop(proc, scope, grace)
                        reader.join(1)
                        raise StageTimeout(stage, f"timed out after {timeout:g} s running {shown}")
                    if cancel_requested():
                        _stop(proc, scope, grace)
                        reader.join(1)
                        raise StageCancelled(stage, f"the run was cancelled while running {shown}")
                    time.sleep(_POLL_SECONDS)
            finally:
                # also reached when Prefect times the task out from outside
                _stop(proc, scope, grace)
            reader.join(0.5)
            if reader.is_alive():  # the wrapper was killed: what escaped it holds the pipe
                scope.terminate(grace, sink)
                reader.join(5)
            if proc.returncode != 0:
                raise exit_failure(stage, proc.returncode, command, tail, redactor)
    return CommandResult(0, time.monotonic() - started, redactor.redact("\n".join(tail)))
