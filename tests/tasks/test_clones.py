"""Every clone the project makes, against every branch name and every ``init.defaultBranch``.

A fresh ``git init`` sits on an unborn branch named by the machine's git config
(``master`` when unset); fetching into that branch is refused by git. The checkout, the
GitOps bump and the GitOps sync each clone, so each is run here for branches ``master``,
``main`` and others, with ``init.defaultBranch`` unset, ``master`` and ``main`` in a
temporary global git config (real git, real bare repositories). Then: clones an earlier
failure left broken are replaced, never reused.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import git
import pytest

from slipway.blocks.git import GitRemote
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.tasks.checkout import checkout_repo, clone_problem
from slipway.tasks.gitops import bump_image
from slipway.tasks.sync_source import render_revision, render_with_image
from tests.servers.git_http import commit_files, make_bare_repo

BRANCHES = ["master", "main", "trunk", "release/2.x"]
DEFAULT_BRANCH_SETTINGS = [None, "master", "main"]
IMAGE = "127.0.0.1:5000/shop@sha256:" + hashlib.sha256(b"shop").hexdigest()

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers:
        - name: shop
          image: 127.0.0.1:5000/shop:1.0
"""


@pytest.fixture(params=DEFAULT_BRANCH_SETTINGS, ids=lambda v: f"defaultBranch={v or 'unset'}")
def machine_git(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str | None:
    """A machine whose global git config sets ``init.defaultBranch`` (or leaves it unset)."""
    home = tmp_path / "home"
    home.mkdir()
    config = home / ".gitconfig"
    config.write_text("[user]\n\tname = Someone\n\temail = someone@example.invalid\n")
    if request.param is not None:
        subprocess.run(
            ["git", "config", "--file", str(config), "init.defaultBranch", request.param],
            check=True,
        )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return request.param


def unborn_branch_of_a_fresh_init(tmp_path: Path) -> str:
    """What `git init` names the unborn branch on this (test) machine."""
    probe = tmp_path / "probe"
    subprocess.run(["git", "init", "--quiet", str(probe)], check=True)
    head = (probe / ".git" / "HEAD").read_text().strip()
    return head.removeprefix("ref: refs/heads/")


def remote_on(tmp_path: Path, branch: str, files: dict[str, str | None]) -> tuple[Path, str]:
    """A bare repository whose only branch (and HEAD) is ``branch``; (path, head SHA)."""
    bare = make_bare_repo(tmp_path / "remotes", "repo.git", initial_branch=branch)
    commit_files(bare, {"README": "first\n"}, "first", branch=branch)
    return bare, commit_files(bare, files, "second", branch=branch)


def test_the_machine_config_is_the_one_git_init_sees(machine_git, tmp_path):
    # guards the fixture itself: the matrix below really covers each unborn branch name
    assert unborn_branch_of_a_fresh_init(tmp_path) == (machine_git or "master")


@pytest.mark.parametrize("branch", BRANCHES)
def test_checkout_of_a_branch(machine_git, tmp_path, branch):
    _bare, head = remote_on(tmp_path, branch, {"app.py": "print(1)\n"})
    remote = GitRemote(url=_bare.as_uri())

    result = checkout_repo(remote, tmp_path / "ws", branch=branch)

    assert (result.sha, result.branch, result.ref) == (head, branch, branch)
    assert (tmp_path / "ws" / "app.py").read_text() == "print(1)\n"


@pytest.mark.parametrize("branch", BRANCHES)
def test_checkout_of_the_default_branch(machine_git, tmp_path, branch):
    bare, head = remote_on(tmp_path, branch, {"app.py": "print(1)\n"})

    result = checkout_repo(GitRemote(url=bare.as_uri()), tmp_path / "ws")

    assert (result.sha, result.branch) == (head, branch)


@pytest.mark.parametrize("branch", BRANCHES)
def test_bump(machine_git, tmp_path, branch):
    bare, _head = remote_on(tmp_path, branch, {"envs/staging/deployment.yaml": DEPLOYMENT})
    environments = {"staging": EnvironmentManifests(path="envs/staging")}
    kwargs = dict(app="shop", environment="staging", image=IMAGE, source_commit="a" * 40)
    lines: list[str] = []

    # the block naming the branch, then the block leaving it to the remote's HEAD
    for named in (branch, None):
        block = ManifestsRepository(url=bare.as_uri(), branch=named, environments=environments)
        plan = render_with_image(  # the approval form's plan clones the same way
            block,
            app="shop",
            environment="staging",
            image=IMAGE,
            workdir=tmp_path / f"plan-{named}",
        )
        assert plan.objects[0]["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
        result = bump_image(
            block, run_id="r1", build_number=1, workdir=tmp_path / f"bump-{named}",
            log=lines.append, **kwargs,
        )  # fmt: skip
        assert result.changed is (named is not None), result.note

    pushed = git.Repo(bare).commit(branch)
    assert pushed.hexsha == result.commit_sha
    assert (
        f"image: {IMAGE}"
        in (pushed.tree / "envs/staging/deployment.yaml").data_stream.read().decode()
    )
    assert f"on {branch}" in lines[0]


@pytest.mark.parametrize("branch", BRANCHES)
def test_sync_render(machine_git, tmp_path, branch):
    bare, head = remote_on(tmp_path, branch, {"app/deployment.yaml": DEPLOYMENT})
    block = ManifestsRepository(url=bare.as_uri())
    workdir = tmp_path / "sync-clone"

    for revision in (branch, "HEAD", branch):  # a first sync, then reusing the clone
        state = render_revision(block, revision=revision, path="app", kind="plain", workdir=workdir)
        assert state.revision == head
        assert [o["metadata"]["name"] for o in state.objects] == ["shop"]

    after = commit_files(
        bare,
        {"app/more.yaml": "kind: ConfigMap\napiVersion: v1\nmetadata: {name: more}\n"},
        "third",
        branch=branch,
    )
    state = render_revision(block, revision=branch, path="app", kind="plain", workdir=workdir)
    assert state.revision == after
    assert sorted(o["metadata"]["name"] for o in state.objects) == ["more", "shop"]


# --- clones an earlier failure broke ---------------------------------------------------------


def _interrupted(clone: Path, _other: Path) -> None:
    """`git init` and `remote add` ran, the fetch never finished: an unborn HEAD."""
    url = git.Repo(clone).git.config("--get", "remote.origin.url")
    subprocess.run(["rm", "-rf", str(clone)], check=True)
    subprocess.run(["git", "init", "--quiet", str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "remote", "add", "origin", url], check=True)
    _mark(clone)


def _missing_object(clone: Path, _other: Path) -> None:
    blob = git.Repo(clone).git.rev_parse("HEAD:app/deployment.yaml")
    loose = clone / ".git" / "objects" / blob[:2] / blob[2:]
    assert loose.is_file(), "the fixture expects loose objects (a small fetch)"
    loose.unlink()


def _wrong_remote(clone: Path, other: Path) -> None:
    git.Repo(clone).git.remote("set-url", "origin", other.as_uri())


def _stale_lock(clone: Path, _other: Path) -> None:
    (clone / ".git" / "index.lock").write_text("")


def _no_head_file(clone: Path, _other: Path) -> None:
    (clone / ".git" / "HEAD").unlink()


def _gitfile(clone: Path, other: Path) -> None:
    subprocess.run(["rm", "-rf", str(clone / ".git")], check=True)
    (clone / ".git").write_text(f"gitdir: {other}\n")


def _mark(clone: Path) -> None:
    if (clone / ".git").is_dir():
        (clone / ".git" / "slipway-test-marker").write_text("left by the test")


BREAKAGES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "interrupted clone (unborn HEAD)": (_interrupted, "no commit checked out"),
    "missing objects": (_missing_object, "objects are missing or corrupt"),
    "wrong remote": (_wrong_remote, "a clone of another remote"),
    "lock left by a killed git": (_stale_lock, "left locked by an interrupted git (index.lock)"),
    "HEAD file gone": (_no_head_file, "not a git repository"),
    ".git is a file": (_gitfile, ".git is not a directory"),
}


@pytest.fixture
def synced(tmp_path: Path) -> dict[str, object]:
    """A sync clone of a manifests repository on master, made once and healthy."""
    bare, head = remote_on(tmp_path, "master", {"app/deployment.yaml": DEPLOYMENT})
    other = make_bare_repo(tmp_path / "remotes", "other.git", initial_branch="master")
    commit_files(other, {"app/deployment.yaml": "kind: ConfigMap\n"}, "not ours", branch="master")
    block = ManifestsRepository(url=bare.as_uri())
    workdir = tmp_path / "sync-clone"
    render_revision(block, revision="HEAD", path="app", kind="plain", workdir=workdir)
    assert clone_problem(workdir, block.url, block.git_env()) is None
    return {"block": block, "workdir": workdir, "head": head, "other": other}


def test_a_healthy_clone_is_reused(synced):
    workdir = synced["workdir"]
    _mark(workdir)
    lines: list[str] = []

    state = render_revision(
        synced["block"], revision="master", path="app", kind="plain", workdir=workdir,
        log=lines.append,
    )  # fmt: skip

    assert state.revision == synced["head"]
    assert (workdir / ".git" / "slipway-test-marker").is_file()
    assert not any("replacing" in line for line in lines)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_sync_clone_is_detected_and_replaced(synced, breakage):
    workdir, block = synced["workdir"], synced["block"]
    _mark(workdir)
    breaker, reason = BREAKAGES[breakage]
    breaker(workdir, synced["other"])
    assert reason in (clone_problem(workdir, block.url, block.git_env()) or "")
    lines: list[str] = []

    state = render_revision(
        block, revision="master", path="app", kind="plain", workdir=workdir, log=lines.append
    )

    assert state.revision == synced["head"]
    assert [o["kind"] for o in state.objects] == ["Deployment"]
    assert not (workdir / ".git" / "slipway-test-marker").exists()  # a new clone
    assert clone_problem(workdir, block.url, block.git_env()) is None
    assert any(line.startswith(f"replacing the clone in {workdir}: {reason}") for line in lines)


@pytest.mark.parametrize("breakage", ["interrupted clone (unborn HEAD)", "wrong remote"])
def test_a_broken_bump_clone_is_replaced(synced, tmp_path, breakage):
    workdir, block = synced["workdir"], synced["block"]
    block = block.model_copy(update={"environments": {"staging": EnvironmentManifests(path="app")}})
    BREAKAGES[breakage][0](workdir, synced["other"])

    result = bump_image(
        block, app="shop", environment="staging", image=IMAGE, source_commit="a" * 40,
        run_id="r1", build_number=1, workdir=workdir,
    )  # fmt: skip

    assert result.changed
    assert git.Repo(block.url.removeprefix("file://")).commit("master").hexsha == result.commit_sha


def test_a_failed_checkout_attempt_is_replaced_on_retry(tmp_path):
    bare, head = remote_on(tmp_path, "master", {"app.py": "print(1)\n"})
    workspace = tmp_path / "ws"
    # what a first attempt that died after `git init` (remote unreachable) leaves behind
    subprocess.run(["git", "init", "--quiet", str(workspace)], check=True)
    (workspace / ".git" / "slipway-test-marker").write_text("old")

    result = checkout_repo(GitRemote(url=bare.as_uri()), workspace, branch="master")

    assert result.sha == head
    assert not (workspace / ".git" / "slipway-test-marker").exists()
