"""gitops: a deploy is a commit to the manifests repository, a rollback a revert of it.

:func:`bump_image` points one application in one environment at a new image digest
and pushes that as a commit; :func:`revert_bump` undoes such a commit with a
``git revert`` commit, so a later sync never re-applies the bad release.

**Edits touch the image and nothing else.** Files are parsed with ruamel.yaml's
round-trip composer (``YAML(typ="rt")``), which knows where every scalar starts
and ends in the text and how it was quoted; the new value is spliced into exactly
that span, in the same quote style. A full round-trip *dump* was measured to
rewrite what people care about in real manifests (a comment and ``---`` before
the first document dropped, indentless sequences re-indented, blank lines
between documents and ``~`` nulls removed), so the dump is used only where a
splice cannot express the edit (a kustomize ``images:`` entry written in flow
style). Either way the result is parsed again and must equal the original with
just the intended values changed, or nothing is written.

- plain manifests: every container (and init container) of a Deployment,
  StatefulSet, DaemonSet or Argo Rollout under the environment's folder whose
  image repository is the new image's repository, or whose name is the app,
  gets the new ``repository@sha256:...``; multi-document files are fine.
- kustomize: the overlay's ``images:`` entry for the app gets ``newName`` and
  ``digest``; a ``newTag`` is replaced by the digest (kustomize prefers the
  digest, and a tag left behind would only mislead a reader).

**Concurrent bumps never lose an update.** A push is fast-forward only. When the
remote moved (``[rejected]``, or receive-pack losing the ref-lock race), the
clone fetches, resets to the new remote head and *re-applies the edit there*
rather than replaying a patch: the edit is a pure function of (app, environment,
image), so this is a rebase that cannot conflict with unrelated changes to
neighbouring lines (two apps' entries in one kustomization.yaml, for instance).
The one real conflict -- another bump of the same app and environment -- is
decided by build number, read from the ``Slipway-Build`` trailer of the latest
commit for that app and environment: a newer build already there makes this bump
a no-op that says so; otherwise this bump is applied on top. The check runs on
every attempt, the first included, so the highest build wins whatever the
timing. Attempts: :data:`PUSH_ATTEMPTS` (10), waiting ``0.2 s x 2^(n-1)``
(capped at 5 s) times a random factor in [0.5, 1.5) between them; when they run
out, :class:`PushContention` (temporary: the task retries it).

**Idempotent.** An image already in place is a no-op: no commit, no push.
Reverting a commit that was already reverted is a no-op too.

Commit messages name the app, environment, image, source commit, pipeline run,
build and approver, and end in git trailers (``Slipway-App``,
``Slipway-Environment``, ``Slipway-Build``, ``Slipway-Image``,
``Slipway-Source-Commit``, ``Slipway-Source-Commit-Time`` when the caller knows it
(the source commit's committer date, ISO 8601: what DORA lead time counts from, so the
deploy record answers it without the app repository), ``Slipway-Run``,
``Slipway-Approver``; reverts carry
``Slipway-Reverts``, ``Slipway-Reverted-Build``, ``Slipway-Reverted-Image`` and
``Slipway-Reason``), which :func:`parse_trailers` reads back.

git runs through GitPython with the block's :meth:`~slipway.blocks.git.GitRemote.git_env`
(credentials as an ``http.extraHeader`` in the environment: never in a URL, an
argv, ``.git/config`` or a log) and with errors translated once, by checkout's
``_Git``. Commit messages go to git in a file, paths after ``--``, pathspecs
literally; nothing reaches a shell.
"""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import git
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from slipway.blocks.gitops import EnvironmentManifests, ManifestsRepository
from slipway.exceptions import (
    CheckoutError,
    ConfigError,
    ManifestRepoError,
    PushContention,
    RevertConflict,
    UnsafeInputError,
    retry_temporary_errors,
)
from slipway.redact import Redactor
from slipway.safe_yaml import MANIFEST_LIMITS, YamlProblem, check_events
from slipway.spec_types import NAME_PATTERN
from slipway.tasks.checkout import (
    SHA_RE,
    _Git,
    open_clone,
    remote_default_branch,
    validate_ref,
)
from slipway.tasks.images import REVISION_RE, split_digest_ref
from slipway.workspace import inside

Log = Callable[[str], None]

PUSH_ATTEMPTS = 10
RETRY_DELAY_SECONDS = 0.2
MAX_RETRY_DELAY_SECONDS = 5.0
# How far back the latest bump of an app/environment is looked for (commits that
# touched the environment's folder, newest first).
HISTORY_SCAN_LIMIT = 1000

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Rollout")
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

TRAILER_APP = "Slipway-App"
TRAILER_ENVIRONMENT = "Slipway-Environment"
TRAILER_BUILD = "Slipway-Build"
TRAILER_IMAGE = "Slipway-Image"
TRAILER_SOURCE_COMMIT = "Slipway-Source-Commit"
TRAILER_SOURCE_COMMIT_TIME = "Slipway-Source-Commit-Time"
TRAILER_RUN = "Slipway-Run"
TRAILER_APPROVER = "Slipway-Approver"
TRAILER_REVERTS = "Slipway-Reverts"
TRAILER_REVERTED_BUILD = "Slipway-Reverted-Build"
TRAILER_REVERTED_IMAGE = "Slipway-Reverted-Image"
TRAILER_REASON = "Slipway-Reason"

