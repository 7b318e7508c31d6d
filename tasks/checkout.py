"""checkout: fetch exactly one commit of the application repository.

The workspace is a fresh ``git init`` plus a shallow fetch of the wanted commit
(depth 2, so the parent is there to compute what changed). When a base commit is
given, it is fetched at depth 1 as well: ``git diff --name-only`` only needs the
two trees, not the history between them. Servers that refuse shallow fetches by
SHA get a full fetch instead.

Refs are user-controlled: they are checked against git's own ref rules, passed
after ``--`` or as fully qualified refspecs, and never reach a shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import git
from prefect import task
from prefect.cache_policies import NO_CACHE

from slipway.blocks.git import GitRemote
from slipway.exceptions import (
    CheckoutError,
    RemoteUnavailable,
    UnsafeInputError,
    retry_temporary_errors,
)
from slipway.redact import Redactor

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA_RE = re.compile(r"^[0-9a-f]{7,39}$")
# git check-ref-format rules, plus: no leading '-', so a ref can never be an option
_BAD_REF = re.compile(
    r"(^-)|(\.\.)|(@\{)|(//)|([\x00-\x20\x7f~^:?*\[\\])|(^/)|(/$)|(\.$)|(\.lock$)|(/\.)|(^\.)"
)

_UNREACHABLE = (
    "could not resolve host",
    "connection refused",
    "timed out",
    "network is unreachable",
    "failed to connect",  # curl >= 7.83: "Failed to connect ...: Couldn't connect to server"
    "couldn't connect to server",
    "the remote end hung up unexpectedly",
    "http 502",
    "http 503",
    "http 504",
    "returned error: 5",
)
_AUTH = (
    "authentication failed",
    "http 401",
    "http 403",
    "returned error: 401",
    "returned error: 403",
    # a 401 despite the header makes git ask for credentials, which it may not do here
    "could not read username",
    "could not read password",
)


@dataclass(frozen=True)
class CheckoutResult:
    """What later stages need to know about the commit being built."""

    workspace: Path
    sha: str
    ref: str
    branch: str | None
    author: str
    author_email: str
    message: str
    committed_at: str
    base_sha: str | None
    changed_files: tuple[str, ...] = field(default_factory=tuple)
    shallow: bool = True

    @property
    def short_sha(self) -> str:
        return self.sha[:12]


def validate_ref(ref: str) -> str:
    """Refuse refs git would refuse, and anything that could pass for an option."""
    if not ref or len(ref) > 255 or _BAD_REF.search(ref):
        raise UnsafeInputError(f"not a valid git ref: {ref!r}")
    return ref


class _Git:
    """GitPython calls with this remote's environment and errors translated once."""

    def __init__(self, repo: git.Repo, remote: GitRemote, redactor: Redactor) -> None:
        self.repo = repo
        self.env = remote.git_env()
        self.redactor = redactor

    def __call__(self, *args: str) -> str:
        try:
            return self.repo.git.execute(["git", *args], env=self.env)
        except git.GitCommandError as exc:
            raise self.translate(exc) from None

    def translate(self, exc: git.GitCommandError) -> Exception:
        stderr = str(exc.stderr or "").strip()
        # GitPython hands stderr over pre-formatted as "stderr: '<text>'"; unwrap it
        if stderr.startswith("stderr: '") and stderr.endswith("'"):
            stderr = stderr[len("stderr: '") : -1].strip()
        stderr = self.redactor.redact(stderr)
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        # git's first "fatal:" (else "error:") line says what went wrong; the rest is advice
        detail = next(
            (line for p in ("fatal:", "error:") for line in lines if line.lower().startswith(p)),
            lines[-1] if lines else f"exit {exc.status}",
        )
        lowered = stderr.lower()
        verb = exc.command[1] if isinstance(exc.command, list) and len(exc.command) > 1 else "git"
        if any(s in lowered for s in _AUTH):
            return CheckoutError(f"git {verb}: authentication refused by the remote ({detail})")
        if any(s in lowered for s in _UNREACHABLE):
            return RemoteUnavailable(f"git {verb}: remote unreachable ({detail})")
        return CheckoutError(f"git {verb} failed: {detail}")


def _fetch(g: _Git, refspec: str, depth: int | None) -> bool:
    """Fetch a refspec; returns whether the fetch was shallow."""
    if depth is not None:
        try:
            g("fetch", "--no-tags", f"--depth={depth}", "origin", refspec)
            return True
        except CheckoutError:
            pass  # e.g. a server that refuses shallow requests or unadvertised SHAs
    g("fetch", "--no-tags", "origin", refspec)
    return False


def _fetch_ref(g: _Git, ref: str, depth: int | None) -> tuple[str, bool, str | None]:
    """Fetch a branch, tag or SHA; return (sha, shallow, branch name if a branch)."""
    if SHA_RE.match(ref):
        shallow = _fetch(g, ref, depth)
        return g("rev-parse", "--verify", "FETCH_HEAD^{commit}"), shallow, None
    candidates = [(f"refs/heads/{ref}", ref), (f"refs/tags/{ref}", None)]
    for full, branch in candidates:
        listing = g("ls-remote", "--", "origin", full)
        if listing.strip():
            shallow = _fetch(g, f"+{full}:{full}", depth)
            return g("rev-parse", "--verify", f"{full}^{{commit}}"), shallow, branch
    if _SHORT_SHA_RE.match(ref):
        raise CheckoutError(
            f"ref {ref!r}: abbreviated SHAs are not fetchable; give all 40 hex digits"
        )
    raise CheckoutError(f"ref {ref!r} is neither a branch nor a tag of the remote")


def checkout_repo(
    remote: GitRemote,
    workspace: Path,
    *,
    ref: str,
    base: str | None = None,
    depth: int | None = 2,
    redactor: Redactor | None = None,
) -> CheckoutResult:
    """Check ``ref`` (branch, tag or full SHA) out into an empty ``workspace``."""
    validate_ref(ref)
    if base is not None:
        validate_ref(base)
    redactor = redactor or Redactor()
    redactor.add(*remote.secret_values())
    workspace.mkdir(parents=True, exist_ok=True)
    if any(workspace.iterdir()):
        raise CheckoutError(f"workspace {workspace} is not empty")
    repo = git.Repo.init(workspace)
    g = _Git(repo, remote, redactor)
    g("remote", "add", "origin", remote.url)
    sha, shallow, branch = _fetch_ref(g, ref, depth)
    g("checkout", "--quiet", "--detach", sha)
    head = repo.commit(sha)

    base_sha: str | None
    if base is not None:
        base_sha, _shallow, _branch = _fetch_ref(g, base, 1)
    else:
        base_sha = head.parents[0].hexsha if head.parents else None
    if base_sha is None:
        changed = g("ls-tree", "-r", "--name-only", "-z", sha).split("\0")
    else:
        changed = g("diff", "--name-only", "-z", "--no-renames", base_sha, sha, "--").split("\0")
    return CheckoutResult(
        workspace=workspace,
        sha=sha,
        ref=ref,
        branch=branch,
        author=str(head.author.name),
        author_email=str(head.author.email),
        message=str(head.message).strip(),
        committed_at=head.committed_datetime.isoformat(),
        base_sha=base_sha,
        changed_files=tuple(sorted(f for f in changed if f)),
        shallow=shallow,
    )


checkout = task(
    checkout_repo,
    name="checkout",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_temporary_errors,
    cache_policy=NO_CACHE,  # a checkout is always fresh; its inputs hold the redactor
)
