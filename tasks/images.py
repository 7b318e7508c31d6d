"""Image build and push: the application's container image, addressed by digest.

``build_image`` runs the Dockerfile through the engine's build API (the docker SDK
from prefect-docker's :class:`~prefect_docker.DockerHost`), streams every output
line to the stage log and tags the result twice: ``<repo>:<sha12>`` (what commit)
and ``<repo>:build-<n>`` (which run). OCI labels record the source, revision and
creation time. ``push_image`` pushes those tags to a registry and returns a
:class:`BuiltImage` whose :attr:`~BuiltImage.ref` is ``<registry>/<repo>@sha256:...``:
later stages deploy by digest, never by tag, because a tag can move and a digest
cannot.

Credentials come from prefect-docker's :class:`~prefect_docker.DockerRegistryCredentials`
block; :func:`_auth_config` is the one place its password is unwrapped, and every
registry message passes a :class:`~slipway.redact.Redactor` holding it before it
reaches a log or an exception. Docker errors are translated once, here, into
slipway's tree: network trouble and 5xx answers are retried with exponential
backoff and end as :class:`~slipway.exceptions.RemoteUnavailable`; a refused login,
an unknown host or a denied push fail at once as :class:`RegistryError`.

Names are checked before any docker call: repositories against the reference
grammar (lowercase path components), tags against the tag grammar, revisions as
hex. Nothing reaches a shell: the build context goes to the engine as a tar
stream, build arguments and labels as JSON.

The engine must see the workspace's files only through the context upload, so a
remote engine works for builds (unlike :mod:`slipway.tasks.containers`, which
bind-mounts the workspace).
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import docker
import requests
import urllib3
from docker.models.images import Image
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import Field, field_validator, model_validator

from slipway.exceptions import (
    ConfigError,
    ImageBuildError,
    ImageBuildTimeout,
    RegistryError,
    RemoteUnavailable,
    UnsafeInputError,
)
from slipway.redact import Redactor
from slipway.spec_types import ENV_NAME_PATTERN, NAME_PATTERN, RelPath, StrictModel
from slipway.workspace import inside

Log = Callable[[str], None]

# The distribution reference grammar: lowercase components joined by '/'; separators
# inside a component are '.', '_', '__' or dashes, never at either end.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
REVISION_RE = re.compile(r"^[0-9a-f]{7,64}$")
_HOST_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
REGISTRY_HOST_RE = re.compile(
    rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$"
)
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
MAX_REFERENCE_LENGTH = 255  # docker refuses longer names

OCI_SOURCE = "org.opencontainers.image.source"
OCI_REVISION = "org.opencontainers.image.revision"
OCI_CREATED = "org.opencontainers.image.created"

PUSH_ATTEMPTS = 4
RETRY_DELAY_SECONDS = 1.0

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_STEP = re.compile(r"^Step \d+/\d+ : ")
# Registry and engine messages that a later attempt may not repeat.
_TRANSIENT = (
    "connection refused",
    "connection reset",
    "broken pipe",
    "i/o timeout",
    "timeout",
    "timed out",
    "tls handshake timeout",
    "server misbehaving",  # a DNS server that failed to answer, not a name that is unknown
    "temporary failure",
    "unexpected eof",
    ": eof",
    "500 internal server error",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
    "status: 500",
    "status: 502",
    "status: 503",
    "status: 504",
    "toomanyrequests",
    "429 too many requests",
)


# urllib3's own errors surface while a streamed answer is read, requests' before.
_ENGINE_ERRORS = (
    docker.errors.APIError,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
)


# ---------------------------------------------------------------------------- validation


def validate_repository(value: str) -> str:
    """An image repository without registry host: lowercase path components only."""
    if not isinstance(value, str) or not REPOSITORY_RE.match(value):
        raise UnsafeInputError(
            f"invalid image repository {value!r}: lowercase letters, digits and "
            "'.', '_', '-' inside '/'-separated components, e.g. 'team/example-app'"
        )
    if len(value) > MAX_REFERENCE_LENGTH - 64:
        raise UnsafeInputError(f"image repository {value[:40]!r}... is too long")
    return value


def validate_tag(value: str) -> str:
    """A docker tag: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'."""
    if not isinstance(value, str) or not TAG_RE.match(value):
        raise UnsafeInputError(
            f"invalid image tag {value!r}: up to 128 letters, digits, '_', '.', '-' "
            "and not starting with '.' or '-'"
        )
    return value