_APP_RE = re.compile(NAME_PATTERN)
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# a newline in a trailer value would forge the next trailer
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_TRAILER_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*):[ \t]*(.*)$")
# receive-pack lost the race for the ref: the same as a client-side [rejected]
_LOST_RACE = ("failed to update ref", "cannot lock ref", "incorrect old value", "but expected")
_MAX_IMAGE_LENGTH = 400


# ----------------------------------------------------------------------------- errors
# These belong in slipway/exceptions.py's tree (PermanentError / TemporaryError
# branches); they live here until that module is next edited.


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BumpResult:
    """What a bump or revert did.

    ``changed`` is False for a no-op: the image was already in place, a newer build
    of the same app and environment was already there (``superseded_by`` holds its
    build number), or the commit was already reverted. ``note`` says which.
    """

    commit_sha: str
    changed: bool
    files: tuple[str, ...]
    previous_image: str | None
    attempts: int
    superseded_by: int | None = None
    note: str = ""


@dataclass(frozen=True)
class _Bump:
    """A validated bump request."""

    app: str
    environment: str
    image: str
    repository: str
    digest: str
    source_commit: str
    run_id: str
    build_number: int
    approver: str | None
    source_commit_time: str | None = None


# ----------------------------------------------------------------------------- validation


def validate_digest_image(image: str) -> tuple[str, str]:
    """``[host[:port]/]name@sha256:<64 hex>`` -> ``(repository, digest)``; tags are refused.

    A deploy by tag could move under the cluster's feet; a digest cannot.
    """
    if not isinstance(image, str) or len(image) > _MAX_IMAGE_LENGTH:
        raise UnsafeInputError(f"invalid image reference {str(image)[:80]!r}: too long")
    try:
        return split_digest_ref(image)
    except UnsafeInputError:
        raise UnsafeInputError(
            f"invalid image reference {image!r}: expected registry/name@sha256:<64 hex digits> "
            "(lowercase repository, no tag, nothing else)"
        ) from None


def _validate_bump(
    app: str,
    environment: str,
    image: str,
    source_commit: str,
    run_id: str,
    build_number: int,
    approver: str | None,
    source_commit_time: datetime | str | None = None,
) -> _Bump:
    if not isinstance(app, str) or not _APP_RE.match(app):
        raise UnsafeInputError(f"invalid app name {app!r}: letters, digits, '.', '_', '-'")
    repository, digest = validate_digest_image(image)
    if not isinstance(source_commit, str) or not REVISION_RE.match(source_commit):
        raise UnsafeInputError(f"invalid source commit {source_commit!r}: 7-64 lowercase hex")
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise UnsafeInputError(f"invalid pipeline run id {run_id!r}")
    if isinstance(build_number, bool) or not isinstance(build_number, int) or build_number < 1:
        raise ConfigError(f"build number must be a positive integer, got {build_number!r}")
    if approver is not None:
        approver = approver.strip()
        if not approver or len(approver) > 200 or _CONTROL.search(approver):
            raise UnsafeInputError(
                f"invalid approver {approver[:80]!r}: 1-200 characters, no control characters"
            )
    return _Bump(
        app,
        environment,
        image,
        repository,
        digest,
        source_commit,
        run_id,
        build_number,
        approver,
        _commit_time(source_commit_time),
    )


def _commit_time(value: datetime | str | None) -> str | None:
    """An aware datetime (or its ISO 8601 text) -> ISO 8601 text, seconds precision."""
    if value is None:
        return None
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise UnsafeInputError(
            f"invalid source commit time {str(value)[:80]!r}: ISO 8601 with a UTC offset"
        ) from None
    if when.tzinfo is None:
        raise UnsafeInputError(f"source commit time {when.isoformat()!r} has no UTC offset")
    return when.isoformat(timespec="seconds")


def _environment(repo: ManifestsRepository, environment: str) -> EnvironmentManifests:
    try:
        return repo.environments[environment]
    except (KeyError, TypeError):
        known = ", ".join(sorted(repo.environments)) or "none"
        raise ConfigError(
            f"environment {environment!r} is not in the manifests repository block (known: {known})"
        ) from None


# ----------------------------------------------------------------------------- trailers


