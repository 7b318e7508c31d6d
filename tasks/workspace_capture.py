"""What a stage did to the workspace, kept so that reusing its result puts it back.

A cached stage result is only as good as the files it leaves: a ``setup`` stage whose
result is reused but whose ``.venv`` is missing makes every later stage fail for a
reason the fresh run never had. Trusted build caches solve this one of two ways:
Bazel and Turborepo restore exactly what the step produced, or a step is not
cacheable. slipway does the first for every stage it runs in the workspace:

* before the stage's first attempt, the workspace is snapshotted (``lstat`` of every
  path but ``.git``); after it passes, the difference — files added or modified (with
  their mode), symlinks, folders, deletions — is stored content-addressed in the
  artifact store (``$SLIPWAY_HOME/artifacts/sha256``, shared with archived artifacts,
  so a file stored by both or by many commits is kept once) and the result carries
  the digest of that list (:class:`WorkspaceChanges`);
* when the result is reused, the flow puts the list back into the new workspace
  (:func:`restore_changes`) before anything that needs the stage starts;
* when the changes could not be stored (a socket or fifo, more than
  ``SLIPWAY_CAPTURE_MAX_BYTES``) or the store lost them, the result is not reused:
  the flow runs the stage again. Restored, or not reused: never half.

Stages that run at the same time share the workspace, so a snapshot diff may also
see a neighbour's files, half-written (a script before its ``chmod +x``). Every
capture is therefore dated, and a restore never puts an older version of a path over
a newer one (from a stage that ran in this run, or from a capture that ended later):
reused neighbours end as the original run ended, in whatever order they come back. A
neighbour's temporary file, seen by one capture and deleted before the neighbour
ended, is recorded as a deletion by the neighbour, so restoring both leaves no stale
file.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from slipway.exceptions import StageFailed
from slipway.tasks.artifacts import (
    ArchivedFile,
    ArtifactSettings,
    artifact_store,
    restore_artifacts,
)
from slipway.tasks.file_trees import (
    MissingBlob,
    Snapshot,
    apply_tree,
    byte_setting,
    diff,
    entries_for,
    load_tree,
    prune_store,
    save_tree,
    snapshot,
)

EXCLUDED = (".git",)  # the checkout's own metadata is not a stage output
# how long a stage result may be reused (Prefect's cache expiration for stage tasks);
# a stored blob no result has named for longer (plus a day) may go: the store is shared
# with archived artifacts, so it goes only after the store's own age limit as well
# (SLIPWAY_ARTIFACTS_MAX_AGE_DAYS, which archiving applies too), swept once a day
RESULT_LIFETIME = timedelta(days=14)
_UNUSED_BLOB_SECONDS = (RESULT_LIFETIME + timedelta(days=1)).total_seconds()
MAX_BYTES_ENV = "SLIPWAY_CAPTURE_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 * 1024**3


def no_changes(store: Path | None = None) -> WorkspaceChanges:
    """The changes of a stage that ran elsewhere (``work_pool``): none to put back."""
    return WorkspaceChanges(save_tree([], store or artifact_store()))


def capture_limit() -> int:
    """Most bytes one stage's changes may take in the store (``SLIPWAY_CAPTURE_MAX_BYTES``,
    default 4 GiB); a stage over it is never reused from the cache."""
    return byte_setting(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)


@dataclass(frozen=True)
class WorkspaceChanges:
    """A stage's effect on the workspace, as stored: the digest of its tree, or why
    there is none (then its result must not be reused)."""

    tree: str | None
    files: int = 0
    bytes: int = 0
    deleted: int = 0
    why_not: str = ""
    finished_at: float = 0.0  # when the stage ended (wall clock): the version's age

    @property
    def restorable(self) -> bool:
        return self.tree is not None


@dataclass
class _OpenCapture:
    before: Snapshot
    # paths other captures stored as present while this one was open
    seen_elsewhere: set[str] = field(default_factory=set)


_lock = threading.Lock()
_open: dict[tuple[str, str], _OpenCapture] = {}
# per workspace, when the version of each path it now holds was written (wall clock):
# by a stage that ran here, or by the original run of a restored one. A restore never
# puts back an older version over a newer one, so reused stages that once ran side by
# side end as the original run ended, whatever order they are restored in.
_versions: OrderedDict[str, dict[str, float]] = OrderedDict()
_KEPT_WORKSPACES = 64  # runs of one process at a time; older ones are long finished


def _versions_of(workspace: Path) -> dict[str, float]:
    """Called with the lock held."""
    key = str(workspace.resolve())
    if key not in _versions:
        _versions[key] = {}
        while len(_versions) > _KEPT_WORKSPACES:
            _versions.popitem(last=False)
    _versions.move_to_end(key)
    return _versions[key]


def _id(workspace: Path, attempt_key: str) -> tuple[str, str]:
    return (str(workspace.resolve()), attempt_key)


def begin_capture(workspace: Path, attempt_key: str) -> None:
    """Snapshot the workspace before a stage; a retry (same key) keeps the first
    attempt's snapshot, so what a failed attempt left behind counts as well."""
    ident = _id(workspace, attempt_key)
    with _lock:
        if ident in _open:
            return
    try:
        before = snapshot(workspace, exclude=EXCLUDED)
    except OSError:
        return  # no snapshot: the result will say so and not be reused
    with _lock:
        _open.setdefault(ident, _OpenCapture(before))


