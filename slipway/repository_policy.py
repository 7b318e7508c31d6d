"""Which repositories a run started from a deployment may build.

Whoever starts a run chooses its ``repository``, and the pipeline file and stage
commands come from that repository: a free URL would let anyone who may start a
deployment's run (the UI, ``prefect deployment run``, an automation) run code of their
choosing on the worker, with the blocks the run names. So a run *of a deployment* may
build only

* a saved ``AppRepository`` block, named by ``repository`` (the default way), or
* the deployment's own ``repository`` default (chosen by whoever deployed it), or
* a URL or path matching ``SLIPWAY_ALLOWED_REPOSITORIES`` in the flow process's
  environment: the worker's own, or ``env`` in the work pool's or the deployment's job
  variables. A run's *own* job variables could set it too (``--job-variable``, the UI's
  custom run), so a run whose job variables name it is refused outright.

A run's parameters are never a source: the starter sets them. ``slipway run`` from a
user's shell (no deployment) is not restricted: that user already runs code there.

Both sides are compared in a normal form, so ``HTTPS://Host/team/x.git/`` is
``https://host/team/x`` and ``https://host/team/../other/x`` is ``https://host/other/x``
(dot segments removed after percent-decoding). Patterns are exact or globs: ``*``
matches within one path segment, ``**`` across segments.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound

from slipway.exceptions import RepositoryNotAllowed

ALLOWLIST_ENV = "SLIPWAY_ALLOWED_REPOSITORIES"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git+ssh": 22, "ssh+git": 22, "git": 9418}
_NETWORK_SCHEMES = frozenset(_DEFAULT_PORTS)
_BLOCK_NAME = re.compile(r"^[^/:]+$")  # the pipeline's rule: no '/' or ':' names a block


def is_block_name(repository: str) -> bool:
    """``repository`` names an AppRepository block rather than a URL or path."""
    return bool(_BLOCK_NAME.match(repository))


def _clean_path(path: str) -> str:
    """Dot segments and repeated slashes gone; no trailing '/', '.git' or '/.git'."""
    path = posixpath.normpath("/" + path.lstrip("/")) if path else "/"
    path = re.sub(r"/+", "/", path).rstrip("/")
    return path.removesuffix(".git").rstrip("/")


def _network_form(scheme: str, user: str | None, host: str, port: int | None, path: str) -> str:
    host = host.lower().rstrip(".")
    if not host:
        raise ValueError("the URL has no host")
    if ":" in host:  # IPv6: keep the brackets urlsplit removed
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    if user and scheme not in ("http", "https"):  # ssh's login name, never a password
        netloc = f"{user}@{netloc}"
    # decoded in full, backslashes as slashes: a server that decodes %2F or %2E%2E
    # must not find a path the pattern never meant
    decoded = unquote(path).replace("\\", "/")
    return f"{scheme}://{netloc}{_clean_path(decoded)}"


def normalise_repository(value: str, *, cwd: str | None = None) -> str:
    """The form a repository URL or path is compared in (see the module docstring).

    Raises:
        ValueError: not a URL or path git can clone that this check understands
            (another scheme or transport, a query or fragment, a remote file:// host).
            The message never repeats the value: it may hold credentials.
    """
    value = value.strip()
    if not value:
        raise ValueError("the repository is empty")
    scheme_match = _SCHEME.match(value)
    if scheme_match:
        scheme = scheme_match.group(1).lower()
        parts = urlsplit(value)
        if parts.query or parts.fragment or value.rstrip().endswith(("?", "#")):
            raise ValueError("a repository URL must not have a query or a fragment")
        if scheme == "file":
            if parts.hostname not in (None, "", "localhost"):
                raise ValueError("a file:// URL must name this machine (no host)")
            return normalise_repository(unquote(parts.path), cwd=cwd)
        if scheme not in _NETWORK_SCHEMES:
            raise ValueError(f"scheme {scheme}:// is not one a repository may use here")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the URL's port is not a number") from None
        return _network_form(scheme, parts.username, parts.hostname or "", port, parts.path)
    if "::" in value.split("/", 1)[0]:
        raise ValueError("git transports (<transport>::<address>) are not allowed here")
    colon = value.find(":")
    # git's scp-like syntax, [user@]host:path, compared as ssh://[user@]host/path (what
    # git hosts serve; a plain ssh server would resolve a relative path in the home)
    if colon > 0 and "/" not in value[:colon]:
        login, _, host = value[:colon].rpartition("@")
        path = value[colon + 1 :]
        return _network_form("ssh", login or None, host, None, path)
    # a local path: absolute against the worker's directory, dot segments resolved
    # lexically (a symlink's target is not followed: the worker's files are the operator's)
    absolute = posixpath.join(cwd or os.getcwd(), value)
    return _clean_path(absolute) or "/"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A normalised glob as a regex: ``**`` crosses '/', ``*`` does not."""
    pieces = re.split(r"(\*\*|\*)", pattern)
    body = "".join(".*" if p == "**" else "[^/]*" if p == "*" else re.escape(p) for p in pieces)
    return re.compile(f"^{body}$")


@dataclass(frozen=True)
class RepositoryAllowlist:
    """Normalised patterns and where they came from (for the refusal's message)."""

    patterns: tuple[str, ...]
    source: str

    @classmethod
    def parse(cls, text: str, *, source: str, cwd: str | None = None) -> RepositoryAllowlist:
        """Comma- or newline-separated URLs, paths and globs; blanks and ``#`` lines skipped.

        Raises:
            ValueError: an entry that is not a URL or path (named by its position).
        """
        entries = [e.strip() for e in re.split(r"[,\n]", text)]
        patterns = []
        for number, entry in enumerate((e for e in entries if e and not e.startswith("#")), 1):
            try:
                patterns.append(normalise_repository(entry, cwd=cwd))
            except ValueError as exc:
                raise ValueError(f"{source}: entry {number}: {exc}") from None
        return cls(tuple(patterns), source)

    def allows(self, normalised: str) -> bool:
        return any(_pattern_regex(p).match(normalised) for p in self.patterns)


def check_repository_allowed(
    repository: str,
    *,
    allowlist: RepositoryAllowlist,
    deployment_default: str | None,
    deployment_name: str,
    cwd: str | None = None,
) -> None:
    """Refuse a URL or path that neither the allowlist nor the deployment's default names.

    Raises:
        RepositoryNotAllowed: with the repository in normal form (no credentials), the
            allowlist's source and contents, and the ways to allow it.
    """
    if is_block_name(repository):
        return
    try:
        wanted = normalise_repository(repository, cwd=cwd)
    except ValueError as exc:
        raise RepositoryNotAllowed(
            f"repository refused for runs of deployment {deployment_name!r}: {exc}"
        ) from None
    if deployment_default and not is_block_name(deployment_default):
        try:
            if normalise_repository(deployment_default, cwd=cwd) == wanted:
                return
        except ValueError:
            pass  # an unusable default allows nothing
    if allowlist.allows(wanted):
        return
    listed = ", ".join(allowlist.patterns) or "empty"
    raise RepositoryNotAllowed(
        f"repository {wanted} is not allowed for runs of deployment {deployment_name!r}: "
        "name a saved AppRepository block instead, or add the URL (or a glob) to "
        f"{ALLOWLIST_ENV} on the worker or in the work pool's / deployment's job variables "
        f"(from {allowlist.source}: {listed})"
    )


def _run_override(job_variables: Mapping[str, Any] | None) -> bool:
    env = (job_variables or {}).get("env")
    return isinstance(env, Mapping) and ALLOWLIST_ENV in env


async def check_deployment_run_repository(repository: str, flow_run: FlowRun | None) -> None:
    """The policy for the running flow run: unrestricted unless it belongs to a deployment.

    Reads the allowlist from this process's environment and the deployment's own
    ``repository`` default from the API; refuses a run whose own job variables set the
    allowlist (its starter chose them).

    Raises:
        RepositoryNotAllowed: see :func:`check_repository_allowed`.
    """
    if flow_run is None or flow_run.deployment_id is None or is_block_name(repository):
        return  # a block is allowed everywhere: nothing to read from the API
    async with get_client() as client:
        try:
            deployment = await client.read_deployment(flow_run.deployment_id)
        except ObjectNotFound:
            raise RepositoryNotAllowed(
                f"the run's deployment {flow_run.deployment_id} no longer exists: its "
                "repository cannot be checked, so the run builds nothing"
            ) from None
        flow = await client.read_flow(deployment.flow_id)
    name = f"{flow.name}/{deployment.name}"
    if _run_override(flow_run.job_variables):
        raise RepositoryNotAllowed(
            f"the run's own job variables set {ALLOWLIST_ENV}; runs of deployment {name!r} "
            "take the allowlist from the worker, the work pool or the deployment only"
        )
    try:
        allowlist = RepositoryAllowlist.parse(
            os.environ.get(ALLOWLIST_ENV, ""), source=f"{ALLOWLIST_ENV} of the worker's process"
        )
    except ValueError as exc:
        raise RepositoryNotAllowed(f"the allowlist is unusable: {exc}") from None
    default = (deployment.parameters or {}).get("repository")
    check_repository_allowed(
        repository,
        allowlist=allowlist,
        deployment_default=default if isinstance(default, str) else None,
        deployment_name=name,
    )
