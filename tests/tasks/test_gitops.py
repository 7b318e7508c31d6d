"""GitOps bump and revert: real git, bare repositories made by fixtures, one real HTTP server.

The manifests are the example app's own (``examples/example-app/k8s``) plus files written
the way people write them by hand (a comment and ``---`` before the first document,
indentless sequences, blank lines, ``~``, quotes, CRLF), so "only the image line changes"
is checked byte for byte on realistic input.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect import flow
from prefect.cache_policies import NO_CACHE

from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.exceptions import ConfigError, UnsafeInputError
from slipway.redact import Redactor
from slipway.tasks import gitops
from slipway.tasks.gitops import (
    BumpResult,
    ManifestRepoError,
    RevertConflict,
    bump_image,
    bump_manifest,
    parse_trailers,
    revert_bump,
    revert_manifest,
)
from tests.servers.git_http import GitHttpServer, commit_files, git_executable, make_bare_repo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_K8S = ROOT / "examples" / "example-app" / "k8s"
REGISTRY = "127.0.0.1:5000"
USER = "ci-bot"
TOKEN = "glpat-m4nifests-T0ken-for-tests"

OLD_DIGEST = "sha256:" + "0" * 64

# Written by hand: leading comment and '---', indentless sequences, flow sequences,
# quotes, blank lines between documents, '~', an image in a ConfigMap (not a workload).
WORKERS = f"""\
# Workers of example-app, kept in one file.
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: example-app-worker
spec:
  template:
    spec:
      initContainers:
      - name: migrate
        image: '{REGISTRY}/example-app:1.0'   # same repository: bumped too
      containers:
      - name: worker
        image: "{REGISTRY}/example-app@{OLD_DIGEST}"
        args: [--queue, "jobs"]
      - name: sidecar
        image: envoyproxy/envoy:v1.29
        env: ~


