"""The app as an operator runs it: ``python -m example_app`` and the zipapp."""

import json
import logging
import os
import re
import signal
import threading
import time
import urllib.request
import zipapp
from pathlib import Path

import pytest

from example_app.__main__ import run

SRC = Path(__file__).resolve().parents[2] / "src"

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def serve_and_stop(child):
    """Wait for the child to listen, call it, SIGTERM it; return /healthz's payload."""
    port = LISTENING.search(child.wait_for_line("listening on")).group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        health = json.load(response)
    child.process.send_signal(signal.SIGTERM)
    child.wait_for_line("example-app stopped")
    assert child.process.wait(timeout=5) == 0
    return health


def test_module_serves_and_stops_on_sigterm(run_child):
    child = run_child(["-m", "example_app"], HOST="127.0.0.1", PORT="0", APP_VERSION="9.9.9")

    assert serve_and_stop(child) == {"status": "ok", "version": "9.9.9"}
    assert any("received SIGTERM" in line for line in child.log)
    assert any('"GET /healthz HTTP/1.1" 200' in line for line in child.log)


@pytest.mark.parametrize(
    "variable, value", [("PORT", "http"), ("ERROR_RATE", "150%"), ("APP_VERSION", "")]
)
def test_invalid_configuration_fails_at_start(run_child, variable, value):
    child = run_child(["-m", "example_app"], **{variable: value})

    line = child.wait_for_line("invalid configuration")

    assert child.process.wait(timeout=5) == 2
    assert f"invalid configuration: {variable} " in line


def test_port_in_use_fails_with_exit_1(start_server, capsys):
    busy = start_server()

    assert run({"HOST": "127.0.0.1", "PORT": str(busy.port)}) == 1
    assert f"cannot listen on 127.0.0.1:{busy.port} (HOST/PORT)" in capsys.readouterr().err


def test_run_in_process_stops_on_sigterm(caplog):
    """run() in pytest's main thread (signals need it); a helper calls it, then SIGTERMs."""
    seen = {}

    def client():
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                found = [LISTENING.search(r.getMessage()) for r in list(caplog.records)]
                ports = [m.group(1) for m in found if m]
                if ports:
                    url = f"http://127.0.0.1:{ports[0]}/readyz"
                    with urllib.request.urlopen(url, timeout=5) as response:
                        seen["readyz"] = response.status
                    break
                time.sleep(0.01)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # always end run(), even on failure

    handler_before = signal.getsignal(signal.SIGTERM)
    helper = threading.Thread(target=client)
    with caplog.at_level(logging.INFO):
        helper.start()
        code = run({"HOST": "127.0.0.1", "PORT": "0"})
    helper.join(timeout=5)

    assert code == 0
    assert seen == {"readyz": 200}
    messages = [r.getMessage() for r in caplog.records]
    assert "received SIGTERM, shutting down" in messages
    assert messages[-1] == "example-app stopped"
    # run() put the previous handlers back.
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_zipapp_runs(run_child, tmp_path):
    archive = tmp_path / "example-app.pyz"
    # What `python -m zipapp src -m example_app.__main__:main -o ...` does.
    zipapp.create_archive(
        SRC, archive, interpreter="/usr/bin/env python3", main="example_app.__main__:main"
    )
    child = run_child([str(archive)], HOST="127.0.0.1", PORT="0", APP_VERSION="zip")

    assert serve_and_stop(child)["version"] == "zip"