def validate_image_reference(value: str) -> str:
    """``[host[:port]/]repo[:tag][@sha256:...]``, as an image to run or pull."""
    text = value if isinstance(value, str) else ""
    name, at, digest = text.partition("@")
    if at and not DIGEST_RE.match(digest):
        raise UnsafeInputError(f"invalid image reference {value!r}: bad digest")
    last_slash = name.rfind("/")
    name, colon, tag = name.rpartition(":") if ":" in name[last_slash + 1 :] else (name, "", "")
    if colon:
        validate_tag(tag)
    host, slash, path = name.partition("/")
    try:
        if slash and ("." in host or ":" in host or host == "localhost"):
            registry_host(host)
            validate_repository(path)
        else:
            validate_repository(name)
    except UnsafeInputError:
        raise UnsafeInputError(
            f"invalid image reference {value!r}: expected [host[:port]/]name[:tag][@sha256:...]"
        ) from None
    if len(text) > MAX_REFERENCE_LENGTH + 72:
        raise UnsafeInputError(f"image reference {value[:40]!r}... is too long")
    return value


def registry_host(url: str) -> str:
    """``https://registry.example.com:5000/team/`` -> ``registry.example.com:5000/team``.

    A scheme is dropped (the engine decides http or https); a path prefix (a
    namespace) is kept. A first component with no '.', ':' or ``localhost`` is
    refused: docker would read it as a Docker Hub namespace and push there.
    """
    text = url.strip() if isinstance(url, str) else url
    if not isinstance(text, str) or not text or any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise UnsafeInputError(f"invalid registry URL {url!r}")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or parts.username or parts.password:
            raise UnsafeInputError(
                "registry URL must be http(s)://host[:port][/namespace] without credentials"
            )
        text = parts.netloc + parts.path
    text = text.rstrip("/")
    host, _, prefix = text.partition("/")
    if not REGISTRY_HOST_RE.match(host):
        raise UnsafeInputError(f"invalid registry host {host!r}")
    if "." not in host and ":" not in host and host != "localhost":
        raise UnsafeInputError(
            f"registry host {host!r} would be read as a Docker Hub namespace; "
            "give host.domain, host:port or localhost"
        )
    if prefix and not REPOSITORY_RE.match(prefix):
        raise UnsafeInputError(f"invalid registry namespace {prefix!r}")
    return text


def _check_repository(value: str) -> str:
    try:
        return validate_repository(value)
    except UnsafeInputError as exc:
        raise ValueError(str(exc)) from None


def _check_registry_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        registry_host(value)
    except UnsafeInputError as exc:
        raise ValueError(str(exc)) from None
    return value


# ---------------------------------------------------------------------------- models


class ImageBuildSpec(StrictModel):
    """The ``image`` section of a pipeline file: what to build and where to push it."""

    repository: str = Field(
        description="Image name without registry host, e.g. 'team/example-app' (lowercase).",
        max_length=MAX_REFERENCE_LENGTH - 64,
    )
    dockerfile: RelPath = Field(
        default="Dockerfile", description="Dockerfile path relative to the workspace."
    )
    context: RelPath = Field(
        default=".", description="Build context folder relative to the workspace (default '.')."
    )
    build_args: dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN)], str] = Field(
        default_factory=dict,
        description="Dockerfile ARG values; they stay visible in the image history: no secrets.",
    )
    target: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        default=None, description="Multi-stage target to stop at (default: the last stage)."
    )
    labels: dict[Annotated[str, Field(pattern=LABEL_KEY_RE.pattern)], str] = Field(
        default_factory=dict,
        description="Extra image labels; the OCI source/revision/created labels always win.",
    )
    push: bool = Field(default=True, description="Push to the registry after the build.")
    registry: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        default=None,
        description="Name of a DockerRegistryCredentials block (its URL is the registry).",
    )
    registry_url: str | None = Field(
        default=None,
        description="Registry host[:port][/namespace] to push to without credentials.",
    )
    network: Literal["none", "host"] = Field(
        default="none",
        description="Network of RUN steps: 'none' (offline build, default) or 'host'.",
    )
    timeout: float = Field(
        default=1800, gt=0, le=86400, description="Seconds before the build is abandoned."
    )

    _repository = field_validator("repository")(_check_repository)
    _registry_url = field_validator("registry_url")(_check_registry_url)

    @model_validator(mode="after")
    def _one_destination(self) -> ImageBuildSpec:
        if self.registry and self.registry_url:
            raise ValueError(
                "give 'registry' (a credentials block, which names its URL) "
                "or 'registry_url', not both"
            )
        if self.push and not (self.registry or self.registry_url):
            raise ValueError("'push' needs 'registry' or 'registry_url' (or set push: false)")
        return self


