"""How each real tool is run on its demo project (see the package docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.junit_tools import (
    GO_TOOLS,
    NODE_PACKAGES,
    ToolRun,
    generate,
    go_binary,
    go_tool,
    node_tools,
    require,
    run,
)


def _version(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()


def pytest_reports() -> ToolRun:
    """pytest's junitxml in both families (xunit2, the default, and xunit1, which writes
    file and line), with pytest-rerunfailures retrying the flaky test."""
    import pytest as pytest_module
    import pytest_rerunfailures  # noqa: F401  (a missing plugin fails here, clearly)

    def runner(work: Path) -> tuple[dict[str, str], dict[str, str]]:
        output = {}
        for family in ("xunit2", "xunit1"):
            output[family] = run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "no:cacheprovider",
                    "-p",
                    "pytest_rerunfailures",
                    "-o",
                    f"junit_family={family}",
                    f"--junitxml=reports/{family}.xml",
                    "tests",
                ],
                work,
                # only the plugin asked for: a user's plugins must not change the report
                env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "DEMO_FLAKY_MARKER": f"{family}.mark"},
            )
        return {f: f"reports/{f}.xml" for f in ("xunit2", "xunit1")}, output

    versions = {
        "pytest": pytest_module.__version__,
        "pytest-rerunfailures": metadata.version("pytest-rerunfailures"),
        "python": sys.version,
    }
    return generate("pytest", "pytest", versions, runner)


def go_reports() -> ToolRun:
    """gotestsum with --rerun-fails (the flaky test fails once), and go-junit-report
    reading ``go test -v`` output."""
    go = go_binary()
    gotestsum, go_junit_report = go_tool("gotestsum"), go_tool("go-junit-report")

    def runner(work: Path) -> tuple[dict[str, str], dict[str, str]]:
        env = {"CALC_FLAKY_MARKER": str(work / "flaky.mark"), "GOFLAGS": "-buildvcs=false"}
        rerun = run(
            [
                str(gotestsum),
                "--junitfile=reports/gotestsum.xml",
                "--rerun-fails=2",
                "--packages=./...",
                "--",
                "-count=1",
            ],
            work,
            env=env,
        )
        verbose = run(
            [go, "test", "-count=1", "-v", "./..."], work, env={"GOFLAGS": "-buildvcs=false"}
        )
        (work / "reports" / "go-test.txt").write_text(verbose)
        converted = subprocess.run(
            [
                str(go_junit_report),
                "-in",
                "reports/go-test.txt",
                "-out",
                "reports/go-junit-report.xml",
            ],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        return (
            {
                "gotestsum": "reports/gotestsum.xml",
                "go-junit-report": "reports/go-junit-report.xml",
            },
            {"gotestsum": rerun, "go test -v": verbose, "go-junit-report": converted.stderr},
        )

    versions = {**GO_TOOLS, "go": _version([go, "version"])}
    return generate("go", "go", versions, runner)


def maven_reports() -> ToolRun:
    """Maven Surefire on a JUnit 5 project, rerunning failures (flakyFailure, rerunFailure)."""
    mvn = require("mvn", "install Debian's maven (and a JDK 17)")

    def runner(work: Path) -> tuple[dict[str, str], dict[str, str]]:
        # -o when ~/.m2 already has everything would be faster still, but the first run
        # of a machine must download: release artifacts are never fetched twice anyway
        output = run([mvn, "-B", "-ntp", "test"], work, timeout=900)
        return {"surefire": "target/surefire-reports/TEST-demo.CalculatorTest.xml"}, {"mvn": output}

    versions = {"mvn": _version([mvn, "-v"])}
    return generate("maven", "maven", versions, runner)


def _node_env(modules: Path) -> dict[str, str]:
    return {"NODE_PATH": str(modules), "CI": "true"}


def jest_reports() -> ToolRun:
    """jest + jest-junit with default options, and with addFileAttribute."""
    node = require("node", "install Node 20 and npm")

    def runner(work: Path) -> tuple[dict[str, str], dict[str, str]]:
        modules = node_tools()
        (work / "node_modules").symlink_to(modules)
        jest = [node, str(modules / "jest" / "bin" / "jest.js"), "--ci", "--reporters=default"]
        output = {}
        for name, extra in (("default", {}), ("file", {"JEST_JUNIT_ADD_FILE_ATTRIBUTE": "true"})):
            output[name] = run(
                [*jest, "--reporters=jest-junit"],
                work,
                env={
                    **_node_env(modules),
                    "JEST_JUNIT_OUTPUT_DIR": "reports",
                    "JEST_JUNIT_OUTPUT_NAME": f"{name}.xml",
                    **extra,
                },
            )
        return {"default": "reports/default.xml", "file": "reports/file.xml"}, output

    return generate("jest", "jest", {**NODE_PACKAGES, "node": _version([node, "-v"])}, runner)


def mocha_reports() -> ToolRun:
    """mocha + mocha-junit-reporter without (the default) and with includePending."""
    node = require("node", "install Node 20 and npm")

    def runner(work: Path) -> tuple[dict[str, str], dict[str, str]]:
        modules = node_tools()
        (work / "node_modules").symlink_to(modules)
        mocha = [node, str(modules / "mocha" / "bin" / "mocha.js")]
        output = {"spec": run([*mocha, "--reporter", "spec"], work, env=_node_env(modules))}
        # any value of includePending is truthy to the reporter: the default leaves it out
        for name, extra in (("default", ""), ("pending", ",includePending=true")):
            output[name] = run(
                [
                    *mocha,
                    "--reporter",
                    "mocha-junit-reporter",
                    "--reporter-options",
                    f"mochaFile=reports/{name}.xml{extra}",
                ],
                work,
                env=_node_env(modules),
            )
        return {"default": "reports/default.xml", "pending": "reports/pending.xml"}, output

    return generate("mocha", "mocha", {**NODE_PACKAGES, "node": _version([node, "-v"])}, runner)


def gtest_reports() -> ToolRun:
    """googletest (Debian's libgtest-dev) through ctest --output-junit, and gtest's own
    --gtest_output=xml."""
    cmake = require("cmake", "apt-get install cmake")
    ctest = require("ctest", "apt-get install cmake")
    if not Path("/usr/include/gtest/gtest.h").is_file():
        import pytest

        pytest.fail("googletest is not installed: apt-get install googletest libgtest-dev")

    def runner(work: Path) -> tuple[dict[str, str], dict[str, str]]:
        build = work / "build"
        configure = run([cmake, "-S", ".", "-B", "build", "-DCMAKE_BUILD_TYPE=Release"], work)
        compiled = run([cmake, "--build", "build", "-j", str(min(2, os.cpu_count() or 1))], work)
        tested = run([ctest, "--test-dir", "build", "--output-junit", "ctest.xml"], work)
        own = run([str(build / "calc_test"), "--gtest_output=xml:gtest.xml"], build)
        return (
            {"ctest": "build/ctest.xml", "gtest": "build/gtest.xml"},
            {"cmake": configure + compiled, "ctest": tested, "gtest": own},
        )

    versions = {"cmake": _version([cmake, "--version"]), "gtest": _gtest_version()}
    return generate("gtest", "gtest", versions, runner)


def _gtest_version() -> str:
    return _version(["dpkg-query", "-W", "-f=${Version}", "libgtest-dev"])


def phpunit_reports() -> ToolRun:
    """PHPUnit (Debian's phpunit): <testsuite> nested three deep, data providers included."""
    phpunit = require("phpunit", "apt-get install phpunit")

    def runner(work: Path) -> tuple[dict[str, str], dict[str, str]]:
        output = run([phpunit, "--log-junit", "reports/phpunit.xml"], work)
        return {"phpunit": "reports/phpunit.xml"}, {"phpunit": output}

    return generate("phpunit", "phpunit", {"phpunit": _version([phpunit, "--version"])}, runner)
