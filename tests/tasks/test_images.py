"""Image build and push against a real dockerd and real registries (no mocks).

The example app's image is built once per module (cold, then warm to see the layer
cache), and the pushes, pulls and runs reuse it: with the vfs storage driver every
build step copies the whole root filesystem, so builds are the expensive part.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest
from prefect import flow
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import ValidationError

from slipway.exceptions import ConfigError, RemoteUnavailable, UnsafeInputError
from slipway.tasks.images import (
    DIGEST_RE,
    OCI_CREATED,
    OCI_REVISION,
    OCI_SOURCE,
    BuiltImage,
    ImageBuildError,
    ImageBuildSpec,
    ImageBuildTimeout,
    LocalImage,
    RegistryError,
    build_image,
    pull_by_digest,
    push_image,
    push_image_task,
    split_digest_ref,
    validate_image_reference,
)
from tests.servers.docker_engine import BASE_IMAGE, Registry, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_APP = ROOT / "examples" / "example-app"
REVISION = "3f2a9c1d7e6b5a4f3e2d1c0b9a8f7e6d5c4b3a29"
SOURCE_WITH_TOKEN = "https://ci-bot:tok-5d1e2f3a4b@git.example.com/team/example-app.git"


@dataclass(frozen=True)
class ExampleBuild:
    workspace: Path
    cold: LocalImage
    warm: LocalImage
    cold_log: list[str]
    warm_log: list[str]
    cold_seconds: float
    warm_seconds: float


def _copy_example(target: Path) -> Path:
    shutil.copytree(
        EXAMPLE_APP,
        target,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "reports", ".coverage"),
    )
    # What the pipeline's build stage does first: pip inside the build cannot reach PyPI.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "-d",
            "wheels",
            "-r",
            "requirements.txt",
        ],
        cwd=target,
        check=True,
        capture_output=True,
    )
    assert list((target / "wheels").glob("*.whl")), "pip download left no wheel"
    return target


@pytest.fixture(scope="module")
def example_build(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> ExampleBuild:
    """The example app built twice from one workspace: first, then again (warm cache)."""
    workspace = _copy_example(tmp_path_factory.mktemp("image-build") / "example-app")
    spec = ImageBuildSpec(
        repository="team/example-app",
        build_args={"APP_VERSION": "1.4.2"},
        labels={"org.opencontainers.image.title": "example-app"},
        push=False,
    )
    logs: list[list[str]] = [[], []]
    images: list[LocalImage] = []
    seconds: list[float] = []
    for number, log in zip((7, 8), logs, strict=True):
        started = time.monotonic()
        images.append(
            build_image(
                docker_client,
                spec,
                workspace=workspace,
                revision=REVISION,
                build_number=number,
                source_url=SOURCE_WITH_TOKEN,
                log=log.append,
            )
        )
        seconds.append(time.monotonic() - started)
    print(f"\nexample image build: first {seconds[0]:.1f} s, warm {seconds[1]:.1f} s")
    return ExampleBuild(workspace, images[0], images[1], logs[0], logs[1], *seconds)


def test_build_labels_tags_and_streamed_log(example_build, docker_client):
    image = example_build.cold
    assert image.repository == "team/example-app"
    assert image.tags == (REVISION[:12], "build-7")
    assert image.image_id.startswith("sha256:")
    assert image.size_bytes > 10_000_000

    attrs = docker_client.images.get(image.image_id).attrs
    assert "team/example-app:build-7" in attrs["RepoTags"]
    # the commit's tag follows its latest build (the warm one)
    latest = docker_client.images.get(f"team/example-app:{REVISION[:12]}")
    assert latest.id == example_build.warm.image_id
    labels = attrs["Config"]["Labels"]
    assert labels[OCI_REVISION] == REVISION
    # labels are public: the clone URL's credentials are dropped
    assert labels[OCI_SOURCE] == "https://git.example.com/team/example-app.git"
    assert "tok-5d1e2f3a4b" not in json.dumps(attrs)
    created = datetime.fromisoformat(labels[OCI_CREATED].replace("Z", "+00:00"))
    assert labels[OCI_CREATED].endswith("Z")
    assert datetime.now(UTC) - created < timedelta(hours=1)
    assert labels["org.opencontainers.image.title"] == "example-app"
    assert attrs["Config"]["User"] == "10001:10001"
    assert "APP_VERSION=1.4.2" in attrs["Config"]["Env"]

    log = example_build.cold_log
    assert any(line.startswith("Step 1/") and BASE_IMAGE in line for line in log)
    assert any("Successfully built" in line for line in log)
    assert not any("\x1b[" in line for line in log), "ANSI colour codes reach the log"


def test_warm_rebuild_reuses_the_layer_cache(example_build):
    log = example_build.warm_log
    run_step = next(i for i, line in enumerate(log) if "RUN set -eu" in line)
    assert log[run_step + 1].strip() == "---> Using cache"
    copy_steps = [i for i, line in enumerate(log) if " : COPY " in line]
    assert copy_steps and all(log[i + 1].strip() == "---> Using cache" for i in copy_steps)
    # same Dockerfile steps, new build number and creation time: a new image on cached layers
    assert example_build.warm.tags == (REVISION[:12], "build-8")


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, json.loads(response.read())


def test_push_pull_by_digest_and_run(example_build, registry: Registry, docker_client):
    # plain HTTP to 127.0.0.1 works because dockerd trusts loopback registries by default
    assert "127.0.0.0/8" in docker_client.info()["RegistryConfig"]["InsecureRegistryCIDRs"]
    lines: list[str] = []
    started = time.monotonic()
    built = push_image(
        docker_client,
        example_build.cold,
        registry=None,
        registry_url=registry.host,
        log=lines.append,
    )
    print(f"\npush of the example image: {time.monotonic() - started:.1f} s")

    assert isinstance(built, BuiltImage)
    assert built.repository == f"{registry.host}/team/example-app"
    assert DIGEST_RE.match(built.digest)
    assert built.ref == f"{registry.host}/team/example-app@{built.digest}"
    assert built.image_id == example_build.cold.image_id
    # the registry itself serves that manifest under both tags
    for tag in built.tags:
        assert registry.manifest_digest("team/example-app", tag) == built.digest
    assert any(line.startswith("pushed ") for line in lines)

    # Forget the image locally (keeping the build cache's parent layers), pull it back
    # by digest: the engine must fetch the manifest and config from the registry.
    docker_client.images.remove(built.image_id, force=True, noprune=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(built.image_id)
    pulled = pull_by_digest(docker_client, built.ref)
    assert pulled.id == built.image_id
    assert built.ref in pulled.attrs["RepoDigests"]

    port = free_port()
    container = docker_client.containers.run(
        built.ref,
        detach=True,
        network_mode="host",
        environment={"PORT": str(port), "HOST": "127.0.0.1"},
        labels={"io.slipway.test": "image-run"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                container.reload()
                if container.status == "exited" or time.monotonic() > deadline:
                    pytest.fail("the app did not answer:\n" + container.logs().decode())
                time.sleep(0.2)
        assert status == 200
        assert body["status"] == "ok"
        assert body["version"] == "1.4.2"
    finally:
        container.remove(force=True)


def test_push_with_credentials(example_build, auth_registry: Registry, docker_client):
    credentials = DockerRegistryCredentials(
        username=auth_registry.username,
        password=auth_registry.password,
        registry_url=f"http://{auth_registry.host}",
    )
    lines: list[str] = []
    built = push_image(docker_client, example_build.warm, registry=credentials, log=lines.append)

    assert built.repository == f"{auth_registry.host}/team/example-app"
    assert auth_registry.manifest_digest("team/example-app", "build-8") == built.digest
    assert any(f"logging in to {auth_registry.host} as ci-pusher" in line for line in lines)
    assert not any(auth_registry.password in line for line in lines)


def test_wrong_password_fails_fast_without_the_password(
    example_build, auth_registry: Registry, docker_client
):
    wrong = "Wrong-pw-3b8e1c5a77"
    credentials = DockerRegistryCredentials(
        username=auth_registry.username, password=wrong, registry_url=auth_registry.host
    )
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        push_image(docker_client, example_build.cold, registry=credentials, log=lines.append)

    assert time.monotonic() - started < 5  # refused at once, not retried
    message = str(caught.value)
    assert "credentials refused" in message and "401" in message
    assert auth_registry.host in message
    rendered = "".join(traceback.format_exception(caught.value))
    assert wrong not in rendered and wrong not in "\n".join(lines)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert not any("retrying" in line for line in lines)
    assert auth_registry.manifest_digest("team/example-app", "build-7") is None


def test_unreachable_registry_is_retried_then_fails(example_build, docker_client):
    closed = f"127.0.0.1:{free_port()}"
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable) as caught:
        push_image(
            docker_client,
            example_build.cold,
            registry=None,
            registry_url=closed,
            log=lines.append,
            attempts=3,
            retry_delay=0.2,
        )
    elapsed = time.monotonic() - started

    message = str(caught.value)
    assert f"push at {closed} failed after 3 attempts" in message
    assert "connection refused" in message
    retries = [line for line in lines if "retrying in" in line]
    assert [line.rsplit(" ", 2)[-2] for line in retries] == ["0.2", "0.4"]  # backoff doubles
    assert elapsed >= 0.6


def test_unknown_registry_host_fails_at_once(example_build, docker_client):
    started = time.monotonic()
    with pytest.raises(RegistryError, match="no such host"):
        push_image(
            docker_client,
            example_build.cold,
            registry=None,
            registry_url="registry.does-not-exist.invalid:5000",
            log=lambda _line: None,
        )
    assert time.monotonic() - started < 10


def test_build_failure_names_the_failing_step(docker_client, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "RUN echo preparing\n"
        "RUN echo 'compiler says no' >&2; exit 3\n"
        "RUN echo never\n"
    )
    lines: list[str] = []
    spec = ImageBuildSpec(repository="team/broken", push=False)
    with pytest.raises(ImageBuildError) as caught:
        build_image(
            docker_client,
            spec,
            workspace=tmp_path,
            revision=REVISION,
            build_number=1,
            source_url="https://git.example.com/team/broken.git",
            log=lines.append,
        )

    message = str(caught.value)
    assert "Step 3/" in message and "RUN echo 'compiler says no'" in message
    assert "returned a non-zero code: 3" in message
    assert caught.value.__context__ is None  # no raw docker exception attached
    assert "compiler says no" in lines
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(f"team/broken:{REVISION[:12]}")


def test_build_timeout_abandons_the_build(docker_client, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo started; sleep 120\n")
    spec = ImageBuildSpec(repository="team/slow", push=False, timeout=4)
    started = time.monotonic()
    with pytest.raises(ImageBuildTimeout, match="timed out after 4 s at Step 2/"):
        build_image(
            docker_client,
            spec,
            workspace=tmp_path,
            revision=REVISION,
            build_number=1,
            source_url="x",
            log=lambda _line: None,
        )
    assert time.monotonic() - started < 4 * 2 + 10
    # the engine cancels a build whose client went away: nothing keeps sleeping
    deadline = time.monotonic() + 15
    while any(
        "sleep 120" in " ".join(c.attrs["Config"]["Cmd"] or [])
        for c in docker_client.containers.list(all=True)
    ):
        assert time.monotonic() < deadline, "the abandoned build is still running"
        time.sleep(0.5)


def test_push_task_in_a_flow(example_build, registry: Registry, docker_host, flow_env):
    @flow
    def publish(image: LocalImage) -> BuiltImage:
        return push_image_task(DockerHost(base_url=docker_host), image, registry_url=registry.host)

    built = publish(example_build.warm)
    assert built.repository == f"{registry.host}/team/example-app"
    assert registry.manifest_digest("team/example-app", "build-8") == built.digest


# ---------------------------------------------------------------- refused before docker


@pytest.fixture
def unreachable_client() -> docker.DockerClient:
    """A real client for an engine that does not exist: any call it made would fail
    with a connection error, so a validation error proves no call was made."""
    return docker.DockerClient(base_url="unix:///nonexistent/slipway.sock", version="1.41")


@pytest.mark.parametrize(
    "repository",
    [
        "Team/App",
        "app;rm -rf /",
        "../app",
        "team//app",
        "-app",
        "app-",
        "app:latest",
        "registry.example.com:5000/app",
        "app name",
        "app\nx",
        "",
    ],
)
def test_bad_repository_names_are_refused(repository):
    with pytest.raises(ValidationError, match="repository"):
        ImageBuildSpec(repository=repository, push=False)


@pytest.mark.parametrize(
    "fields",
    [
        {"dockerfile": "../Dockerfile"},
        {"context": "/etc"},
        {"registry_url": "registry"},  # docker would take it for a Docker Hub namespace
        {"registry_url": "https://user:pw@registry.example.com"},
        {"registry_url": "registry.example.com/Team"},
        {"registry": "creds", "registry_url": "registry.example.com"},
        {"build_args": {"BAD-NAME": "x"}},
        {"target": "-x"},
        {"push": True},  # nowhere to push
        {"timeout": 0},
        {"unknown": 1},
    ],
)
def test_bad_spec_fields_are_refused(fields):
    with pytest.raises(ValidationError):
        ImageBuildSpec(**{"repository": "team/app", "push": False, **fields})


@pytest.mark.parametrize(
    ("revision", "build_number"),
    [
        ("main; rm -rf /", 1),
        ("HEAD", 1),
        (REVISION.upper(), 1),
        (REVISION, "1 2"),
        (REVISION, "../x"),
        (REVISION, "x" * 130),
    ],
)
def test_bad_revision_or_build_number_refused_before_docker(
    unreachable_client, tmp_path, revision, build_number
):
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\n")
    with pytest.raises(UnsafeInputError):
        build_image(
            unreachable_client,
            ImageBuildSpec(repository="team/app", push=False),
            workspace=tmp_path,
            revision=revision,
            build_number=build_number,
            source_url="x",
            log=lambda _line: None,
        )


def test_missing_dockerfile_refused_before_docker(unreachable_client, tmp_path):
    with pytest.raises(ConfigError, match="Dockerfile 'Dockerfile' not found"):
        build_image(
            unreachable_client,
            ImageBuildSpec(repository="team/app", push=False),
            workspace=tmp_path,
            revision=REVISION,
            build_number=1,
            source_url="x",
            log=lambda _line: None,
        )


@pytest.mark.parametrize(
    "image",
    [
        LocalImage("team/app", ("bad tag",), "sha256:" + "a" * 64, 1),
        LocalImage("team/app", ("-x",), "sha256:" + "a" * 64, 1),
        LocalImage("Team/App", ("v1",), "sha256:" + "a" * 64, 1),
    ],
)
def test_bad_names_refused_before_push(unreachable_client, image):
    with pytest.raises(UnsafeInputError):
        push_image(
            unreachable_client,
            image,
            registry=None,
            registry_url="registry.example.com",
            log=lambda _line: None,
        )


def test_push_needs_a_destination(unreachable_client):
    image = LocalImage("team/app", ("v1",), "sha256:" + "a" * 64, 1)
    with pytest.raises(ConfigError):
        push_image(unreachable_client, image, registry=None, log=lambda _line: None)


@pytest.mark.parametrize(
    "ref",
    [
        "team/app:v1",
        "team/app@sha256:abc",
        "Team/app@sha256:" + "a" * 64,
        "team/app@md5:" + "a" * 32,
    ],
)
def test_pull_needs_a_digest_reference(unreachable_client, ref):
    with pytest.raises(UnsafeInputError):
        split_digest_ref(ref)
    with pytest.raises(UnsafeInputError):
        pull_by_digest(unreachable_client, ref)


def test_image_reference_grammar():
    digest = "sha256:" + "0" * 64
    for good in [
        "busybox",
        "team/app:v1.2",
        f"127.0.0.1:5000/team/app@{digest}",
        f"localhost/app:1@{digest}",
        "registry.example.com/a/b_c/d-e:latest",
    ]:
        assert validate_image_reference(good) == good
    for bad in [
        "Team/app",
        "app:",
        "app:-x",
        "app@sha256:xyz",
        "app name",
        "app;id",
        "host:5000/App",
    ]:
        with pytest.raises(UnsafeInputError):
            validate_image_reference(bad)
