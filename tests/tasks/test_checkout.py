"""checkout: real git against real bare repositories (file://) and a real smart-HTTP server."""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
from pathlib import Path

import git
import pytest

from slipway.blocks.git import AppRepository, GitRemote
from slipway.exceptions import CheckoutError, RemoteUnavailable, UnsafeInputError
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
