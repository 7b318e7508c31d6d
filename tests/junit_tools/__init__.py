"""JUnit reports written by the real tools, on the small projects in ``projects/``.

Each tool runs once per project source and tool version: the work folder (the copied
project, its reports and the tool's own console output) is kept under
``$XDG_CACHE_HOME/slipway-tools/reports/<tool>-<key>/`` and reused while the key (a hash
of the project's files, the runner's own code and the pinned versions) is unchanged,
so the suite pays for Maven, jest or a C++ build once per machine, not once per run.

Where the tools come from (CI installs every one: a missing tool fails, never skips):

- pytest and pytest-rerunfailures: the test virtualenv (``pyproject.toml``'s test extra).
- gotestsum and go-junit-report: built by ``.ci/go-tools`` into
  ``$XDG_CACHE_HOME/slipway-tools/<name>-<version>/``.
- jest, jest-junit, mocha, mocha-junit-reporter: ``npm install`` from the npm registry
  into ``$XDG_CACHE_HOME/slipway-tools/node-<hash of the pins>/`` on first use.
- Maven Surefire and JUnit 5: Maven Central into ``~/.m2`` on first use.
- googletest, cmake and ctest: Debian's ``googletest``, ``libgtest-dev`` and ``cmake``.
- PHPUnit (the one common tool that nests suites): Debian's ``phpunit``.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECTS = Path(__file__).parent / "projects"

GO_TOOLS = {"gotestsum": "v1.13.0", "go-junit-report": "v2.1.0"}  # keep in step with .ci/go-tools
NODE_PACKAGES = {
    "jest": "30.5.2",
    "jest-junit": "17.0.0",
    "mocha": "11.7.5",
    "mocha-junit-reporter": "2.2.1",
}


def tools_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "slipway-tools"


@dataclass(frozen=True)
class ToolRun:
    """One tool's run on one project: where it ran, its reports and what it printed."""

    tool: str
    workdir: Path
    reports: Mapping[str, Path]
    output: Mapping[str, str]


def require(program: str, how: str) -> str:
    """The program's path; a clear failure (not a skip) when it is missing."""
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not installed: {how}", pytrace=False)
    return found


def go_binary() -> str:
    """Go, from PATH or where the machines install it (/usr/local/go)."""
    found = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
    if found is None:
        pytest.fail("go is not installed (the machines have Go in /usr/local/go)", pytrace=False)
    return found


def go_tool(name: str) -> Path:
    path = tools_cache() / f"{name}-{GO_TOOLS[name]}" / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run .ci/go-tools (CI runs it)", pytrace=False)
    return path


def run(
    argv: list[str], cwd: Path, *, env: Mapping[str, str] | None = None, timeout: float = 600
) -> str:
    """Run one tool command; its console output (stdout and stderr), whatever it exits
    with: the demo projects fail on purpose."""
    result = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.stdout


def _digest(project: Path, versions: Mapping[str, str], runner: Callable[..., object]) -> str:
    sha = hashlib.sha256(json.dumps(dict(versions), sort_keys=True).encode())
    sha.update(inspect.getsource(runner).encode())
    for path in sorted(p for p in project.rglob("*") if p.is_file()):
        sha.update(path.relative_to(project).as_posix().encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()[:16]


Runner = Callable[[Path], tuple[dict[str, str], dict[str, str]]]


def generate(tool: str, project: str, versions: Mapping[str, str], runner: Runner) -> ToolRun:
    """Run ``runner`` in a fresh copy of ``projects/<project>`` unless an earlier run with
    the same key is in the cache. ``runner(workdir)`` returns (report name -> path
    relative to workdir, command name -> console output)."""
    source = PROJECTS / project
    folder = tools_cache() / "reports" / f"{tool}-{_digest(source, versions, runner)}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    workdir = folder / "work"
    manifest = folder / "manifest.json"
    with (folder.parent / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not manifest.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(source, workdir)
            reports, output = runner(workdir)
            missing = [name for name, rel in reports.items() if not (workdir / rel).is_file()]
            if missing:
                pytest.fail(
                    f"{tool} wrote no {', '.join(missing)} report; its output:\n"
                    + "\n".join(output.values())[-4000:],
                    pytrace=False,
                )
            manifest.write_text(json.dumps({"reports": reports, "output": output}))
    data = json.loads(manifest.read_text())
    return ToolRun(
        tool,
        workdir,
        {name: workdir / rel for name, rel in data["reports"].items()},
        data["output"],
    )


def node_tools() -> Path:
    """A folder with the pinned npm packages installed (``npm install`` the first time)."""
    pins = json.dumps(NODE_PACKAGES, sort_keys=True)
    folder = tools_cache() / f"node-{hashlib.sha256(pins.encode()).hexdigest()[:12]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder / "installed"
        if not done.is_file():
            npm = require("npm", "install Debian's npm (Node 20)")
            folder.mkdir(exist_ok=True)
            (folder / "package.json").write_text(
                json.dumps(
                    {
                        "name": "slipway-junit-node-tools",
                        "private": True,
                        "dependencies": NODE_PACKAGES,
                    }
                )
            )
            result = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0:
                pytest.fail(
                    f"npm install of {pins} failed:\n{result.stderr[-3000:]}", pytrace=False
                )
            done.write_text(pins)
    return folder / "node_modules"