def parse_trailers(message: str) -> dict[str, str]:
    """The ``Key: value`` lines of a commit message's last paragraph (git trailers).

    Empty when the last paragraph holds anything that is not a trailer, as git's own
    ``interpret-trailers`` would read a message slipway wrote.
    """
    paragraphs = re.split(r"\n[ \t]*\n", message.strip())
    lines = [line for line in paragraphs[-1].splitlines() if line.strip()]
    trailers: dict[str, str] = {}
    for line in lines:
        match = _TRAILER_LINE.match(line)
        if match is None:
            return {}
        trailers.setdefault(match.group(1), match.group(2).strip())
    return trailers


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(_CONTROL.sub(" ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _bump_message(bump: _Bump, previous: str | None) -> str:
    short_digest = bump.digest.removeprefix("sha256:")[:12]
    lines = [
        f"{bump.app}: deploy build {bump.build_number} to {bump.environment} ({short_digest})",
        "",
        f"Image:          {bump.image}",
        f"Previous image: {previous or 'none'}",
        f"Source commit:  {bump.source_commit}",
        f"Pipeline run:   {bump.run_id} (build {bump.build_number})",
    ]
    if bump.approver:
        lines.append(f"Approved by:    {bump.approver}")
    lines += [
        "",
        f"{TRAILER_APP}: {bump.app}",
        f"{TRAILER_ENVIRONMENT}: {bump.environment}",
        f"{TRAILER_BUILD}: {bump.build_number}",
        f"{TRAILER_IMAGE}: {bump.image}",
        f"{TRAILER_SOURCE_COMMIT}: {bump.source_commit}",
    ]
    if bump.source_commit_time:
        lines.append(f"{TRAILER_SOURCE_COMMIT_TIME}: {bump.source_commit_time}")
    lines += [
        f"{TRAILER_RUN}: {bump.run_id}",
    ]
    if bump.approver:
        lines.append(f"{TRAILER_APPROVER}: {bump.approver}")
    return "\n".join(lines) + "\n"


def _revert_message(sha: str, reverted: dict[str, str], reason: str) -> str:
    app, environment = reverted.get(TRAILER_APP), reverted.get(TRAILER_ENVIRONMENT)
    build, image = reverted.get(TRAILER_BUILD), reverted.get(TRAILER_IMAGE)
    if app and environment:
        what = f"{app} build {build}" if build else app
        subject = f"Revert {what} in {environment}: {_one_line(reason, 60)}"
    else:
        subject = f"Revert {sha[:12]}: {_one_line(reason, 60)}"
    lines = [subject, "", f"This reverts commit {sha}."]
    if image:
        lines.append(f"It deployed {image}.")
    lines += ["", "Why: " + reason.strip(), ""]
    if app and environment:
        lines += [f"{TRAILER_APP}: {app}", f"{TRAILER_ENVIRONMENT}: {environment}"]
    lines.append(f"{TRAILER_REVERTS}: {sha}")
    if build:
        lines.append(f"{TRAILER_REVERTED_BUILD}: {build}")
    if image:
        lines.append(f"{TRAILER_REVERTED_IMAGE}: {image}")
    lines.append(f"{TRAILER_REASON}: {_one_line(reason, 200)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- git


class _ManifestGit(_Git):
    """checkout's git driver, with an identity, a pinned config, and its own error class."""

    def __init__(self, repo: git.Repo, remote: ManifestsRepository, redactor: Redactor) -> None:
        super().__init__(repo, remote, redactor)
        env = dict(self.env)
        # Pinned so the machine's config (signing, hooks, line endings) cannot change
        # what is committed; appended after the credentials header, if any.
        settings = {
            "commit.gpgSign": "false",
            "core.hooksPath": os.devnull,
            "core.autocrlf": "false",
            "gc.auto": "0",
        }
        count = int(env.get("GIT_CONFIG_COUNT", "0"))
        for i, (key, value) in enumerate(settings.items(), start=count):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        env["GIT_CONFIG_COUNT"] = str(count + len(settings))
        env["GIT_LITERAL_PATHSPECS"] = "1"  # a folder named ':(top)' is a folder
        for role in ("AUTHOR", "COMMITTER"):
            env[f"GIT_{role}_NAME"] = remote.author_name
            env[f"GIT_{role}_EMAIL"] = remote.author_email
        self.env = env

    def translate(self, exc: git.GitCommandError) -> Exception:
        error = super().translate(exc)
        if type(error) is CheckoutError:
            return ManifestRepoError(f"manifests repository: {error}")
        return error

    def failure(self, args: Sequence[str], status: int, out: str, err: str) -> Exception:
        return self.translate(git.GitCommandError(["git", *args], status, err, out))


def _open_clone(
    repo: ManifestsRepository, workdir: Path, redactor: Redactor, log: Log | None = None
) -> _ManifestGit:
    """A clone in ``workdir``: made there if empty, reused if it is a healthy clone of this
    repository (a task retry, the next sync), replaced if an earlier failure broke it."""
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()) and not (workdir / ".git").exists():
        raise ConfigError(f"workdir {workdir} is neither empty nor a clone of the manifests repo")
    return open_clone(workdir, repo, redactor, driver=_ManifestGit, reuse=True, log=log)


def _check_branch(repo: ManifestsRepository) -> None:
    """Refuse a branch git would refuse before any git call (None: the remote's default)."""
    if repo.branch is not None:
        validate_ref(repo.branch)


def _branch(g: _ManifestGit, repo: ManifestsRepository) -> str:
    """The block's branch, else the remote's default branch (what its HEAD names)."""
    return repo.branch if repo.branch is not None else remote_default_branch(g)


def _sync(g: _ManifestGit, branch: str) -> str:
    """Fetch the branch and make the work tree exactly its head; return that SHA."""
    tracking = f"refs/remotes/origin/{branch}"
    g.status("revert", "--quit")  # a revert abandoned by an earlier attempt
    g("fetch", "--quiet", "--no-tags", "origin", f"+refs/heads/{branch}:{tracking}")
    g("checkout", "--quiet", "--force", "-B", branch, tracking)
    g("reset", "--quiet", "--hard", tracking)
    g("clean", "-ffdxq")
    return g("rev-parse", "HEAD")


def _commit(g: _ManifestGit, files: Sequence[str], message: str) -> str:
    """Commit ``files`` with ``message`` (given in a file: no argv, no shell)."""
    message_file = Path(g.repo.git_dir) / "SLIPWAY_COMMIT_MSG"
    message_file.write_text(message, encoding="utf-8")
    if files:
        g("add", "--", *files)
    # whitespace cleanup only: the default would drop a reason line starting with '#'
    g("commit", "--quiet", "--no-verify", "--cleanup=whitespace", f"--file={message_file}")
    return g("rev-parse", "HEAD")


def _push(g: _ManifestGit, branch: str) -> str | None:
    """Fast-forward push; None when it landed, else why another pusher got there first."""
    args = ("push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}")
    status, out, err = g.status(*args)
    if status == 0:
        return None
    for line in out.splitlines():
        if not line.startswith("!"):
            continue
        summary = g.redactor.redact(line.rsplit("\t", 1)[-1].strip())
        lowered = summary.lower()
        if lowered.startswith("[rejected]") or (
            lowered.startswith("[remote rejected]") and any(s in lowered for s in _LOST_RACE)
        ):
            return summary
        raise ManifestRepoError(f"manifests repository: push to {branch} refused: {summary}")
    raise g.failure(args, status, out, err)


def _backoff(attempt: int, base: float) -> float:
    """Exponential with jitter, so racing pushers spread out instead of colliding again."""
    return min(MAX_RETRY_DELAY_SECONDS, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def _history(
    g: _ManifestGit, revision_range: str, paths: Sequence[str] = ()
) -> Iterator[tuple[str, str]]:
    """(sha, message) newest first, only commits touching ``paths`` when some are given."""
    args = ["log", f"--max-count={HISTORY_SCAN_LIMIT}", "-z", "--format=%H%n%B", revision_range]
    if paths:
        args += ["--", *paths]
    for record in g(*args).split("\0"):
        sha, _, message = record.strip("\n").partition("\n")
        if SHA_RE.match(sha):
            yield sha, message


def _latest_bump(
    g: _ManifestGit, app: str, environment: str, path: str
) -> tuple[str, dict[str, str]] | None:
    """The newest commit that bumped or reverted this app in this environment."""
    for sha, message in _history(g, "HEAD", [path]):
        trailers = parse_trailers(message)
        if trailers.get(TRAILER_APP) == app and trailers.get(TRAILER_ENVIRONMENT) == environment:
            return sha, trailers
    return None


# ----------------------------------------------------------------------------- YAML edits


class _NotInPlace(Exception):
    """The edit cannot be spliced into the text (flow style, a multi-line scalar)."""


_DELETE = object()  # an edit operation's value: remove the key

# (path inside the document, new value or _DELETE)
_Op = tuple[tuple[str | int, ...], Any]


@dataclass(frozen=True)
class _FileEdit:
    rel: str
    path: Path
    new_text: str


@dataclass(frozen=True)
class _Plan:
    edits: tuple[_FileEdit, ...]  # only files whose text changes
    previous_image: str | None


def _read_text(path: Path, rel: str) -> str:
    # bytes, not read_text(): universal newlines would turn CRLF files into LF ones
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{rel} is not UTF-8 text") from None


def _compose(text: str, rel: str) -> list[Node]:
    try:
        check_events(YAML(typ="rt").parse(text), MANIFEST_LIMITS)  # bombs, deep nesting
        return list(YAML(typ="rt").compose_all(text))
    except (YAMLError, YamlProblem) as exc:
        raise ConfigError(f"{rel} is not valid YAML: {_one_line(str(exc), 200)}") from None


def _load(text: str, rel: str) -> list[Any]:
    try:
        check_events(YAML(typ="safe", pure=True).parse(text), MANIFEST_LIMITS)
        return list(YAML(typ="safe", pure=True).load_all(text))
    except (YAMLError, YamlProblem) as exc:
        raise ConfigError(f"{rel} is not valid YAML: {_one_line(str(exc), 200)}") from None


def _get(node: Node | None, key: str) -> Node | None:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return v
    return None


def _text(node: Node | None) -> str | None:
    return node.value if isinstance(node, ScalarNode) and isinstance(node.value, str) else None


def _image_repository(reference: str) -> str:
    """``host/name:tag@sha256:...`` -> ``host/name``; read from manifests, so lenient."""
    name = reference.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return name


def _replace_scalar(text: str, node: ScalarNode, value: str) -> tuple[int, int, str]:
    """The splice that puts ``value`` where ``node`` is, quoted as it was."""
    quote = {None: "", "'": "'", '"': '"'}.get(node.style)
    start, end = node.start_mark.index, node.end_mark.index
    if quote is None or text[start:end] != f"{quote}{node.value}{quote}":
        raise _NotInPlace(f"line {node.start_mark.line + 1} is a multi-line or escaped scalar")
    return start, end, f"{quote}{value}{quote}"


def _splice(text: str, splices: Iterable[tuple[int, int, str]]) -> str:
    previous_start = len(text) + 1
    for start, end, replacement in sorted(splices, key=lambda s: s[0], reverse=True):
        if end > previous_start:
            raise _NotInPlace("overlapping edits")
        text = text[:start] + replacement + text[end:]
        previous_start = start
    return text


def _apply(document: Any, path: tuple[str | int, ...], value: Any) -> None:
    target = document
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


def _verify(old_text: str, new_text: str, ops: Sequence[tuple[int, _Op]], rel: str) -> None:
    """The new text must parse to the old documents with only ``ops`` applied."""
    expected = _load(old_text, rel)
    for index, (path, value) in ops:
        _apply(expected[index], path, value)
    if _load(new_text, rel) != expected:
        raise ConfigError(f"{rel}: the edit would change more than the image; nothing written")


def _manifest_files(root: Path, base: Path, log: Log) -> list[Path]:
    """YAML files under ``base``, sorted; symlinks leading out of the repository refused."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if name == ".git":
                dirnames.remove(name)
            elif (here / name).is_symlink():
                inside(root, str((here / name).relative_to(root)))  # raises if it leads out
                log(f"skipping symlinked folder {(here / name).relative_to(root)}")
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if not name.endswith((".yaml", ".yml")):
                continue
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                inside(root, rel)  # raises UnsafeInputError if it leads out
                # editing through it could change another environment's file
                log(f"skipping symlinked file {rel}")
                continue
            found.append(path)
    return found


def _container_images(
    docs: Sequence[Node], bump: _Bump
) -> Iterator[tuple[int, tuple[str | int, ...], ScalarNode]]:
    """Every container image of the app in the workload documents of one file."""
    seen: set[int] = set()
    for index, doc in enumerate(docs):
        if _text(_get(doc, "kind")) not in WORKLOAD_KINDS:
            continue
        pod = _get(_get(_get(doc, "spec"), "template"), "spec")
        for list_key in ("containers", "initContainers"):
            containers = _get(pod, list_key)
            if not isinstance(containers, SequenceNode):
                continue
            for position, container in enumerate(containers.value):
                image = _get(container, "image")
                if not isinstance(image, ScalarNode) or id(image) in seen:
                    continue
                name = _text(_get(container, "name"))
                if _image_repository(str(image.value)) == bump.repository or name == bump.app:
                    seen.add(id(image))  # an alias shared by two containers: one edit
                    yield index, ("spec", "template", "spec", list_key, position, "image"), image


def _plan_plain(root: Path, base: Path, bump: _Bump, log: Log) -> _Plan:
    searched: list[str] = []
    edits: list[_FileEdit] = []
    previous: str | None = None
    for path in _manifest_files(root, base, log):
        rel = path.relative_to(root).as_posix()
        searched.append(rel)
        text = _read_text(path, rel)
        hits = list(_container_images(_compose(text, rel), bump))
        if not hits:
            continue
        previous = previous or str(hits[0][2].value)
        stale = [(index, p, node) for index, p, node in hits if node.value != bump.image]
        if not stale:
            continue
        try:
            new_text = _splice(
                text, [_replace_scalar(text, node, bump.image) for *_, node in stale]
            )
        except _NotInPlace as exc:
            raise ConfigError(f"{rel}: cannot edit the image in place ({exc})") from None
        _verify(text, new_text, [(index, (p, bump.image)) for index, p, _ in stale], rel)
        edits.append(_FileEdit(rel, path, new_text))
    if previous is None:
        kinds = ", ".join(WORKLOAD_KINDS)
        raise ConfigError(
            f"no container of app {bump.app!r} (image repository {bump.repository!r} or "
            f"container name {bump.app!r}) in a {kinds} under "
            f"{base.relative_to(root).as_posix() or '.'}; searched: "
            f"{', '.join(searched) or 'no YAML files there'}"
        )
    return _Plan(tuple(edits), previous)


def _kustomization(root: Path, base: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = base / name
        if candidate.is_symlink():
            rel = candidate.relative_to(root).as_posix()
            inside(root, rel)  # raises if it leads out of the repository
            raise ConfigError(f"{rel} is a symlink; the bump edits only real files")
        if candidate.is_file():
            return candidate
    names = ", ".join(KUSTOMIZATION_FILES)
    raise ConfigError(f"no kustomization file ({names}) in {base.relative_to(root).as_posix()}")


def _entry_image(entry: Node) -> str:
    name = _text(_get(entry, "newName")) or _text(_get(entry, "name")) or ""
    digest, tag = _text(_get(entry, "digest")), _text(_get(entry, "newTag"))
    return f"{name}@{digest}" if digest else f"{name}:{tag}" if tag else name


def _entry_matches(entries: Sequence[tuple[int, MappingNode]], bump: _Bump) -> list[int]:
    """Entries naming the image's repository; else entries whose name ends in the app."""
    exact = [
        i
        for i, entry in entries
        if bump.repository in (_text(_get(entry, "name")), _text(_get(entry, "newName")))
    ]
    if exact:
        return exact
    return [
        i
        for i, entry in entries
        if _image_repository(_text(_get(entry, "name")) or "").rsplit("/", 1)[-1] == bump.app
    ]


def _entry_ops(entry: Node, bump: _Bump) -> list[tuple[str, Any]]:
    """What must change in one ``images:`` entry; empty when it already points at the image."""
    ops: list[tuple[str, Any]] = []
    new_name = _text(_get(entry, "newName"))
    if (new_name is not None or _text(_get(entry, "name")) != bump.repository) and (
        new_name != bump.repository
    ):
        ops.append(("newName", bump.repository))
    if _text(_get(entry, "digest")) != bump.digest:
        ops.append(("digest", bump.digest))
    if _get(entry, "newTag") is not None:
        ops.append(("newTag", _DELETE))
    return ops


def _line_end(text: str, index: int) -> int:
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _entry_splices(
    text: str, entry: MappingNode, ops: Sequence[tuple[str, Any]]
) -> list[tuple[int, int, str]]:
    """Splices for one block-style entry: values replaced, keys added or removed by line."""
    if entry.flow_style or not entry.value:
        raise _NotInPlace("flow-style entry")
    pairs = {k.value: (k, v) for k, v in entry.value if isinstance(k, ScalarNode)}
    indent = " " * entry.value[0][0].start_mark.column
    newline = "\r\n" if "\r\n" in text else "\n"
    splices: list[tuple[int, int, str]] = []
    inserts: list[str] = []
    tag = pairs.get("newTag")
    tag_reused = False
    for key, value in ops:
        if value is _DELETE:
            continue
        if key in pairs:
            splices.append(_replace_scalar(text, pairs[key][1], value))
        elif key == "digest" and tag is not None and "digest" not in pairs:
            # `newTag: latest` becomes `digest: sha256:...` on its own line, comment kept
            _replace_scalar(text, tag[1], "")  # only checks the value is a one-line scalar
            splices.append((tag[0].start_mark.index, tag[1].end_mark.index, f"digest: {value}"))
            tag_reused = True
        else:
            inserts.append(f"{indent}{key}: {value}{newline}")
    if tag is not None and not tag_reused:
        key_node, value_node = tag
        start = text.rfind("\n", 0, key_node.start_mark.index) + 1
        end = _line_end(text, value_node.end_mark.index)
        rest = text[value_node.end_mark.index : end].strip()
        if text[start : key_node.start_mark.index].strip() or (rest and not rest.startswith("#")):
            raise _NotInPlace("newTag shares its line with other keys")
        splices.append((start, end, ""))
    if inserts:
        anchor = (pairs.get("newName") or pairs.get("name") or pairs[next(iter(pairs))])[1]
        position = _line_end(text, anchor.end_mark.index)
        lead = newline if position == len(text) and not text.endswith("\n") else ""
        splices.append((position, position, lead + "".join(inserts)))
    return splices


def _dump_edit(text: str, changes: dict[int, list[tuple[str, Any]]]) -> str:
    """The full round-trip for what a splice cannot express (flow-style entries)."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout of the example's manifests
    data = yaml.load(text)
    for index, ops in changes.items():
        entry = data["images"][index]
        for key, value in ops:
            if value is _DELETE:
                entry.pop(key, None)
            elif key in entry:
                entry[key] = value
            else:
                # after newName (or name): ops come as newName, digest
                keys = list(entry)
                after = max((keys.index(k) for k in ("name", "newName") if k in keys), default=-1)
                entry.insert(after + 1, key, value)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _plan_kustomize(root: Path, base: Path, bump: _Bump) -> _Plan:
    path = _kustomization(root, base)
    rel = path.relative_to(root).as_posix()
    text = _read_text(path, rel)
    docs = _compose(text, rel)
    images = _get(docs[0] if docs else None, "images")
    entries = (
        [(i, e) for i, e in enumerate(images.value) if isinstance(e, MappingNode)]
        if isinstance(images, SequenceNode)
        else []
    )
    matched = _entry_matches(entries, bump)
    if not matched:
        raise ConfigError(
            f"no `images:` entry for app {bump.app!r} (name {bump.repository!r}, or a name "
            f"ending in '/{bump.app}') in {rel}; searched: {rel}"
        )
    by_index = dict(entries)
    previous = _entry_image(by_index[matched[0]])
    changes = {i: ops for i in matched if (ops := _entry_ops(by_index[i], bump))}
    if not changes:
        return _Plan((), previous)
    try:
        splices = [s for i, ops in changes.items() for s in _entry_splices(text, by_index[i], ops)]
        new_text = _splice(text, splices)
    except _NotInPlace:
        new_text = _dump_edit(text, changes)
    verify_ops = [
        (0, (("images", i, key), value)) for i, ops in changes.items() for key, value in ops
    ]
    _verify(text, new_text, verify_ops, rel)
    return _Plan((_FileEdit(rel, path, new_text),), previous)


def _plan(root: Path, target: EnvironmentManifests, bump: _Bump, branch: str, log: Log) -> _Plan:
    base = inside(root, target.path)  # after symlinks: UnsafeInputError if it leads out
    if not base.is_dir():
        raise ConfigError(
            f"folder {target.path!r} of environment {bump.environment!r} does not exist "
            f"on branch {branch}"
        )
    if target.kind == "kustomize":
        return _plan_kustomize(root, base, bump)
    return _plan_plain(root, base, bump, log)


# ----------------------------------------------------------------------------- bump / revert


def _redacting(log: Log | None, redactor: Redactor) -> Log:
    if log is None:
        return lambda _line: None
    sink = log
    return lambda line: sink(redactor.redact(line))


def bump_image(
    repo: ManifestsRepository,
    *,
    app: str,
    environment: str,
    image: str,
    source_commit: str,
    run_id: str,
    build_number: int,
    approver: str | None = None,
    source_commit_time: datetime | str | None = None,
    workdir: Path,
    redactor: Redactor | None = None,
    log: Log | None = None,
    max_attempts: int = PUSH_ATTEMPTS,
    retry_delay: float = RETRY_DELAY_SECONDS,
) -> BumpResult:
    """Point ``app`` in ``environment`` at ``image`` (by digest) and push that as a commit.

    ``workdir`` is an empty folder for the clone (or the clone an earlier attempt left).
    Raises :class:`ConfigError` for an unknown environment or no matching container or
    ``images:`` entry, :class:`UnsafeInputError` for a bad image, name or path,
    :class:`ManifestRepoError` when git refuses, :class:`PushContention` when every
    attempt lost the race to other pushers.

    Example:
        ```python
        result = bump_image(
            ManifestsRepository.load("manifests"), app="example-app", environment="staging",
            image="registry.example.com/example-app@sha256:" + "ab" * 32,
            source_commit=checkout.sha, run_id=str(flow_run.id), build_number=42,
            workdir=Path("/ws/manifests"), redactor=redactor, log=print,
        )
        ```
    """
    target = _environment(repo, environment)
    bump = _validate_bump(
        app, environment, image, source_commit, run_id, build_number, approver, source_commit_time
    )
    _check_branch(repo)
    redactor = redactor or Redactor()
    redactor.add(*repo.secret_values())
    log = _redacting(log, redactor)
    g = _open_clone(repo, workdir, redactor, log)
    branch = _branch(g, repo)
    root = workdir.resolve()
    log(f"bumping {app} in {environment} to {image} (build {build_number}) on {branch}")
    for attempt in range(1, max_attempts + 1):
        head = _sync(g, branch)
        plan = _plan(root, target, bump, branch, log)
        if not plan.edits:
            note = f"{image} is already in place for {app} in {environment}"
            log(f"{note}; nothing to commit")
            return BumpResult(head, False, (), plan.previous_image, attempt, note=note)
        latest = _latest_bump(g, app, environment, target.path)
        if latest is not None and TRAILER_REVERTS not in latest[1]:
            their_build = latest[1].get(TRAILER_BUILD, "")
            if their_build.isdigit() and int(their_build) > build_number:
                note = (
                    f"build {their_build} of {app} is already in {environment} "
                    f"(commit {latest[0][:12]}); build {build_number} is older and not applied"
                )
                log(note)
                return BumpResult(
                    head,
                    False,
                    (),
                    plan.previous_image,
                    attempt,
                    superseded_by=int(their_build),
                    note=note,
                )
        for edit in plan.edits:
            edit.path.write_bytes(edit.new_text.encode("utf-8"))
        files = tuple(edit.rel for edit in plan.edits)
        sha = _commit(g, files, _bump_message(bump, plan.previous_image))
        rejected = _push(g, branch)
        if rejected is None:
            note = f"{app} in {environment}: {plan.previous_image} -> {image}"
            log(f"pushed {sha[:12]} to {branch}: {note} ({', '.join(files)})")
            return BumpResult(sha, True, files, plan.previous_image, attempt, note=note)
        if attempt < max_attempts:
            wait = _backoff(attempt, retry_delay)
            log(
                f"push rejected ({rejected}): another change landed first; fetching and "
                f"re-applying in {wait:.2f} s (attempt {attempt + 1}/{max_attempts})"
            )
            time.sleep(wait)
    raise PushContention(
        f"bump of {app} in {environment}: the push lost to other pushers {max_attempts} times"
    )


def _already_reverted(g: _ManifestGit, sha: str) -> str | None:
    for candidate, message in _history(g, f"{sha}..HEAD"):
        trailers = parse_trailers(message)
        if trailers.get(TRAILER_REVERTS) == sha or f"This reverts commit {sha}" in message:
            return candidate
    return None


def _check_revertable(g: _ManifestGit, sha: str, branch: str) -> None:
    status, _out, _err = g.status("merge-base", "--is-ancestor", sha, "HEAD")
    if status == 1:
        raise ConfigError(f"commit {sha} is not on branch {branch} of the manifests repository")
    if status != 0:
        raise ConfigError(f"commit {sha} does not exist in the manifests repository")
    if len(g("rev-list", "--parents", "--max-count=1", sha).split()) > 2:
        raise ConfigError(f"commit {sha} is a merge; slipway reverts only its own bump commits")


def revert_bump(
    repo: ManifestsRepository,
    *,
    commit_sha: str,
    reason: str,
    workdir: Path,
    redactor: Redactor | None = None,
    log: Log | None = None,
    max_attempts: int = PUSH_ATTEMPTS,
    retry_delay: float = RETRY_DELAY_SECONDS,
) -> BumpResult:
    """Undo ``commit_sha`` with a ``git revert`` commit saying why, and push it.

    Works when later commits changed other lines; when they changed the same lines
    (a later bump of the same app and environment) it raises :class:`RevertConflict`
    naming the files and commits in the way, and nothing is pushed. A commit already
    reverted is a no-op. ``previous_image`` is the image the reverted commit deployed.
    """
    if not isinstance(commit_sha, str) or not SHA_RE.match(commit_sha):
        raise UnsafeInputError(f"not a full commit SHA: {str(commit_sha)[:80]!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("a revert needs a reason; it is empty")
    reason = "\n".join(_CONTROL.sub(" ", line) for line in reason.strip().splitlines())[:2000]
    _check_branch(repo)
    redactor = redactor or Redactor()
    redactor.add(*repo.secret_values())
    log = _redacting(log, redactor)
    g = _open_clone(repo, workdir, redactor, log)
    branch = _branch(g, repo)
    for attempt in range(1, max_attempts + 1):
        head = _sync(g, branch)
        _check_revertable(g, commit_sha, branch)
        reverted = parse_trailers(g("show", "-s", "--format=%B", commit_sha))
        image = reverted.get(TRAILER_IMAGE)
        done = _already_reverted(g, commit_sha)
        if done is not None:
            note = f"commit {commit_sha[:12]} was already reverted by {done[:12]}"
            log(note)
            return BumpResult(head, False, (), image, attempt, note=note)
        status, out, err = g.status("revert", "--no-commit", commit_sha)
        if status != 0:
            unmerged = g("diff", "--name-only", "-z", "--diff-filter=U").split("\0")
            conflicted = [f for f in unmerged if f]
            g.status("revert", "--abort")
            if not conflicted:
                raise g.failure(("revert", "--no-commit", commit_sha), status, out, err)
            later = [sha[:12] for sha, _m in _history(g, f"{commit_sha}..HEAD", conflicted)]
            raise RevertConflict(
                f"reverting {commit_sha[:12]} conflicts with later changes to "
                f"{', '.join(conflicted)} (commits {', '.join(later) or 'unknown'}); "
                "revert those first or fix the manifests by hand"
            )
        files = tuple(f for f in g("diff", "--cached", "--name-only", "-z").split("\0") if f)
        if not files:
            g.status("revert", "--abort")
            note = f"commit {commit_sha[:12]} changes nothing on {branch} any more"
            log(note)
            return BumpResult(head, False, (), image, attempt, note=note)
        sha = _commit(g, (), _revert_message(commit_sha, reverted, reason))
        rejected = _push(g, branch)
        if rejected is None:
            note = f"reverted {commit_sha[:12]} ({', '.join(files)})"
            log(f"pushed {sha[:12]} to {branch}: {note}")
            return BumpResult(sha, True, files, image, attempt, note=note)
        if attempt < max_attempts:
            wait = _backoff(attempt, retry_delay)
            log(
                f"push rejected ({rejected}); fetching and reverting again in {wait:.2f} s "
                f"(attempt {attempt + 1}/{max_attempts})"
            )
            time.sleep(wait)
    raise PushContention(
        f"revert of {commit_sha[:12]}: the push lost to other pushers {max_attempts} times"
    )


def sync_manifests(
    repo: ManifestsRepository, *, workdir: Path, redactor: Redactor | None = None
) -> str:
    """Make ``workdir`` a clone at the branch head (what a deploy renders); return its SHA."""
    _check_branch(repo)
    redactor = redactor or Redactor()
    redactor.add(*repo.secret_values())
    g = _open_clone(repo, workdir, redactor)
    return _sync(g, _branch(g, repo))


def latest_live_bump(
    repo: ManifestsRepository,
    *,
    app: str,
    environment: str,
    workdir: Path,
    redactor: Redactor | None = None,
) -> tuple[str, dict[str, str]] | None:
    """The newest bump of ``app`` in ``environment`` that no revert has undone, with its
    trailers; what a rollback reverts. None when there is none."""
    target = _environment(repo, environment)
    _check_branch(repo)
    redactor = redactor or Redactor()
    redactor.add(*repo.secret_values())
    g = _open_clone(repo, workdir, redactor)
    branch = _branch(g, repo)
    _sync(g, branch)
    reverted: set[str] = set()
    for sha, message in _history(g, "HEAD", [target.path]):
        trailers = parse_trailers(message)
        if trailers.get(TRAILER_APP) != app or trailers.get(TRAILER_ENVIRONMENT) != environment:
            continue
        if TRAILER_REVERTS in trailers:
            reverted.add(trailers[TRAILER_REVERTS])
        elif sha not in reverted:
            return sha, trailers
    return None


# ----------------------------------------------------------------------------- Prefect tasks


@task(
    name="bump_manifest",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_temporary_errors,
    timeout_seconds=600,
    cache_policy=NO_CACHE,  # a bump is a write; its inputs hold the redactor
)
def bump_manifest(
    repo: ManifestsRepository,
    *,
    app: str,
    environment: str,
    image: str,
    source_commit: str,
    run_id: str,
    build_number: int,
    approver: str | None = None,
    source_commit_time: datetime | str | None = None,
    workdir: Path,
    redactor: Redactor | None = None,
) -> BumpResult:
    """Bump the app's image in the manifests repository (see :func:`bump_image`)."""
    return bump_image(
        repo,
        app=app,
        environment=environment,
        image=image,
        source_commit=source_commit,
        run_id=run_id,
        build_number=build_number,
        approver=approver,
        source_commit_time=source_commit_time,
        workdir=workdir,
        redactor=redactor,
        log=get_run_logger().info,
    )


@task(
    name="revert_manifest",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_temporary_errors,
    timeout_seconds=600,
    cache_policy=NO_CACHE,
)
def revert_manifest(
    repo: ManifestsRepository,
    *,
    commit_sha: str,
    reason: str,
    workdir: Path,
    redactor: Redactor | None = None,
) -> BumpResult:
    """Revert a bump commit in the manifests repository (see :func:`revert_bump`)."""
    return revert_bump(
        repo,
        commit_sha=commit_sha,
        reason=reason,
        workdir=workdir,
        redactor=redactor,
        log=get_run_logger().info,
    )
