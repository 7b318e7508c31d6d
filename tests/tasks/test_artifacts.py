"""Artifacts: archived by content into the store under SLIPWAY_HOME, and restored."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from slipway.exceptions import StageFailed, UnsafeInputError
from slipway.tasks.artifacts import (
    ArchivedFile,
    archive_artifacts,
    artifact_store,
    restore_artifacts,
)

WHEEL = b"PK\x03\x04 pretend wheel\n"
OTHER = b"another build output\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    for relative, data in {
        "dist/app-1.0-py3-none-any.whl": WHEEL,
        "dist/sub/dir/lib-2.0-py3-none-any.whl": OTHER,
        "dist/copy/app-1.0-py3-none-any.whl": WHEEL,  # same bytes, another path
        "dist/app-1.0.tar.gz": b"sdist",
        "README.md": b"readme",
    }.items():
        path = ws / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return ws


def test_archive_by_glob_with_sha256_and_size(workspace, slipway_home):
    archived = archive_artifacts("build", workspace, ["dist/**/*.whl"])

    assert archived == (
        ArchivedFile("dist/app-1.0-py3-none-any.whl", len(WHEEL), sha(WHEEL)),
        ArchivedFile("dist/copy/app-1.0-py3-none-any.whl", len(WHEEL), sha(WHEEL)),
        ArchivedFile("dist/sub/dir/lib-2.0-py3-none-any.whl", len(OTHER), sha(OTHER)),
    )
    store = artifact_store()
    assert store.is_relative_to(slipway_home)
    # content-addressed: the two identical wheels are one object
    assert sorted(p.name for p in store.iterdir()) == sorted({sha(WHEEL), sha(OTHER)})
    assert (store / sha(WHEEL)).read_bytes() == WHEEL


def test_archiving_again_reuses_the_stored_object(workspace, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    archive_artifacts("build", workspace, ["dist/*.whl"], store=store)
    before = (store / sha(WHEEL)).stat().st_ino  # not copied again: the same file

    again = archive_artifacts(
        "build", workspace, ["dist/*.whl", "{README.md,dist/*.tar.gz}"], store
    )

    assert [a.path for a in again] == [
        "dist/app-1.0-py3-none-any.whl",
        "README.md",
        "dist/app-1.0.tar.gz",
    ]
    assert (store / sha(WHEEL)).stat().st_ino == before
    assert len(list(store.iterdir())) == 3
    assert not list(store.glob("*.part"))


def test_pattern_without_match_names_the_pattern(workspace):
    with pytest.raises(StageFailed) as caught:
        archive_artifacts("build", workspace, ["dist/*.whl", "build/**/*.jar"])

    assert caught.value.stage == "build"
    assert "artifact pattern 'build/**/*.jar' matched no file" in str(caught.value)


def test_directories_do_not_count_as_matches(workspace):
    with pytest.raises(StageFailed, match="'dist/s\\*' matched no file"):
        archive_artifacts("build", workspace, ["dist/s*"])  # only the directory dist/sub


def test_symlink_pointing_outside_is_refused(workspace, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    os.symlink(outside, workspace / "dist" / "evil.whl")

    with pytest.raises(StageFailed) as caught:
        archive_artifacts("build", workspace, ["dist/*.whl"])

    assert "'dist/evil.whl'" in str(caught.value)
    assert "outside" in str(caught.value)
    assert not any(p.read_bytes() == b"not yours" for p in artifact_store().iterdir())


def test_symlink_inside_the_workspace_is_fine(workspace):
    os.symlink("app-1.0-py3-none-any.whl", workspace / "dist" / "latest.whl")

    archived = archive_artifacts("build", workspace, ["dist/latest.whl"])

    assert archived == (ArchivedFile("dist/latest.whl", len(WHEEL), sha(WHEEL)),)


def test_restore_writes_files_back_and_skips_identical_ones(workspace, tmp_path):
    archived = archive_artifacts("build", workspace, ["dist/**/*.whl"])
    fresh = tmp_path / "fresh"
    fresh.mkdir()

    assert restore_artifacts(archived, fresh) == 3
    for item in archived:
        assert (fresh / item.path).read_bytes() == (workspace / item.path).read_bytes()

    assert restore_artifacts(archived, fresh) == 0  # all identical: nothing written

    (fresh / "dist/app-1.0-py3-none-any.whl").write_bytes(b"changed locally")
    assert restore_artifacts(archived, fresh) == 1
    assert (fresh / "dist/app-1.0-py3-none-any.whl").read_bytes() == WHEEL


def test_restore_with_a_missing_store_object_fails(workspace, tmp_path):
    archived = archive_artifacts("build", workspace, ["dist/sub/**/*.whl"])
    (artifact_store() / sha(OTHER)).unlink()

    with pytest.raises(StageFailed) as caught:
        restore_artifacts(archived, tmp_path / "fresh")

    assert "dist/sub/dir/lib-2.0-py3-none-any.whl" in str(caught.value)
    assert sha(OTHER)[:12] in str(caught.value)


def test_restore_refuses_paths_outside_the_workspace(tmp_path):
    item = ArchivedFile("../escaped.txt", 1, sha(b"x"))

    with pytest.raises(UnsafeInputError):
        restore_artifacts([item], tmp_path / "fresh")
    assert not (tmp_path / "escaped.txt").exists()
