"""Artifacts: archived by content into the store under SLIPWAY_HOME, and restored."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from slipway.exceptions import StageFailed, UnsafeInputError
from slipway.tasks.artifacts import (
    ArchivedFile,
    ArtifactSettings,
    archive_artifacts,
    artifact_store,
    clean_store,
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
    before = (store / sha(WHEEL)).stat().st_ino

    again = archive_artifacts(
        "build", workspace, ["dist/*.whl", "{README.md,dist/*.tar.gz}"], store
    )

    assert [a.path for a in again] == [
        "dist/app-1.0-py3-none-any.whl",
        "README.md",
        "dist/app-1.0.tar.gz",
    ]
    assert (store / sha(WHEEL)).stat().st_ino == before  # not written again
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


# --- what the store takes, and how much ----------------------------------------------------


def test_a_hard_link_to_a_file_outside_the_workspace_is_refused(workspace, tmp_path):
    outside = tmp_path / "etc" / "shadow"
    outside.parent.mkdir()
    outside.write_bytes(b"root:$y$j9T$not-yours:19700:0:99999:7:::\n")
    outside.chmod(0o640)
    os.link(outside, workspace / "dist" / "shadow.whl")  # a real second name, same inode
    assert (workspace / "dist" / "shadow.whl").stat().st_nlink == 2

    with pytest.raises(StageFailed) as caught:
        archive_artifacts("build", workspace, ["dist/*.whl"])

    assert "artifact 'dist/shadow.whl' has 2 hard links" in str(caught.value)
    assert "copy it instead of linking" in str(caught.value)
    assert sha(outside.read_bytes()) not in {p.name for p in artifact_store().iterdir()}
    assert not any(b"not-yours" in p.read_bytes() for p in artifact_store().iterdir())


def test_a_hard_link_inside_the_workspace_is_refused_too(workspace):
    """From inside, the other name cannot be told apart from one outside."""
    os.link(workspace / "dist/app-1.0.tar.gz", workspace / "dist/app-copy.tar.gz")

    with pytest.raises(StageFailed, match="'dist/app-1.0.tar.gz' has 2 hard links"):
        archive_artifacts("build", workspace, ["dist/*.tar.gz"])


def test_the_store_is_private_to_the_worker(workspace):
    archive_artifacts("build", workspace, ["dist/app-1.0.tar.gz"])

    store = artifact_store()
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE((store / sha(b"sdist")).stat().st_mode) == 0o600


def test_a_stage_over_its_limit_fails_naming_the_file(workspace, tmp_path):
    limits = ArtifactSettings(max_stage_bytes=len(WHEEL) + len(OTHER))
    store = tmp_path / "store"
    store.mkdir()

    with pytest.raises(StageFailed) as caught:
        archive_artifacts("build", workspace, ["dist/**/*.whl"], store, settings=limits)

    message = str(caught.value)
    assert "artifacts exceed the stage limit of" in message
    assert "at 'dist/sub/dir/lib-2.0-py3-none-any.whl'" in message
    assert "SLIPWAY_ARTIFACTS_MAX_STAGE_BYTES" in message
    assert list(store.iterdir()) == []  # checked before anything is written


def test_a_full_store_fails_naming_the_largest_file(workspace, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    archive_artifacts("build", workspace, ["README.md"], store)
    limits = ArtifactSettings(max_store_bytes=len(b"readme") + len(WHEEL))

    with pytest.raises(StageFailed) as caught:
        archive_artifacts("build", workspace, ["dist/*.whl", "dist/*.gz"], store, settings=limits)

    message = str(caught.value)
    assert "(the largest: 'dist/app-1.0-py3-none-any.whl'" in message
    assert "would pass its limit" in message and "SLIPWAY_ARTIFACTS_MAX_STORE_BYTES" in message


def test_objects_unused_for_max_age_are_cleaned_to_make_room(workspace, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    old = archive_artifacts("build", workspace, ["README.md"], store)
    forty_days_ago = time.time() - 40 * 86400
    os.utime(store / old[0].sha256, (forty_days_ago, forty_days_ago))
    limits = ArtifactSettings(max_store_bytes=len(WHEEL), max_age_days=30)
    warnings: list[str] = []

    archived = archive_artifacts(
        "build",
        workspace,
        ["dist/app-1.0-py3-none-any.whl"],
        store,
        settings=limits,
        log=warnings.append,
    )

    assert [p.name for p in store.iterdir()] == [archived[0].sha256]
    assert warnings == ["artifact store: removed 1 object(s) unused for 30 days (6B)"]
    with pytest.raises(StageFailed, match="gone from the store .*rerun with refresh_cache"):
        restore_artifacts(old, tmp_path / "fresh", store)


def test_using_an_object_renews_its_age(workspace, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    archived = archive_artifacts("build", workspace, ["README.md"], store)
    object_path = store / archived[0].sha256
    long_ago = time.time() - 40 * 86400
    os.utime(object_path, (long_ago, long_ago))

    restore_artifacts(archived, tmp_path / "fresh", store)
    assert object_path.stat().st_mtime > long_ago + 39 * 86400

    os.utime(object_path, (long_ago, long_ago))
    archive_artifacts("build", workspace, ["README.md"], store)
    assert object_path.stat().st_mtime > long_ago + 39 * 86400
    assert clean_store(store, max_age_days=30) == (0, 0)


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLIPWAY_ARTIFACTS_MAX_STAGE_BYTES", "500MiB")
    monkeypatch.setenv("SLIPWAY_ARTIFACTS_MAX_STORE_BYTES", "3GB")
    monkeypatch.setenv("SLIPWAY_ARTIFACTS_MAX_AGE_DAYS", "7")

    settings = ArtifactSettings()

    assert (settings.max_stage_bytes, settings.max_store_bytes, settings.max_age_days) == (
        500 * 1024**2,
        3 * 1000**3,
        7,
    )
    assert ArtifactSettings.model_fields["max_age_days"].default == 30


def test_a_stage_without_artifacts_archives_nothing(workspace, tmp_path):
    store = tmp_path / "store"
    store.mkdir()

    assert archive_artifacts("lint", workspace, [], store) == ()
    assert list(store.iterdir()) == []
