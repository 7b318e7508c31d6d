"""Every process a stage starts ends with the stage: contain it, find it, kill it.

A stage's command can escape a plain process-group kill in many ways: a child that
ignores SIGTERM, ``setsid``, a double-forked daemon, ``nohup ... &``. Three nets,
each catching what the one before may miss:

1. A **subreaper** wrapper (``tasks/subreaper.py``) runs each command. It is marked
   ``PR_SET_CHILD_SUBREAPER``, so every orphan the command leaves (double forks,
   ``setsid`` children, ``nohup`` jobs) is re-parented to it instead of PID 1. When
   the command's shell exits, or the wrapper is told to stop, it sends SIGTERM to
   all its descendants, waits the grace period, sends SIGKILL, and reports what it
   killed. It also stops the tree when slipway itself dies (its stdin pipe closes).
2. A **cgroup v2** per stage, when the machine lets this process create one (a
   writable cgroup2 hierarchy with ``cgroup.kill``, Linux 5.14+): the wrapper joins
   it before it starts the shell, so nothing the stage starts can leave it, and
   ``cgroup.kill`` ends them all at once.
3. An **environment cookie**, as Jenkins' ProcessTreeKiller does: every process of
   the stage inherits ``SLIPWAY_STAGE_COOKIE=<random>``; a scan of
   ``/proc/*/environ`` finds the ones that escaped everything else (re-parented to
   PID 1 after the wrapper was SIGKILLed, say).

A :class:`StageScope` is one stage's cookie and cgroup; :func:`stage_scope` opens
one and sweeps it when the stage ends. Escalation is SIGTERM, then SIGKILL after
``SLIPWAY_KILL_GRACE_SECONDS`` (default 10 s).

Cancelling a run (Ctrl-C on ``slipway run``) goes through :func:`request_cancel`:
running commands stop their trees and raise :class:`StageCancelled`, and
:func:`kill_all_scopes` is the last resort that kills every live stage's processes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from slipway.exceptions import ConfigError

COOKIE_VAR = "SLIPWAY_STAGE_COOKIE"
GRACE_ENV = "SLIPWAY_KILL_GRACE_SECONDS"
CGROUP_ENV = "SLIPWAY_STAGE_CGROUPS"  # "auto" (default) or "off": cookie + subreaper only
DEFAULT_GRACE_SECONDS = 10.0
_POLL_SECONDS = 0.05
_KILL_WAIT_SECONDS = 5.0  # how long SIGKILLed processes get to vanish before we give up

_cancel = threading.Event()
_live: set[StageScope] = set()
_live_lock = threading.Lock()


def kill_grace_seconds() -> float:
    """The SIGTERM -> SIGKILL grace period, from ``SLIPWAY_KILL_GRACE_SECONDS``."""
    raw = os.environ.get(GRACE_ENV, "").strip()
    if not raw:
        return DEFAULT_GRACE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ConfigError(f"{GRACE_ENV} must be a number of seconds from 0 to 3600, got {raw!r}")
    return value


def describe(proc: psutil.Process) -> str:
    """``pid name args`` for logs, cut short (arguments may be long; never environ)."""
    try:
        args = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        args = "?"
    return f"{proc.pid} {args[:120]}"


def _cgroup2_base() -> Path | None:
    """This process's own cgroup v2 directory, if a cgroup2 hierarchy is mounted."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mount = next(
        (line.split()[4] for line in mounts if " - cgroup2 " in line),
        None,
    )
    path = next((line[3:] for line in own if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    return Path(mount) / path.lstrip("/")


def _make_cgroup(cookie: str) -> Path | None:
    """A fresh cgroup for the stage, or None where the machine does not allow one."""
    if os.environ.get(CGROUP_ENV, "auto").strip().lower() == "off":
        return None
    base = _cgroup2_base()
    if base is None or not os.access(base, os.W_OK):
        return None
    group = base / f"slipway-{cookie}"
    try:
        group.mkdir()
    except OSError:
        return None
    if not (group / "cgroup.kill").exists():  # kernel before 5.14: no atomic kill
        with contextlib.suppress(OSError):
            group.rmdir()
        return None
    return group


def _cgroup_pids(group: Path) -> set[int]:
    pids: set[int] = set()
    for folder, _dirs, _files in os.walk(group):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
    return pids


def _cookie_pids(cookie: str) -> set[int]:
    """Processes whose environment carries the cookie (zombies have none: already dead)."""
    needle = f"{COOKIE_VAR}={cookie}".encode()
    found = set()
    me = os.getpid()
    for pid in psutil.pids():
        if pid == me:
            continue
        try:
            # psutil parses environ into a dict; the raw bytes are cheaper to search
            data = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle + b"\0" in data or data.endswith(needle):
            found.add(pid)
    return found


@dataclass(eq=False)
class StageScope:
    """One stage's processes: the cookie they carry and, where allowed, their cgroup."""

    stage: str
    cookie: str = field(default_factory=lambda: secrets.token_hex(12))
    cgroup: Path | None = None

    def env(self) -> dict[str, str]:
        """What the stage's processes must inherit to be found again."""
        return {COOKIE_VAR: self.cookie}

    def members(self) -> list[psutil.Process]:
        """Live processes of the stage: the cgroup's and the cookie's."""
        pids = _cookie_pids(self.cookie)
        if self.cgroup is not None:
            pids |= _cgroup_pids(self.cgroup)
        pids.discard(os.getpid())
        procs = []
        for pid in sorted(pids):
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    procs.append(proc)
            except psutil.Error:
                continue
        return procs

    def terminate(self, grace: float, log: Callable[[str], None] | None = None) -> list[str]:
        """SIGTERM every member, SIGKILL what is left after ``grace`` s; returns what it hit."""
        hit: dict[int, str] = {}
        deadline = time.monotonic() + grace
        while True:
            current = [p for p in self.members() if p.pid not in hit or grace <= 0]
            for proc in current:
                hit.setdefault(proc.pid, describe(proc))
                _send(proc, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            if not self.members() or time.monotonic() >= deadline:
                break
            time.sleep(_POLL_SECONDS)
        left = self.members()
        if left:
            if self.cgroup is not None:
                with contextlib.suppress(OSError):
                    (self.cgroup / "cgroup.kill").write_text("1")
            for proc in left:
                hit.setdefault(proc.pid, describe(proc))
                _send(proc, signal.SIGKILL)
            _wait_gone(self, _KILL_WAIT_SECONDS)
        if hit and log is not None:
            killed = "; ".join(hit.values())
            log(f"slipway: stopped {len(hit)} process(es) of stage {self.stage!r}: {killed}")
        return list(hit.values())

    def close(self) -> None:
        """Remove the (empty) cgroup."""
        if self.cgroup is not None:
            deadline = time.monotonic() + _KILL_WAIT_SECONDS
            while True:
                try:
                    for folder, _dirs, _files in sorted(os.walk(self.cgroup), reverse=True):
                        Path(folder).rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # still busy: left for the machine's owner, named in the log
                    time.sleep(_POLL_SECONDS)


def _send(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def _wait_gone(scope: StageScope, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while scope.members() and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)


@contextlib.contextmanager
def stage_scope(
    stage: str, *, grace: float, log: Callable[[str], None] | None = None
) -> Iterator[StageScope]:
    """A scope for one stage; whatever of it still runs at the end is stopped and logged."""
    cookie = secrets.token_hex(12)
    scope = StageScope(stage, cookie, _make_cgroup(cookie))
    with _live_lock:
        _live.add(scope)
    try:
        yield scope
    finally:
        try:
            scope.terminate(grace, log)
        finally:
            scope.close()
            with _live_lock:
                _live.discard(scope)


def live_scopes() -> list[StageScope]:
    with _live_lock:
        return list(_live)


def request_cancel() -> None:
    """Ask every running stage of this process to stop its processes and end cancelled."""
    _cancel.set()


def cancel_requested() -> bool:
    return _cancel.is_set()


def reset_cancel() -> None:
    """Forget a cancellation (a process that runs another pipeline afterwards, tests)."""
    _cancel.clear()


def kill_all_scopes(grace: float, log: Callable[[str], None] | None = None) -> list[str]:
    """Stop the processes of every live stage at once (the last resort on a forced exit)."""
    scopes = live_scopes()
    hit: list[str] = []

    def end(scope: StageScope) -> None:
        hit.extend(scope.terminate(grace, log))
        scope.close()  # the caller may exit right after: nobody else would remove it

    threads = [threading.Thread(target=end, args=(s,), daemon=True) for s in scopes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(grace + _KILL_WAIT_SECONDS + 5)
    return hit


def pids_with_cookie(cookie: str) -> set[int]:
    """Live processes carrying a stage cookie (tests and diagnostics)."""
    return {p for p in _cookie_pids(cookie) if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
