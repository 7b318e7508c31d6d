"""Capturing a stage's workspace changes and putting them back, on real folders."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from slipway.tasks.file_trees import (
    TreeEntry,
    apply_tree,
    load_tree,
    prune_store,
    save_tree,
    snapshot,
    store_bytes,
)
from slipway.tasks.workspace_capture import (
    CannotRestore,
    WorkspaceChanges,
    begin_capture,
    finish_capture,
    restore_changes,
)


def checkout(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('app')\n")
    (root / "old.txt").write_text("old\n")
    (root / ".git").mkdir()
    return root


def tree_of(root: Path) -> dict[str, tuple[str, int, str]]:
    """Type, mode and content (or link target) of every path but .git."""
    found = {}
    for path, state in snapshot(root, exclude=[".git"]).items():
        full = root / path
        body = os.readlink(full) if state.kind == "link" else ""
        if state.kind == "file":
            body = full.read_text()
        found[path] = (state.kind, state.mode if state.kind != "link" else 0, body)
    return found


def setup_stage(root: Path) -> None:
    """What a `setup` stage does: a venv-like folder, a symlink, a modified and a deleted file."""
    (root / ".venv" / "bin").mkdir(parents=True)
    tool = root / ".venv" / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (root / ".venv" / "bin" / "python").symlink_to("tool")
    (root / ".venv" / "lib").mkdir(mode=0o700)
    (root / "src" / "app.py").write_text("print('generated')\n")
    (root / "old.txt").unlink()
    (root / ".git" / "index").write_text("not a stage output\n")


def test_a_stage_changes_come_back_in_a_fresh_checkout(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    first = checkout(tmp_path / "run1")
    begin_capture(first, "attempt-1")
    setup_stage(first)
    changes = finish_capture(first, "attempt-1", store=store)
    assert changes.restorable and changes.deleted == 1

    second = checkout(tmp_path / "run2")
    restored = restore_changes(changes, second, store=store)
    assert restored.files == changes.files
    assert tree_of(second) == tree_of(first)  # modes, symlink, modification, deletion
    assert not (second / ".git" / "index").exists()  # .git is not captured


def test_a_retry_keeps_the_first_attempts_snapshot(tmp_path):
    root = checkout(tmp_path / "ws")
    begin_capture(root, "run-a")
    (root / "partial").write_text("left by the failed attempt\n")
    begin_capture(root, "run-a")  # the retry
    (root / "done").write_text("second attempt\n")
    changes = finish_capture(root, "run-a", store=tmp_path)
    paths = {e.path for e in load_tree(changes.tree or "", tmp_path)}
    assert paths == {"partial", "done"}


def test_neighbours_restored_in_any_order_end_as_the_original_run_ended(tmp_path):
    """`docs` ends while `setup` has written its script but not yet made it executable."""
    store = tmp_path / "store"
    store.mkdir()
    root = checkout(tmp_path / "run1")
    begin_capture(root, "setup")
    begin_capture(root, "docs")
    (root / "tool").write_text("#!/bin/sh\n")
    (root / "setup.tmp").write_text("scratch\n")
    (root / "docs.html").write_text("<p>docs</p>\n")
    docs = finish_capture(root, "docs", store=store)  # sees tool (0644) and setup.tmp
    (root / "tool").chmod(0o755)
    (root / "setup.tmp").unlink()
    setup = finish_capture(root, "setup", store=store)
    assert {e.path for e in load_tree(docs.tree or "", store)} >= {"tool", "setup.tmp"}

    for name, order in (("docs-last", (setup, docs)), ("setup-last", (docs, setup))):
        again = checkout(tmp_path / name)
        for changes in order:
            restore_changes(changes, again, store=store)
        assert tree_of(again) == tree_of(root), name  # executable tool, no scratch file


def test_a_socket_makes_the_result_not_reusable(tmp_path):
    root = checkout(tmp_path / "ws")
    begin_capture(root, "s")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "agent.sock"))
    try:
        changes = finish_capture(root, "s", store=tmp_path)
    finally:
        server.close()
    assert not changes.restorable and "agent.sock" in changes.why_not
    with pytest.raises(CannotRestore, match="agent.sock"):
        restore_changes(changes, root, store=tmp_path)


def test_over_the_size_limit_the_result_is_not_reused(tmp_path, monkeypatch):
    # the setting under test, made small so a few bytes cross it
    monkeypatch.setenv("SLIPWAY_CAPTURE_MAX_BYTES", "10")
    root = checkout(tmp_path / "ws")
    begin_capture(root, "big")
    (root / "big.bin").write_bytes(b"x" * 11)
    changes = finish_capture(root, "big", store=tmp_path)
    assert not changes.restorable and "SLIPWAY_CAPTURE_MAX_BYTES=10" in changes.why_not


def test_a_lost_blob_or_an_older_result_cannot_be_restored_and_nothing_is_touched(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    root = checkout(tmp_path / "ws")
    begin_capture(root, "x")
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    changes = finish_capture(root, "x", store=store)
    blob = next(e.sha256 for e in load_tree(changes.tree or "", store) if e.path == "b.txt")
    (store / blob).unlink()
    fresh = checkout(tmp_path / "fresh")
    before = tree_of(fresh)
    with pytest.raises(CannotRestore, match="gone"):
        restore_changes(changes, fresh, store=store)
    assert tree_of(fresh) == before
    with pytest.raises(CannotRestore, match="predates"):
        restore_changes(None, fresh, store=store)


def test_a_stored_tree_cannot_write_outside_its_root(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    for bad in ("../evil", "/etc/evil", "escape/evil"):
        entries = [TreeEntry(bad, "dir", 0o755)]
        with pytest.raises(Exception, match="outside|plain relative"):
            apply_tree(load_tree(save_tree(entries, store), store), root, store)
    assert not (tmp_path / "evil").exists()


def test_changes_record_type_changes_and_folder_deletions(tmp_path):
    root = checkout(tmp_path / "ws")
    (root / "build" / "deep").mkdir(parents=True)
    (root / "build" / "deep" / "x.o").write_text("x")
    (root / "link").symlink_to("src")
    begin_capture(root, "t")
    shutil.rmtree(root / "build")
    (root / "link").unlink()
    (root / "link").mkdir()  # a symlink became a folder
    changes = finish_capture(root, "t", store=tmp_path)
    entries = {e.path: e.kind for e in load_tree(changes.tree or "", tmp_path)}
    assert entries == {"build": "absent", "link": "dir"}  # only the top of the deleted folder
    assert isinstance(changes, WorkspaceChanges)


def test_blobs_no_result_named_for_the_result_lifetime_are_pruned_once_a_day(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    old, reused = store_bytes(b"old", store), store_bytes(b"reused", store)
    month_ago = time.time() - 30 * 86400
    for name in (old, reused):
        os.utime(store / name, (month_ago, month_ago))
    assert store_bytes(b"reused", store) == reused  # named again by a new result: kept alive
    assert prune_store(store, 15 * 86400) == 1
    assert sorted(p.name for p in store.iterdir() if p.name[0] != ".") == [reused]
    os.utime(store / reused, (month_ago, month_ago))
    assert prune_store(store, 15 * 86400) == 0  # the next pass waits a day


def test_a_capture_keeps_archived_artifacts_for_the_stores_own_age_limit(tmp_path, monkeypatch):
    # captures and archived artifacts share one store: a capture's daily sweep must not
    # cut SLIPWAY_ARTIFACTS_MAX_AGE_DAYS (default 30) down to the result lifetime
    monkeypatch.delenv("SLIPWAY_ARTIFACTS_MAX_AGE_DAYS", raising=False)
    store = tmp_path / "store"
    store.mkdir()
    artifact = store_bytes(b"a wheel archived three weeks ago", store)
    weeks_ago = time.time() - 21 * 86400
    os.utime(store / artifact, (weeks_ago, weeks_ago))
    workspace = checkout(tmp_path / "ws")

    begin_capture(workspace, "attempt-1")
    (workspace / "made.txt").write_text("by the stage")
    finish_capture(workspace, "attempt-1", store)

    assert (store / artifact).exists()