@dataclass(frozen=True)
class LocalImage:
    """An image the engine has built; not yet anywhere another machine can pull it."""

    repository: str
    tags: tuple[str, ...]
    image_id: str
    size_bytes: int
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(f"{self.repository}:{tag}" for tag in self.tags)


@dataclass(frozen=True)
class BuiltImage:
    """A pushed image. Deploy :attr:`ref` (by digest); the tags are for people."""

    repository: str  # with the registry host, e.g. "registry.example.com/team/app"
    tags: tuple[str, ...]
    digest: str  # manifest digest, "sha256:..."
    image_id: str
    size_bytes: int

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"

    @property
    def tag_refs(self) -> tuple[str, ...]:
        return tuple(f"{self.repository}:{tag}" for tag in self.tags)


# ---------------------------------------------------------------------------- build


def image_tags(revision: str, build_number: str | int) -> tuple[str, str]:
    """``(<sha12>, build-<n>)``, both checked against the tag grammar."""
    if not isinstance(revision, str) or not REVISION_RE.match(revision):
        raise UnsafeInputError(f"invalid revision {revision!r}: a lowercase hex commit SHA")
    return validate_tag(revision[:12]), validate_tag(f"build-{build_number}")


def _public_source(url: str) -> str:
    """The source URL for a label, without credentials (labels are public)."""
    if any(ord(ch) < 32 for ch in url):
        raise UnsafeInputError("source URL contains control characters")
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class _Lines:
    """Re-cuts streamed text into whole lines (a chunk can end mid-line or mid-character)."""

    def __init__(self, sink: Log) -> None:
        self._sink = sink
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes | str) -> None:
        text = self._decoder.decode(data) if isinstance(data, bytes) else data
        *whole, self._partial = (self._partial + text).split("\n")
        for line in whole:
            self._sink(line.rstrip("\r"))

    def close(self) -> None:
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self._sink(rest.rstrip("\r"))


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_image(
    client: docker.DockerClient,
    spec: ImageBuildSpec,
    *,
    workspace: Path,
    revision: str,
    build_number: str | int,
    source_url: str,
    log: Log,
    created: datetime | None = None,
) -> LocalImage:
    """Build the workspace's Dockerfile; tag it ``<sha12>`` and ``build-<n>``.

    Raises :class:`ImageBuildError` naming the failing step (a Dockerfile step that
    exited non-zero, a missing file in a COPY...), :class:`ImageBuildTimeout` after
    ``spec.timeout`` seconds, :class:`~slipway.exceptions.RemoteUnavailable` when
    the engine cannot be reached. ``created`` (default now) lets a caller make
    rebuilds of a commit reproducible.

    Example:
        >>> with DockerHost().get_client() as client:
        ...     image = build_image(client, spec, workspace=ws, revision=sha,
        ...                         build_number=17, source_url=url, log=print)
    """
    repository = validate_repository(spec.repository)
    tags = image_tags(revision, build_number)
    context = inside(workspace, spec.context)
    dockerfile = inside(workspace, spec.dockerfile)
    if not context.is_dir():
        raise ConfigError(f"build context {spec.context!r} is not a folder in the workspace")
    if not dockerfile.is_file():
        raise ConfigError(f"Dockerfile {spec.dockerfile!r} not found in the workspace")
    labels = {
        **spec.labels,
        OCI_SOURCE: _public_source(source_url),
        OCI_REVISION: revision,
        OCI_CREATED: _rfc3339(created or datetime.now(UTC)),
    }
    log(f"building {repository}:{tags[0]} from {spec.dockerfile} (context {spec.context})")
    deadline = time.monotonic() + spec.timeout
    step = "the build context upload"
    output_tail: list[str] = []
    image_id: str | None = None
    failure: Exception | None = None

    def line(text: str) -> None:
        nonlocal step
        text = _ANSI.sub("", text)
        if _STEP.match(text):
            step = text
        if text.strip():
            output_tail[:] = [*output_tail[-4:], text]
        log(text)

    lines = _Lines(line)
    stream: Iterator[dict[str, Any]] | None = None
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=str(dockerfile),
            tag=f"{repository}:{tags[0]}",
            buildargs=dict(spec.build_args),
            target=spec.target,
            labels=labels,
            network_mode=spec.network,
            rm=True,
            forcerm=True,  # intermediate containers of a failed step go too
            pull=False,  # base images come from this engine (no Docker Hub here)
            decode=True,
            # Per socket read: a step silent for this long ends the build; between
            # lines the deadline below bounds the total.
            timeout=int(spec.timeout) + 1,
        )
        for chunk in stream:
            if "stream" in chunk:
                lines.feed(chunk["stream"])
            if "error" in chunk:
                lines.close()
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                failure = ImageBuildError(
                    f"image build failed at {_short(step)}: {_short(_ANSI.sub('', detail), 300)}"
                )
                break
            aux = chunk.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                image_id = aux["ID"]
            if time.monotonic() > deadline:
                failure = ImageBuildTimeout(
                    f"image build timed out after {spec.timeout:g} s at {_short(step)}"
                )
                break
        lines.close()
    except (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError):
        failure = ImageBuildTimeout(
            f"image build timed out after {spec.timeout:g} s at {_short(step)}"
        )
    except (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError) as exc:
        failure = RemoteUnavailable(
            f"docker engine unreachable during the build: {_short(str(exc))}"
        )
    except docker.errors.APIError as exc:
        failure = ImageBuildError(
            f"image build refused by the engine: {_short(_explain(exc), 300)}"
        )
    except docker.errors.DockerException as exc:  # e.g. unreadable Dockerfile or context
        failure = ImageBuildError(f"image build could not start: {_short(str(exc), 300)}")
    finally:
        # Dropping the stream closes its connection, and the engine cancels a build
        # whose client went away: an abandoned build does not run on.
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        stream = None
    # raised here, outside the handlers, so no docker exception rides along as context
    if failure is not None:
        raise failure
    if image_id is None:
        last = output_tail[-1] if output_tail else "no output"
        raise ImageBuildError(f"image build ended without an image ID (last line: {last})")

    try:
        for tag in tags[1:]:
            client.api.tag(image_id, repository, tag)
        attrs = client.api.inspect_image(image_id)
    except _ENGINE_ERRORS as exc:
        failure = ImageBuildError(
            f"could not tag the built image: {_translate(exc, Redactor()).message}"
        )
    if failure is not None:
        raise failure
    log(f"built {image_id[:19]} tagged {', '.join(tags)}")
    return LocalImage(
        repository=repository,
        tags=tags,
        image_id=image_id,
        size_bytes=int(attrs.get("Size") or 0),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
    )


