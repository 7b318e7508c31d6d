"""What stage commands see of the worker: an allowlist, a HOME of their own, the
secrets their own stage asked for and nothing else (real bash processes)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from slipway.exceptions import ConfigError, StageFailed
from slipway.redact import Redactor
from slipway.spec import Stage
from slipway.tasks.stages import (
    PASS_ENV_VARIABLE,
    StageContext,
    execute_stage,
    stage_environment,
    worker_env_for_stages,
)
from slipway.workspace import remove_workspace, run_home

# What a worker's environment held in the security review, and what a stage printed.
WORKER = {
    "PATH": os.environ["PATH"],
    "HOME": "/home/worker",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "Europe/Berlin",
    "TMPDIR": "/tmp",
    "TERM": "xterm",
    "USER": "worker",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY123456",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "DATABASE_PASSWORD": "db-pass-5c1e7a",
    "SLIPWAY_WEBHOOK_SECRET": "whsec-0f3b9d2a",
    "SLIPWAY_HOME": "/home/worker/.slipway",
    "PREFECT_API_URL": "http://127.0.0.1:4200/api",
    "PREFECT_API_AUTH_STRING": "admin:prefect-pass-91ab",
    "PREFECT_API_KEY": "pnu_example_key_7788",
    "GITHUB_TOKEN": "ghp_exampletoken0000000000000000000000",
    "DOCKER_HOST": "unix:///var/run/docker.sock",
    "KUBECONFIG": "/home/worker/.kube/config",
    "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
}
RUN_VARS = {"CI": "true", "SLIPWAY_APP": "app", "SLIPWAY_COMMIT": "0" * 40}


def test_only_the_allowlist_of_the_worker_environment_reaches_stages() -> None:
    env = stage_environment(base=WORKER, pipeline_env={"PYTHONPATH": "src"}, run_vars=RUN_VARS)

    expected = {"PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM", "USER"}
    assert set(env) == expected | {"PYTHONPATH"} | set(RUN_VARS)
    for secret in ("AWS_SECRET_ACCESS_KEY", "DATABASE_PASSWORD", "SLIPWAY_WEBHOOK_SECRET"):
        assert WORKER[secret] not in env.values()
    assert not [name for name in env if name.startswith("PREFECT_")]
    # the worker's HOME is not passed on: the run sets its own (run_vars)
    assert "HOME" not in env


def test_the_pipeline_file_and_run_variables_win_over_the_worker() -> None:
    env = stage_environment(
        base=WORKER,
        pipeline_env={"LANG": "de_DE.UTF-8", "DOCKER_HOST": "tcp://127.0.0.1:2375"},
        run_vars={**RUN_VARS, "HOME": "/runs/1.home"},
    )

    assert env["LANG"] == "de_DE.UTF-8"
    assert env["DOCKER_HOST"] == "tcp://127.0.0.1:2375"  # named by the file, by value
    assert env["HOME"] == "/runs/1.home"


def test_an_operator_may_pass_more_names_but_never_prefect_or_webhook_ones() -> None:
    worker = {**WORKER, PASS_ENV_VARIABLE: "SSL_CERT_FILE, NOT_SET_ANYWHERE"}
    assert worker_env_for_stages(worker)["SSL_CERT_FILE"] == WORKER["SSL_CERT_FILE"]
    assert "NOT_SET_ANYWHERE" not in worker_env_for_stages(worker)

    for name in ("PREFECT_API_AUTH_STRING", "SLIPWAY_WEBHOOK_SECRET"):
        with pytest.raises(ConfigError, match=name):
            worker_env_for_stages({**WORKER, PASS_ENV_VARIABLE: f"SSL_CERT_FILE,{name}"})


def test_run_home_is_fresh_private_and_outside_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "workspaces" / "runs" / "abc"
    workspace.mkdir(parents=True)
    home = run_home(workspace)
    (home / "leftover").write_text("from an earlier execution")

    again = run_home(workspace)

    assert again == home and not (home / "leftover").exists()
    assert workspace not in home.parents and home.parent == workspace.parent
    assert stat.S_IMODE(home.stat().st_mode) == 0o700

    remove_workspace(workspace)

    assert not workspace.exists() and not home.exists()


def _context(
    workspace: Path, secrets: dict[str, dict[str, str]], redactor: Redactor
) -> StageContext:
    home = run_home(workspace)
    return StageContext(
        workspace=workspace,
        env=stage_environment(
            base=WORKER, pipeline_env={}, run_vars={**RUN_VARS, "HOME": str(home)}
        ),
        default_timeout=30,
        redactor=redactor,
        stage_secrets=secrets,
    )


def test_a_stage_gets_only_its_own_secrets_masked_and_env_shows_no_worker_secret(
    tmp_path: Path,
) -> None:
    password = "registry-pass-3e8a1f"
    redactor = Redactor([password])
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ctx = _context(workspace, {"login": {"REGISTRY_PASSWORD": password}}, redactor)
    lines: list[str] = []
    login = Stage(name="login", run=['echo "password=$REGISTRY_PASSWORD"', "env | sort"])
    other = Stage(name="other", run=['echo "other=${REGISTRY_PASSWORD:-unset}"', "env | sort"])

    execute_stage(login, ctx, log=lines.append)
    execute_stage(other, ctx, log=lines.append)

    output = "\n".join(lines)
    assert "password=***" in output and password not in output
    assert "other=unset" in output
    for name in ("AWS_SECRET_ACCESS_KEY", "DATABASE_PASSWORD", "SLIPWAY_WEBHOOK_SECRET"):
        assert WORKER[name] not in output and f"{name}=" not in output
    assert "PREFECT_" not in output
    assert f"HOME={workspace}.home" in output


def test_a_stage_cannot_read_the_profile_of_the_worker_from_its_home(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ctx = _context(workspace, {}, Redactor())
    probe = Stage(
        name="probe",
        run="for f in .prefect/profiles.toml .docker/config.json .git-credentials .kube/config; "
        'do test ! -e "$HOME/$f" || { echo "found $f"; exit 1; }; done; echo clean',
    )
    lines: list[str] = []

    execute_stage(probe, ctx, log=lines.append)

    assert lines[-1] == "clean"


def test_a_failing_stage_message_masks_its_secret(tmp_path: Path) -> None:
    password = "registry-pass-77c0d2"
    redactor = Redactor([password])
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ctx = _context(workspace, {"login": {"REGISTRY_PASSWORD": password}}, redactor)
    login = Stage(name="login", run='echo "refused: $REGISTRY_PASSWORD" && exit 3')

    with pytest.raises(StageFailed) as failure:
        execute_stage(login, ctx)

    assert password not in str(failure.value) and "refused: ***" in str(failure.value)
