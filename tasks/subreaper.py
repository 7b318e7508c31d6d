"""Run one stage command as a child subreaper, and stop everything it leaves behind.

Started by :mod:`slipway.tasks.commands` as a script (``python -I -S subreaper.py GRACE
CGROUP -- ARGV...``), so it imports nothing but the standard library and starts fast. Why a
separate process: ``PR_SET_CHILD_SUBREAPER`` applies to the calling process, and
slipway's own process runs many stages (and Prefect's subprocesses) at once; one
wrapper per command is the nearest ancestor of exactly that command's processes, so
every orphan it makes (``setsid``, double forks, ``nohup ... &``) becomes its child.

It ends the tree, SIGTERM then SIGKILL after GRACE seconds, when:
- the command's shell exits (leftover background processes; reported on stdout);
- it receives SIGTERM, SIGINT or SIGHUP (a timeout or a cancel in slipway);
- its stdin reaches end-of-file: slipway, which holds the other end, is gone.
CGROUP (``-`` for none) is a cgroup v2 directory it joins first, so the tree
cannot leave it either. It exits with the shell's exit code (128 + signal if the
shell was killed, 143 when it was told to stop).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
_POLL_SECONDS = 0.02


def _say(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stdout.write(f"slipway: {message}\n")
        sys.stdout.flush()


def _reap(main_pid: int) -> int | None:
    """Reap every exited child (orphans included); the main child's exit code if it ended."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == main_pid:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and ")"
    return int(fields[1]), fields[0]


def _live_tree(cgroup: Path | None) -> list[int]:
    """Our live descendants, plus anything else in the stage's cgroup.

    Read from /proc directly rather than through psutil: this runs for every command,
    and the import alone would cost more than the scan.
    """
    me = os.getpid()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None and found[1] != "Z":
            parents[int(entry)] = found[0]
    tree: set[int] = set()
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if pid not in tree and (parent == me or parent in tree):
                tree.add(pid)
                grew = True
    if cgroup is not None:
        with contextlib.suppress(OSError):
            tree.update(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
    tree.discard(me)
    return sorted(pid for pid in tree if pid in parents)


def _describe(pid: int) -> str:
    try:
        args = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        args = "?"
    return f"{pid} {args.strip()[:120]}"


def _stop_tree(main_pid: int, grace: float, cgroup: Path | None) -> dict[int, str]:
    """SIGTERM the tree (new members too), SIGKILL it after ``grace`` s; reap it all."""
    hit: dict[int, str] = {}
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
    while True:
        _reap(main_pid)
        live = _live_tree(cgroup)
        if not live:
            return hit
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL
        for pid in live:
            if pid not in hit or sig == signal.SIGKILL:
                hit.setdefault(pid, _describe(pid))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        time.sleep(_POLL_SECONDS)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        sys.stderr.write("usage: subreaper.py GRACE CGROUP|- -- COMMAND...\n")
        return 2
    grace = float(argv[1])
    cgroup = None if argv[2] == "-" else Path(argv[2])
    command = argv[4:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _say(f"cannot become a subreaper ({os.strerror(ctypes.get_errno())}); orphans go to PID 1")
    if cgroup is not None:
        try:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            _say(f"cannot join cgroup {cgroup} ({exc.strerror}); relying on the subreaper")
            cgroup = None

    stop = threading.Event()
    why: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        why.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def watch_parent() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        why.append("slipway exited")
        stop.set()

    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    threading.Thread(target=watch_parent, daemon=True).start()
    code = None
    while code is None and not stop.is_set():
        code = _reap(child.pid)
        if code is None:
            stop.wait(_POLL_SECONDS)
    child.returncode = code if code is not None else -1  # reaped here, not by Popen
    hit = _stop_tree(child.pid, grace, cgroup)
    if code is not None and hit:
        listed = "; ".join(hit.values())
        _say(f"killed {len(hit)} leftover process(es) after the command ended: {listed}")
    elif hit:
        _say(f"stopped the command ({why[0] if why else 'told to'}): {len(hit)} process(es)")
    if cgroup is not None and "slipway exited" in why:
        _leave(cgroup)  # nobody else is left to remove it
    return code if code is not None else 128 + signal.SIGTERM


def _leave(cgroup: Path) -> None:
    """Move out of the (now empty) stage cgroup and remove it."""
    with contextlib.suppress(OSError):
        (cgroup.parent / "cgroup.procs").write_text(str(os.getpid()))
        cgroup.rmdir()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
