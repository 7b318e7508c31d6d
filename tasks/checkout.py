"""checkout: fetch exactly one commit of the application repository.

The workspace is a fresh ``git init`` plus a shallow fetch of the wanted commit
(depth 2, so the parent is there to compute what changed). When a base commit is
given, it is fetched at depth 1 as well: ``git diff --name-only`` only needs the
two trees, not the history between them. Servers that refuse shallow fetches by
SHA get a full fetch instead.

**Branches are fetched into ``refs/remotes/origin/``, never ``refs/heads/``.** A
fresh ``git init`` sits on an unborn branch named by the machine's
``init.defaultBranch`` (``master`` when unset), and git refuses to fetch into the
branch a work tree has checked out; a clone that only ever writes remote-tracking
refs works whatever that setting and whatever the branch is called. The GitOps
bump and sync clones use the same fetch and the same clone keeping
(:func:`open_clone`): a folder left by an earlier attempt is reused only when it is
a healthy clone of the same remote, and replaced otherwise.

**A run's branch is verified.** When a commit (or tag) is built *as* a branch, the
branch is fetched as well and the commit must be an ancestor of its head
(``git merge-base --is-ancestor``), else :class:`~slipway.exceptions.CommitNotOnBranch`
is raised before anything runs: ``SLIPWAY_BRANCH``, ``when: {branch: ...}`` and the
deploy gates all trust the branch a checkout reports. A shallow history can only
hide a path, never invent one, so the check can refuse wrongly but never admit wrongly;
the branch is fetched without a depth limit so that it does not refuse wrongly either.

**No branch given** means the remote's default branch, asked for as ``git clone``
does (``git ls-remote --symref origin HEAD``), never a hard-coded name.

Refs are user-controlled: they are checked against git's own ref rules, passed
after ``--`` or as fully qualified refspecs, and never reach a shell.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import git
from prefect import task
from prefect.cache_policies import NO_CACHE

from slipway.blocks.git import GitRemote
from slipway.exceptions import (
    CheckoutError,
    CommitNotOnBranch,
    RemoteUnavailable,
    UnsafeInputError,
    retry_temporary_errors,
)
from slipway.redact import Redactor

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# what a run builds when it names no branch: the remote's default branch (its HEAD)
DEFAULT_BRANCH = "HEAD"
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

    def status(self, *args: str) -> tuple[int, str, str]:
        """Run git where a non-zero exit is an answer, not an error (push, is-ancestor)."""
        status, out, err = self.repo.git.execute(
            ["git", *args], env=self.env, with_extended_output=True, with_exceptions=False
        )
        return int(status or 0), str(out), str(err)

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
    """Fetch a branch, tag or SHA; return (sha, shallow, branch name if a branch).

    A branch lands in ``refs/remotes/origin/<name>``: a ``refs/heads/`` destination is
    refused by git when it is the (possibly unborn) branch the work tree is on.
    """
    if SHA_RE.match(ref):
        shallow = _fetch(g, ref, depth)
        return g("rev-parse", "--verify", "FETCH_HEAD^{commit}"), shallow, None
    candidates = [
        (f"refs/heads/{ref}", f"refs/remotes/origin/{ref}", ref),
        (f"refs/tags/{ref}", f"refs/tags/{ref}", None),
    ]
    for full, local, branch in candidates:
        listing = g("ls-remote", "--", "origin", full)
        if listing.strip():
            shallow = _fetch(g, f"+{full}:{local}", depth)
            return g("rev-parse", "--verify", f"{local}^{{commit}}"), shallow, branch
    if _SHORT_SHA_RE.match(ref):
        raise CheckoutError(
            f"ref {ref!r}: abbreviated SHAs are not fetchable; give all 40 hex digits"
        )
    raise CheckoutError(f"ref {ref!r} is neither a branch nor a tag of the remote")


def remote_default_branch(g: _Git) -> str:
    """The branch the remote's HEAD points at (``git ls-remote --symref``, as ``git
    clone`` asks), so a repository whose default is ``master`` builds ``master``."""
    for line in g("ls-remote", "--symref", "origin", "HEAD").splitlines():
        target, _, name = line.partition("\t")
        if name == "HEAD" and target.startswith("ref: refs/heads/"):
            return validate_ref(target.removeprefix("ref: refs/heads/"))
    raise CheckoutError(
        "the remote does not name a default branch (it is empty, or its HEAD is not a "
        "branch); give a branch, or set default_branch on the repository block"
    )


def verify_on_branch(g: _Git, sha: str, branch: str, *, ref: str | None = None) -> str:
    """Fetch ``branch`` (full history down to what is here) and require ``sha`` to be
    reachable from its head; return the head's SHA.

    Raises:
        CommitNotOnBranch: ``sha`` is not an ancestor of (or equal to) the head.
        CheckoutError: the branch does not exist on the remote.
    """
    full, tracking = f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"
    if not g("ls-remote", "--", "origin", full).strip():
        raise CheckoutError(f"branch {branch!r} does not exist on the remote")
    _fetch(g, f"+{full}:{tracking}", None)
    head = g("rev-parse", "--verify", f"{tracking}^{{commit}}")
    status, _out, err = g.status("merge-base", "--is-ancestor", sha, head)
    if status == 1:
        raise CommitNotOnBranch(sha, branch, ref)
    if status != 0:
        raise CheckoutError(
            f"cannot tell whether {sha} is on branch {branch!r}: {g.redactor.redact(err)[:300]}"
        )
    return head


# ----------------------------------------------------------------------------- clones

_G = TypeVar("_G", bound=_Git)
_LOCKS = ("index.lock", "HEAD.lock", "config.lock", "shallow.lock", "packed-refs.lock")


def clone_problem(workdir: Path, url: str, env: dict[str, str]) -> str | None:
    """Why the clone in ``workdir`` must not be reused, or None when it is healthy.

    Broken means: not a plain git directory, a lock an interrupted git left behind,
    another remote, no commit checked out (an interrupted clone: ``git init`` ran, the
    fetch did not finish), or objects missing (``git fsck --connectivity-only``).
    """
    dot_git = workdir / ".git"
    if dot_git.is_symlink() or not dot_git.is_dir():
        return ".git is not a directory"
    try:
        repo = git.Repo(workdir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return "not a git repository (an interrupted clone)"
    locks = [name for name in _LOCKS if (dot_git / name).exists()]
    locks += [str(p.relative_to(dot_git)) for p in (dot_git / "refs").rglob("*.lock")]
    if locks:
        return f"left locked by an interrupted git ({', '.join(sorted(locks))})"

    def run(*args: str) -> tuple[int, str]:
        status, out, _err = repo.git.execute(
            ["git", *args], env=env, with_extended_output=True, with_exceptions=False
        )
        return int(status or 0), str(out).strip()

    status, git_dir = run("rev-parse", "--absolute-git-dir")
    if status != 0 or Path(git_dir).resolve() != dot_git.resolve():
        return "its .git is not the repository git finds there"
    if run("config", "--get", "remote.origin.url")[1] != url:
        return "a clone of another remote"
    if run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")[0] != 0:
        return "no commit checked out (an interrupted clone)"
    if run("fsck", "--connectivity-only", "--no-dangling", "--no-progress")[0] != 0:
        return "objects are missing or corrupt"
    return None


def open_clone(
    workdir: Path,
    remote: GitRemote,
    redactor: Redactor,
    *,
    driver: type[_G],
    reuse: bool,
    log: Callable[[str], None] | None = None,
) -> _G:
    """A git driver on a clone of ``remote`` in ``workdir``, ready to fetch into.

    An empty folder gets ``git init`` and an ``origin``. A folder holding a ``.git``
    is a clone slipway made earlier: with ``reuse`` it is kept when
    :func:`clone_problem` finds nothing wrong; otherwise (or without ``reuse``) it is
    deleted and made again, never reused broken. A folder with other files in it is
    not slipway's: :class:`CheckoutError`, and nothing is deleted.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / ".git").exists() or (workdir / ".git").is_symlink():
        problem = clone_problem(workdir, remote.url, remote.git_env()) if reuse else "fresh"
        if problem is None:
            return driver(git.Repo(workdir), remote, redactor)
        if reuse and log is not None:
            log(f"replacing the clone in {workdir}: {problem}")
        shutil.rmtree(workdir)
        workdir.mkdir()
    elif any(workdir.iterdir()):
        raise CheckoutError(f"{workdir} is not empty and holds no clone; not touching it")
    g = driver(git.Repo.init(workdir), remote, redactor)
    g("remote", "add", "origin", remote.url)
    return g