# ---------------------------------------------------------------------------- push / pull


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


def _auth_config(registry: DockerRegistryCredentials | None) -> dict[str, str] | None:
    """The one place the registry password is unwrapped (for login and push)."""
    if registry is None:
        return None
    return {"username": registry.username, "password": registry.password.get_secret_value()}


def _is_transient(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _TRANSIENT)


@dataclass
class _Attempt:
    """Outcome of one try: a message to retry on or to fail with, after redaction."""

    message: str
    transient: bool


def _with_retries(
    what: str,
    host: str,
    action: Callable[[], _Attempt | None],
    *,
    attempts: int,
    delay: float,
    log: Log,
) -> None:
    """Run ``action`` until it returns None; retry transient failures with backoff."""
    for attempt in range(1, attempts + 1):
        outcome = action()
        if outcome is None:
            return
        if not outcome.transient:
            hint = ""
            if "401" in outcome.message or "unauthorized" in outcome.message.lower():
                hint = "credentials refused: "
            raise RegistryError(f"{what} at {host} failed: {hint}{outcome.message}")
        if attempt == attempts:
            raise RemoteUnavailable(
                f"{what} at {host} failed after {attempts} attempts: {outcome.message}"
            )
        wait = delay * 2 ** (attempt - 1)
        log(f"{what} at {host}: {outcome.message}; retrying in {wait:g} s")
        time.sleep(wait)


