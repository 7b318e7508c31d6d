"""The git remote blocks follow Prefect's block conventions and keep secrets out of errors."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("url", ["https://ci:hunter2secret@git.example.com/a.git", "-uhack"])
def test_refused_urls_never_echo_the_input(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AppRepository(url=url)
    assert "hunter2secret" not in str(caught.value)
