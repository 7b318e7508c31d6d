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
kept for the failure message.
"""

from __future__ import annotations

import contextlib
import contextvars
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

TAIL_LINES = 30
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
                last = next(
                    (x for x in reversed(tail) if x.strip() and not x.startswith("slipway: ")), ""
                )
                hint = " (command not found)" if proc.returncode == 127 else ""
                detail = f"exit code {proc.returncode}{hint} from {shown}"
                raise StageFailed(stage, detail + (f": {redactor.redact(last)}" if last else ""))
    return CommandResult(0, time.monotonic() - started, redactor.redact("\n".join(tail)))
