"""Archiving build outputs by content, and putting them back.

Archived files go to a content-addressed store (``$SLIPWAY_HOME/artifacts``,
one file per sha256), so identical outputs are stored once and a stage whose
result is reused from the cache can still hand its files to the stages after it.

What a stage's commands leave in the workspace is untrusted, so archiving takes
only what is really the workspace's:

- a path that resolves outside the workspace (a symlink out) is refused;
- a file with more than one hard link is refused. A hard link is the file itself
  under another name: from inside the workspace nothing tells whether the other
  name is ``dist/app.whl`` or ``/etc/shadow``, and copying it "with the source's
  mode" would still put the content in the store for every later restore to hand
  out. Build outputs have one name; ``cp`` instead of ``ln`` is the fix;
- the file is opened once, without following a symlink, and hashed while it is
  copied from that one descriptor, so it cannot be swapped between check and copy;
- the store is private to the worker's user (directory 0700, objects 0600).

Sizes are capped (:class:`ArtifactSettings`, from the environment): per stage,
checked before anything is written, and for the whole store, after objects unused
for ``max_age_days`` have been removed. Using an object (archiving the same content
again, restoring it) renews its age.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ByteSize, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from wcmatch import glob

from slipway.exceptions import StageFailed, UnsafeInputError
from slipway.tasks.file_trees import keep_alive, remove_unused
from slipway.workspace import inside, slipway_home

_CHUNK = 1024 * 1024
_LOG = logging.getLogger(__name__)


class ArtifactSettings(BaseSettings):
    """Limits of the artifact store, read from ``SLIPWAY_ARTIFACTS_*`` variables.

    Sizes accept units (``500MiB``, ``2GB``) or plain bytes.
    """

    model_config = SettingsConfigDict(env_prefix="SLIPWAY_ARTIFACTS_", extra="ignore")

    max_stage_bytes: ByteSize = Field(
        default=ByteSize(2 * 1024**3),
        description="What one stage may archive in total (SLIPWAY_ARTIFACTS_MAX_STAGE_BYTES). "
        "Default: 2 GiB.",
    )
    max_store_bytes: ByteSize = Field(
        default=ByteSize(20 * 1024**3),
        description="What the store may hold (SLIPWAY_ARTIFACTS_MAX_STORE_BYTES). Default: 20 GiB.",
    )
    max_age_days: float = Field(
        default=30,
        gt=0,
        description="Objects unused this long are removed (SLIPWAY_ARTIFACTS_MAX_AGE_DAYS). "
        "Default: 30 days.",
    )


@dataclass(frozen=True)
class ArchivedFile:
    """A file a stage produced: where it sits in the workspace and its fingerprint."""

    path: str
    size: int
    sha256: str


def artifact_store() -> Path:
    store = slipway_home() / "artifacts" / "sha256"
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o700)
    return store


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _human(size: int) -> str:
    return ByteSize(size).human_readable(decimal=False)


def _open_artifact(stage: str, workspace: Path, relative: str) -> tuple[int, os.stat_result]:
    """A descriptor on the workspace file and its status; refuses what is not the
    workspace's own regular file."""
    try:
        source = inside(workspace, relative)  # refuses symlinks pointing outside
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except UnsafeInputError as exc:
        raise StageFailed(stage, f"artifact {relative!r}: {exc}") from None
    except OSError as exc:
        raise StageFailed(stage, f"artifact {relative!r}: cannot open ({exc.strerror})") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_nlink > 1:
        problem = (
            f"has {info.st_nlink} hard links; only files with one name are archived "
            "(the other names may be outside the workspace): copy it instead of linking"
        )
    if problem:
        os.close(fd)
        raise StageFailed(stage, f"artifact {relative!r} {problem}")
    return fd, info


