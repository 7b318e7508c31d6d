"""Matrix stages, the skip rule and handed-over environments in the real pipeline flow
(Prefect's test harness, real git remotes, real bash)."""

from __future__ import annotations

import textwrap

import pytest

from slipway.flows.pipeline import run_pipeline
from slipway.report import PipelineReport
from tests.flows.prefect_api import artifacts, logs, task_runs

pytestmark = pytest.mark.usefixtures("flow_env")


def run(url: str, **params: object) -> tuple[object, PipelineReport]:
    state = run_pipeline(repository=url, **params)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, PipelineReport), report
    return state, report


def test_a_matrix_runs_one_member_per_value_and_what_needs_it_waits_for_all(git_remote):
    _bare, url = git_remote(
        {
            "slipway.yaml": textwrap.dedent(
                """
                app: demo
                stages:
                  - name: test
                    matrix:
                      python: ["3.11", "3.12", "3.13"]
                      include: [{python: "3.13", experimental: true}]
                    fail_fast: false
                    env: {TOXENV: "py$MATRIX_PYTHON"}
                    run:
                      - echo "testing $TOXENV experimental=${MATRIX_EXPERIMENTAL:-no}"
                      - 'test "$MATRIX_PYTHON" != 3.12 || { echo "Error: 3.12 broke"; exit 1; }'
                  - name: package
                    run: echo never
                """
            ).lstrip()
        }
    )

    state, report = run(url)

    assert state.is_failed()
    assert {s.name: (s.status, s.group) for s in report.stages} == {
        "test": ("failed", None),
        "test-3.11": ("passed", "test"),
        "test-3.12": ("failed", "test"),
        "test-3.13-true": ("passed", "test"),  # fail_fast: false, so it ran to the end
        "package": ("not-run", None),
    }
    assert report.stage("test").reason == (
        'test-3.12: exit code 1 from \'test "$MATRIX_PYTHON" != 3.12 || { echo "Error: 3.12 '
        "broke\"; exit 1; }': Error: 3.12 broke"
    )
    flow_run = state.state_details.flow_run_id
    runs = task_runs(flow_run, expect={"test-3.11", "test-3.12", "test-3.13-true", "package"})
    assert runs["test-3.12"].state.is_failed() and runs["test-3.11"].state.is_completed()
    text = logs(flow_run)
    assert "testing py3.11 experimental=no" in text
    assert "testing py3.13 experimental=true" in text
    summary = artifacts(flow_run)["demo-pipeline-summary"].data
    assert "### `test-3.12`: last lines of output" in summary


def test_skips_propagate_unless_opted_out_and_stages_hand_over_path(git_remote):
    _bare, url = git_remote(
        {
            "src/app.py": "print('hi')\n",
            "slipway.yaml": textwrap.dedent(
                """
                app: demo
                env: {TOOLS: "$SLIPWAY_WORKSPACE/tools"}
                stages:
                  - name: setup
                    run:
                      - mkdir -p tools && printf '#!/bin/sh\\necho tool $1 $MODE\\n' > tools/tool
                      - chmod +x tools/tool && echo "$TOOLS" >> "$SLIPWAY_PATH_FILE"
                      - echo MODE=strict >> "$SLIPWAY_ENV_FILE"
                  - name: docs
                    when: {changeset: ["docs/**"]}
                    run: tool docs
                  - name: publish
                    needs: [docs]
                    run: tool publish
                  - name: report
                    needs: [docs]
                    run_if_needs_skipped: true
                    env: {PATH: "/nonexistent:$PATH"}
                    run: tool report
                  - name: code
                    when: {changeset_ignore: ["**/*.md"]}
                    run: tool code
                """
            ).lstrip(),
        }
    )

    state, report = run(url)

    assert state.is_completed(), report.reason
    assert {s.name: (s.status, s.reason) for s in report.stages} == {
        "setup": ("passed", ""),
        "docs": ("skipped", "when: no changed file matches docs/**"),
        "publish": ("skipped", "needs 'docs', which was skipped"),
        "report": ("passed", ""),
        "code": ("passed", ""),
    }
    text = logs(state.state_details.flow_run_id)
    assert "tool report strict" in text and "tool code strict" in text


def test_fail_fast_members_not_started_show_as_not_run_task_runs(git_remote):
    _bare, url = git_remote(
        {
            "slipway.yaml": textwrap.dedent(
                """
                app: demo
                stages:
                  - name: test
                    matrix: {node: [18, 20, 22]}
                    max_parallel: 1
                    run: test "$MATRIX_NODE" != 18
                """
            ).lstrip()
        }
    )

    state, report = run(url)

    assert state.is_failed()
    assert {s.name: s.status for s in report.stages} == {
        "test": "failed",
        "test-18": "failed",
        "test-20": "not-run",
        "test-22": "not-run",
    }
    assert report.stage("test-20").reason == "fail_fast: 'test-18' failed"
    runs = task_runs(state.state_details.flow_run_id, expect={"test-20", "test-22"})
    assert runs["test-20"].state.name == "NotRun" and runs["test-22"].state.name == "NotRun"