# ----------------------------------------------------------------------------- checkout


def checkout_repo(
    remote: GitRemote,
    workspace: Path,
    *,
    ref: str | None = None,
    branch: str | None = None,
    base: str | None = None,
    depth: int | None = 2,
    redactor: Redactor | None = None,
) -> CheckoutResult:
    """Check a commit out into ``workspace`` and say which branch it is verified on.

    Args:
        remote: the repository.
        workspace: an empty folder (or one holding a clone an earlier attempt left,
            which is replaced).
        ref: branch, tag or full SHA to build. Default: the head of ``branch``.
        branch: the branch the run is built as; ``"HEAD"`` (:data:`DEFAULT_BRANCH`)
            means the remote's default branch. When ``ref`` is not that branch itself,
            its commit must be reachable from the branch's head. Default: ``ref``'s
            branch when ``ref`` is a branch, else none; with neither ``ref`` nor
            ``branch``, the remote's default branch.
        base: base commit for the changed files. Default: the commit's parent.
        depth: history fetched for ``ref`` (None: all).
        redactor: masks the remote's secrets in errors.

    Raises:
        CommitNotOnBranch: ``ref`` is not on ``branch``; nothing was checked out.
        CheckoutError: a ref is missing, authentication was refused, ...
        RemoteUnavailable: the remote did not answer (temporary).
        UnsafeInputError: a ref git would refuse, or that could pass for an option.
    """
    if ref is None and branch is None:
        branch = DEFAULT_BRANCH
    for value in (ref, branch, base):
        if value is not None:
            validate_ref(value)
    redactor = redactor or Redactor()
    redactor.add(*remote.secret_values())
    workspace.mkdir(parents=True, exist_ok=True)
    if any(workspace.iterdir()) and not (workspace / ".git").exists():
        raise CheckoutError(f"workspace {workspace} is not empty")
    g = open_clone(workspace, remote, redactor, driver=_Git, reuse=False)
    if branch == DEFAULT_BRANCH:
        branch = remote_default_branch(g)
    wanted = ref if ref is not None else branch
    assert wanted is not None
    sha, shallow, ref_branch = _fetch_ref(g, wanted, depth)
    if branch is None:
        branch = ref_branch
    elif ref_branch != branch:
        verify_on_branch(g, sha, branch, ref=ref)
    g("checkout", "--quiet", "--detach", sha)
    head = g.repo.commit(sha)

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
        ref=wanted,
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
