"""Stages in containers: real containers of the base image on a real dockerd.

Each test uses its own stage name, set as the ``io.slipway.stage`` label, so
"no container is left" is checked on exactly the containers the test made.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest
from pydantic import ValidationError

from slipway.exceptions import StageCancelled, StageFailed, StageTimeout, UnsafeInputError
from slipway.redact import Redactor
from slipway.tasks import process_tree
from slipway.tasks.commands import run_commands
from slipway.tasks.containers import LABEL_STAGE, ContainerSpec, run_in_container
from slipway.tasks.junit_reports import collect_suite
from slipway.tasks.stages import stage_environment
from tests.servers.docker_engine import BASE_IMAGE

SECRET = "tok-c0ffee-4242"
SPEC = ContainerSpec(image=BASE_IMAGE)

WRITE_JUNIT = """python3 - <<'EOF'
import os, pathlib
path = pathlib.Path("reports/unit.xml")
path.parent.mkdir(exist_ok=True)
path.write_text(
    '<?xml version="1.0" encoding="utf-8"?>'
    '<testsuites><testsuite name="unit" tests="3" failures="0" skipped="1">'
    '<testcase classname="test_app" name="test_health" time="0.01"/>'
    '<testcase classname="test_app" name="test_metrics" time="0.02"/>'
    '<testcase classname="test_app" name="test_slow" time="0"><skipped/></testcase>'
    '</testsuite></testsuites>'
)
print("wrote", path, "as", os.getuid())
EOF"""


@pytest.fixture
def stage() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


def leftovers(client: docker.DockerClient, stage: str) -> list[str]:
    return [
        c.name
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_STAGE}={stage}"})
    ]


def run(
    client,
    commands,
    workspace: Path,
    stage: str,
    *,
    cwd=None,
    env=None,
    timeout=60.0,
    lines=None,
    spec=SPEC,
):
    return run_in_container(
        client,
        spec,
        commands,
        stage=stage,
        workspace=workspace,
        cwd=cwd or workspace,
        env=env or {},
        timeout=timeout,
        redactor=Redactor([SECRET]),
        log=(lines if lines is not None else []).append,
    )


def test_commands_run_in_the_image_and_the_host_reads_their_report(docker_client, tmp_path, stage):
    (tmp_path / "app").mkdir()
    lines: list[str] = []
    result = run(
        docker_client,
        [WRITE_JUNIT, f'echo "token {SECRET}"; pwd', "cat /etc/debian_version | cut -c1-2"],
        tmp_path,
        stage,
        cwd=tmp_path / "app",
        lines=lines,
    )

    assert result.exit_code == 0
    assert f"wrote reports/unit.xml as {os.getuid()}" in lines
    assert "token ***" in lines and "/workspace/app" in lines
    assert "12" in lines  # Debian bookworm: it ran in the image, not on the host
    assert SECRET not in "\n".join(lines) + result.output_tail
    assert lines[0].startswith("$ python3 - <<'EOF'")

    report_file = tmp_path / "app" / "reports" / "unit.xml"
    assert report_file.stat().st_uid == os.getuid()
    assert report_file.stat().st_gid == os.getgid()
    report = collect_suite("unit", tmp_path, [report_file])
    assert report.tests == 3 and report.count("skipped") == 1 and not report.problems
    assert leftovers(docker_client, stage) == []


def test_only_the_stage_environment_reaches_the_container(
    docker_client, tmp_path, stage, monkeypatch
):
    monkeypatch.setenv("WORKER_ONLY_SECRET", "worker-value-7d2e")
    env = stage_environment(
        base={},
        pipeline_env={"GREETING": "hello", "PYTHONPATH": "src"},
        run_vars={"SLIPWAY_APP": "example-app", "SLIPWAY_COMMIT": "abc123", "CI": "true"},
    )
    lines: list[str] = []
    run(
        docker_client,
        [
            'echo "$GREETING from $SLIPWAY_APP at $SLIPWAY_COMMIT ci=$CI pp=$PYTHONPATH"',
            'echo "worker=${WORKER_ONLY_SECRET:-unset}"; echo "path=$PATH"',
        ],
        tmp_path,
        stage,
        env=env,
        lines=lines,
    )

    assert "hello from example-app at abc123 ci=true pp=src" in lines
    assert "worker=unset" in lines
    # the image's own PATH, not the worker's virtualenv
    assert "path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines


def test_non_zero_exit_fails_like_run_commands(docker_client, tmp_path, stage):
    commands = ["echo step one", f"echo 'last words {SECRET}'; exit 3", "echo never"]
    lines: list[str] = []
    with pytest.raises(StageFailed) as in_container:
        run(docker_client, commands, tmp_path, stage, lines=lines)
    with pytest.raises(StageFailed) as on_host:
        run_commands(
            commands,
            stage=stage,
            cwd=tmp_path,
            env={"PATH": os.environ["PATH"]},
            timeout=60,
            redactor=Redactor([SECRET]),
            log=lambda _line: None,
        )

    assert str(in_container.value) == str(on_host.value)
    assert str(in_container.value) == (
        f"stage '{stage}' failed: exit code 3 from \"echo 'last words ***'; exit 3\": "
        "last words ***"
    )
    assert not isinstance(in_container.value, StageTimeout)
    assert "never" not in lines
    assert leftovers(docker_client, stage) == []


def test_command_not_found_is_named(docker_client, tmp_path, stage):
    with pytest.raises(StageFailed, match=r"exit code 127 \(command not found\)"):
        run(docker_client, ["no-such-tool --version"], tmp_path, stage)
    assert leftovers(docker_client, stage) == []


def test_timeout_kills_and_removes_the_container(docker_client, tmp_path, stage):
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(StageTimeout) as caught:
        run(
            docker_client,
            ["echo started; sleep 120; echo finished"],
            tmp_path,
            stage,
            timeout=8,
            lines=lines,
        )
    elapsed = time.monotonic() - started

    assert str(caught.value) == (
        f"stage '{stage}' failed: timed out after 8 s running "
        "'echo started; sleep 120; echo finished'"
    )
    assert "started" in lines and "finished" not in lines
    assert elapsed < 8 + 10
    assert leftovers(docker_client, stage) == []


def test_a_cancelled_run_kills_and_removes_the_container(docker_client, tmp_path, stage):
    lines: list[str] = []
    process_tree.reset_cancel()
    threading.Timer(3.0, process_tree.request_cancel).start()
    try:
        with pytest.raises(StageCancelled, match="cancelled while running 'setsid sleep 120"):
            run(docker_client, ["setsid sleep 120 & sleep 120"], tmp_path, stage, lines=lines)
    finally:
        process_tree.reset_cancel()

    assert leftovers(docker_client, stage) == []


def test_container_removed_when_the_caller_blows_up(docker_client, tmp_path, stage):
    """Prefect cancelling the task looks like this: an exception in the caller's thread."""

    def log(line: str) -> None:
        if line.startswith("$ echo second"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_container(
            docker_client,
            SPEC,
            ["echo first", "echo second"],
            stage=stage,
            workspace=tmp_path,
            cwd=tmp_path,
            env={},
            timeout=60,
            redactor=Redactor(),
            log=log,
        )
    assert leftovers(docker_client, stage) == []


@pytest.fixture(scope="module")
def image_without_bash(docker_client) -> str:
    """The base image minus bash (built once; the engine's cache keeps it between sessions)."""
    import io

    dockerfile = f"FROM {BASE_IMAGE}\nRUN rm -f /usr/bin/bash /bin/bash\n"
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()),
        tag="slipway-test/no-bash:1",
        network_mode="none",
        rm=True,
    )
    return "slipway-test/no-bash:1"


