"""Archiving build outputs by content, and putting them back.

Archived files go to a content-addressed store (``$SLIPWAY_HOME/artifacts``,
one file per sha256), so identical outputs are stored once and a stage whose
result is reused from the cache can still hand its files to the stages after it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wcmatch import glob

from slipway.exceptions import StageFailed, UnsafeInputError
from slipway.tasks.file_trees import keep_alive
from slipway.workspace import inside, slipway_home

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ArchivedFile:
    """A file a stage produced: where it sits in the workspace and its fingerprint."""

    path: str
    size: int
    sha256: str


def artifact_store() -> Path:
    store = slipway_home() / "artifacts" / "sha256"
    store.mkdir(parents=True, exist_ok=True)
    return store


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def matched_files(stage: str, workspace: Path, pattern: str, what: str) -> list[tuple[str, Path]]:
    """(relative path, path) of every regular file a glob matches; none, or a symlink
    leading out of the workspace, fails the stage naming ``what`` the glob was for."""
    matches = sorted(
        glob.glob(pattern, root_dir=workspace, flags=glob.GLOBSTAR | glob.DOTGLOB | glob.BRACE)
    )
    files = [m for m in matches if (workspace / m).is_file()]
    if not files:
        raise StageFailed(stage, f"{what} pattern {pattern!r} matched no file")
    found = []
    for relative in files:
        try:
            found.append((relative, inside(workspace, relative)))
        except UnsafeInputError as exc:
            raise StageFailed(stage, f"{what} {relative!r}: {exc}") from None
    return found


def archive_artifacts(
    stage: str, workspace: Path, patterns: Sequence[str], store: Path | None = None
) -> tuple[ArchivedFile, ...]:
    """Fingerprint and store every regular file the globs match (none is an error)."""
    store = store or artifact_store()
    archived: list[ArchivedFile] = []
    for pattern in patterns:
        for relative, source in matched_files(stage, workspace, pattern, "artifact"):
            digest = sha256_file(source)
            target = store / digest
            if target.exists():
                keep_alive(target)  # a newer result names it: prune_store must keep it
            else:
                partial = target.with_suffix(f".{os.getpid()}.part")
                shutil.copyfile(source, partial)
                partial.replace(target)
            archived.append(ArchivedFile(relative, source.stat().st_size, digest))
    return tuple(archived)


def restore_artifacts(
    files: Sequence[ArchivedFile], workspace: Path, store: Path | None = None
) -> int:
    """Copy archived files back into a workspace; returns how many were written."""
    store = store or artifact_store()
    written = 0
    for item in files:
        target = inside(workspace, item.path)
        if (
            target.is_file()
            and target.stat().st_size == item.size
            and sha256_file(target) == item.sha256
        ):
            continue
        source = store / item.sha256
        if not source.is_file():
            raise StageFailed(
                "restore", f"archived {item.path} ({item.sha256[:12]}) is gone from the store"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written += 1
    return written