def abandon_capture(workspace: Path, attempt_key: str) -> None:
    with _lock:
        _open.pop(_id(workspace, attempt_key), None)


def finish_capture(
    workspace: Path, attempt_key: str, store: Path | None = None
) -> WorkspaceChanges:
    """Store what changed since :func:`begin_capture` and close the capture."""
    ident = _id(workspace, attempt_key)
    with _lock:
        capture = _open.get(ident)
    if capture is None:
        return WorkspaceChanges(None, why_not="no snapshot was taken before the stage")
    store = store or artifact_store()
    try:
        after = snapshot(workspace, exclude=EXCLUDED)
    except OSError as exc:
        abandon_capture(workspace, attempt_key)
        return WorkspaceChanges(None, why_not=f"the workspace could not be read: {exc}")
    changes = diff(capture.before, after)
    finished_at = time.time()
    with _lock:
        _open.pop(ident, None)
        stale = {p for p in capture.seen_elsewhere if p not in after and p not in capture.before}
        for (other_workspace, _key), other in _open.items():
            if other_workspace == ident[0]:
                other.seen_elsewhere.update(changes.present)
        versions = _versions_of(workspace)
        for path in (*changes.present, *changes.absent, *stale):
            versions[path] = finished_at
    if changes.unsupported:
        return WorkspaceChanges(
            None,
            why_not=f"{changes.unsupported[0]} cannot be stored (not a file, folder or "
            "symlink, or an unreadable folder)",
        )
    if stale:
        changes = type(changes)(changes.present, tuple(sorted({*changes.absent, *stale})), ())
    limit = capture_limit()
    size = sum(after[p].size for p in changes.present if after[p].kind == "file")
    if size > limit:
        return WorkspaceChanges(
            None, why_not=f"its changes take {size} bytes, over {MAX_BYTES_ENV}={limit}"
        )
    prune_store(store, max(_UNUSED_BLOB_SECONDS, ArtifactSettings().max_age_days * 86400))
    try:
        entries = entries_for(workspace, changes, after, store)
    except OSError as exc:  # an unreadable file, a full disk: the result stands, not reusable
        return WorkspaceChanges(None, why_not=f"its changes could not be stored: {exc}")
    return WorkspaceChanges(
        save_tree(entries, store),
        files=sum(1 for e in entries if e.kind != "absent"),
        bytes=sum(e.size for e in entries),
        deleted=len(changes.absent),
        finished_at=finished_at,
    )


@dataclass(frozen=True)
class Restored:
    """What putting a reused stage's changes back cost."""

    files: int
    bytes: int
    seconds: float


class CannotRestore(Exception):
    """The reused result's workspace changes cannot be put back: run the stage again."""


def restore_changes(
    changes: WorkspaceChanges | None, workspace: Path, store: Path | None = None
) -> Restored:
    """Put a reused stage's workspace changes back, or raise :class:`CannotRestore`."""
    if changes is None:
        raise CannotRestore("the cached result predates workspace capture")
    if changes.tree is None:
        raise CannotRestore(f"its workspace changes were not stored: {changes.why_not}")
    started = time.monotonic()
    store = store or artifact_store()
    try:
        entries = load_tree(changes.tree, store)
    except MissingBlob as exc:
        raise CannotRestore(str(exc)) from None
    with _lock:
        versions = _versions_of(workspace)
        entries = [e for e in entries if versions.get(e.path, 0.0) <= changes.finished_at]
    try:
        written = apply_tree(entries, workspace, store)
    except MissingBlob as exc:
        raise CannotRestore(str(exc)) from None
    with _lock:
        versions = _versions_of(workspace)
        for entry in entries:
            versions[entry.path] = max(versions.get(entry.path, 0.0), changes.finished_at)
    files = sum(1 for e in entries if e.kind != "absent")
    return Restored(files, written, round(time.monotonic() - started, 3))


def restore_reused(
    changes: WorkspaceChanges | None,
    artifacts: Sequence[ArchivedFile],
    workspace: Path,
) -> Restored:
    """Everything a reused stage left behind: its workspace changes, then its archived
    files (already among the changes unless archived before capture existed)."""
    restored = restore_changes(changes, workspace)
    try:
        restore_artifacts(artifacts, workspace)
    except StageFailed as exc:
        raise CannotRestore(str(exc)) from None
    return restored