def test_image_without_bash_runs_commands_with_sh(
    docker_client, tmp_path, stage, image_without_bash
):
    lines: list[str] = []
    spec = ContainerSpec(image=image_without_bash)
    run(
        docker_client,
        ["echo shell=$0", "test ! -e /usr/bin/bash && echo no-bash"],
        tmp_path,
        stage,
        spec=spec,
        lines=lines,
    )
    assert "shell=sh" in lines and "no-bash" in lines
    with pytest.raises(StageFailed, match="exit code 4"):
        run(docker_client, ["false || exit 4"], tmp_path, stage, spec=spec)
    assert leftovers(docker_client, stage) == []


def test_missing_working_directory_fails_before_docker(tmp_path, stage):
    client = docker.DockerClient(base_url="unix:///nonexistent/slipway.sock", version="1.41")
    with pytest.raises(StageFailed, match="working directory .* does not exist"):
        run(client, ["true"], tmp_path, stage, cwd=tmp_path / "missing")
    with pytest.raises(UnsafeInputError, match="outside the workspace"):
        run(client, ["true"], tmp_path / "ws", stage, cwd=tmp_path)


@pytest.mark.parametrize(
    "fields",
    [
        {"image": "Bad Image"},
        {"image": "app;rm -rf /"},
        {"user": "root; id"},
        {"network": "bridge"},
        {"workdir_mount": "workspace"},
        {"workdir_mount": "/"},
        {"workdir_mount": "/a/../etc"},
        {"workdir_mount": "/ws:/etc"},
        {"privileged": True},
    ],
)
def test_unsafe_container_specs_are_refused(fields):
    with pytest.raises(ValidationError):
        ContainerSpec(**{"image": BASE_IMAGE, **fields})