---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: other}}
spec:
  template:
    spec:
      containers:
        - name: other
          image: registry.local/other-app:2.0
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  image: {REGISTRY}/example-app:not-a-workload
"""

CRLF_DAEMONSET = (
    "apiVersion: apps/v1\r\n"
    "kind: DaemonSet\r\n"
    "metadata:\r\n"
    "  name: example-app-agent\r\n"
    "spec:\r\n"
    "  template:\r\n"
    "    spec:\r\n"
    "      containers:\r\n"
    "        - name: example-app\r\n"
    "          image: registry.local/example-app:latest  # by container name\r\n"
)


def image(n: int | str, repository: str = f"{REGISTRY}/example-app") -> str:
    """A digest reference, one per build number."""
    return f"{repository}@sha256:{hashlib.sha256(str(n).encode()).hexdigest()}"


def git_out(bare: Path, *args: str) -> str:
    return subprocess.run(
        [git_executable(), "--git-dir", str(bare), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def show(bare: Path, path: str, rev: str = "main") -> str:
    """A file's exact bytes at ``rev`` (as text, newlines untouched)."""
    out = subprocess.run(
        [git_executable(), "--git-dir", str(bare), "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
    ).stdout
    return out.decode()


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    """(old line, new line) pairs that differ; anything but one-for-one edits fails."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    pairs = []
    for tag, a1, a2, b1, b2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        assert tag == "replace" and a2 - a1 == b2 - b1, (tag, old_lines[a1:a2], new_lines[b1:b2])
        pairs += list(zip(old_lines[a1:a2], new_lines[b1:b2], strict=True))
    return pairs


def example_files() -> dict[str, str]:
    return {
        f"k8s/{p.relative_to(EXAMPLE_K8S).as_posix()}": p.read_text()
        for p in sorted(EXAMPLE_K8S.rglob("*.yaml"))
    }


@pytest.fixture
def manifests(tmp_path: Path) -> dict:
    """A bare manifests repo: the example's kustomize tree, and plain staging manifests."""
    bare = make_bare_repo(tmp_path / "remotes", "manifests.git")
    files = example_files()
    files["envs/staging/deployment.yaml"] = files["k8s/base/deployment.yaml"]
    files["envs/staging/service.yaml"] = files["k8s/base/service.yaml"]
    files["envs/staging/workers.yaml"] = WORKERS
    files["envs/staging/agent.yml"] = CRLF_DAEMONSET
    files["envs/staging/README.md"] = "not yaml\n"
    initial = commit_files(bare, files, "initial manifests")
    block = ManifestsRepository(
        url=bare.as_uri(),
        author_name="Slipway Bot",
        author_email="bot@slipway.invalid",
        environments={
            "staging": EnvironmentManifests(path="envs/staging"),
            "production": EnvironmentManifests(path="k8s/overlays/production", kind="kustomize"),
            "k-staging": EnvironmentManifests(path="k8s/overlays/staging", kind="kustomize"),
        },
    )
    return {"bare": bare, "block": block, "files": files, "initial": initial}


_counter = iter(range(1_000_000))


def do_bump(
    repo: ManifestsRepository, tmp_path: Path, *, log: Callable[[str], None] | None = None, **kw
) -> BumpResult:
    args = {
        "app": "example-app",
        "environment": "staging",
        "image": image(1),
        "source_commit": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        "run_id": "0b6e2f8a-5d1c-4c11-9e2b-7d2f1a3b4c5d",
        "build_number": 1,
    }
    args.update(kw)
    workdir = tmp_path / "work" / f"bump-{next(_counter)}"
    return bump_image(repo, workdir=workdir, redactor=Redactor(), log=log, **args)


def do_revert(repo: ManifestsRepository, tmp_path: Path, sha: str, reason: str) -> BumpResult:
    workdir = tmp_path / "work" / f"revert-{next(_counter)}"
    return revert_bump(repo, commit_sha=sha, reason=reason, workdir=workdir, redactor=Redactor())


def head(bare: Path) -> str:
    return git_out(bare, "rev-parse", "main").strip()


# ----------------------------------------------------------------------------- plain


def test_plain_bump_changes_only_the_image_lines(manifests, tmp_path):
    bare, files = manifests["bare"], manifests["files"]
    new = image(7)

    result = do_bump(manifests["block"], tmp_path, image=new, build_number=7)

    assert result.changed and result.attempts == 1
    assert result.commit_sha == head(bare)
    assert result.files == (
        "envs/staging/agent.yml",
        "envs/staging/deployment.yaml",
        "envs/staging/workers.yaml",
    )
    assert result.previous_image == "registry.local/example-app:latest"  # first file, by name
    assert changed_lines(files["envs/staging/deployment.yaml"], show(bare, result.files[1])) == [
        (
            "          image: registry.local/example-app:latest\n",
            f"          image: {new}\n",
        )
    ]
    assert changed_lines(WORKERS, show(bare, "envs/staging/workers.yaml")) == [
        (
            f"        image: '{REGISTRY}/example-app:1.0'   # same repository: bumped too\n",
            f"        image: '{new}'   # same repository: bumped too\n",
        ),
        (
            f'        image: "{REGISTRY}/example-app@{OLD_DIGEST}"\n',
            f'        image: "{new}"\n',
        ),
    ]
    assert changed_lines(CRLF_DAEMONSET, show(bare, "envs/staging/agent.yml")) == [
        (
            "          image: registry.local/example-app:latest  # by container name\r\n",
            f"          image: {new}  # by container name\r\n",
        )
    ]
    # nothing else in the repository moved
    changed = git_out(bare, "diff", "--name-only", manifests["initial"], "main").split()
    assert changed == list(result.files)


def test_commit_message_names_the_release_and_ends_in_trailers(manifests, tmp_path):
    bare = manifests["bare"]
    new = image(12)

    do_bump(manifests["block"], tmp_path, image=new, build_number=12, approver="Jane Doe")

    message = git_out(bare, "log", "-1", "--format=%B", "main")
    assert message.startswith("example-app: deploy build 12 to staging (")
    for text in (new, "a1b2c3d4e5f6", "0b6e2f8a-5d1c-4c11-9e2b-7d2f1a3b4c5d", "Jane Doe"):
        assert text in message
    assert parse_trailers(message) == {
        "Slipway-App": "example-app",
        "Slipway-Environment": "staging",
        "Slipway-Build": "12",
        "Slipway-Image": new,
        "Slipway-Source-Commit": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        "Slipway-Run": "0b6e2f8a-5d1c-4c11-9e2b-7d2f1a3b4c5d",
        "Slipway-Approver": "Jane Doe",
    }
    # git itself reads them as trailers, so later tooling can use `git log --format`
    build = git_out(bare, "log", "-1", "--format=%(trailers:key=Slipway-Build,valueonly)", "main")
    assert build.strip() == "12"
    who = git_out(bare, "log", "-1", "--format=%an <%ae>|%cn <%ce>", "main").strip()
    assert who == "Slipway Bot <bot@slipway.invalid>|Slipway Bot <bot@slipway.invalid>"


def test_rerunning_a_bump_that_landed_is_a_no_op(manifests, tmp_path):
    bare = manifests["bare"]
    first = do_bump(manifests["block"], tmp_path, image=image(3), build_number=3)
    count = git_out(bare, "rev-list", "--count", "main")

    again = do_bump(manifests["block"], tmp_path, image=image(3), build_number=3)

    assert first.changed and not again.changed
    assert again.commit_sha == first.commit_sha and again.files == ()
    assert again.previous_image == image(3)
    assert "already in place" in again.note
    assert git_out(bare, "rev-list", "--count", "main") == count  # no empty commit


def test_an_older_build_never_replaces_a_newer_one(manifests, tmp_path):
    newer = do_bump(manifests["block"], tmp_path, image=image(9), build_number=9)

    older = do_bump(manifests["block"], tmp_path, image=image(8), build_number=8)

    assert not older.changed and older.superseded_by == 9
    assert "build 9" in older.note and newer.commit_sha[:12] in older.note
    assert head(manifests["bare"]) == newer.commit_sha
    assert image(9) in show(manifests["bare"], "envs/staging/deployment.yaml")


def test_a_newer_build_of_another_environment_does_not_count(manifests, tmp_path):
    do_bump(manifests["block"], tmp_path, environment="production", image=image(9), build_number=9)

    result = do_bump(manifests["block"], tmp_path, image=image(4), build_number=4)

    assert result.changed and result.superseded_by is None


# ----------------------------------------------------------------------------- kustomize


def test_kustomize_bump_edits_only_the_images_entry(manifests, tmp_path):
    bare, files = manifests["bare"], manifests["files"]
    path = "k8s/overlays/production/kustomization.yaml"
    new = image(21)

    result = do_bump(manifests["block"], tmp_path, environment="production", image=new)

    assert result.files == (path,)
    assert result.previous_image == "registry.local/example-app:latest"
    after = show(bare, path)
    diff = list(
        difflib.unified_diff(files[path].splitlines(), after.splitlines(), n=0, lineterm="")
    )[2:]
    assert diff == [
        "@@ -13 +13,2 @@",
        "-    newTag: latest",
        f"+    newName: {REGISTRY}/example-app",
        f"+    digest: {new.split('@')[1]}",
    ]
    # the other overlay and the base are untouched
    assert git_out(bare, "diff", "--name-only", manifests["initial"], "main").split() == [path]

    # the next release changes just the digest line
    newer = image(22)
    do_bump(manifests["block"], tmp_path, environment="production", image=newer, build_number=2)
    assert changed_lines(after, show(bare, path)) == [
        (f"    digest: {new.split('@')[1]}\n", f"    digest: {newer.split('@')[1]}\n")
    ]


def test_kustomize_flow_style_entry_is_edited_too(manifests, tmp_path):
    bare = manifests["bare"]
    text = (
        "resources: [../../base]\n"
        "images: [{name: registry.local/example-app, newTag: latest}, {name: other, newTag: '1'}]\n"
    )
    commit_files(bare, {"k8s/overlays/staging/kustomization.yaml": text}, "flow style")
    new = image(5)

    do_bump(manifests["block"], tmp_path, environment="k-staging", image=new)

    after = show(bare, "k8s/overlays/staging/kustomization.yaml")
    assert after == (
        "resources: [../../base]\n"
        f"images: [{{name: registry.local/example-app, newName: {REGISTRY}/example-app, "
        f"digest: {new.split('@')[1]}}}, {{name: other, newTag: '1'}}]\n"
    )


def test_kustomize_without_an_entry_for_the_app_names_the_file(manifests, tmp_path):
    with pytest.raises(ConfigError, match=r"no `images:` entry for app 'billing'.*production"):
        do_bump(
            manifests["block"],
            tmp_path,
            app="billing",
            environment="production",
            image=image(1, f"{REGISTRY}/billing"),
        )


# ----------------------------------------------------------------------------- races


def land_before_first_push(monkeypatch, competitor: Callable[[], BumpResult]) -> list[BumpResult]:
    """Let a competing bump land between this bump's commit and its first push: a real race."""
    real_push = gitops._push
    landed: list[BumpResult] = []
    started = threading.Event()

    def push(g, branch):
        if not started.is_set():
            started.set()  # the competitor's own push goes straight through
            landed.append(competitor())
        return real_push(g, branch)

    monkeypatch.setattr(gitops, "_push", push)
    return landed


def test_rejected_push_is_re_applied_on_the_new_head(manifests, tmp_path, monkeypatch):
    block, bare = manifests["block"], manifests["bare"]
    billing = image(1, "registry.local/other-app")
    landed = land_before_first_push(
        monkeypatch, lambda: do_bump(block, tmp_path, app="other-app", image=billing)
    )
    lines: list[str] = []

    result = do_bump(block, tmp_path, image=image(2), build_number=2, log=lines.append)

    assert landed[0].changed and result.changed and result.attempts == 2
    assert git_out(bare, "rev-parse", "main~1").strip() == landed[0].commit_sha
    workers = show(bare, "envs/staging/workers.yaml")
    assert billing in workers and image(2) in workers  # both updates are there
    assert any("push rejected" in line for line in lines)


def test_race_lost_to_a_newer_build_of_the_same_app_is_a_no_op(manifests, tmp_path, monkeypatch):
    block = manifests["block"]
    landed = land_before_first_push(
        monkeypatch, lambda: do_bump(block, tmp_path, image=image(30), build_number=30)
    )

    result = do_bump(block, tmp_path, image=image(29), build_number=29)

    assert not result.changed and result.superseded_by == 30 and result.attempts == 2
    assert head(manifests["bare"]) == landed[0].commit_sha


def test_race_lost_to_an_older_build_re_applies_the_newer(manifests, tmp_path, monkeypatch):
    block = manifests["block"]
    land_before_first_push(
        monkeypatch, lambda: do_bump(block, tmp_path, image=image(40), build_number=40)
    )

    result = do_bump(block, tmp_path, image=image(41), build_number=41)

    assert result.changed and result.attempts == 2
    assert (
        parse_trailers(git_out(manifests["bare"], "log", "-1", "--format=%B"))["Slipway-Build"]
        == "41"
    )
    assert image(41) in show(manifests["bare"], "envs/staging/deployment.yaml")


def _app_deployment(app: str) -> str:
    return (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
        f"  name: {app}\nspec:\n  template:\n    spec:\n      containers:\n"
        f"        - name: {app}\n          image: registry.local/{app}:old\n"
    )


def test_ten_concurrent_bumps_lose_nothing_and_keep_history_linear(tmp_path):
    bare = make_bare_repo(tmp_path / "remotes", "busy.git")
    kustomization = (
        "resources:\n  - ../base\nimages:\n"
        "  - name: registry.local/k1\n    newTag: old\n"
        "  - name: registry.local/k2\n    newTag: old\n"
    )
    commit_files(
        bare,
        {
            "staging/a1.yaml": _app_deployment("a1"),
            "staging/a2.yaml": _app_deployment("a2"),
            "staging/a3.yaml": _app_deployment("a3"),
            "staging/pair.yaml": _app_deployment("a4") + "---\n" + _app_deployment("a5"),
            "staging/web.yaml": _app_deployment("web"),
            "overlays/production/kustomization.yaml": kustomization,
        },
        "initial",
    )
    block = ManifestsRepository(
        url=bare.as_uri(),
        environments={
            "staging": EnvironmentManifests(path="staging"),
            "production": EnvironmentManifests(path="overlays/production", kind="kustomize"),
        },
    )
    jobs = [("a1", "staging", 1), ("a2", "staging", 1), ("a3", "staging", 1)]
    jobs += [("a4", "staging", 1), ("a5", "staging", 1)]  # same file
    jobs += [("k1", "production", 1), ("k2", "production", 1)]  # adjacent lines of one file
    jobs += [("web", "staging", 2), ("web", "staging", 3), ("web", "staging", 1)]  # same app
    assert len(jobs) == 10
    start = threading.Barrier(len(jobs))
    results: dict[int, BumpResult | BaseException] = {}

    def run(index: int, app: str, environment: str, build: int) -> None:
        start.wait()
        try:
            results[index] = bump_image(
                block,
                app=app,
                environment=environment,
                image=image(f"{app}-{build}", f"{REGISTRY}/{app}"),
                source_commit="abcdef0",
                run_id=f"run-{app}-{build}",
                build_number=build,
                workdir=tmp_path / "work" / f"{index}",
                redactor=Redactor(),
            )
        except BaseException as exc:  # reported by the assertion below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - began

    assert all(isinstance(r, BumpResult) for r in results.values()), results
    assert len(results) == 10 and elapsed < 30
    final = {
        app: show(bare, path)
        for app, path in [
            ("a1", "staging/a1.yaml"),
            ("a2", "staging/a2.yaml"),
            ("a3", "staging/a3.yaml"),
            ("a4", "staging/pair.yaml"),
            ("a5", "staging/pair.yaml"),
            ("web", "staging/web.yaml"),
            ("k1", "overlays/production/kustomization.yaml"),
            ("k2", "overlays/production/kustomization.yaml"),
        ]
    }
    for app in ("a1", "a2", "a3", "a4", "a5"):
        assert image(f"{app}-1", f"{REGISTRY}/{app}") in final[app], app
    for app in ("k1", "k2"):
        digest = image(f"{app}-1", f"{REGISTRY}/{app}").split("@")[1]
        assert f"newName: {REGISTRY}/{app}\n    digest: {digest}\n" in final[app], app
    assert image("web-3", f"{REGISTRY}/web") in final["web"]  # the highest build wins
    by_job = {jobs[i]: r for i, r in results.items()}
    assert by_job[("web", "staging", 3)].changed
    for (app, _env, build), result in by_job.items():
        if app != "web":
            assert result.changed, app
        elif not result.changed:
            assert result.superseded_by is not None and result.superseded_by > build
    assert git_out(bare, "rev-list", "--merges", "main") == ""  # linear
    landed = sum(r.changed for r in by_job.values())
    assert int(git_out(bare, "rev-list", "--count", "main")) == 1 + landed
    # every commit says what it deployed
    messages = git_out(bare, "log", "-z", "--format=%B", "main").split("\0")[:landed]
    assert all(parse_trailers(m).get("Slipway-Build") for m in messages)
    # `pytest -s` shows how hard the pushers raced
    print(f"10 bumps: {elapsed:.2f} s, attempts {sorted(r.attempts for r in by_job.values())}")


# ----------------------------------------------------------------------------- revert


def test_revert_restores_the_previous_image_and_says_why(manifests, tmp_path):
    block, bare = manifests["block"], manifests["bare"]
    good = do_bump(block, tmp_path, image=image(1), build_number=1)
    bad = do_bump(block, tmp_path, image=image(2), build_number=2)

    result = do_revert(block, tmp_path, bad.commit_sha, "5xx rate 0.31 > 0.05 (3 of 3 checks)")

    assert result.changed and result.previous_image == image(2)
    assert set(result.files) == set(bad.files)
    for path in bad.files:
        assert show(bare, path) == show(bare, path, good.commit_sha)
    message = git_out(bare, "log", "-1", "--format=%B", "main")
    assert message.startswith("Revert example-app build 2 in staging: 5xx rate 0.31")
    assert f"This reverts commit {bad.commit_sha}." in message
    trailers = parse_trailers(message)
    assert trailers["Slipway-Reverts"] == bad.commit_sha
    assert trailers["Slipway-Reverted-Build"] == "2"
    assert trailers["Slipway-Reverted-Image"] == image(2)
    assert trailers["Slipway-Environment"] == "staging"

    again = do_revert(block, tmp_path, bad.commit_sha, "again")
    assert not again.changed and "already reverted" in again.note
    assert head(bare) == result.commit_sha

    # after a revert, a new build goes out normally, and an older one is not blocked by it
    assert do_bump(block, tmp_path, image=image(3), build_number=3).changed


def test_revert_of_an_older_commit_keeps_later_unrelated_changes(manifests, tmp_path):
    block, bare = manifests["block"], manifests["bare"]
    bad = do_bump(block, tmp_path, image=image(2), build_number=2)
    other = image(1, "registry.local/other-app")
    do_bump(block, tmp_path, app="other-app", image=other)  # later, same file

    do_revert(block, tmp_path, bad.commit_sha, "smoke test failed")

    workers = show(bare, "envs/staging/workers.yaml")
    assert other in workers and image(2) not in workers
    assert f"'{REGISTRY}/example-app:1.0'" in workers


def test_revert_that_conflicts_fails_clearly_and_pushes_nothing(manifests, tmp_path):
    block, bare = manifests["block"], manifests["bare"]
    first = do_bump(block, tmp_path, image=image(1), build_number=1)
    second = do_bump(block, tmp_path, image=image(2), build_number=2)

    with pytest.raises(RevertConflict) as caught:
        do_revert(block, tmp_path, first.commit_sha, "bad release")

    message = str(caught.value)
    assert "envs/staging/deployment.yaml" in message and second.commit_sha[:12] in message
    assert head(bare) == second.commit_sha


@pytest.mark.parametrize(
    ("sha", "error", "match"),
    [
        ("HEAD", UnsafeInputError, "not a full commit SHA"),
        ("--abort", UnsafeInputError, "not a full commit SHA"),
        ("f" * 40, ConfigError, "does not exist"),
    ],
)
def test_revert_refuses_what_it_cannot_revert(manifests, tmp_path, sha, error, match):
    with pytest.raises(error, match=match):
        do_revert(manifests["block"], tmp_path, sha, "why")


# ----------------------------------------------------------------------------- bad input


def test_unknown_environment_names_the_known_ones(manifests, tmp_path):
    with pytest.raises(ConfigError, match=r"'qa'.*known: k-staging, production, staging"):
        do_bump(manifests["block"], tmp_path, environment="qa")


@pytest.mark.parametrize(
    "ref",
    [
        f"{REGISTRY}/example-app:latest",  # a tag can move; only digests deploy
        f"{REGISTRY}/example-app:1.0@sha256:{'a' * 64}",
        f"{REGISTRY}/example-app@sha256:{'a' * 63}",
        f"{REGISTRY}/example-app@sha256:{'A' * 64}",
        f"{REGISTRY}/example-app@sha256:{'a' * 64};touch pwned",
        f"{REGISTRY}/example-app@sha256:{'a' * 64}\nSlipway-Build: 999",
        f"$(touch pwned)/example-app@sha256:{'a' * 64}",
        f"{REGISTRY}/exa`id`mple@sha256:{'a' * 64}",
        f"-{REGISTRY}/example-app@sha256:{'a' * 64}",
        f"{REGISTRY}/Example-App@sha256:{'a' * 64}",
        f"{REGISTRY}/example app@sha256:{'a' * 64}",
    ],
)
def test_bad_image_references_are_refused_before_git_runs(manifests, tmp_path, ref, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(UnsafeInputError, match="invalid image reference"):
        do_bump(manifests["block"], tmp_path, image=ref)

    assert not (tmp_path / "work").exists()
    assert not list(tmp_path.rglob("pwned*"))
    assert head(manifests["bare"]) == manifests["initial"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("approver", "Mallory\nSlipway-Build: 999"),
        ("run_id", "run;rm -rf /"),
        ("source_commit", "main"),
        ("app", "../etc"),
    ],
)
def test_trailer_values_cannot_forge_trailers(manifests, tmp_path, field, value):
    with pytest.raises(UnsafeInputError):
        do_bump(manifests["block"], tmp_path, **{field: value})
    assert head(manifests["bare"]) == manifests["initial"]


def test_no_matching_container_names_the_files_searched(manifests, tmp_path):
    with pytest.raises(ConfigError) as caught:
        do_bump(manifests["block"], tmp_path, app="billing", image=image(1, "r.io/billing"))

    message = str(caught.value)
    assert "no container of app 'billing'" in message and "under envs/staging" in message
    for path in ("agent.yml", "deployment.yaml", "service.yaml", "workers.yaml"):
        assert f"envs/staging/{path}" in message
    assert "README.md" not in message


def test_a_path_escaping_the_repository_is_refused(manifests, tmp_path):
    # the block refuses '../x' when it is made; a block built without validation
    # (an old saved document, say) is still stopped before anything is read
    sneaky = EnvironmentManifests.model_construct(path="../outside", kind="plain")
    block = manifests["block"].model_copy(update={"environments": {"staging": sneaky}})

    with pytest.raises(UnsafeInputError, match="resolves outside"):
        do_bump(block, tmp_path)


def push_symlinks(bare: Path, tmp_path: Path, links: dict[str, str]) -> None:
    """Commit symlinks (mode 120000) through a real clone: commit_files writes only files."""
    clone = tmp_path / f"symlinker-{next(_counter)}"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.invalid")

    def run(*args: str) -> None:
        subprocess.run([git_executable(), *args], check=True, capture_output=True, env=env)

    run("clone", "--quiet", bare.as_uri(), str(clone))
    for link, target in links.items():
        (clone / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, clone / link)
    run("-C", str(clone), "add", "-A")
    run("-C", str(clone), "commit", "--quiet", "-m", "symlinks")
    run("-C", str(clone), "push", "--quiet", "origin", "HEAD:main")


@pytest.mark.parametrize(
    ("links", "folder"),
    [
        ({"envs/staging/evil.yaml": "/etc/hostname"}, "envs/staging"),
        ({"envs/staging/up.yaml": "../../../../../../../etc/hostname"}, "envs/staging"),
        ({"envs/staging/nested": "/etc"}, "envs/staging"),
        ({"envs/linked": "/etc"}, "envs/linked"),  # the folder itself
    ],
)
def test_symlinks_out_of_the_repository_are_refused(manifests, tmp_path, links, folder):
    push_symlinks(manifests["bare"], tmp_path, links)
    block = manifests["block"].model_copy(
        update={"environments": {"staging": EnvironmentManifests(path=folder)}}
    )

    with pytest.raises(UnsafeInputError, match="resolves outside"):
        do_bump(block, tmp_path)


def test_a_symlink_inside_the_repository_is_left_alone(manifests, tmp_path):
    bare = manifests["bare"]
    push_symlinks(bare, tmp_path, {"envs/staging/alias.yaml": "../../k8s/base/deployment.yaml"})
    lines: list[str] = []

    result = do_bump(manifests["block"], tmp_path, log=lines.append)

    assert "envs/staging/alias.yaml" not in result.files
    assert show(bare, "k8s/base/deployment.yaml") == manifests["files"]["k8s/base/deployment.yaml"]
    assert "skipping symlinked file envs/staging/alias.yaml" in lines


def test_a_missing_environment_folder_is_named(manifests, tmp_path):
    block = manifests["block"].model_copy(
        update={"environments": {"dev": EnvironmentManifests(path="envs/dev")}}
    )
    with pytest.raises(ConfigError, match="folder 'envs/dev' of environment 'dev' does not exist"):
        do_bump(block, tmp_path, environment="dev")


def test_a_workdir_with_something_else_in_it_is_refused(manifests, tmp_path):
    workdir = tmp_path / "busy"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match="neither empty nor a clone"):
        bump_image(
            manifests["block"],
            app="example-app",
            environment="staging",
            image=image(1),
            source_commit="abcdef0",
            run_id="r1",
            build_number=1,
            workdir=workdir,
        )
    assert (workdir / "keep.txt").read_text() == "mine\n"


