"""Running a stage's shell commands: streamed, redacted, killed on time.

Each command runs as ``bash -eo pipefail -c <command>`` in its own process group,
so a timeout (or Prefect cancelling the task) takes the whole tree down, not just
the shell. Output is merged, streamed line by line through the redactor to the
logger, and the last lines are kept for the failure message: the reason shown is
the line that explains the failure (:func:`failure_line`), not merely the last one,
which for npm or a Python traceback is rarely the point.
"""

from __future__ import annotations

import contextvars
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slipway.exceptions import StageFailed, StageTimeout
from slipway.redact import Redactor

TAIL_LINES = 50
KILL_GRACE_SECONDS = 3.0
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


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass


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
) -> CommandResult:
    """Run commands in order; raise :class:`StageFailed` / :class:`StageTimeout`."""
    if not cwd.is_dir():
        raise StageFailed(stage, f"working directory {cwd} does not exist")
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def sink(line: str) -> None:
        log(redactor.redact(line))

    for command in commands:
        log(f"$ {redactor.redact(command)}")
        proc = subprocess.Popen(
            ["bash", "-eo", "pipefail", "-c", command],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # the reader logs through the run's logger: it needs the run's context (the
        # settings that name the API); a bare thread would start a temporary API
        context = contextvars.copy_context()
        reader = threading.Thread(target=context.run, args=(_pump, proc, sink, tail), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                if deadline is not None and time.monotonic() > deadline:
                    _kill_group(proc)
                    reader.join(1)
                    raise StageTimeout(
                        stage,
                        f"timed out after {timeout:g} s running {_short(redactor.redact(command))}",
                    )
                time.sleep(_POLL_SECONDS)
        finally:
            # also reached when Prefect cancels or times the task out from outside
            _kill_group(proc)
        reader.join(5)
        if proc.returncode != 0:
            raise exit_failure(stage, proc.returncode, command, tail, redactor)
    return CommandResult(0, time.monotonic() - started, redactor.redact("\n".join(tail)))
