"""The git smart-HTTP test server, driven by real git through GitPython.

Credentials reach git the way the product passes them: through the environment
(``GIT_CONFIG_COUNT``/``KEY``/``VALUE`` carrying ``http.extraHeader``, or ``GIT_ASKPASS``),
never in the URL and never in argv (both end up in logs and ``/proc/*/cmdline``).
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import git
import pytest

from tests.servers.git_http import GitHttpServer, commit_files, make_bare_repo

USER = "ci-bot"
TOKEN = "glpat-s3cr3t-T0ken-for-tests"
WRONG = "n0t-the-T0ken"
ACTOR = git.Actor("Slipway Test", "test@slipway.invalid")

ASKPASS = """#!/bin/sh
# git calls this with a prompt such as "Username for 'http://...': "; answer from the env.
case "$1" in
  Username*) answer="$SLIPWAY_TEST_GIT_USERNAME" ;;
  Password*) answer="$SLIPWAY_TEST_GIT_PASSWORD" ;;
  *) exit 1 ;;
esac
[ -n "$answer" ] || exit 1  # no credentials configured: fail at once, never hang
printf '%s\\n' "$answer"
"""


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def askpass(tmp_path: Path) -> Path:
    script = tmp_path / "askpass.sh"
    script.write_text(ASKPASS)
    script.chmod(0o700)
    return script


def client_env(askpass: Path, config: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Git client env: machine config ignored, no prompts, our askpass, config via GIT_CONFIG_*.

    GitPython layers this over os.environ, so every variable that could change the outcome
    (count of GIT_CONFIG_* entries, askpass) is set explicitly.
    """
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": str(askpass),
        "SLIPWAY_TEST_GIT_USERNAME": "",
        "SLIPWAY_TEST_GIT_PASSWORD": "",
    }
    config = config or {}
    for i, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    env["GIT_CONFIG_COUNT"] = str(len(config))
    env.update(extra)
    return env


def header_env(askpass: Path, password: str = TOKEN, **config: str) -> dict[str, str]:
    """Credentials as a preemptive ``Authorization`` header, via GIT_CONFIG_* env vars."""
    auth = {"http.extraHeader": f"Authorization: Basic {basic(USER, password)}"}
    return client_env(askpass, {**auth, **config})


def askpass_env(askpass: Path, password: str = TOKEN) -> dict[str, str]:
    """Credentials answered by GIT_ASKPASS after the server's 401 challenge."""
    return client_env(askpass, SLIPWAY_TEST_GIT_USERNAME=USER, SLIPWAY_TEST_GIT_PASSWORD=password)


def assert_secret_not_in_paths(server: GitHttpServer) -> None:
    for _, path, _ in server.requests:
        assert TOKEN not in path and basic(USER, TOKEN) not in path and "@" not in path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "served"
    served.mkdir()
    return served


@pytest.fixture
def app(root: Path) -> tuple[Path, list[str]]:
    """A served bare repo with three commits on main; returns (path, SHAs oldest first)."""
    bare = make_bare_repo(root, "team/app.git")
    shas = [
        commit_files(bare, {"README.md": "one\n", "src/app.py": "print(1)\n"}, "one"),
        commit_files(bare, {"src/app.py": "print(2)\n"}, "two"),
        commit_files(bare, {"src/app.py": "print(3)\n"}, "three"),
    ]
    return bare, shas


