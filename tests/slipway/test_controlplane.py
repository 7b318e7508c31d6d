"""The control plane's build script and binaries lookup (no binaries needed here).

The control plane itself is tested in tests/controlplane (marker ``controlplane``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slipway.controlplane import (
    BUILD_SCRIPT,
    COMPONENTS,
    binaries_dir,
    missing_binaries,
    require_binaries,
    start_control_plane,
)
from slipway.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def build(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / BUILD_SCRIPT), *args],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_built(cache: Path, skip: str = "") -> dict[str, Path]:
    """Executable files where the build puts the binaries (the script checks only that)."""
    paths = binaries_dir(cache)
    for name, path in paths.items():
        if name != skip:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
    return paths


def test_the_build_script_and_the_module_agree_on_versions_and_folders(tmp_path: Path) -> None:
    folders = build(tmp_path, "--print").stdout.split()
    paths = binaries_dir(tmp_path)
    assert folders == [str(paths["kube-apiserver"].parent), str(paths["etcd"].parent)]
    assert set(paths) == set(COMPONENTS)


def test_check_says_whether_all_four_are_built(tmp_path: Path) -> None:
    fake_built(tmp_path, skip="kube-scheduler")
    assert build(tmp_path, "--check").returncode == 1
    fake_built(tmp_path)
    assert build(tmp_path, "--check").returncode == 0
    assert build(tmp_path, "--rebuild").returncode == 2


def test_nothing_is_rebuilt_when_all_four_are_there(tmp_path: Path) -> None:
    paths = fake_built(tmp_path)
    before = {name: path.stat().st_mtime_ns for name, path in paths.items()}

    done = build(tmp_path)

    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert {name: path.stat().st_mtime_ns for name, path in paths.items()} == before


def test_missing_binaries_are_a_config_error_naming_them_and_the_build_script(
    tmp_path: Path,
) -> None:
    paths = fake_built(tmp_path, skip="etcd")
    assert missing_binaries(paths) == [paths["etcd"]]

    with pytest.raises(ConfigError) as caught:
        start_control_plane(tmp_path / "plane", binaries=paths)

    message = str(caught.value)
    assert str(paths["etcd"]) in message and BUILD_SCRIPT in message
    assert str(paths["kube-apiserver"]) not in message
    assert require_binaries(fake_built(tmp_path)) == paths


def test_a_controlplane_test_fails_rather_than_skips_without_the_binaries(tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--no-header",
         "tests/controlplane/test_real_apiserver.py", "-k", "rbac_refusing"],
        cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "empty-cache")},
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert ran.returncode == 1, ran.stdout[-2000:]
    assert "1 error" in ran.stdout and "skipped" not in ran.stdout
    assert BUILD_SCRIPT in ran.stdout
