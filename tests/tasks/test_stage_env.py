"""Stage environment values: ``$VAR`` expansion and what a stage hands to later ones,
on real bash stages run by the plain stage function."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slipway.exceptions import StageFailed
from slipway.spec import Stage
from slipway.tasks.stage_env import Handover, expand_env, with_handovers
from slipway.tasks.stages import StageContext, execute_stage, stage_environment


def test_expansion_is_shell_like():
    base = {"PATH": "/usr/bin:/bin", "HOME": "/home/ci"}
    assert expand_env(
        {
            "PATH": "/opt/x/bin:$PATH",
            "TOOLS": "${HOME}/tools",
            "PRICE": "$$5 and $5 and 100%$",  # $$ is a literal $; $5 and a lone $ stay
            "MISSING": "[$NOT_SET]",  # unset: empty, as in a shell
            "LATER": "$TOOLS/bin",  # a key may use the keys before it
        },
        base,
    ) == {
        "PATH": "/opt/x/bin:/usr/bin:/bin",
        "TOOLS": "/home/ci/tools",
        "PRICE": "$5 and $5 and 100%$",
        "MISSING": "[]",
        "LATER": "/home/ci/tools/bin",
    }
    assert base == {"PATH": "/usr/bin:/bin", "HOME": "/home/ci"}  # not changed


def test_pipeline_env_expands_against_the_workers_and_slipways_which_stay_last():
    env = stage_environment(
        base={"PATH": "/bin"},
        pipeline_env={"PATH": "/venv/bin:$PATH", "OUT": "$SLIPWAY_APP.d", "SLIPWAY_APP": "x"},
        run_vars={"SLIPWAY_APP": "demo"},
    )
    assert env == {"PATH": "/venv/bin:/bin", "SLIPWAY_APP": "demo", "OUT": "demo.d"}


def test_handovers_prepend_path_later_stages_first():
    env = with_handovers(
        {"PATH": "/bin", "A": "0"},
        [Handover(path=("/one",), env=(("A", "1"),)), Handover(path=("/two", "/three"))],
    )
    assert env == {"PATH": "/two:/three:/one:/bin", "A": "1"}
    assert with_handovers({}, [Handover(path=("/x",))]) == {"PATH": "/x"}


@pytest.fixture
def ctx(tmp_path: Path) -> StageContext:
    workspace = tmp_path / "runs" / "run-1"
    workspace.mkdir(parents=True)
    env = stage_environment(
        base={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        pipeline_env={"TOOLS": "$HOME/tools"},
        run_vars={"CI": "true"},
    )
    return StageContext(workspace=workspace, env=env, default_timeout=60)


def stage(**raw: object) -> Stage:
    return Stage.model_validate({"name": "s", **raw})


def test_a_real_stage_with_path_from_its_own_path_runs(ctx: StageContext):
    lines: list[str] = []
    result = execute_stage(
        stage(env={"PATH": "$TOOLS/bin:$PATH"}, run="echo $PATH; bash -c 'echo bash found'"),
        ctx,
        log=lines.append,
    )
    assert result.handover == Handover()
    assert lines[1] == f"{ctx.env['TOOLS']}/bin:{os.environ['PATH']}"
    assert lines[2] == "bash found"


def test_a_stage_hands_path_and_variables_to_the_stages_after_it(ctx: StageContext):
    setup = stage(
        name="setup",
        run=[
            "mkdir -p tools && printf '#!/bin/sh\\necho mytool says $GREETING\\n' > tools/mytool",
            "chmod +x tools/mytool",
            'echo "$PWD/tools" >> "$SLIPWAY_PATH_FILE"',
            'echo GREETING=hello >> "$SLIPWAY_ENV_FILE"',
        ],
    )
    first = execute_stage(setup, ctx)
    assert first.handover == Handover(
        path=(f"{ctx.workspace}/tools",), env=(("GREETING", "hello"),)
    )
    assert not (ctx.workspace / "path").exists()  # the files are not in the repository

    lines: list[str] = []
    execute_stage(stage(name="use", run="mytool"), ctx, log=lines.append, upstream=[first])
    assert lines[-1] == "mytool says hello"

    with pytest.raises(StageFailed, match="command not found"):
        execute_stage(stage(name="alone", run="mytool"), ctx)  # it did not need setup


def test_a_stage_cannot_forge_the_runs_own_variables(ctx: StageContext):
    with pytest.raises(StageFailed) as caught:
        execute_stage(stage(run='echo SLIPWAY_BRANCH=main >> "$SLIPWAY_ENV_FILE"'), ctx)
    assert "SLIPWAY_ENV_FILE line 1: SLIPWAY_BRANCH is set by slipway" in str(caught.value)
    with pytest.raises(StageFailed, match="line 2: expected NAME=VALUE"):
        execute_stage(stage(run='printf "A=1\\nnot a pair\\n" >> "$SLIPWAY_ENV_FILE"'), ctx)
