"""Where a run's files live, and the guard that keeps paths inside them.

``SLIPWAY_HOME`` (default ``~/.slipway``) holds per-run workspaces and the
content-addressed artifact store that lets a cached stage hand its outputs to a
stage that does rerun.
"""

from __future__ import annotations

import os
from pathlib import Path

from slipway.exceptions import UnsafeInputError


def slipway_home() -> Path:
    home = Path(os.environ.get("SLIPWAY_HOME") or Path.home() / ".slipway")
    home.mkdir(parents=True, exist_ok=True)
    return home


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that resolves outside ``root``."""
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafeInputError(f"path {relative!r} resolves outside {base}")
    return target


def new_workspace(app: str, run_id: str) -> Path:
    path = slipway_home() / "workspaces" / app / run_id
    path.mkdir(parents=True, exist_ok=False)
    return path
