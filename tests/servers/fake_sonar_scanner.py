"""A fake ``sonar-scanner`` for the tests: submits a task and writes report-task.txt.

It does what the real SonarScanner CLI does at the edges a CI gate sees, without
analysing anything: reads its settings the way the scanner does (``-Dkey=value``
arguments over ``sonar-project.properties`` in the working directory, with
``SONAR_HOST_URL`` and ``SONAR_TOKEN`` from the environment), uploads the "report"
to ``POST <host>/api/ce/submit?projectKey=<key>`` with the token as the Basic-auth
user, and writes ``<sonar.working.directory>/report-task.txt`` (default
``.scannerwork``; ``sonar.scanner.metadataFilePath`` overrides the file) with the
keys the real one writes: ``projectKey``, ``serverUrl``, ``serverVersion``,
``dashboardUrl``, ``ceTaskId``, ``ceTaskUrl`` (and ``organization`` when set).

The tests put it on ``PATH`` as ``sonar-scanner`` (see :func:`install`). It uses the
standard library only, so it runs under any Python.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote


def install(bin_dir: Path, python: str = sys.executable) -> Path:
    """Write a ``sonar-scanner`` executable into ``bin_dir`` that runs this script."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "sonar-scanner"
    shim.write_text(f'#!/bin/sh\nexec "{python}" "{Path(__file__).resolve()}" "$@"\n')
    shim.chmod(0o755)
    return shim


def _settings(argv: list[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    project_file = Path("sonar-project.properties")
    if project_file.is_file():
        for line in project_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "!")) and "=" in line:
                key, _, value = line.partition("=")
                settings[key.strip()] = value.strip()
    for name, key in (("SONAR_HOST_URL", "sonar.host.url"), ("SONAR_TOKEN", "sonar.token")):
        if os.environ.get(name):
            settings[key] = os.environ[name]
    if os.environ.get("SONAR_ORGANIZATION"):
        settings["sonar.organization"] = os.environ["SONAR_ORGANIZATION"]
    for arg in argv:
        if arg.startswith("-D") and "=" in arg:
            key, _, value = arg[2:].partition("=")
            settings[key] = value
    return settings


def main(argv: list[str]) -> int:
    settings = _settings(argv)
    host = settings.get("sonar.host.url", "http://localhost:9000").rstrip("/")
    key = settings.get("sonar.projectKey")
    if not key:
        print("ERROR: You must define the following mandatory properties: sonar.projectKey")
        return 2
    print(f"INFO: Project key: {key}")
    print("INFO: Analysis report generated (fake scanner: nothing was analysed)")

    request = urllib.request.Request(
        f"{host}/api/ce/submit?projectKey={quote(key)}",
        data=b"PK\x05\x06" + b"\x00" * 18,  # an empty zip, standing in for the report
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    token = settings.get("sonar.token")
    if token:
        auth = base64.b64encode(f"{token}:".encode()).decode()
        request.add_header("Authorization", f"Basic {auth}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            task_id = json.load(response)["taskId"]
        with urllib.request.urlopen(f"{host}/api/system/status", timeout=30) as response:
            version = json.load(response)["version"]
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            print(
                "ERROR: Not authorized. Please check the user token in the property "
                "'sonar.token' or the environment variable 'SONAR_TOKEN'."
            )
        else:
            print(f"ERROR: Failed to upload report: HTTP {exc.code}")
        return 2
    except OSError as exc:
        print(f"ERROR: SonarQube server [{host}] can not be reached: {exc}")
        return 2

    workdir = Path(settings.get("sonar.working.directory", ".scannerwork"))
    metadata = Path(settings.get("sonar.scanner.metadataFilePath", workdir / "report-task.txt"))
    metadata.parent.mkdir(parents=True, exist_ok=True)
    dashboard = f"{host}/dashboard?id={quote(key)}"
    lines = []
    if settings.get("sonar.organization"):
        lines.append(f"organization={settings['sonar.organization']}")
    lines += [
        f"projectKey={key}",
        f"serverUrl={host}",
        f"serverVersion={version}",
        f"dashboardUrl={dashboard}",
        f"ceTaskId={task_id}",
        f"ceTaskUrl={host}/api/ce/task?id={task_id}",
    ]
    metadata.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"INFO: Analysis report uploaded; report-task written to {metadata}")
    print(f"INFO: ANALYSIS SUCCESSFUL, you can find the results at: {dashboard}")
    print(f"INFO: More about the report processing at {host}/api/ce/task?id={task_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