@pytest.fixture
def server(root: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(root, username=USER, password=TOKEN) as srv:
        yield srv


def test_clone_with_extra_header_from_env(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    _, shas = app
    repo = git.Repo.clone_from(
        server.repo_url("team/app.git"), tmp_path / "work", env=header_env(askpass)
    )
    assert repo.head.commit.hexsha == shas[-1]
    assert (tmp_path / "work/src/app.py").read_text() == "print(3)\n"
    # The header is preemptive: no 401 round trip, every request authenticated.
    assert [r.auth for r in server.records] == ["ok"] * len(server.records)
    assert {r.git_protocol for r in server.records} == {"version=2"}
    assert_secret_not_in_paths(server)
    assert TOKEN not in repo.remote().url


def test_clone_with_askpass(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    _, shas = app
    repo = git.Repo.clone_from(
        server.repo_url("team/app.git"), tmp_path / "work", env=askpass_env(askpass)
    )
    assert repo.head.commit.hexsha == shas[-1]
    # git probes anonymously first, gets the Basic challenge, asks askpass, retries.
    assert server.records[0].status == 401 and server.records[0].auth == "missing"
    assert all(r.auth == "ok" and r.status == 200 for r in server.records[1:])
    assert_secret_not_in_paths(server)


@pytest.mark.parametrize("how", ["header", "askpass"])
def test_wrong_password_fails_fast(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path, how: str
) -> None:
    env = header_env(askpass, WRONG) if how == "header" else askpass_env(askpass, WRONG)
    started = time.monotonic()
    with pytest.raises(git.GitCommandError) as failure:
        git.Repo.clone_from(server.repo_url("team/app.git"), tmp_path / "work", env=env)
    assert time.monotonic() - started < 5
    # Header: 401, then askpass has no username to offer. Askpass: its answer is refused.
    expected = "could not read Username" if how == "header" else "Authentication failed"
    assert expected in str(failure.value)
    assert server.requests and {status for _, _, status in server.requests} == {401}
    assert WRONG not in str(failure.value)


def test_unauthenticated_request_gets_basic_challenge(
    server: GitHttpServer, app: tuple[Path, list[str]]
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/team/app.git/info/refs?service=git-upload-pack")
        response = conn.getresponse()
        response.read()
        assert response.status == 401
        assert response.getheader("WWW-Authenticate") == 'Basic realm="git"'
        # Same keep-alive connection, now with credentials: the smart-HTTP advertisement.
        conn.request(
            "GET",
            "/team/app.git/info/refs?service=git-upload-pack",
            headers={"Authorization": f"Basic {basic(USER, TOKEN)}"},
        )
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200
        assert response.getheader("Content-Type") == ("application/x-git-upload-pack-advertisement")
        assert b"# service=git-upload-pack" in body
    finally:
        conn.close()
    assert [(r.status, r.auth) for r in server.records] == [(401, "missing"), (200, "ok")]


def test_push_with_credentials(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    bare, shas = app
    repo = git.Repo.clone_from(
        server.repo_url("team/app.git"), tmp_path / "work", env=header_env(askpass)
    )
    (tmp_path / "work/deploy.yaml").write_text("image: app:1.2.3\n")
    repo.index.add(["deploy.yaml"])
    commit = repo.index.commit("bump image", author=ACTOR, committer=ACTOR)
    repo.remote().push("main").raise_if_error()
    assert git.Repo(bare).heads.main.commit.hexsha == commit.hexsha
    pushes = [r for r in server.records if r.path.endswith("/git-receive-pack")]
    assert [(r.status, r.user) for r in pushes] == [(200, USER)]
    assert_secret_not_in_paths(server)

    # The same push with a wrong password is refused and changes nothing.
    (tmp_path / "work/deploy.yaml").write_text("image: app:6.6.6\n")
    repo.index.add(["deploy.yaml"])
    repo.index.commit("evil bump", author=ACTOR, committer=ACTOR)
    server.clear_log()
    with repo.git.custom_environment(**header_env(askpass, WRONG)):
        with pytest.raises(git.GitCommandError):
            repo.remote().push("main").raise_if_error()
    assert server.requests == [("GET", "/team/app.git/info/refs?service=git-receive-pack", 401)]
    assert git.Repo(bare).heads.main.commit.hexsha == commit.hexsha
    assert shas[-1] in {p.hexsha for p in commit.parents}


def test_shallow_fetch_of_non_tip_sha_protocol_v2(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    _, shas = app
    repo = git.Repo.init(tmp_path / "work")
    repo.create_remote("origin", server.repo_url("team/app.git"))
    repo.git.update_environment(**header_env(askpass))
    repo.git.fetch("--depth", "1", "origin", shas[1])  # not a branch tip
    assert repo.git.rev_parse("FETCH_HEAD") == shas[1]
    assert repo.git.rev_parse("--is-shallow-repository") == "true"
    assert repo.git.rev_list("--count", "FETCH_HEAD") == "1"
    repo.git.checkout("--detach", "FETCH_HEAD")
    assert (tmp_path / "work/src/app.py").read_text() == "print(2)\n"
    assert {r.git_protocol for r in server.records} == {"version=2"}


def test_protocol_v0_refuses_unadvertised_sha(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    """Documents why the checkout relies on v2: v0 only serves advertised tips by default."""
    _, shas = app
    repo = git.Repo.init(tmp_path / "work")
    repo.create_remote("origin", server.repo_url("team/app.git"))
    repo.git.update_environment(**header_env(askpass, **{"protocol.version": "0"}))
    with pytest.raises(git.GitCommandError, match="unadvertised object"):
        repo.git.fetch("--depth", "1", "origin", shas[1])
    repo.git.fetch("--depth", "1", "origin", shas[-1])  # the tip is advertised: fine
    assert {r.git_protocol for r in server.records} == {None}


def test_gzip_request_body(
    server: GitHttpServer, root: Path, askpass: Path, tmp_path: Path
) -> None:
    """git gzips upload-pack requests over 1 KiB: 40 branches make enough ``want`` lines."""
    bare = make_bare_repo(root, "many.git")
    for i in range(40):
        commit_files(bare, {f"f{i}.txt": str(i)}, f"c{i}", branch=f"b{i}")
    repo = git.Repo.clone_from(
        server.repo_url("many.git"), tmp_path / "work", env=header_env(askpass)
    )
    assert len(repo.remote().refs) == 40
    gzipped = [r for r in server.records if r.content_encoding == "gzip"]
    assert gzipped and all(r.status == 200 for r in gzipped)


def test_chunked_push_body(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    """Pushes larger than http.postBuffer are sent with chunked transfer encoding."""
    bare, _ = app
    env = header_env(askpass, **{"http.postBuffer": "65536"})
    repo = git.Repo.clone_from(server.repo_url("team/app.git"), tmp_path / "work", env=env)
    (tmp_path / "work/blob.bin").write_bytes(random.Random(7).randbytes(300_000))
    repo.index.add(["blob.bin"])
    commit = repo.index.commit("big", author=ACTOR, committer=ACTOR)
    repo.remote().push("main").raise_if_error()
    assert git.Repo(bare).heads.main.commit.hexsha == commit.hexsha
    assert any(r.chunked and r.status == 200 for r in server.records)


def test_anonymous_server_and_quick_stop(
    root: Path, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    srv = GitHttpServer(root).start()
    _, shas = app
    repo = git.Repo.clone_from(
        srv.repo_url("team/app.git"), tmp_path / "work", env=client_env(askpass)
    )
    assert repo.head.commit.hexsha == shas[-1]
    assert {r.auth for r in srv.records} == {"none"}
    # An idle keep-alive connection must not hold stop() up.
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/team/app.git/HEAD")
    assert conn.getresponse().read() == b"ref: refs/heads/main\n"
    port = srv.port
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 1
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        _ = srv.url


@pytest.mark.parametrize("name", ["../outside.git", "/etc/x.git", "."])
def test_make_bare_repo_stays_in_root(root: Path, name: str) -> None:
    with pytest.raises(ValueError):
        make_bare_repo(root, name)


def test_credentials_must_be_paired(root: Path) -> None:
    with pytest.raises(ValueError):
        GitHttpServer(root, username=USER)


def test_concurrent_clones(
    server: GitHttpServer, app: tuple[Path, list[str]], askpass: Path, tmp_path: Path
) -> None:
    """Parallel pipeline runs share one server: each request gets its own thread and CGI."""
    _, shas = app
    env = header_env(askpass)

    def clone(i: int) -> str:
        repo = git.Repo.clone_from(server.repo_url("team/app.git"), tmp_path / f"w{i}", env=env)
        return repo.head.commit.hexsha

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(clone, range(6))) == [shas[-1]] * 6
    assert server.request_count == len(server.records) == 18
    assert {status for _, _, status in server.requests} == {200}
