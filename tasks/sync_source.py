"""The desired state of a GitOps sync: the manifests repository at a revision, rendered.

:func:`render_revision` keeps one clone per application (reused run after run: a
scheduled sync fetches what changed instead of cloning again), fetches the target
revision (a branch, a tag, a 40-hex commit SHA, or ``HEAD``: the remote's default
branch; branches land in ``refs/remotes/origin/``, so the clone works whatever
``init.defaultBranch`` is), makes the work tree exactly that commit, and renders the
application's folder with :func:`~slipway.tasks.manifests_render.render_manifests` (plain YAML or
the kustomize subset). An exclusive lock on the clone keeps two runs of one
application from checking out under each other; a clone an earlier failure broke
(interrupted, objects missing, another remote) is replaced, never reused.

:func:`render_with_image` is the same render with a GitOps bump applied to the work
tree but not committed: what an environment *will* look like once a release's image
is bumped, for the approval form's plan (it reuses the bump's own edit, so the plan
shows exactly what the bump will commit).

git runs as the bump runs it (:mod:`slipway.tasks.gitops`): credentials from the
block's environment, errors translated once, nothing through a shell.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.redact import Redactor
from slipway.tasks.checkout import _fetch_ref, validate_ref
from slipway.tasks.gitops import _ManifestGit, _open_clone, _plan, _validate_bump
from slipway.tasks.manifests_render import ManifestKind, render_manifests

Log = Callable[[str], None]


@dataclass(frozen=True)
class DesiredState:
    """What git says: the commit rendered, and the objects its folder renders to."""

    revision: str
    objects: tuple[dict[str, Any], ...]


@contextmanager
def _locked(workdir: Path) -> Iterator[None]:
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with open(workdir.with_name(f".{workdir.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _checkout(g: _ManifestGit, revision: str) -> str:
    """Fetch ``revision`` and make the work tree exactly that commit; its SHA."""
    g.status("revert", "--quit")  # an abandoned operation of an earlier process
    if revision == "HEAD":
        g("fetch", "--quiet", "--no-tags", "origin", "HEAD")
        sha = g("rev-parse", "--verify", "FETCH_HEAD^{commit}")
    else:
        sha, _shallow, _branch = _fetch_ref(g, validate_ref(revision), None)
    g("checkout", "--quiet", "--force", "--detach", sha)
    g("clean", "-ffdxq")
    return sha


def render_revision(
    repo: ManifestsRepository,
    *,
    revision: str,
    path: str,
    kind: ManifestKind,
    workdir: Path,
    redactor: Redactor | None = None,
    log: Log | None = None,
) -> DesiredState:
    """The objects ``path`` renders to at ``revision`` of ``repo`` (cloned in ``workdir``).

    Raises:
        CheckoutError / ManifestRepoError: the revision does not exist, or git refused.
        RemoteUnavailable: the repository did not answer (temporary).
        ManifestRenderError / UnsafeInputError: the folder does not render.
    """
    redactor = redactor or Redactor()
    redactor.add(*repo.secret_values())
    with _locked(workdir):
        g = _open_clone(repo, workdir, redactor, log)
        sha = _checkout(g, revision)
        objects = render_manifests(workdir, path, kind)
    if log is not None:
        log(f"rendered {len(objects)} objects from {path} at {revision} ({sha[:12]})")
    return DesiredState(sha, tuple(objects))


def render_with_image(
    repo: ManifestsRepository,
    *,
    app: str,
    environment: str,
    image: str,
    workdir: Path,
    redactor: Redactor | None = None,
    log: Log | None = None,
) -> DesiredState:
    """The environment's objects at the branch head as they will be once ``image`` is
    bumped (the bump's edit is made in the work tree, never committed).

    Raises:
        ConfigError: the environment is not in the block, or no image entry matches.
        UnsafeInputError: ``image`` is not ``repository@sha256:<digest>``.
    """
    target: EnvironmentManifests | None = repo.environments.get(environment)
    if target is None:
        from slipway.exceptions import ConfigError

        known = ", ".join(sorted(repo.environments)) or "none"
        raise ConfigError(
            f"environment {environment!r} is not in the manifests repository block (known: {known})"
        )
    bump = _validate_bump(app, environment, image, "0" * 40, "plan", 1, None)
    redactor = redactor or Redactor()
    redactor.add(*repo.secret_values())
    with _locked(workdir):
        g = _open_clone(repo, workdir, redactor)
        sha = _checkout(g, repo.branch or "HEAD")
        branch = repo.branch or "the default branch"
        plan = _plan(workdir.resolve(), target, bump, branch, log or (lambda _line: None))
        for edit in plan.edits:
            edit.path.write_bytes(edit.new_text.encode("utf-8"))
        objects = render_manifests(workdir, target.path, target.kind)
    return DesiredState(sha, tuple(objects))
