"""The manifests repository block: Prefect's block conventions, and paths that stay inside."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slipway.blocks.git import GitRemote
from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from tests.blocks.block_suite import OfflineBlockTestSuite


class TestManifestsRepositoryStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[ManifestsRepository]:
        return ManifestsRepository


def test_defaults_and_environments():
    repo = ManifestsRepository(
        url="https://git.example.com/team/manifests.git",
        environments={
            "staging": {"path": "apps/example-app/staging"},
            "production": {"path": "k8s/overlays/production", "kind": "kustomize"},
        },
    )
    assert isinstance(repo, GitRemote)  # credentials handled the GitRemote way
    # no branch: the remote's default branch, asked for as `git clone` does
    assert (repo.branch, repo.author_name, repo.author_email) == (
        None,
        "slipway",
        "slipway@localhost",
    )
    assert repo.environments["staging"] == EnvironmentManifests(path="apps/example-app/staging")
    assert repo.environments["staging"].kind == "plain"
    assert repo.environments["production"].kind == "kustomize"


def test_token_travels_as_a_header_and_is_masked():
    repo = ManifestsRepository(
        url="https://git.example.com/m.git", username="ci", token="tok-98765"
    )
    assert repo.git_env()["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert "tok-98765" in repo.secret_values()
    assert "tok-98765" not in repr(repo)


@pytest.mark.parametrize(
    "path", ["../x", "apps/../../x", "/etc", "\\\\server\\share", "C:/x", "apps/.git/hooks", ".git"]
)
def test_environment_paths_must_stay_inside_the_repository(path):
    with pytest.raises(ValidationError):
        EnvironmentManifests(path=path)


@pytest.mark.parametrize("path", [".", "apps/example-app/staging", "k8s/overlays/production"])
def test_ordinary_environment_paths(path):
    assert EnvironmentManifests(path=path).path == path


def test_unknown_kind_and_extra_keys_are_refused():
    with pytest.raises(ValidationError):
        EnvironmentManifests(path="x", kind="helm")
    with pytest.raises(ValidationError):
        EnvironmentManifests(path="x", namespace="prod")


@pytest.mark.parametrize("branch", ["-f", "a..b", "main.lock", "x y", "main/", "a//b", "a@{1}"])
def test_branch_names_git_would_refuse_are_refused(branch):
    with pytest.raises(ValidationError):
        ManifestsRepository(url="https://git.example.com/m.git", branch=branch)


@pytest.mark.parametrize("field", ["author_name", "author_email"])
@pytest.mark.parametrize("value", ["a\nb", "x <y>", ""])
def test_identities_that_would_break_a_commit_are_refused(field, value):
    with pytest.raises(ValidationError):
        ManifestsRepository(url="https://git.example.com/m.git", **{field: value})


def test_environment_names_are_plain_names():
    with pytest.raises(ValidationError):
        ManifestsRepository(url="https://x/m.git", environments={"../prod": {"path": "p"}})


def test_credentials_in_the_url_are_refused_without_echoing_them():
    with pytest.raises(ValidationError) as caught:
        ManifestsRepository(url="https://ci:hunter2secret@git.example.com/m.git")
    assert "hunter2secret" not in str(caught.value)
