"""A real Docker engine and real image registries for the tests (a pytest plugin).

Nothing here is a stand-in: the engine is Debian's ``dockerd`` (package docker.io)
and the registries are Debian's ``docker-registry`` (the CNCF distribution
registry), so builds, logins, pushes and pulls go over the real protocols.

- ``docker_host``: the engine's URL. ``$DOCKER_HOST`` when it answers; else a
  dockerd already serving ``/tmp/slipway-docker.sock`` (another session's); else
  one started here with no iptables, no bridge and the vfs storage driver, so it
  runs in an unprivileged-looking sandbox. Its data root is persistent
  (``${SLIPWAY_CACHE:-~/.cache/slipway}/dockerd``), so the base image and the
  build cache survive between sessions; a dockerd started here is stopped at
  the end of the session. The fixture also makes sure the base image
  ``slipway/base-python:bookworm`` is there (``examples/base-image/build``).
- ``registry``: a registry on 127.0.0.1 (a free port, plain HTTP, no auth) with
  its own storage folder. dockerd treats 127.0.0.0/8 as an insecure registry by
  default, so no engine configuration is needed.
- ``auth_registry``: the same with htpasswd basic auth (bcrypt, made by
  ``htpasswd`` from apache2-utils).

A missing component fails the test with the package to install (``.ci/run``
installs them all); it never skips, because a skipped docker test is a test
that silently stopped running.
"""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import docker
import pytest
from prefect_docker import DockerHost

from slipway.exceptions import ConfigError, RemoteUnavailable
from slipway.local_docker import (
    BASE_IMAGE,
    ensure_base_image,
    ensure_engine,
    require,
    start_registry,
)
from tests.servers.ports import free_port  # noqa: F401  (re-exported)

__all__ = ["BASE_IMAGE"]
T = TypeVar("T")


def _or_fail(call: Callable[[], T]) -> T:
    """Run a start-up step; a missing package or a dead engine fails the test, never skips."""
    try:
        return call()
    except (ConfigError, RemoteUnavailable) as exc:
        pytest.fail(f"{exc} (.ci/run installs and starts what the tests need)", pytrace=False)


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """URL of a real Docker engine that has the base image."""
    started: subprocess.Popen[bytes] | None = None
    try:
        base_url, started = _or_fail(ensure_engine)
        _or_fail(lambda: ensure_base_image(base_url))
        yield base_url
    finally:
        if started is not None:
            started.send_signal(signal.SIGTERM)  # dockerd stops its containerd too
            try:
                started.wait(30)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()


@pytest.fixture(scope="session")
def docker_block(docker_host: str) -> DockerHost:
    """prefect-docker's block for the test engine, as the product is configured."""
    return DockerHost(base_url=docker_host)


@pytest.fixture(scope="session")
def docker_client(docker_block: DockerHost) -> Iterator[docker.DockerClient]:
    with docker_block.get_client() as client:
        yield client


@dataclass(frozen=True)
class Registry:
    """A running registry: ``host`` is what image names start with (``127.0.0.1:PORT``)."""

    host: str
    storage: Path
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """Docker-Content-Digest of a manifest, asked of the registry over HTTP (None: absent)."""
        request = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{reference}",
            method="HEAD",
            headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                "application/vnd.oci.image.manifest.v1+json"
            },
        )
        if self.username and self.password:
            password_manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            password_manager.add_password(None, self.url, self.username, self.password)
            opener = urllib.request.build_opener(
                urllib.request.HTTPBasicAuthHandler(password_manager)
            )
        else:
            opener = urllib.request.build_opener()
        try:
            with opener.open(request, timeout=10) as response:
                return response.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise


def _start_registry(
    folder: Path, *, htpasswd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = _or_fail(lambda: start_registry(folder, port, htpasswd=htpasswd))
    return proc, f"127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A real registry without authentication, on a free loopback port."""
    proc, host = _start_registry(tmp_path / "registry")
    try:
        yield Registry(host=host, storage=tmp_path / "registry" / "storage")
    finally:
        _stop(proc)


REGISTRY_USER = "ci-pusher"
REGISTRY_PASSWORD = "Reg-pw-7c41e9d2f0"


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    """A real registry that wants HTTP basic auth (htpasswd, bcrypt)."""
    htpasswd_bin = _or_fail(lambda: require("htpasswd", "apache2-utils"))
    folder = tmp_path / "auth-registry"
    folder.mkdir()
    htpasswd = folder / "htpasswd"
    # -i: the password on stdin, never in an argv; -B: bcrypt, the only hash the registry takes
    subprocess.run(
        [htpasswd_bin, "-iBc", str(htpasswd), REGISTRY_USER],
        input=REGISTRY_PASSWORD.encode(),
        check=True,
        capture_output=True,
    )
    proc, host = _start_registry(folder, htpasswd=htpasswd)
    try:
        yield Registry(
            host=host,
            storage=folder / "storage",
            username=REGISTRY_USER,
            password=REGISTRY_PASSWORD,
        )
    finally:
        _stop(proc)
