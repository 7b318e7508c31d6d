"""Stages in containers: a stage's commands run inside an image instead of on the worker.

The contract is :func:`slipway.tasks.commands.run_commands`'s, so a stage behaves
the same wherever it runs: each command is ``bash -eo pipefail -c <command>`` (or
``sh -e -c`` in an image without bash, detected once per stage), output is merged,
streamed line by line through the redactor to the log, a non-zero exit raises
:class:`~slipway.exceptions.StageFailed` with the same message shape, and the stage
timeout raises :class:`~slipway.exceptions.StageTimeout`.

One container per stage, not per command: the container idles on ``cat`` (the way
Jenkins' ``docker.inside`` does) and each command is an exec in it, so files left
outside the workspace by one command are there for the next, as on the host, and
the container's filesystem is made once (the vfs storage driver copies the whole
image for every container). The container is removed afterwards whatever happens:
success, failure, timeout (it is killed first), an engine error or Prefect
cancelling the task.

The workspace is bind-mounted at ``workdir_mount``, so the engine must share the
worker's filesystem (a local engine). Commands run as the worker's uid:gid unless
the spec names a user, so the files they write (JUnit reports, build outputs) are
the worker's to read, archive and delete. The container sees the image's
environment plus the ``env`` given (the pipeline's and the stage's variables and
``SLIPWAY_*``), never the worker's own environment. The network is ``none`` unless
the spec asks for the host's.
"""

from __future__ import annotations

import contextvars
import os
import posixpath
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import docker
import requests
import urllib3
from pydantic import AfterValidator, Field

from slipway.exceptions import (
    RemoteUnavailable,
    StageCancelled,
    StageFailed,
    StageTimeout,
    UnsafeInputError,
)
from slipway.redact import Redactor
from slipway.spec_types import StrictModel
from slipway.tasks.commands import TAIL_LINES, CommandResult, exit_failure
from slipway.tasks.commands import _short as short_command  # one message shape for both
from slipway.tasks.images import validate_image_reference
from slipway.tasks.process_tree import cancel_requested

LABEL_MANAGED = "io.slipway.managed"
LABEL_STAGE = "io.slipway.stage"
KILL_GRACE_SECONDS = 3
_JOIN_SLICE_SECONDS = 0.2
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")
_ENGINE_ERRORS = (
    docker.errors.APIError,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
)


def _check_image(value: str) -> str:
    try:
        return validate_image_reference(value)
    except UnsafeInputError as exc:
        raise ValueError(str(exc)) from None


def _check_user(value: str | None) -> str | None:
    if value is not None and not _USER_RE.match(value):
        raise ValueError(f"invalid user {value!r}: a name or uid, optionally ':group' or ':gid'")
    return value


def _check_mount(value: str) -> str:
    if not value.startswith("/") or any(ch in value for ch in ":,\\\n\0"):
        raise ValueError(f"workdir_mount {value!r} must be an absolute container path")
    normal = posixpath.normpath(value)
    if normal == "/" or ".." in normal.split("/") or normal != value.rstrip("/"):
        raise ValueError(f"workdir_mount {value!r} must be a normalised path below /")
    return normal


class ContainerSpec(StrictModel):
    """The ``container`` of a stage: which image its commands run in, and how."""

    image: Annotated[str, AfterValidator(_check_image)] = Field(
        description="Image to run the commands in: name[:tag] or name@sha256:digest."
    )
    user: Annotated[str | None, AfterValidator(_check_user)] = Field(
        default=None,
        description="User (name or uid[:gid]); default the worker's uid:gid, so it owns the files.",
    )
    network: Literal["none", "host"] = Field(
        default="none", description="'none' (default: no network) or 'host' (the worker's)."
    )
    workdir_mount: Annotated[str, AfterValidator(_check_mount)] = Field(
        default="/workspace", description="Where the workspace is mounted in the container."
    )


def _container_cwd(spec: ContainerSpec, workspace: Path, cwd: Path) -> str:
    """The container path of ``cwd``, which must lie inside the workspace."""
    try:
        relative = cwd.resolve().relative_to(workspace.resolve())
    except ValueError:
        raise UnsafeInputError(f"working directory {cwd} is outside the workspace") from None
    return posixpath.normpath(posixpath.join(spec.workdir_mount, relative.as_posix()))