def _translate(exc: Exception, redactor: Redactor) -> _Attempt:
    """A docker or transport error as a redacted message, and whether a retry may help."""
    if isinstance(exc, docker.errors.APIError):
        message = redactor.redact(_short(_explain(exc), 300))
        # The engine answers 500 for whatever the registry did, so its text decides;
        # a 502-504 from a proxy in front of the engine itself is transient.
        return _Attempt(message, _is_transient(message) or exc.status_code in (502, 503, 504))
    return _Attempt(f"docker engine unreachable: {redactor.redact(_short(str(exc)))}", True)


def _engine_call(
    redactor: Redactor,
    call: Callable[[], Iterable[dict[str, Any]] | Any],
    consume: Callable[[Any], _Attempt | None] | None = None,
) -> _Attempt | None:
    """Run one engine call (and read its stream); any engine error becomes an :class:`_Attempt`."""
    try:
        result = call()
        return consume(result) if consume is not None else None
    except _ENGINE_ERRORS as exc:
        failure = _translate(exc, redactor)
    return failure


def _consume(
    stream: Iterable[dict[str, Any]], redactor: Redactor, log: Log, digests: list[str]
) -> _Attempt | None:
    """Read a push/pull progress stream: log milestones, collect digests, find the error."""
    seen: set[str] = set()
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            message = redactor.redact(_short(str(detail), 300))
            return _Attempt(message, _is_transient(message))
        aux = chunk.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
            digests.append(aux["Digest"])
        status = chunk.get("status")
        if isinstance(status, str) and chunk.get("progressDetail", {}).get("total") is None:
            text = f"{chunk['id']}: {status}" if chunk.get("id") else status
            if text not in seen:  # progress repeats the same status many times
                seen.add(text)
                log(redactor.redact(text))
    return None


def push_image(
    client: docker.DockerClient,
    image: LocalImage,
    *,
    registry: DockerRegistryCredentials | None,
    registry_url: str | None = None,
    log: Log,
    attempts: int = PUSH_ATTEMPTS,
    retry_delay: float = RETRY_DELAY_SECONDS,
) -> BuiltImage:
    """Push every tag of ``image`` and return it addressed by its manifest digest.

    The registry is the credentials block's ``registry_url``, or ``registry_url``
    for a registry that needs no login. Transient failures (connection refused or
    reset, timeouts, 5xx) are retried ``attempts`` times in all, waiting
    ``retry_delay`` seconds, doubled each time, then raise
    :class:`~slipway.exceptions.RemoteUnavailable`; a refused login, an unknown host
    or a denied push raise :class:`RegistryError` at once. No message holds the password.

    Example:
        >>> creds = DockerRegistryCredentials.load("prod-registry")
        >>> built = push_image(client, image, registry=creds, log=print)
        >>> built.ref
        'registry.example.com/team/app@sha256:...'
    """
    if registry is not None and registry_url is not None:
        if registry_host(registry_url) != registry_host(registry.registry_url):
            raise ConfigError("registry_url differs from the credentials block's registry_url")
    url = registry.registry_url if registry is not None else registry_url
    if url is None:
        raise ConfigError("push_image needs a credentials block or a registry_url")
    host = registry_host(url)
    repository = f"{host}/{validate_repository(image.repository)}"
    for tag in image.tags:
        validate_tag(tag)
    if len(repository) + 1 + max(len(t) for t in image.tags) > MAX_REFERENCE_LENGTH:
        raise UnsafeInputError(f"image reference {repository!r} is too long")
    auth = _auth_config(registry)
    redactor = Redactor([auth["password"]] if auth else [])
    server = host.split("/", 1)[0]

    for tag in image.tags:
        failure = _engine_call(
            redactor, lambda t=tag: client.api.tag(image.image_id, repository, t)
        )
        if failure is not None:
            raise RegistryError(f"could not tag the image as {repository}:{tag}: {failure.message}")

    if auth is not None:
        log(f"logging in to {server} as {auth['username']}")

        def login() -> _Attempt | None:
            return _engine_call(
                redactor,
                lambda: client.login(
                    username=auth["username"],
                    password=auth["password"],
                    registry=server,
                    reauth=True,  # check the password now, not at the first layer upload
                ),
            )

        _with_retries("login", server, login, attempts=attempts, delay=retry_delay, log=log)

    digests: list[str] = []
    for tag in image.tags:
        log(f"pushing {repository}:{tag}")
        found: list[str] = []

        def push(tag: str = tag, found: list[str] = found) -> _Attempt | None:
            found.clear()
            return _engine_call(
                redactor,
                lambda: client.api.push(
                    repository, tag=tag, stream=True, decode=True, auth_config=auth
                ),
                lambda stream: _consume(stream, redactor, log, found),
            )

        _with_retries("push", server, push, attempts=attempts, delay=retry_delay, log=log)
        if not found:
            raise RegistryError(f"push of {repository}:{tag} reported no manifest digest")
        digests.append(found[-1])

    digest = digests[0]
    if not DIGEST_RE.match(digest) or any(d != digest for d in digests):
        raise RegistryError(f"the registry reported inconsistent digests for one image: {digests}")
    built = BuiltImage(
        repository=repository,
        tags=image.tags,
        digest=digest,
        image_id=image.image_id,
        size_bytes=image.size_bytes,
    )
    log(f"pushed {built.ref}")
    return built


