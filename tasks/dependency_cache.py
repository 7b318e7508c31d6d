"""Dependency caches keyed on lock files, the way GitHub's ``actions/cache`` is used.

A stage says what to keep and what decides its key::

    dependency_cache:
      paths: [node_modules, ~/.npm]     # workspace paths, or ~/... in the stage's HOME
      key_files: [package-lock.json]    # globs; their contents make the key
      key: npm                          # optional prefix (default "deps"): bump to start over
      restore_keys: [npm-]              # optional: newest earlier key with this prefix

Before the stage's commands, the entry for the key is restored (merged onto what is
there, as ``tar -x`` in actions/cache does); after the stage passed, a key that was not
an exact hit is saved. The key is ``<prefix>-<os>-<arch>-<hash>``, the hash over the key
files' contents, the paths, the prefix and the platform, so a cache made on one machine
type is never restored on another. Entries are content-addressed
(``$SLIPWAY_HOME/dependency-cache/sha256``, one copy of each file whatever the number
of entries), capped at ``SLIPWAY_DEPENDENCY_CACHE_MAX_BYTES`` (default 10 GiB, GitHub's
per-repository limit) with least-recently-used entries evicted first.

Scope, as GitHub does it: a run restores entries saved by its own branch, then by the
repository's default branch, and saves under its own branch. A branch can therefore
never plant content that a run of the default branch restores.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from slipway.exceptions import StageFailed, UnsafeInputError
from slipway.spec_types import RelGlobs, StrictModel, _check_relative_path
from slipway.tasks.artifacts import matched_files, sha256_file
from slipway.tasks.file_trees import (
    MissingBlob,
    apply_tree,
    byte_setting,
    diff,
    entries_for,
    load_tree,
    save_tree,
    snapshot,
)
from slipway.workspace import inside, slipway_home

MAX_BYTES_ENV = "SLIPWAY_DEPENDENCY_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 * 1024**3
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def _cache_path(value: str) -> str:
    """A workspace path, or ``~/...`` in the stage's HOME; nothing else."""
    if value.startswith("~"):
        if value in ("~", "~/") or not value.startswith("~/"):
            raise ValueError(
                f"path {value!r}: '~' alone or '~user' is refused; name a folder in HOME "
                "(e.g. ~/.npm)"
            )
        _check_relative_path(value[2:])
        return value
    if not value or value in (".", "./"):
        raise ValueError(f"path {value!r}: caching the whole workspace is refused")
    return _check_relative_path(value)


CachePath = Annotated[str, AfterValidator(_cache_path)]


class DependencyCacheSpec(StrictModel):
    """One cache of dependency folders, keyed on the contents of lock files."""

    paths: list[CachePath] = Field(
        min_length=1,
        description="Folders or files to keep: relative to the workspace, or ~/... in the "
        "stage's HOME.",
    )
    key_files: RelGlobs = Field(
        min_length=1, description="Globs of files whose contents make the key (lock files)."
    )
    key: Annotated[str, Field(pattern=KEY_PATTERN)] = Field(
        default="deps", description="Key prefix; change it to start a fresh cache."
    )
    restore_keys: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        description="Prefixes of earlier keys to fall back on (newest first) when the key "
        "misses; the stage then saves under its own key.",
    )


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


DependencyCaches = Annotated[list[DependencyCacheSpec], BeforeValidator(_one_or_many)]


def cache_limit() -> int:
    """Most bytes the dependency cache keeps (default 10 GiB)."""
    return byte_setting(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)


def platform_id() -> str:
    return f"{sys.platform}-{platform.machine().lower() or 'unknown'}"


@dataclass(frozen=True)
class CacheStore:
    """``$SLIPWAY_HOME/dependency-cache``: blobs by sha256 and one JSON file per entry."""

    root: Path

    @classmethod
    def default(cls) -> CacheStore:
        return cls(slipway_home() / "dependency-cache")

    @property
    def blobs(self) -> Path:
        path = self.root / "sha256"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def entries(self) -> Path:
        path = self.root / "entries"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def entry_file(self, scope: str, key: str) -> Path:
        name = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:32]
        return self.entries / f"{name}.json"

    def all_entries(self) -> list[dict[str, Any]]:
        found = []
        for path in self.entries.glob("*.json"):
            try:
                found.append({**json.loads(path.read_text()), "file": str(path)})
            except (OSError, ValueError):
                continue  # being replaced, or half-written by a crashed process
        return found

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _write_json(path: Path, data: dict[str, Any]) -> None:
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    with os.fdopen(handle, "w") as writer:
        json.dump({k: v for k, v in data.items() if k != "file"}, writer)
    os.replace(partial, path)


