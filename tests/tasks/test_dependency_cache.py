"""Dependency caches on plain files: keys, hit / partial / miss, scopes, eviction, refusals.

The same cache with real npm runs in tests/flows/test_pipeline_dependency_cache.py.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from slipway.exceptions import SpecError, StageFailed
from slipway.spec_loader import parse_pipeline
from slipway.tasks.dependency_cache import (
    CacheRoots,
    CacheStore,
    DependencyCacheSpec,
    cache_key,
    platform_id,
    restore_caches,
    save_caches,
)

SPEC = DependencyCacheSpec(paths=["deps", "~/.pkgcache"], key_files=["lock.json"], key="pkg")


class Machine:
    """A workspace, a HOME and the cache store, as one worker sees them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.store = CacheStore(tmp_path / "cache")
        self.runs = 0
        self.log: list[str] = []

    def workspace(self, lock: str) -> CacheRoots:
        self.runs += 1
        workspace = self.tmp / f"run{self.runs}"
        workspace.mkdir()
        (workspace / "lock.json").write_text(lock)
        self.home = self.tmp / f"home{self.runs}"  # a fresh HOME per run, as on a new worker
        self.home.mkdir()
        return CacheRoots(workspace, self.home)

    def stage(
        self,
        lock: str,
        *,
        branch: str = "main",
        spec: DependencyCacheSpec = SPEC,
        install: bool = True,
    ) -> tuple[CacheRoots, str]:
        """Restore, "install" when deps/ is missing (as `test -d deps || install`), save."""
        roots = self.workspace(lock)
        lookups = restore_caches(
            "install", [spec], roots, [branch, "main"], self.log.append, self.store
        )
        deps = roots.workspace / "deps"
        if install and not deps.exists():
            (deps / "pkg").mkdir(parents=True)
            (deps / "pkg" / "index.js").write_text(f"// built for {lock}\n")
            (deps / "pkg" / "cli").write_text("#!/bin/sh\n")
            (deps / "pkg" / "cli").chmod(0o755)
            (deps / ".bin").mkdir()
            (deps / ".bin" / "pkg").symlink_to("../pkg/cli")
            (self.home / ".pkgcache").mkdir()
            (self.home / ".pkgcache" / "pkg.tgz").write_bytes(lock.encode().ljust(1000, b"."))
        outcomes = save_caches("install", lookups, roots, branch, self.log.append, self.store)
        (outcome,) = outcomes
        return roots, f"{outcome.status}|{outcome.saved}"


def test_miss_then_hit_across_commits_restores_files_modes_and_symlinks(tmp_path):
    machine = Machine(tmp_path)
    _roots, first = machine.stage('{"a": 1}')
    assert first.startswith("miss|saved 3 files")
    roots, second = machine.stage('{"a": 1}', install=False)
    assert second == "hit|"  # restored, nothing saved again
    deps = roots.workspace / "deps"
    assert roots.home is not None
    assert (roots.home / ".pkgcache" / "pkg.tgz").read_bytes().startswith(b'{"a": 1}')
    assert (deps / "pkg" / "index.js").read_text() == '// built for {"a": 1}\n'
    assert (deps / "pkg" / "cli").stat().st_mode & 0o777 == 0o755
    assert (deps / ".bin" / "pkg").readlink() == Path("../pkg/cli")

    _roots, changed = machine.stage('{"a": 2}')  # the lock file changed: a new key
    assert changed.startswith("miss|saved")


def test_the_key_is_the_lock_files_paths_prefix_and_platform(tmp_path):
    roots = Machine(tmp_path).workspace("{}")
    key = cache_key("install", SPEC, roots.workspace)
    assert key.startswith(f"pkg-{platform_id()}-")
    other_paths = SPEC.model_copy(update={"paths": ["deps"]})
    assert cache_key("install", other_paths, roots.workspace) != key
    (roots.workspace / "lock.json").write_text('{"b": 1}')
    assert cache_key("install", SPEC, roots.workspace) != key
    missing = SPEC.model_copy(update={"key_files": ["yarn.lock"]})
    with pytest.raises(StageFailed, match="key_files pattern 'yarn.lock' matched no file"):
        cache_key("install", missing, roots.workspace)


def test_restore_keys_fall_back_to_the_newest_earlier_key_and_save_the_new_one(tmp_path):
    machine = Machine(tmp_path)
    fallback = SPEC.model_copy(update={"restore_keys": ["pkg-"]})
    machine.stage('{"v": 1}', spec=fallback)
    roots, partial = machine.stage('{"v": 2}', spec=fallback, install=False)
    assert partial.startswith("partial|saved")
    assert (roots.workspace / "deps" / "pkg" / "index.js").read_text() == '// built for {"v": 1}\n'
    _roots, exact = machine.stage('{"v": 2}', spec=fallback, install=False)
    assert exact == "hit|"


