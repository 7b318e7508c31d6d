"""Fixtures that run the real server: in a thread, or as a child process."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from example_app.app import AppServer, make_server

SRC = Path(__file__).resolve().parents[2] / "src"
STARTUP_TIMEOUT = 10  # seconds to wait for a child process to listen


@pytest.fixture
def start_server() -> Iterator:
    """Factory: ``start_server(**make_server_kwargs)`` serves on 127.0.0.1, port 0.

    Returns the server with ``base_url`` and ``serving_thread`` set; every
    server started is shut down and closed after the test.
    """
    started: list[tuple[AppServer, threading.Thread]] = []

    def start(**kwargs: object) -> AppServer:
        server = make_server("127.0.0.1", 0, **kwargs)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        server.base_url = f"http://127.0.0.1:{server.port}"
        server.serving_thread = thread
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class ChildServer:
    """``python <args>`` running the app, with its stderr read line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put("")  # end of output

    def wait_for_line(self, text: str) -> str:
        """The first stderr line containing ``text``; fails on EOF or timeout."""
        while True:
            try:
                line = self.lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {STARTUP_TIMEOUT}s: {self.log}")
            if not line:
                pytest.fail(f"process ended before printing {text!r}: {self.log}")
            self.log.append(line)
            if text in line:
                return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)
        self._reader.join(timeout=5)  # EOF once the process is gone
        self.process.stderr.close()


@pytest.fixture
def run_child() -> Iterator:
    """Factory: ``run_child(args, **env)`` starts ``python args`` with src importable."""
    children: list[ChildServer] = []

    def run(args: list[str], **env: str) -> ChildServer:
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p
        )
        child = ChildServer(args, full_env)
        children.append(child)
        return child

    yield run
    for child in children:
        child.stop()