@dataclass(frozen=True)
class CacheRoots:
    """Where a stage's cache paths live: its workspace and its HOME (None: unknown)."""

    workspace: Path
    home: Path | None

    def locate(self, stage: str, path: str) -> tuple[Path, str]:
        """(root, path relative to it) for a spec path; refuses anything outside both."""
        if path.startswith("~/"):
            if self.home is None:
                raise StageFailed(stage, f"dependency_cache path {path!r}: the stage has no HOME")
            root, relative = self.home, path[2:]
        else:
            root, relative = self.workspace, path
        relative = str(PurePosixPath(relative)).rstrip("/")
        try:
            inside(root, relative)  # a symlink leading elsewhere is refused here
        except UnsafeInputError as exc:
            raise StageFailed(stage, f"dependency_cache path {path!r}: {exc}") from None
        return root, relative


def cache_key(stage: str, spec: DependencyCacheSpec, workspace: Path) -> str:
    """``<prefix>-<os>-<arch>-<hash of key files, paths, prefix and platform>``."""
    files = [
        (relative, sha256_file(path))
        for pattern in spec.key_files
        for relative, path in matched_files(stage, workspace, pattern, "dependency_cache key_files")
    ]
    material = json.dumps(
        {"key": spec.key, "platform": platform_id(), "paths": spec.paths, "files": sorted(files)},
        sort_keys=True,
    )
    digest = hashlib.sha256(material.encode()).hexdigest()[:24]
    return f"{spec.key}-{platform_id()}-{digest}"


@dataclass(frozen=True)
class DependencyCacheOutcome:
    """How one dependency cache went for a stage: hit, partial (a restore key), miss."""

    paths: tuple[str, ...]
    key: str
    status: Literal["hit", "partial", "miss"]
    restored_from: str | None = None
    restored_bytes: int = 0
    saved: str = ""
    seconds: float = 0.0

    def note(self) -> str:
        what = ", ".join(self.paths)
        if self.status == "hit":
            return f"dependency cache {what}: hit"
        head = (
            f"dependency cache {what}: partial hit ({self.restored_from})"
            if self.status == "partial"
            else f"dependency cache {what}: miss"
        )
        return f"{head}, {self.saved}" if self.saved else head


@dataclass(frozen=True)
class _Lookup:
    spec: DependencyCacheSpec
    key: str
    outcome: DependencyCacheOutcome


def _find(
    store: CacheStore, spec: DependencyCacheSpec, key: str, scopes: Sequence[str]
) -> tuple[dict[str, Any] | None, bool]:
    """The entry to restore and whether it is an exact hit."""
    for scope in scopes:
        path = store.entry_file(scope, key)
        if path.is_file():
            try:
                return {**json.loads(path.read_text()), "file": str(path)}, True
            except (OSError, ValueError):
                pass
    if not spec.restore_keys:
        return None, False
    candidates = [
        e
        for e in store.all_entries()
        if e.get("scope") in scopes
        and e.get("paths") == spec.paths
        and e.get("platform") == platform_id()
    ]
    for prefix in spec.restore_keys:
        matching = [e for e in candidates if str(e.get("key", "")).startswith(prefix)]
        if matching:
            matching.sort(key=lambda e: (list(scopes).index(e["scope"]), -e.get("created", 0)))
            return matching[0], False
    return None, False


def restore_caches(
    stage: str,
    specs: Sequence[DependencyCacheSpec],
    roots: CacheRoots,
    scopes: Sequence[str],
    log: Callable[[str], None],
    store: CacheStore | None = None,
) -> list[_Lookup]:
    """Restore each cache's entry before the stage runs; returns what to save afterwards."""
    store = store or CacheStore.default()
    done: list[_Lookup] = []
    for spec in specs:
        started = time.monotonic()
        located = [roots.locate(stage, p) for p in spec.paths]
        key = cache_key(stage, spec, roots.workspace)
        entry, exact = _find(store, spec, key, scopes)
        status: Literal["hit", "partial", "miss"] = "miss"
        written = 0
        if entry is not None:
            try:
                for tree, (root, _relative) in zip(entry["trees"], located, strict=True):
                    if tree is not None:
                        written += apply_tree(load_tree(tree, store.blobs), root, store.blobs)
                status = "hit" if exact else "partial"
                entry["last_used"] = time.time()
                _write_json(Path(entry["file"]), entry)
            except (MissingBlob, OSError, ValueError) as exc:  # evicted meanwhile: a miss
                log(f"dependency cache {entry.get('key')}: could not be restored ({exc})")
        outcome = DependencyCacheOutcome(
            tuple(spec.paths),
            key,
            status,
            entry.get("key") if entry is not None and status != "miss" else None,
            restored_bytes=written,
            seconds=round(time.monotonic() - started, 3),
        )
        log(outcome.note() + f" (key {key}, {written} bytes restored)")
        done.append(_Lookup(spec, key, outcome))
    return done