class _Output:
    """Merged exec output cut into lines: logged (redacted) as they come, tail kept."""

    def __init__(self, redactor: Redactor, log: Callable[[str], None], tail: deque[str]) -> None:
        self._redactor = redactor
        self._log = log
        self._tail = tail
        self._partial = b""
        self.error: BaseException | None = None

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self._tail.append(line)
        self._log(self._redactor.redact(line))

    def feed(self, data: bytes) -> None:
        *whole, self._partial = (self._partial + data).split(b"\n")
        for raw in whole:
            self._emit(raw)

    def close(self) -> None:
        if self._partial:
            self._emit(self._partial)
        self._partial = b""


def _pump(stream: Any, output: _Output) -> None:
    try:
        for chunk in stream:
            output.feed(chunk)
        output.close()
    except _ENGINE_ERRORS:
        pass  # the container was killed or removed under the stream: the caller knows why
    except BaseException as exc:  # the log sink failed: hand it to the caller's thread
        output.error = exc


def _exec_code(client: docker.DockerClient, exec_id: str) -> int:
    """The exit code of a finished exec (the engine may lag the end of its stream)."""
    for _ in range(50):
        state = client.api.exec_inspect(exec_id)
        if not state.get("Running") and state.get("ExitCode") is not None:
            return int(state["ExitCode"])
        time.sleep(0.02)
    raise RemoteUnavailable("the engine did not report the command's exit code")


def _run_exec(
    client: docker.DockerClient,
    container_id: str,
    argv: list[str],
    *,
    workdir: str,
    env: Mapping[str, str],
) -> tuple[int, bytes]:
    """A short exec whose output is wanted whole (shell detection)."""
    exec_id = client.api.exec_create(container_id, argv, workdir=workdir, environment=dict(env))
    output = client.api.exec_start(exec_id["Id"])
    return _exec_code(client, exec_id["Id"]), output


def _detect_shell(
    client: docker.DockerClient, container_id: str, *, stage: str, workdir: str
) -> list[str]:
    """``bash -eo pipefail -c`` when the image has bash, else POSIX ``sh -e -c``."""
    probe = "if command -v bash >/dev/null 2>&1; then echo bash; else echo sh; fi"
    code, output = _run_exec(client, container_id, ["sh", "-c", probe], workdir=workdir, env={})
    answer = output.decode("utf-8", errors="replace").strip()
    if code == 0 and answer == "bash":
        return ["bash", "-eo", "pipefail", "-c"]
    if code == 0 and answer == "sh":
        return ["sh", "-e", "-c"]
    detail = answer.splitlines()
    raise StageFailed(
        stage, f"the image has no shell to run commands with: {detail[-1] if detail else code}"
    )


def _remove(client: docker.DockerClient, container_id: str, log: Callable[[str], None]) -> None:
    """Force-remove (kills first); an engine hiccup gets a second try, then a log line.

    Never raises: it runs in a ``finally`` and must not hide the stage's own outcome.
    """
    for attempt in range(3):
        try:
            client.api.remove_container(container_id, force=True, v=True)
            return
        except docker.errors.NotFound:
            return
        except _ENGINE_ERRORS as exc:
            if attempt == 2:
                log(f"could not remove container {container_id[:12]}: {exc}")
                return
            time.sleep(0.5 * (attempt + 1))


def ensure_image(client: docker.DockerClient, image: str, *, stage: str) -> None:
    """Pull ``image`` when the engine does not have it yet."""
    failure: Exception | None = None
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except _ENGINE_ERRORS as exc:
        failure = RemoteUnavailable(f"stage {stage!r}: docker engine unreachable: {exc}")
    if failure is None:
        repository, _, digest = image.partition("@")
        try:
            for chunk in client.api.pull(
                repository if digest else image, tag=digest or None, stream=True, decode=True
            ):
                if "error" in chunk:
                    failure = StageFailed(stage, f"image {image} not available: {chunk['error']}")
                    break
        except _ENGINE_ERRORS as exc:
            failure = StageFailed(stage, f"image {image} not available: {exc}")
    if failure is not None:
        raise failure


