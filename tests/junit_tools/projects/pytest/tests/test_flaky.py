"""Fails on its first try, passes on pytest-rerunfailures' rerun (marker file per run)."""

import os
from pathlib import Path

import pytest


@pytest.mark.flaky(reruns=2)
def test_flaky_once():
    marker = Path(os.environ["DEMO_FLAKY_MARKER"])
    if not marker.exists():
        marker.write_text("first try")
        pytest.fail("fails the first time only")