def test_a_branch_reads_the_default_branchs_entries_but_never_writes_them(tmp_path):
    machine = Machine(tmp_path)
    machine.stage("{}", branch="feature")  # saved under 'feature' only
    _roots, on_main = machine.stage("{}", branch="main")
    assert on_main.startswith("miss|")  # main does not restore what a branch saved
    _roots, other = machine.stage("{}", branch="other", install=False)
    assert other == "hit|"  # another branch restores main's entry
    scopes = sorted(e["scope"] for e in machine.store.all_entries())
    assert scopes == ["feature", "main"]


def test_least_recently_used_entries_are_evicted_over_the_size_cap(tmp_path, monkeypatch):
    machine = Machine(tmp_path)
    # the setting under test: room for two entries (each ~1.9 kB of distinct blobs)
    monkeypatch.setenv("SLIPWAY_DEPENDENCY_CACHE_MAX_BYTES", "4000")
    machine.stage('{"n": 1}')
    machine.stage('{"n": 2}')
    machine.stage('{"n": 1}', install=False)  # a hit: n=1 is now the most recently used
    _roots, third = machine.stage('{"n": 3}')
    assert "evicted 1 older entry" in third
    keys = {json.loads(Path(e["file"]).read_text())["key"] for e in machine.store.all_entries()}
    assert len(keys) == 2
    assert machine.stage('{"n": 1}', install=False)[1] == "hit|"  # kept
    assert machine.stage('{"n": 2}')[1].startswith("miss|")  # evicted: n=2 was least used
    live = {b.name for b in machine.store.blobs.iterdir()}
    kept = set()
    for entry in machine.store.all_entries():
        for tree in entry["trees"]:
            kept.add(tree)
            kept |= {e["sha256"] for e in json.loads((machine.store.blobs / tree).read_text())}
    assert live == kept - {""}  # no blob of an evicted entry stays behind


def test_an_entry_larger_than_the_cap_is_not_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIPWAY_DEPENDENCY_CACHE_MAX_BYTES", "100")  # the setting under test
    _roots, result = Machine(tmp_path).stage("{}")
    assert (
        result.startswith("miss|not saved:") and "over SLIPWAY_DEPENDENCY_CACHE_MAX_BYTES" in result
    )


def test_paths_outside_the_workspace_and_home_are_refused(tmp_path):
    machine = Machine(tmp_path)
    roots = machine.workspace("{}")
    (roots.workspace / "out").symlink_to(tmp_path)
    with pytest.raises(StageFailed, match="outside"):
        roots.locate("install", "out/deps")
    with pytest.raises(StageFailed, match="no HOME"):
        CacheRoots(roots.workspace, None).locate("install", "~/.npm")


def pipeline(cache: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        app: demo
        stages:
          - name: install
            run: npm ci
            {extra}
            dependency_cache: {cache}
        """
    ).lstrip()


@pytest.mark.parametrize(
    ("cache", "extra", "message"),
    [
        ("{paths: [/usr/lib], key_files: [a]}", "", "must be relative to the workspace"),
        ("{paths: [../up], key_files: [a]}", "", "leaves the workspace"),
        ("{paths: ['~'], key_files: [a]}", "", "'~' alone or '~user' is refused"),
        ("{paths: ['~root/x'], key_files: [a]}", "", "'~' alone or '~user' is refused"),
        ("{paths: ['~/../x'], key_files: [a]}", "", "leaves the workspace"),
        ("{paths: ['.'], key_files: [a]}", "", "caching the whole workspace is refused"),
        ("{paths: [x], key_files: []}", "", "at least 1 item"),
        ("{paths: [x], key_files: [a], kee: b}", "", "unknown key 'kee'"),
        ("{paths: ['~/.npm'], key_files: [a]}", "container: {image: node}", "not the container's"),
        ("{paths: [x], key_files: [a]}", "work_pool: e2e", "cache is on this machine"),
    ],
)
def test_bad_dependency_cache_specs_name_the_problem(cache, extra, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        parse_pipeline(pipeline(cache, extra), "slipway.yaml")


def test_one_mapping_or_a_list_and_cache_true_stays_result_caching():
    one = parse_pipeline(pipeline("{paths: [node_modules], key_files: [package-lock.json]}"))
    many = parse_pipeline(
        pipeline("[{paths: [a], key_files: [x]}, {paths: ['~/.cache/pip'], key_files: [y]}]")
    )
    assert [len(p.stages[0].dependency_cache) for p in (one, many)] == [1, 2]
    assert one.stages[0].cache is True and one.stages[0].dependency_cache[0].key == "deps"