def run_in_container(
    client: docker.DockerClient,
    spec: ContainerSpec,
    commands: Sequence[str],
    *,
    stage: str,
    workspace: Path,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float | None,
    redactor: Redactor,
    log: Callable[[str], None],
) -> CommandResult:
    """Run commands in order in a container of ``spec.image``; same contract as run_commands.

    ``env`` is the stage's environment (pipeline, stage and ``SLIPWAY_*`` variables,
    e.g. ``stage_environment(base={}, ...)``), not the worker's. ``timeout`` counts
    from the call, container start included, so it fires before Prefect's.

    Example:
        >>> spec = ContainerSpec(image="slipway/base-python:bookworm")
        >>> with DockerHost().get_client() as client:
        ...     run_in_container(client, spec, ["python3 -m pytest"], stage="unit",
        ...                      workspace=ws, cwd=ws, env={"CI": "true"}, timeout=600,
        ...                      redactor=Redactor(), log=print)
    """
    if not cwd.is_dir():
        raise StageFailed(stage, f"working directory {cwd} does not exist")
    workdir = _container_cwd(spec, workspace, cwd)
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    ensure_image(client, spec.image, stage=stage)
    user = spec.user or f"{os.getuid()}:{os.getgid()}"
    container_id: str | None = None
    failure: Exception | None = None
    try:
        host_config = client.api.create_host_config(
            binds={str(workspace.resolve()): {"bind": spec.workdir_mount, "mode": "rw"}},
            network_mode=spec.network,
        )
        created = client.api.create_container(
            spec.image,
            entrypoint=["cat"],  # idles until removed; commands come in as execs
            command=[],
            stdin_open=True,
            user=user,
            working_dir=spec.workdir_mount,
            labels={LABEL_MANAGED: "true", LABEL_STAGE: stage},
            name=f"slipway-{_NAME_UNSAFE.sub('-', stage)[:40]}-{uuid.uuid4().hex[:8]}",
            host_config=host_config,
        )
        container_id = created["Id"]
        client.api.start(container_id)
        shell = _detect_shell(client, container_id, stage=stage, workdir=workdir)
        for command in commands:
            log(f"$ {redactor.redact(command)}")
            exec_id = client.api.exec_create(
                container_id, [*shell, command], workdir=workdir, environment=dict(env)
            )["Id"]
            output = _Output(redactor, log, tail)
            stream = client.api.exec_start(exec_id, stream=True)
            # the run's context goes along: the log callback needs the run's settings
            reader = threading.Thread(
                target=contextvars.copy_context().run, args=(_pump, stream, output), daemon=True
            )
            reader.start()
            # Short joins: Prefect's timeout or cancellation arrives as an exception in
            # this thread, and only between bytecodes, never inside one long join.
            # A cancelled run (Ctrl-C) stops it too; removing the container ends every
            # process the commands started in it, however they detached.
            while (
                reader.is_alive()
                and (deadline is None or time.monotonic() < deadline)
                and not cancel_requested()
            ):
                reader.join(_JOIN_SLICE_SECONDS)
            if reader.is_alive():
                try:
                    client.api.kill(container_id)
                except _ENGINE_ERRORS:
                    pass  # already gone; removal below makes sure
                reader.join(KILL_GRACE_SECONDS)
                shown = short_command(redactor.redact(command))
                if cancel_requested():
                    raise StageCancelled(stage, f"the run was cancelled while running {shown}")
                raise StageTimeout(stage, f"timed out after {timeout:g} s running {shown}")
            if output.error is not None:
                raise output.error
            code = _exec_code(client, exec_id)
            if code != 0:
                raise exit_failure(stage, code, command, tail, redactor)
    except _ENGINE_ERRORS as exc:
        message = redactor.redact(str(getattr(exc, "explanation", None) or exc))
        if isinstance(exc, docker.errors.APIError):
            failure = StageFailed(stage, f"container error: {' '.join(message.split())[:300]}")
        else:
            failure = RemoteUnavailable(f"stage {stage!r}: docker engine unreachable: {message}")
    finally:
        if container_id is not None:
            _remove(client, container_id, log)
    # raised outside the handler: the docker exception (and its request) stays behind
    if failure is not None:
        raise failure
    return CommandResult(0, time.monotonic() - started, redactor.redact("\n".join(tail)))
