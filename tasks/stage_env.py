"""Environment values of a stage: ``$VAR`` expansion, and what earlier stages added.

``env: {PATH: "/opt/tool/bin:$PATH"}`` means what it means in a shell (and in
GitHub Actions or a Jenkins ``environment`` block): values are expanded with
:class:`string.Template` against the environment the mapping is applied to, in
order, so a value may use the keys before it. ``$VAR`` and ``${VAR}`` expand, a
variable that is not set expands to the empty string (as in a shell), ``$$`` is a
literal ``$``, and a ``$`` not followed by a name stays as written. Nothing is run:
no command substitution, no globbing.

A ``run`` stage on the worker may hand things to the stages that need it (directly
or not), the role of GitHub's ``$GITHUB_PATH`` and ``$GITHUB_ENV``: it finds two
empty files named by ``SLIPWAY_PATH_FILE`` and ``SLIPWAY_ENV_FILE``; each line it
writes to the first is a directory prepended to ``PATH`` of those later stages,
each ``NAME=VALUE`` line of the second sets a variable for them. They are read
only when the stage passes, and travel with its (cacheable) result. ``SLIPWAY_*``
and ``CI`` cannot be set that way: they are the run's facts.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slipway.exceptions import StageFailed
from slipway.spec_types import ENV_NAME_PATTERN

_ENV_NAME = re.compile(ENV_NAME_PATTERN)
_PROTECTED = re.compile(r"^(SLIPWAY_.*|CI)$")


class _UnsetIsEmpty(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def expand_env(values: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """``values`` with ``$VAR`` / ``${VAR}`` expanded against ``base`` and the keys
    before them (``$$`` is a literal ``$``; unset variables are empty)."""
    seen = _UnsetIsEmpty(base)
    expanded: dict[str, str] = {}
    for key, value in values.items():
        expanded[key] = seen[key] = string.Template(value).safe_substitute(seen)
    return expanded


@dataclass(frozen=True)
class Handover:
    """What a passed stage hands to the stages after it."""

    path: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def with_handovers(base: Mapping[str, str], handovers: Sequence[Handover]) -> dict[str, str]:
    """``base`` plus what earlier stages handed over, oldest first: variables are set in
    that order, and a later stage's PATH entries come before an earlier one's."""
    env = dict(base)
    prefix: list[str] = []
    for handover in handovers:
        env.update(handover.env)
        prefix[:0] = handover.path
    if prefix:
        env["PATH"] = ":".join([*prefix, env["PATH"]] if env.get("PATH") else prefix)
    return env


def _read_env_file(path: Path, stage: str) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise StageFailed(stage, f"SLIPWAY_ENV_FILE line {number}: expected NAME=VALUE")
        if _PROTECTED.match(name):
            raise StageFailed(
                stage, f"SLIPWAY_ENV_FILE line {number}: {name} is set by slipway, not by stages"
            )
        found.append((name, value))
    return tuple(found)


def handover_folder(workspace: Path, stage: str) -> Path:
    """A stage's handover files live next to the workspace (never in it: they are not the
    repository's), and go when the workspace goes."""
    return workspace.parent / f"{workspace.name}.stages" / stage


class HandoverFiles:
    """The two files a stage may write (emptied for every attempt), and what it wrote."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path_file = folder / "path"
        self.env_file = folder / "env"
        self.path_file.write_text("")
        self.env_file.write_text("")

    @property
    def variables(self) -> dict[str, str]:
        return {"SLIPWAY_PATH_FILE": str(self.path_file), "SLIPWAY_ENV_FILE": str(self.env_file)}

    def read(self, stage: str) -> Handover:
        lines = self.path_file.read_text(encoding="utf-8").splitlines()
        return Handover(
            path=tuple(line.strip() for line in lines if line.strip()),
            env=_read_env_file(self.env_file, stage),
        )
