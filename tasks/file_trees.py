"""Folders as content-addressed trees: snapshot, diff, store what changed, put it back.

Shared by the two caches that must give back files rather than results: the workspace
changes of a stage whose result is reused (:mod:`slipway.tasks.workspace_capture`) and
dependency caches keyed on lock files (:mod:`slipway.tasks.dependency_cache`). A tree is
a list of :class:`TreeEntry` (file with mode and sha256, directory with mode, symlink
with its target, or a deletion); file contents live once per sha256 in a store folder
and the list itself is stored there too, as JSON, so a result only carries one digest.

A snapshot compares by ``lstat`` (type, mode, size, mtime, ctime, inode), which is how
git's index and rsync notice changes without reading every file; only what changed is
hashed. Symlinks are recorded, never followed. Anything else (sockets, fifos, devices)
cannot be stored: it is reported so the caller can refuse to reuse the tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import ByteSize, TypeAdapter, ValidationError

from slipway.exceptions import ConfigError, SlipwayError, UnsafeInputError
from slipway.workspace import inside

_CHUNK = 1024 * 1024

Kind = Literal["file", "dir", "link", "other"]


class MissingBlob(SlipwayError):
    """A stored tree names content the store no longer holds (deleted or evicted)."""


@dataclass(frozen=True)
class PathState:
    """What a snapshot remembers of one path (from ``lstat``)."""

    kind: Kind
    mode: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    target: str = ""


Snapshot = dict[str, PathState]


@dataclass(frozen=True)
class TreeEntry:
    """One path of a stored tree, relative to the tree's root (POSIX separators)."""

    path: str
    kind: Literal["file", "dir", "link", "absent"]
    mode: int = 0
    sha256: str = ""
    size: int = 0
    target: str = ""