def split_digest_ref(ref: str) -> tuple[str, str]:
    """``host/repo@sha256:...`` -> ``(host/repo, sha256:...)``; anything else is refused."""
    repository, at, digest = ref.partition("@") if isinstance(ref, str) else ("", "", "")
    if not at or not DIGEST_RE.match(digest):
        raise UnsafeInputError(f"not an image reference by digest: {ref!r}")
    host, slash, path = repository.partition("/")
    if slash and ("." in host or ":" in host or host == "localhost"):
        registry_host(host)
        validate_repository(path)
    else:
        validate_repository(repository)
    return repository, digest


def pull_by_digest(
    client: docker.DockerClient,
    ref: str,
    *,
    registry: DockerRegistryCredentials | None = None,
    log: Log | None = None,
    attempts: int = PUSH_ATTEMPTS,
    retry_delay: float = RETRY_DELAY_SECONDS,
) -> Image:
    """Pull ``repo@sha256:...`` (what later stages run) and return the engine's image."""
    repository, digest = split_digest_ref(ref)
    log = log or (lambda _line: None)
    auth = _auth_config(registry)
    redactor = Redactor([auth["password"]] if auth else [])
    server = repository.split("/", 1)[0]

    def pull() -> _Attempt | None:
        return _engine_call(
            redactor,
            lambda: client.api.pull(
                repository, tag=digest, stream=True, decode=True, auth_config=auth
            ),
            lambda stream: _consume(stream, redactor, log, []),
        )

    _with_retries("pull", server, pull, attempts=attempts, delay=retry_delay, log=log)
    try:
        return client.images.get(ref)
    except _ENGINE_ERRORS as exc:
        failure = RegistryError(
            f"pulled {ref} but the engine cannot find it: {_translate(exc, redactor).message}"
        )
    raise failure


# ---------------------------------------------------------------------------- Prefect tasks


def registry_credentials(spec: ImageBuildSpec) -> DockerRegistryCredentials | None:
    """The credentials block the spec names (loaded from the Prefect API), if any."""
    if spec.registry is None:
        return None
    return DockerRegistryCredentials.load(spec.registry)


@task(name="build_image", cache_policy=NO_CACHE)
def build_image_task(
    docker_host: DockerHost,
    spec: ImageBuildSpec,
    *,
    workspace: Path,
    revision: str,
    build_number: str | int,
    source_url: str,
) -> LocalImage:
    """Build the pipeline's image on the engine ``docker_host`` points at."""
    logger = get_run_logger()
    with docker_host.get_client() as client:
        return build_image(
            client,
            spec,
            workspace=workspace,
            revision=revision,
            build_number=build_number,
            source_url=source_url,
            log=logger.info,
        )


@task(name="push_image", cache_policy=NO_CACHE)
def push_image_task(
    docker_host: DockerHost,
    image: LocalImage,
    *,
    registry: DockerRegistryCredentials | None = None,
    registry_url: str | None = None,
) -> BuiltImage:
    """Push the built image's tags; retries happen inside (transient errors only)."""
    logger = get_run_logger()
    with docker_host.get_client() as client:
        return push_image(
            client, image, registry=registry, registry_url=registry_url, log=logger.info
        )
