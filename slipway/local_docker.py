"""A local Docker engine and image registry for the main job and the tests.

On a machine where no engine runs, slipway starts Debian's ``dockerd`` itself on a
private socket (no iptables, no bridge, the vfs storage driver: it runs inside a
sandbox) and Debian's ``docker-registry`` on loopback, the same way the local
Prefect server is found or started (:mod:`slipway.local_server`). Both are left
running for the next run. A team's own engine (``DOCKER_HOST``) and registry are
used as they are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker

from slipway.exceptions import ConfigError, RemoteUnavailable

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "slipway/base-python:bookworm"
BASE_IMAGE_BUILD = ROOT / "examples" / "base-image" / "build"
SOCKET = Path("/tmp/slipway-docker.sock")
EXEC_ROOT = Path("/tmp/slipway-docker-exec")
PIDFILE = Path("/tmp/slipway-docker.pid")
START_TIMEOUT_SECONDS = 60.0
BASE_IMAGE_TIMEOUT_SECONDS = 900.0
REGISTRY_BINARY = "/usr/bin/docker-registry"


def cache_dir() -> Path:
    """Where slow-to-make things persist between runs (same rule as the build script)."""
    return Path(os.environ.get("SLIPWAY_CACHE") or Path.home() / ".cache" / "slipway")


def require(binary: str, package: str) -> str:
    """The binary's path, or an error that says which Debian package to install."""
    found = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if found is None:
        raise ConfigError(f"{binary} is not installed: apt-get install {package}")
    return found


def answers(base_url: str) -> bool:
    try:
        client = docker.DockerClient(base_url=base_url, version="auto", timeout=5)
    except Exception:  # any failure means "not usable"; the caller decides what next
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def dockerd_running(pidfile: Path = PIDFILE) -> bool:
    """A dockerd (not a recycled pid) is alive per the pidfile."""
    try:
        pid = int(pidfile.read_text().strip())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    except (OSError, ValueError):
        return False


def start_dockerd() -> subprocess.Popen[bytes]:
    dockerd = require("dockerd", "docker.io")
    require("containerd", "containerd")
    require("runc", "runc")
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
        start_new_session=True,  # a Ctrl-C in the caller must not hit dockerd first
    )


def wait_until_answering(base_url: str, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if answers(base_url):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    log = cache_dir() / "dockerd" / "dockerd.log"
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    raise RemoteUnavailable(
        f"dockerd did not answer on {base_url}; last lines of {log}:\n" + "\n".join(tail)
    )


def ensure_engine() -> tuple[str, subprocess.Popen[bytes] | None]:
    """A Docker engine's URL: ``$DOCKER_HOST``, slipway's private one, or a new one.

    Returns the URL and the process when this call started the engine.
    """
    from_env = os.environ.get("DOCKER_HOST")
    if from_env and answers(from_env):
        return from_env, None
    base_url = f"unix://{SOCKET}"
    if answers(base_url):
        return base_url, None
    if dockerd_running() and SOCKET.exists():
        wait_until_answering(base_url, None)  # another process's, still starting
        return base_url, None
    started = start_dockerd()
    wait_until_answering(base_url, started)
    return base_url, started


def ensure_base_image(base_url: str) -> None:
    """Run the offline base-image build (a no-op when the engine has the image)."""
    require("docker", "docker.io")
    env = {**os.environ, "DOCKER_HOST": base_url}
    result = subprocess.run(
        [str(BASE_IMAGE_BUILD)],
        env=env,
        capture_output=True,
        text=True,
        timeout=BASE_IMAGE_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise RemoteUnavailable(
            f"examples/base-image/build failed ({result.returncode}):\n"
            + (result.stdout + result.stderr)[-3000:]
        )


def registry_answers(host: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{host}/v2/", timeout=2).close()
        return True
    except urllib.error.HTTPError as error:
        return error.code == 401  # answering, and asking for credentials
    except OSError:
        return False


def start_registry(
    folder: Path, port: int, *, htpasswd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Debian's docker-registry on 127.0.0.1:port, storing under ``folder``."""
    binary = require(REGISTRY_BINARY, "docker-registry")
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    auth = f"auth:\n  htpasswd:\n    realm: slipway\n    path: {htpasswd}\n" if htpasswd else ""
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: slipway-{port}\n" + auth
    )
    log = (folder / "registry.log").open("ab")
    proc = subprocess.Popen(
        [binary, "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if registry_answers(host):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RemoteUnavailable(
        "docker-registry did not start:\n" + (folder / "registry.log").read_text()[-2000:]
    )


def ensure_registry(port: int = 5000) -> str:
    """A registry on 127.0.0.1:port (started and left running when none answers)."""
    host = f"127.0.0.1:{port}"
    if not registry_answers(host):
        start_registry(cache_dir() / f"registry-{port}", port)
    return host
