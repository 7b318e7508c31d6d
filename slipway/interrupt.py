"""Ctrl-C and SIGTERM on ``slipway run``: the first cancels the run, the second exits.

Why the run goes to a thread: Prefect's flow engine, when it runs in the main
thread, swaps in its own SIGTERM handler (``capture_sigterm``) that raises into the
event loop and reports the run *Crashed*, and ``asyncio.run`` turns Ctrl-C into a
cancelled main task; neither reaches the stage threads, which keep waiting for
their commands, so a signal used to be ignored until the running stage ended.
Prefect installs no handler from another thread (``signal.signal`` refuses there
and Prefect lets it be), so with the flow in a worker thread the main thread owns
both signals and cooperates with the engine instead of racing it:

1. First signal: :func:`slipway.tasks.process_tree.request_cancel`. Every running
   stage stops its process tree (SIGTERM, SIGKILL after the grace period) and its
   task run returns a ``Cancelled`` state; the flow starts nothing more and returns
   ``Cancelled`` itself, keeping the workspace. The command exits 130 (SIGINT) or
   143 (SIGTERM) and prints where the workspace is.
2. Second signal: the stages' process trees are SIGKILLed at once
   (:func:`~slipway.tasks.process_tree.kill_all_scopes`), then the process exits
   with the same code without waiting for the flow.
"""

from __future__ import annotations

import contextvars
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from slipway.tasks.process_tree import kill_all_scopes, request_cancel, reset_cancel

T = TypeVar("T")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_JOIN_SLICE_SECONDS = 0.2  # the main thread wakes this often to run signal handlers
_received: list[int] = []


def _say(message: str) -> None:
    print(f"slipway: {message}", file=sys.stderr, flush=True)


def _on_signal(signum: int, _frame: object) -> None:
    name = signal.Signals(signum).name
    if not _received:
        _received.append(signum)
        _say(
            f"{name}: cancelling the run, stopping its stages' processes "
            "(send it again to exit at once)"
        )
        request_cancel()
        return
    _say(f"{name} again: killing the stages' processes and exiting now")
    kill_all_scopes(0)
    sys.stdout.flush()
    os._exit(128 + _received[0])


def run_until_signal(run: Callable[[], T]) -> T:
    """Run ``run()`` (a flow) in a worker thread; the main thread handles the signals."""
    _received.clear()
    reset_cancel()
    outcome: list[Any] = []
    failure: list[BaseException] = []
    context = contextvars.copy_context()  # the caller's temporary Prefect settings

    def target() -> None:
        try:
            outcome.append(context.run(run))
        except BaseException as exc:  # handed to the main thread, raised there
            failure.append(exc)

    worker = threading.Thread(target=target, name="slipway-run", daemon=True)
    previous = {sig: signal.signal(sig, _on_signal) for sig in _SIGNALS}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(_JOIN_SLICE_SECONDS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]
    return outcome[0]


def cancellable(run: Callable[..., T]) -> Callable[..., T]:
    """``run`` made to go through :func:`run_until_signal`."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return run_until_signal(lambda: run(*args, **kwargs))

    return wrapper


def exit_code(state: Any) -> int:
    """130 / 143 for a run cancelled by SIGINT / SIGTERM (saying where its workspace
    is), else 0 for a completed run and 1 for any other end (failed, crashed)."""
    if _received and not state.is_completed():  # else the signal came after the end
        name = signal.Signals(_received[0]).name
        _say(f"run cancelled by {name}: {getattr(state, 'message', '') or state}")
        return 128 + _received[0]
    return 0 if state.is_completed() else 1