def test_a_workdir_left_by_an_earlier_attempt_is_reused(manifests, tmp_path):
    workdir = tmp_path / "retry"
    kwargs = dict(app="example-app", environment="staging", source_commit="abcdef0", run_id="r")
    bump_image(manifests["block"], image=image(1), build_number=1, workdir=workdir, **kwargs)
    (workdir / "envs" / "staging" / "deployment.yaml").write_text("half-written by a crash\n")

    result = bump_image(
        manifests["block"], image=image(2), build_number=2, workdir=workdir, **kwargs
    )

    assert result.changed
    assert "half-written" not in show(manifests["bare"], "envs/staging/deployment.yaml")


# ----------------------------------------------------------------------------- over HTTP


@pytest.fixture
def http_manifests(tmp_path):
    root = tmp_path / "served"
    bare = make_bare_repo(root, "team/manifests.git")
    commit_files(bare, example_files(), "initial")
    with GitHttpServer(root, username=USER, password=TOKEN) as server:
        yield server, bare


def test_bump_and_revert_over_http_keep_the_token_out(http_manifests, tmp_path, caplog):
    server, bare = http_manifests
    caplog.set_level(logging.DEBUG)
    block = ManifestsRepository(
        url=server.repo_url("team/manifests.git"),
        username=USER,
        token=TOKEN,
        environments={
            "production": EnvironmentManifests(path="k8s/overlays/production", kind="kustomize")
        },
    )
    lines: list[str] = []

    bumped = do_bump(block, tmp_path, environment="production", image=image(1), log=lines.append)
    reverted = do_revert(block, tmp_path, bumped.commit_sha, "rollback drill")

    assert bumped.changed and reverted.changed and head(bare) == reverted.commit_sha
    assert server.records and all(r.auth == "ok" and r.user == USER for r in server.records)
    assert any(r.method == "POST" and r.path.endswith("git-receive-pack") for r in server.records)
    assert not any(TOKEN in r.path for r in server.records)
    for workdir in (tmp_path / "work").iterdir():
        assert TOKEN not in (workdir / ".git" / "config").read_text()
    assert lines and not any(TOKEN in line for line in lines)
    assert TOKEN not in caplog.text


