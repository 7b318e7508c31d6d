"""Running a stage's shell commands: streamed, redacted, killed on time.

Each command runs as ``bash -eo pipefail -c <command>`` in its own process group,
so a timeout (or Prefect cancelling the task) takes the whole tree down, not just
the shell. Output is merged, streamed line by line through the redactor to the
logger, and the last lines are kept for the failure message.
"""

from __future__ import annotations

import contextvars
import os
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

TAIL_LINES = 30
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
            last = next((line for line in reversed(tail) if line.strip()), "")
            hint = " (command not found)" if proc.returncode == 127 else ""
            detail = f"exit code {proc.returncode}{hint} from {_short(redactor.redact(command))}"
            raise StageFailed(stage, detail + (f": {redactor.redact(last)}" if last else ""))
    return CommandResult(0, time.monotonic() - started, redactor.redact("\n".join(tail)))