def save_caches(
    stage: str,
    lookups: Sequence[_Lookup],
    roots: CacheRoots,
    scope: str,
    log: Callable[[str], None],
    store: CacheStore | None = None,
) -> tuple[DependencyCacheOutcome, ...]:
    """After a passed stage: save every cache whose key was not an exact hit, then evict."""
    store = store or CacheStore.default()
    outcomes = []
    for lookup in lookups:
        if lookup.outcome.status == "hit":
            outcomes.append(lookup.outcome)
            continue
        try:
            saved = _save(stage, lookup, roots, scope, store)
        except OSError as exc:  # a cache that cannot be written never fails a passed stage
            saved = f"not saved: {exc}"
        log(f"dependency cache {lookup.key}: {saved}")
        outcomes.append(DependencyCacheOutcome(**{**lookup.outcome.__dict__, "saved": saved}))
    return tuple(outcomes)


def _save(stage: str, lookup: _Lookup, roots: CacheRoots, scope: str, store: CacheStore) -> str:
    limit = cache_limit()
    with store.locked():
        trees: list[str | None] = []
        files = size = 0
        for path in lookup.spec.paths:
            root, relative = roots.locate(stage, path)
            found = snapshot(root, relative)
            if not found:
                trees.append(None)
                continue
            changes = diff({}, found)
            if changes.unsupported:
                return f"not saved: {changes.unsupported[0]} is not a file, folder or symlink"
            size += sum(s.size for s in found.values() if s.kind == "file")
            if size > limit:
                return f"not saved: {size} bytes is over {MAX_BYTES_ENV}={limit}"
            entries = entries_for(root, changes, found, store.blobs)
            files += sum(1 for e in entries if e.kind == "file")
            trees.append(save_tree(entries, store.blobs))
        if all(t is None for t in trees):
            return "not saved: none of its paths exists after the stage"
        now = time.time()
        entry = {
            "key": lookup.key,
            "scope": scope,
            "paths": list(lookup.spec.paths),
            "platform": platform_id(),
            "trees": trees,
            "files": files,
            "bytes": size,
            "created": now,
            "last_used": now,
        }
        _write_json(store.entry_file(scope, lookup.key), entry)
        evicted = _evict(store, limit)
    note = f"saved {files} files ({size / 1e6:.1f} MB)"
    return note + (
        f", evicted {evicted} older entr{'y' if evicted == 1 else 'ies'}" if evicted else ""
    )


def _blobs_of(entry: dict[str, Any], store: CacheStore) -> set[str]:
    found: set[str] = set()
    for tree in entry.get("trees", []):
        if tree is None:
            continue
        found.add(tree)
        try:
            found.update(e.sha256 for e in load_tree(tree, store.blobs) if e.kind == "file")
        except (MissingBlob, ValueError):
            continue
    return found


def _evict(store: CacheStore, limit: int) -> int:
    """Drop least-recently-used entries until the blobs they keep fit ``limit``; then
    delete blobs no entry keeps. Called with the store locked."""
    entries = sorted(store.all_entries(), key=lambda e: e.get("last_used", 0))
    kept = {e["file"]: _blobs_of(e, store) for e in entries}
    sizes: dict[str, int] = {}
    for path in store.blobs.iterdir():
        if not path.name.startswith("."):
            sizes[path.name] = path.stat().st_size

    def total() -> int:
        return sum(sizes.get(b, 0) for b in set().union(*kept.values()))

    evicted = 0
    for entry in entries[:-1]:  # the newest (just saved) stays: it fits the limit alone
        if total() <= limit:
            break
        Path(entry["file"]).unlink(missing_ok=True)
        del kept[entry["file"]]
        evicted += 1
    live = set().union(*kept.values()) if kept else set()
    for name in sizes:
        if name not in live:
            (store.blobs / name).unlink(missing_ok=True)
    return evicted
