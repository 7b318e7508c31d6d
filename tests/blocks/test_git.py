"""The git remote blocks follow Prefect's block conventions and keep secrets out of errors."""

from __future__ import annotations

import warnings

import pytest
from prefect.utilities.dispatch import register_type
from pydantic import ValidationError

from slipway.blocks.git import AppRepository, GitRemote
from tests.blocks.block_suite import OfflineBlockTestSuite


class TestAppRepositoryStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[AppRepository]:
        return AppRepository


class TestGitRemoteStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[GitRemote]:
        return GitRemote


def test_git_env_carries_the_token_only_as_a_header() -> None:
    remote = AppRepository(url="https://git.example.com/a.git", username="ci", token="tok-12345")
    env = remote.git_env()
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
    assert "tok-12345" not in env["GIT_CONFIG_VALUE_0"]  # base64 of user:token
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "tok-12345" in remote.secret_values()
    assert "GIT_CONFIG_COUNT" not in AppRepository(url="https://x/a.git").git_env()


@pytest.mark.parametrize(
    "url",
    [
        "https://ci:hunter2secret@git.example.com/a.git",
        "https://hunter2secret@git.example.com/a.git",  # a token as the user name
        "ssh://git:hunter2secret@git.example.com/a.git",
        "-uhack",
    ],
)
def test_refused_urls_never_echo_the_input(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AppRepository(url=url)
    assert "hunter2secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "protocols"),
    [
        ("https://git.example.com/a.git", "https:ssh:file"),
        ("ssh://git@git.example.com/a.git", "https:ssh:file"),
        ("git@git.example.com:team/a.git", "https:ssh:file"),  # scp-like: ssh
        ("file:///srv/git/a.git", "https:ssh:file"),
        ("/srv/git/a.git", "https:ssh:file"),
        ("http://127.0.0.1:8080/a.git", "https:ssh:file:http"),  # asked for by the URL
        ("git://git.example.com/a.git", "https:ssh:file:git"),
    ],
)
def test_git_transports_are_pinned_per_remote(url: str, protocols: str) -> None:
    assert GitRemote(url=url).git_env()["GIT_ALLOW_PROTOCOL"] == protocols


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ext::sh -c touch% /tmp/pwned", "transport helpers"),
        ("fd::3", "transport helpers"),
        ("hg::https://hg.example.com/repo", "transport helpers"),
        ("ftp://git.example.com/a.git", "scheme 'ftp' is not allowed"),
    ],
)
def test_transport_helpers_and_odd_schemes_are_refused(url: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        GitRemote(url=url)


def test_default_branch_is_the_remotes_unless_set() -> None:
    assert AppRepository(url="https://x/a.git").default_branch is None
    assert AppRepository(url="https://x/a.git", default_branch="trunk").default_branch == "trunk"


def test_blocks_saved_with_the_old_hard_default_still_load(prefect_harness: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it takes over AppRepository's slug for a moment

        class OldAppRepository(GitRemote):
            """AppRepository as it was saved before default_branch became optional."""

            _block_type_name = "slipway App Repository"
            default_branch: str = "main"
            spec_path: str = "slipway.yaml"

    try:
        assert (
            OldAppRepository._calculate_schema_checksum()
            != AppRepository._calculate_schema_checksum()
        )
        OldAppRepository(url="https://git.example.com/a.git").save("saved-long-ago", overwrite=True)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            register_type(AppRepository)

    loaded = AppRepository.load("saved-long-ago")

    assert type(loaded) is AppRepository
    assert (loaded.url, loaded.default_branch) == ("https://git.example.com/a.git", "main")