def byte_setting(name: str, default: int) -> int:
    """A size limit from the environment variable ``name``, else ``default``.

    Read as the artifact limits are (pydantic's ``ByteSize``: plain bytes or with units,
    ``500MiB``, ``2GB``), so every ``SLIPWAY_*_BYTES`` setting takes the same spellings.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise ConfigError(
            f"{name}={text!r}: expected a number of bytes (units allowed: 500MiB, 2GB)"
        ) from None


def _state(path: str, st: os.stat_result) -> PathState:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return PathState("link", mode, target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return PathState("dir", mode)
    kind: Kind = "file" if stat.S_ISREG(st.st_mode) else "other"
    return PathState(kind, mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def snapshot(root: Path, start: str = "", *, exclude: Iterable[str] = ()) -> Snapshot:
    """Every path under ``root / start`` (``start`` itself included when given).

    ``exclude`` names top-level entries of ``root`` to leave out (a checkout's ``.git``).
    A path that vanishes while the walk runs is simply not in the snapshot.
    """
    skipped = set(exclude)
    found: Snapshot = {}
    pending = [start]
    if start:
        try:
            top = _state(str(root / start), os.lstat(root / start))
        except FileNotFoundError:
            return found
        found[start] = top
        if top.kind != "dir":
            return found
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(root / relative if relative else root) as entries:
                for entry in entries:
                    name = f"{relative}/{entry.name}" if relative else entry.name
                    if not relative and entry.name in skipped:
                        continue
                    try:
                        state = _state(entry.path, entry.stat(follow_symlinks=False))
                    except FileNotFoundError:
                        continue
                    found[name] = state
                    if state.kind == "dir":
                        pending.append(name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:
            found[relative] = PathState("other", 0)  # unreadable: it cannot be stored
    return found


def _changed(old: PathState, new: PathState) -> bool:
    if old.kind != new.kind or old.mode != new.mode:
        return True
    if new.kind == "link":
        return old.target != new.target
    if new.kind == "dir":
        return False  # a folder's own mtime moves with its contents, which are listed
    return (old.size, old.mtime_ns, old.ctime_ns, old.inode) != (
        new.size,
        new.mtime_ns,
        new.ctime_ns,
        new.inode,
    )


@dataclass(frozen=True)
class TreeDiff:
    """What changed between two snapshots: present paths to store, paths now absent."""

    present: tuple[str, ...]
    absent: tuple[str, ...]
    unsupported: tuple[str, ...]


def diff(before: Mapping[str, PathState], after: Mapping[str, PathState]) -> TreeDiff:
    """Paths added or changed (in ``after``) and removed (only the topmost of a removed
    folder: putting the deletion back removes the whole folder)."""
    present = sorted(p for p, s in after.items() if p not in before or _changed(before[p], s))
    gone = sorted(p for p in before if p not in after)
    gone_set = set(gone)
    absent = [p for p in gone if str(PurePosixPath(p).parent) not in gone_set]
    unsupported = [p for p in present if after[p].kind == "other"]
    return TreeDiff(tuple(present), tuple(absent), tuple(unsupported))


def store_file(source: Path, store: Path) -> tuple[str, int]:
    """Copy a file into the store under its sha256 (hashed while copied, written once)."""
    digest = hashlib.sha256()
    size = 0
    handle, partial = tempfile.mkstemp(dir=store, prefix=".part-")
    try:
        with source.open("rb") as reader, os.fdopen(handle, "wb") as writer:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                size += len(chunk)
        target = store / digest.hexdigest()
        if target.exists():
            os.unlink(partial)
            keep_alive(target)
        else:
            os.replace(partial, target)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return digest.hexdigest(), size


def store_bytes(data: bytes, store: Path) -> str:
    digest = hashlib.sha256(data).hexdigest()
    target = store / digest
    if target.exists():
        keep_alive(target)
    else:
        handle, partial = tempfile.mkstemp(dir=store, prefix=".part-")
        with os.fdopen(handle, "wb") as writer:
            writer.write(data)
        os.replace(partial, target)
    return digest


def keep_alive(blob: Path) -> None:
    """Mark a stored blob as used now, so :func:`prune_store` keeps it: every blob is at
    least as recent as the newest result that names it."""
    try:
        os.utime(blob)
    except FileNotFoundError:
        pass


def remove_unused(store: Path, max_age_seconds: float, now: float | None = None) -> tuple[int, int]:
    """Delete what the store holds unused for ``max_age_seconds`` (by mtime, which
    :func:`keep_alive` renews), leftover partial copies included; the sweep's own marker
    stays. Returns (files removed, bytes freed)."""
    cutoff = (time.time() if now is None else now) - max_age_seconds
    removed = freed = 0
    with os.scandir(store) as entries:
        for entry in entries:
            if entry.name == _SWEPT_MARKER:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if info.st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
                    freed += info.st_size
            except FileNotFoundError:
                continue
    return removed, freed


_SWEPT_MARKER = ".pruned"


def prune_store(store: Path, max_age_seconds: float, *, every_seconds: float = 86400) -> int:
    """:func:`remove_unused`, at most once per ``every_seconds`` (a marker file remembers
    the last pass); returns how many were deleted."""
    marker = store / _SWEPT_MARKER
    now = time.time()
    try:
        if now - marker.stat().st_mtime < every_seconds:
            return 0
    except FileNotFoundError:
        pass
    marker.touch()
    return remove_unused(store, max_age_seconds, now)[0]


def entries_for(
    root: Path, changes: TreeDiff, after: Mapping[str, PathState], store: Path
) -> list[TreeEntry]:
    """The stored form of a diff: file contents go into the store as they are read."""
    found: list[TreeEntry] = []
    for path in changes.present:
        state = after[path]
        if state.kind == "dir":
            found.append(TreeEntry(path, "dir", state.mode))
        elif state.kind == "link":
            found.append(TreeEntry(path, "link", target=state.target))
        elif state.kind == "file":
            try:
                digest, size = store_file(root / path, store)
            except (FileNotFoundError, IsADirectoryError):
                continue  # gone since the snapshot: nothing to put back
            found.append(TreeEntry(path, "file", state.mode, digest, size))
    found.extend(TreeEntry(path, "absent") for path in changes.absent)
    return found


def save_tree(entries: list[TreeEntry], store: Path) -> str:
    """Store the list itself; its sha256 names the whole tree."""
    data = json.dumps([asdict(e) for e in entries], separators=(",", ":")).encode()
    return store_bytes(data, store)


def load_tree(digest: str, store: Path) -> list[TreeEntry]:
    source = store / digest
    if not source.is_file():
        raise MissingBlob(f"stored tree {digest[:12]} is gone from {store}")
    return [TreeEntry(**item) for item in json.loads(source.read_bytes())]


def _checked(root: Path, relative: str) -> Path:
    """``root / relative`` with its parent inside ``root`` (the entry itself may be a
    symlink, which is replaced, never followed)."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise UnsafeInputError(f"stored path {relative!r} is not a plain relative path")
    parent = inside(root, str(pure.parent)) if str(pure.parent) != "." else root.resolve()
    return parent / pure.name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def apply_tree(entries: list[TreeEntry], root: Path, store: Path) -> int:
    """Put a stored tree back under ``root``; returns the bytes written.

    Deletions first (deepest first), then folders (shallowest first), then files and
    symlinks. Every blob is checked before anything is touched, so a tree whose content
    was evicted fails with :class:`MissingBlob` and leaves ``root`` as it was.
    """
    missing = [e for e in entries if e.kind == "file" and not (store / e.sha256).is_file()]
    if missing:
        raise MissingBlob(
            f"{len(missing)} stored file(s) are gone from {store} (first: {missing[0].path})"
        )
    written = 0
    for entry in sorted(
        (e for e in entries if e.kind == "absent"), key=lambda e: -e.path.count("/")
    ):
        _remove(_checked(root, entry.path))
    for entry in sorted((e for e in entries if e.kind == "dir"), key=lambda e: e.path.count("/")):
        target = _checked(root, entry.path)
        if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
            target.unlink()
        target.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.kind not in ("file", "link"):
            continue
        target = _checked(root, entry.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        if entry.kind == "link":
            if os.path.lexists(target):
                target.unlink()
            os.symlink(entry.target, target)
            continue
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(handle)
        try:
            shutil.copyfile(store / entry.sha256, partial)
            keep_alive(store / entry.sha256)
            os.chmod(partial, entry.mode)
            os.replace(partial, target)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        written += entry.size
    # folder modes last: a read-only folder would refuse the files put into it
    for entry in sorted((e for e in entries if e.kind == "dir"), key=lambda e: -e.path.count("/")):
        os.chmod(_checked(root, entry.path), entry.mode)
    return written
