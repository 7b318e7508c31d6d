"""The GitOps manifests repository: where a deploy is a commit.

A :class:`ManifestsRepository` is a :class:`~slipway.blocks.git.GitRemote` (URL and
credentials, which reach git only as an ``http.extraHeader`` in its environment)
plus what the bump needs to know about the repository's layout: the branch the
cluster syncs from, and for each environment the folder holding its manifests and
whether that folder is plain YAML or a kustomize overlay.

The block holds configuration only; editing, committing and pushing live in
:mod:`slipway.tasks.gitops`. Paths are checked here (relative, never ``..``) and
again, after symlinks are resolved, when the repository is on disk.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from slipway.blocks.git import GitRemote
from slipway.spec_types import NAME_PATTERN, RelPath, StrictModel

_GIT_LOGO = "https://git-scm.com/images/logos/downloads/Git-Icon-1788C.png"
# what the kustomize `images:` entry the bump edits means
_DOCS = "https://kubectl.docs.kubernetes.io/references/kustomize/kustomization/images/"

# A branch name as git accepts it, and never an option: the task checks it again
# against git's full ref rules before use.
_BRANCH_RE = re.compile(r"^(?!-)(?!.*(?:\.\.|//|@\{|\.lock$|/$|\.$))[A-Za-z0-9._/-]{1,200}$")
# git drops '<', '>' and newlines from identities; refusing them keeps trailers honest.
_IDENT_RE = re.compile(r"^[^<>\x00-\x1f\x7f]{1,200}$")

EnvironmentName = Annotated[str, Field(pattern=NAME_PATTERN)]


class EnvironmentManifests(StrictModel):
    """Where one environment's manifests live in the repository, and in which form."""

    path: RelPath = Field(
        description=(
            "Folder relative to the repository root ('.' for the root itself) holding this "
            "environment's manifests; never absolute, never through '..'. Required, no default."
        )
    )
    kind: Literal["plain", "kustomize"] = Field(
        default="plain",
        description=(
            "'plain': Kubernetes YAML files whose container images are edited in place; "
            "'kustomize': an overlay whose kustomization.yaml `images:` entry is edited. "
            "Default: plain."
        ),
    )

    @field_validator("path")
    @classmethod
    def _not_git_internals(cls, value: str) -> str:
        parts = posixpath.normpath(value).split("/")
        if ".git" in parts:
            raise ValueError(f"path {value!r} points into the repository's .git folder")
        return value


class ManifestsRepository(GitRemote):
    """A GitOps manifests repository: the cluster's desired state, one folder per environment.

    A deploy is a commit here that changes an image to a new digest; a rollback is
    a revert commit, so a later sync never re-applies the bad release.

    Example:
        Save one, then load it in a pipeline:
        ```python
        from slipway.blocks.gitops import ManifestsRepository
        from slipway.blocks.gitops import EnvironmentManifests
        ManifestsRepository(
            url="https://git.example.com/team/manifests.git", username="ci", token="...",
            environments={
                "staging": EnvironmentManifests(path="apps/example-app/staging"),
                "production": EnvironmentManifests(
                    path="k8s/overlays/production", kind="kustomize"),
            },
        ).save("manifests")
        manifests = ManifestsRepository.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "slipway Manifests Repository"
    _logo_url = _GIT_LOGO  # type: ignore[assignment]
    _documentation_url = _DOCS  # type: ignore[assignment]

    branch: str | None = Field(
        default=None,
        description=(
            "Branch the cluster syncs from and bumps are pushed to. Default: the remote's "
            "own default branch (what its HEAD points at)."
        ),
    )
    environments: dict[EnvironmentName, EnvironmentManifests] = Field(
        default_factory=dict,
        description=(
            "Per environment name (e.g. staging, production): the folder of its manifests "
            "and their kind. Default: none (every bump is refused until one is added)."
        ),
    )
    author_name: str = Field(
        default="slipway",
        description="Author and committer name of bump and revert commits. Default: slipway.",
    )
    author_email: str = Field(
        default="slipway@localhost",
        description=(
            "Author and committer e-mail of bump and revert commits. Default: slipway@localhost."
        ),
    )

    @field_validator("branch")
    @classmethod
    def _valid_branch(cls, value: str | None) -> str | None:
        if value is not None and not _BRANCH_RE.match(value):
            raise ValueError(f"not a valid branch name: {value!r}")
        return value

    @field_validator("author_name", "author_email")
    @classmethod
    def _valid_identity(cls, value: str) -> str:
        if not _IDENT_RE.match(value):
            raise ValueError(
                f"{value!r} is not usable in a git identity (no '<', '>' or control characters)"
            )
        return value
