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

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from prefect_docker import DockerHost

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "slipway/base-python:bookworm"
BASE_IMAGE_BUILD = ROOT / "examples" / "base-image" / "build"
SOCKET = Path("/tmp/slipway-docker.sock")
EXEC_ROOT = Path("/tmp/slipway-docker-exec")
PIDFILE = Path("/tmp/slipway-docker.pid")
START_TIMEOUT_SECONDS = 60.0
BASE_IMAGE_TIMEOUT_SECONDS = 900.0


def cache_dir() -> Path:
    """Where slow-to-make things persist between sessions (same rule as the build script)."""
    return Path(os.environ.get("SLIPWAY_CACHE") or Path.home() / ".cache" / "slipway")


def _require(binary: str, package: str) -> str:
    """The binary's path, or a failed test that says which package to install."""
    found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if found is None:
        pytest.fail(
            f"{binary} is not installed: apt-get install {package} (.ci/run installs it)",
            pytrace=False,
        )
    return found


def _answers(base_url: str) -> bool:
    try:
        client = docker.DockerClient(base_url=base_url, version="auto", timeout=5)
    except Exception:  # any failure means "not usable", the caller decides what next
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _dockerd_running(pidfile: Path) -> bool:
    """A dockerd (not a recycled pid) is alive per the pidfile."""
    try:
        pid = int(pidfile.read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    except (OSError, ValueError):
        return False


def _start_dockerd() -> subprocess.Popen[bytes]:
    dockerd = _require("dockerd", "docker.io")
    _require("containerd", "containerd")
    _require("runc", "runc")
    state = cache_dir() / "dockerd"
    state.mkdir(parents=True, exist_ok=True)
    SOCKET.unlink(missing_ok=True)  # stale: nothing answered on it
    log = (state / "dockerd.log").open("ab")
    return subprocess.Popen(
        [
            dockerd,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
            "-H",
            f"unix://{SOCKET}",
            "--data-root",
            str(state / "data"),
            "--exec-root",
            str(EXEC_ROOT),
            "--pidfile",
            str(PIDFILE),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C in pytest must not hit dockerd first
    )


def _wait_until_answering(base_url: str, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if _answers(base_url):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    log = cache_dir() / "dockerd" / "dockerd.log"
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    pytest.fail(
        f"dockerd did not answer on {base_url}; last lines of {log}:\n" + "\n".join(tail),
        pytrace=False,
    )


def ensure_base_image(base_url: str) -> None:
    """Run the offline base-image build (a no-op when the engine has the image)."""
    _require("docker", "docker.io")
    env = {**os.environ, "DOCKER_HOST": base_url}
    result = subprocess.run(
        [str(BASE_IMAGE_BUILD)],
        env=env,
        capture_output=True,
        text=True,
        timeout=BASE_IMAGE_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        pytest.fail(
            f"examples/base-image/build failed ({result.returncode}):\n"
            + (result.stdout + result.stderr)[-3000:],
            pytrace=False,
        )


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """URL of a real Docker engine that has the base image."""
    started: subprocess.Popen[bytes] | None = None
    from_env = os.environ.get("DOCKER_HOST")
    try:
        if from_env and _answers(from_env):
            base_url = from_env
        else:
            base_url = f"unix://{SOCKET}"
            if not _answers(base_url):
                if _dockerd_running(PIDFILE) and SOCKET.exists():
                    _wait_until_answering(base_url, None)  # another session's, starting
                else:
                    started = _start_dockerd()
                    _wait_until_answering(base_url, started)
        ensure_base_image(base_url)
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    binary = _require("/usr/bin/docker-registry", "docker-registry")
    port = free_port()
    storage = folder / "storage"
    storage.mkdir(parents=True)
    auth = (
        f"auth:\n  htpasswd:\n    realm: slipway-test\n    path: {htpasswd}\n" if htpasswd else ""
    )
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: slipway-test-{port}\n" + auth
    )
    log = (folder / "registry.log").open("wb")
    proc = subprocess.Popen(
        [binary, "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=2).close()
            return proc, host
        except urllib.error.HTTPError as error:
            if error.code == 401:  # answering, and asking for credentials
                return proc, host
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(
        "docker-registry did not start:\n" + (folder / "registry.log").read_text()[-2000:],
        pytrace=False,
    )


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
    htpasswd_bin = _require("htpasswd", "apache2-utils")
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