def test_a_refused_token_is_a_permanent_error_without_the_token(http_manifests, tmp_path):
    server, _bare = http_manifests
    wrong = "n0t-the-T0ken-at-all"
    block = ManifestsRepository(
        url=server.repo_url("team/manifests.git"),
        username=USER,
        token=wrong,
        environments={
            "production": EnvironmentManifests(path="k8s/overlays/production", kind="kustomize")
        },
    )

    with pytest.raises(ManifestRepoError, match="authentication refused") as caught:
        do_bump(block, tmp_path, environment="production")
    assert wrong not in str(caught.value)


# ----------------------------------------------------------------------------- Prefect tasks


def test_tasks_are_thin_uncached_and_untagged():
    assert (bump_manifest.name, revert_manifest.name) == ("bump_manifest", "revert_manifest")
    for wrapper in (bump_manifest, revert_manifest):
        assert wrapper.cache_policy is NO_CACHE
        assert wrapper.tags == set()


def test_bump_and_revert_tasks_in_a_flow(manifests, tmp_path, flow_env):
    block = manifests["block"]

    @flow
    def deploy_then_roll_back() -> tuple[BumpResult, BumpResult]:
        bumped = bump_manifest(
            block,
            app="example-app",
            environment="k-staging",
            image=image(1),
            source_commit="abcdef0",
            run_id="flow-run",
            build_number=1,
            workdir=tmp_path / "flow-bump",
        )
        reverted = revert_manifest(
            block, commit_sha=bumped.commit_sha, reason="drill", workdir=tmp_path / "flow-revert"
        )
        return bumped, reverted

    bumped, reverted = deploy_then_roll_back()

    assert bumped.changed and reverted.changed
    assert head(manifests["bare"]) == reverted.commit_sha