def _store_copy(fd: int, store: Path) -> str:
    """Hash the descriptor's file while copying it into the store; its sha256."""
    digest = hashlib.sha256()
    partial = store / f".{os.getpid()}.{time.monotonic_ns()}.part"
    out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(out, "wb") as sink:
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
                sink.write(chunk)
        target = store / digest.hexdigest()
        if target.exists():
            keep_alive(target)  # used again: its age starts over (prune_store keeps it too)
            partial.unlink()
        else:
            partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def clean_store(store: Path, max_age_days: float, now: float | None = None) -> tuple[int, int]:
    """Remove objects (and leftover partial copies) unused for ``max_age_days``;
    returns (files removed, bytes freed)."""
    return remove_unused(store, max_age_days * 86400, now)


def _store_bytes(store: Path) -> int:
    return sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(store))


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
    stage: str,
    workspace: Path,
    patterns: Sequence[str],
    store: Path | None = None,
    *,
    settings: ArtifactSettings | None = None,
    log: Callable[[str], None] = _LOG.warning,
) -> tuple[ArchivedFile, ...]:
    """Fingerprint and store every regular file the globs match (none is an error).

    Raises:
        StageFailed: a pattern matched nothing; a file is outside the workspace, not
            regular or hard-linked; the stage's files or the store would exceed their cap.
    """
    store = store or artifact_store()
    settings = settings or ArtifactSettings()
    matched: list[str] = []
    for pattern in patterns:
        matched += [rel for rel, _ in matched_files(stage, workspace, pattern, "artifact")]

    opened: list[tuple[str, int, os.stat_result]] = []
    try:
        total = 0
        for relative in matched:
            fd, info = _open_artifact(stage, workspace, relative)
            opened.append((relative, fd, info))
            total += info.st_size
            if total > settings.max_stage_bytes:
                raise StageFailed(
                    stage,
                    f"artifacts exceed the stage limit of {_human(settings.max_stage_bytes)} "
                    f"at {relative!r} ({_human(info.st_size)}; {_human(total)} so far); "
                    "archive less or raise SLIPWAY_ARTIFACTS_MAX_STAGE_BYTES",
                )
        if not opened:
            return ()
        largest = max(opened, key=lambda item: item[2].st_size)
        _make_room(stage, store, total, settings, log, largest=(largest[0], largest[2].st_size))
        archived = [
            ArchivedFile(relative, info.st_size, _store_copy(fd, store))
            for relative, fd, info in opened
        ]
    finally:
        for _, fd, _ in opened:
            os.close(fd)
    return tuple(archived)


def _make_room(
    stage: str,
    store: Path,
    incoming: int,
    settings: ArtifactSettings,
    log: Callable[[str], None],
    largest: tuple[str, int],
) -> None:
    """Age out unused objects; refuse when the store would still pass its cap."""
    removed, freed = clean_store(store, settings.max_age_days)
    if removed:
        log(
            f"artifact store: removed {removed} object(s) unused for {settings.max_age_days:g} "
            f"days ({_human(freed)})"
        )
    used = _store_bytes(store)
    if used + incoming > settings.max_store_bytes:
        raise StageFailed(
            stage,
            f"the artifact store {store} holds {_human(used)}; archiving {_human(incoming)} "
            f"more (the largest: {largest[0]!r}, {_human(largest[1])}) would pass its limit "
            f"of {_human(settings.max_store_bytes)}; raise SLIPWAY_ARTIFACTS_MAX_STORE_BYTES "
            "or lower SLIPWAY_ARTIFACTS_MAX_AGE_DAYS",
        )


def restore_artifacts(
    files: Sequence[ArchivedFile], workspace: Path, store: Path | None = None
) -> int:
    """Copy archived files back into a workspace; returns how many were written."""
    store = store or artifact_store()
    written = 0
    for item in files:
        target = inside(workspace, item.path)
        source = store / item.sha256
        if source.is_file():
            os.utime(source)  # used again: its age starts over
        if (
            target.is_file()
            and target.stat().st_size == item.size
            and sha256_file(target) == item.sha256
        ):
            continue
        if not source.is_file():
            raise StageFailed(
                "restore",
                f"archived {item.path} ({item.sha256[:12]}) is gone from the store "
                "(removed by age or by hand); rerun with refresh_cache",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written += 1
    return written
