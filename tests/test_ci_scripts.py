"""The README's two commands install what they start: one package list, one place.

On a fresh machine `tests/run` once gave 16 errors (htpasswd missing) and skipped the
browser tests (chromium missing) because only `.ci/run` installed those. These tests
read the scripts and the code that looks for Debian binaries, so a new `require(...)`
whose package is missing from the list fails here, not on a user's machine.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = re.compile(r"""require\(\s*[A-Z_]*\s*"?([\w./-]*)"?\s*,\s*"([\w.+-]+)"\s*\)""")


def packages(role: str) -> set[str]:
    out = subprocess.run(
        ["bash", "-c", f'. .ci/system-packages {role} --list'],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def required_packages(*folders: str) -> dict[str, str]:
    """Debian package -> where the code asks for it through ``require(binary, package)``."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for match in REQUIRE.finditer(path.read_text()):
                found.setdefault(match.group(2), str(path.relative_to(ROOT)))
    return found


def test_the_example_command_installs_what_the_product_starts():
    wanted = required_packages("slipway", "tasks", "flows")
    assert "docker-registry" in wanted, "the scan of require() calls found nothing: fix REQUIRE"
    missing = {pkg: where for pkg, where in wanted.items() if pkg not in packages("example")}
    # containerd and runc come with docker.io as its dependencies
    missing.pop("containerd", None)
    missing.pop("runc", None)
    assert not missing, f"not in .ci/system-packages' example list: {missing}"


def test_the_test_command_installs_what_the_tests_start():
    listed = packages("test")
    assert packages("example") <= listed, "the tests run the example's components too"
    wanted = required_packages("tests")
    assert "apache2-utils" in wanted, "the scan of require() calls found nothing: fix REQUIRE"
    # the tests' other real components, found by path rather than through require()
    wanted |= {"chromium": "tests/e2e/browser.py", "postgresql": "tests/servers/postgres.py",
               "prometheus": "tests/servers/prometheus.py"}
    missing = {pkg: where for pkg, where in wanted.items() if pkg not in listed}
    assert not missing, f"not in .ci/system-packages' test list: {missing}"


@pytest.mark.parametrize(
    ("script", "role"), [("tests/run", "test"), ("examples/run", "example")]
)
def test_each_command_installs_its_role(script, role):
    text = (ROOT / script).read_text()
    assert f'.ci/system-packages" {role}' in text


def test_ci_runs_the_readme_test_command_and_nothing_else():
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == 'exec "$root/tests/run"'
    assert not any("system-packages" in line or "apt-get" in line for line in lines)
    assert "tests/run" in (ROOT / "README.md").read_text()


def test_an_unknown_role_is_refused_by_name():
    proc = subprocess.run(["bash", "-c", ". .ci/system-packages bogus --list"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "unknown role 'bogus'" in proc.stderr
