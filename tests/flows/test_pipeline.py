"""The pipeline flow end to end under Prefect's test harness, on real git remotes."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
from prefect.states import State

from slipway.flows.pipeline import run_pipeline
from slipway.report import PipelineReport
from slipway.tasks.artifacts import sha256_file
from tests.flows.prefect_api import artifacts, logs, task_runs
from tests.servers.git_http import commit_files

pytestmark = pytest.mark.usefixtures("flow_env")

FAILING_JUNIT = (
    '<testsuite name="unit" tests="2">'
    '<testcase classname="pkg.test_a" name="test_ok" time="0.1"/>'
    '<testcase classname="pkg.test_a" name="test_broken" time="0.2">'
    '<failure message="assert 1 == 2">trace</failure></testcase></testsuite>'
)
PASSING_JUNIT = (
    '<testsuite name="integration" tests="1">'
    '<testcase classname="pkg.test_b" name="test_http" time="0.5"/></testsuite>'
)


def spec(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def run(url: str, **params: object) -> tuple[State, PipelineReport]:
    state = run_pipeline(repository=url, **params)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, PipelineReport), report
    return state, report


def statuses(report: PipelineReport) -> dict[str, str]:
    return {s.name: s.status for s in report.stages}


def test_suites_run_in_parallel_and_a_failing_suite_fails_after_the_others(git_remote):
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                f"""
                app: demo
                stages:
                  - name: lint
                    run: echo lint ok
                  - name: test
                    parallel:
                      - name: unit
                        run: mkdir -p r && echo '{FAILING_JUNIT}' > r/unit.xml && exit 1
                        junit: r/unit.xml
                      - name: integration
                        run: sleep 1.5 && mkdir -p r && echo '{PASSING_JUNIT}' > r/int.xml
                        junit: r/int.xml
                  - name: package
                    run: echo never
                  - name: docs
                    needs: [lint]
                    run: sleep 0.2 && echo docs
                """
            )
        }
    )
    state, report = run(url)
    assert state.is_failed()
    assert statuses(report) == {
        "lint": "passed",
        "test": "failed",
        "unit": "failed",
        "integration": "passed",  # ran to the end although unit had failed long before
        "package": "not-run",
        "docs": "passed",  # independent of the failure
    }
    assert report.failed_stage == "test"
    assert "pkg.test_a::test_broken" in report.reason
    assert "unit" in state.message and "test_broken" in state.message
    assert report.stage("package").reason == "needs 'test', which failed"
    unit = report.stage("unit").tests
    assert unit is not None and (unit.count("passed"), unit.count("failed")) == (1, 1)

    runs = task_runs(state.state_details.flow_run_id, expect={"package", "unit", "integration"})
    assert runs["package"].state.name == "NotRun"
    assert runs["unit"].state.is_failed() and runs["integration"].state.is_completed()
    found = artifacts(state.state_details.flow_run_id)
    tests_md = found["demo-tests"].data
    assert "test_broken" in tests_md and "| TOTAL | 3 | 2 | 1 | 0 | 0 |" in tests_md
    summary = found["demo-pipeline-summary"].data
    assert "not run" in summary and "**Failed stage `test`**" in summary


def test_when_conditions_skip_stages_visibly_not_as_passed(git_remote):
    _bare, url = git_remote(
        {
            "src/app.py": "print('hi')\n",
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: build
                    run: echo build
                  - name: docs
                    when: {changeset: ["docs/**"]}
                    run: echo docs
                  - name: release
                    when: {anyOf: [{branch: "release/*"}, {env: {FORCE_RELEASE: "yes"}}]}
                    run: echo release
                  - name: code
                    when: {allOf: [{changeset: ["src/**/*.py"]}, {not: {branch: "wip/*"}}]}
                    run: echo code
                """
            ),
        }
    )
    state, report = run(url)
    assert state.is_completed()
    assert statuses(report) == {
        "build": "passed",
        "docs": "skipped",
        "release": "skipped",
        "code": "passed",
    }
    assert "no changed file matches docs/**" in report.stage("docs").reason
    runs = task_runs(state.state_details.flow_run_id, expect={"docs"})
    assert runs["docs"].state.name == "Skipped"
    assert "no changed file matches" in runs["docs"].state.message
    summary = artifacts(state.state_details.flow_run_id)["demo-pipeline-summary"].data
    assert "| docs | ⏭️ skipped |" in summary

    _state, forced = run(url, env={"FORCE_RELEASE": "yes"}, skip_stages=["code"])
    assert statuses(forced)["release"] == "passed"
    assert forced.stage("code").reason == "skipped by the 'skip_stages' parameter"


def test_rerun_of_the_same_commit_reruns_only_what_failed(git_remote, tmp_path):
    marker = tmp_path / "fixed"
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: build
                    run: mkdir -p dist && echo "built $SLIPWAY_COMMIT" > dist/app.txt
                    artifacts: [dist/app.txt]
                  - name: flaky
                    run: test -f "$MARKER"
                  - name: use-build
                    run: grep built dist/app.txt
                """
            )
        }
    )
    first_state, first = run(url, env={"MARKER": str(marker)})
    assert first_state.is_failed()
    assert statuses(first) == {"build": "passed", "flaky": "failed", "use-build": "not-run"}

    marker.touch()
    second_state, second = run(url, env={"MARKER": str(marker)})
    assert second_state.is_completed()
    # build is reused and its archived file restored for the stage after it
    assert statuses(second) == {"build": "cached", "flaky": "passed", "use-build": "passed"}
    assert "stage build: cached result reused" in logs(second_state.state_details.flow_run_id)
    second_runs = task_runs(second_state.state_details.flow_run_id, expect={"build"})
    assert second_runs["build"].state.name == "Cached"

    third_state, third = run(url, env={"MARKER": str(marker)}, refresh_cache=True)
    assert third_state.is_completed() and statuses(third)["build"] == "passed"


def test_changing_a_stage_spec_reruns_it_and_what_depends_on_it(git_remote):
    files = {
        "slipway.yaml": spec(
            """
            app: demo
            stages:
              - name: a
                run: echo a
              - name: b
                run: echo b
              - name: c
                needs: [a]
                run: echo c
            """
        )
    }
    bare, url = git_remote(files)
    run(url)
    # same content in a new commit: every stage reruns (commit is part of the key)
    commit_files(bare, {"README.md": "x\n"}, "docs")
    _s, report = run(url)
    assert set(statuses(report).values()) == {"passed"}
    _s, again = run(url)
    assert set(statuses(again).values()) == {"cached"}
    _s, changed_env = run(url, env={"NEW": "1"})
    assert set(statuses(changed_env).values()) == {"passed"}


def test_retries_and_timeout_come_from_the_spec(git_remote, tmp_path):
    counter = tmp_path / "attempts"
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: flaky
                    needs: []
                    retries: {attempts: 2, delay: 0.1, backoff: 2}
                    run: echo x >> "$COUNTER" && test "$(wc -l < "$COUNTER")" -ge 3
                  - name: slow
                    needs: []
                    timeout: 1
                    run: sleep 60
                """
            )
        }
    )
    started = time.monotonic()
    state, report = run(url, env={"COUNTER": str(counter)})
    assert time.monotonic() - started < 30  # the 60 s sleep was killed, not waited for
    assert counter.read_text().count("x") == 3
    assert report.stage("flaky").status == "passed"
    assert report.stage("slow").status == "failed"
    assert "timed out after 1 s" in report.stage("slow").reason
    assert state.is_failed()


def test_shell_metacharacters_in_branch_and_message_never_reach_a_shell(git_remote, tmp_path):
    branch = "feat/$(touch${IFS}pwned-branch);x`touch${IFS}pwned-tick`"
    bare, url = git_remote(
        {
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: show
                    run:
                      - printf '%s' "$SLIPWAY_BRANCH" > branch.txt
                      - git log -1 --format=%s > msg.txt
                    artifacts: [branch.txt, msg.txt]
                """
            )
        },
        branch=branch,
        message="fix: $(touch pwned-msg); `touch pwned-msg2`",
    )
    state, report = run(url, branch=branch)
    assert state.is_completed(), state.message
    shown = {a.path: a for _stage, a in report.artifacts}
    assert shown["branch.txt"].size == len(branch.encode())
    message = "fix: $(touch pwned-msg); `touch pwned-msg2`\n"
    assert shown["msg.txt"].size == len(message.encode())
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))


def test_invalid_pipeline_file_fails_before_any_stage_runs(git_remote, tmp_path):
    marker = tmp_path / "ran"
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                f"""
                app: demo
                stages:
                  - name: first
                    run: touch {marker}
                  - name: second
                    run: echo hi
                    needs: [frist]
                """
            )
        }
    )
    state, report = run(url)
    assert state.is_failed()
    assert report.failed_stage == "load-spec"
    assert "slipway.yaml:7: stages[1].needs[0]: unknown stage 'frist'" in report.reason
    assert "did you mean 'first'" in report.reason
    assert not marker.exists()
    runs = task_runs(state.state_details.flow_run_id, expect={"checkout*", "load-spec*"})
    assert runs and all(name.startswith(("checkout", "load-spec")) for name in runs)


def test_missing_command_and_unsafe_junit_fail_with_clear_reasons(git_remote):
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        '<testsuite name="x"><testcase name="&lol3;"/></testsuite>'
    )
    _bare, url = git_remote(
        {
            "bomb.src": bomb,
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: missing
                    needs: []
                    run: definitely-not-a-command --flag
                  - name: bomb
                    needs: []
                    run: mkdir -p r && cp bomb.src r/bomb.xml
                    junit: r/bomb.xml
                """
            ),
        }
    )
    state, report = run(url)
    assert state.is_failed()
    assert "command not found" in report.stage("missing").reason
    assert "refused unsafe XML" in report.stage("bomb").reason


def test_stage_selection_parameter_and_build_artifact_fingerprints(git_remote):
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: build
                    run: mkdir -p dist && printf 'wheel-bytes' > dist/demo.whl
                    artifacts: ["dist/*.whl"]
                  - name: test
                    parallel:
                      - name: unit
                        run: echo unit
                      - name: e2e
                        run: echo e2e
                """
            )
        }
    )
    state, report = run(url, stages=["build", "unit"], keep_workspace=True)
    assert statuses(report) == {
        "build": "passed",
        "test": "passed",
        "unit": "passed",
        "e2e": "skipped",
    }
    [(stage, archived)] = report.artifacts
    assert (stage, archived.path, archived.size) == ("build", "dist/demo.whl", 11)
    table = artifacts(state.state_details.flow_run_id)["demo-build-artifacts"].data
    assert archived.sha256 in str(table)
    with pytest.raises(Exception, match="unknown stage 'nope'"):
        run_pipeline(repository=url, stages=["nope"]).result()
    assert len(archived.sha256) == 64


def test_archived_file_matches_the_workspace_file(git_remote, slipway_home):
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: build
                    run: mkdir -p dist && head -c 5000 /dev/urandom > dist/blob.bin
                    artifacts: [dist/blob.bin]
                """
            )
        }
    )
    state, report = run(url, keep_workspace=True)
    [(_stage, archived)] = report.artifacts
    [workspace_file] = list((slipway_home / "workspaces").rglob("dist/blob.bin"))
    assert sha256_file(workspace_file) == archived.sha256
    stored = slipway_home / "artifacts" / "sha256" / archived.sha256
    assert stored.read_bytes() == workspace_file.read_bytes()


def test_pipeline_notifies_slack_on_failure_and_success_without_secrets(git_remote, tmp_path):
    from prefect_slack import SlackWebhook

    from slipway.blocks.notifications import SlackNotifier
    from tests.servers.slack_receiver import SlackReceiver

    secret = "zz9PluralZAlpha42secret"
    marker = tmp_path / "fixed"
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                """
                app: notified
                stages:
                  - name: build
                    run: echo build
                  - name: check
                    run: echo "token is $TOKEN" && test -f "$MARKER"
                """
            )
        }
    )
    with SlackReceiver(webhook_path=f"/services/T1/B1/{secret}") as slack:
        SlackNotifier(webhook=SlackWebhook(url=slack.webhook_url)).save(
            "team-slack", overwrite=True
        )
        env = {"MARKER": str(marker), "TOKEN": secret}
        failed_state, failed = run(url, notifier="team-slack", env=env)
        marker.touch()
        ok_state, ok = run(url, notifier="team-slack", env=env)
        # and Slack being down never fails the pipeline
        SlackNotifier(webhook=SlackWebhook(url=slack.webhook_url + "-gone")).save(
            "broken-slack", overwrite=True
        )
        still_state, _still = run(url, notifier="broken-slack", env=env)

    assert failed_state.is_failed() and ok_state.is_completed() and still_state.is_completed()
    bodies = [r.raw.decode() for r in slack.received]
    assert len(bodies) == 3
    failure_body, success_body = bodies[0], bodies[1]
    assert "notified" in failure_body and "check" in failure_body
    assert failed.sha[:7] in failure_body and "main" in failure_body
    assert str(failed_state.state_details.flow_run_id) in failure_body  # link to the run
    assert str(ok_state.state_details.flow_run_id) in success_body
    assert all(secret not in body for body in bodies)
    assert secret not in logs(failed_state.state_details.flow_run_id)
    assert "could not be delivered" in logs(still_state.state_details.flow_run_id) or (
        "not delivered" in logs(still_state.state_details.flow_run_id).lower()
    )
    assert ok.status == "success"


def test_quality_gate_stage_fails_with_each_failed_condition(git_remote):
    coverage = (
        '<?xml version="1.0" ?><coverage version="7.0" line-rate="0.5" branch-rate="0" '
        'lines-covered="5" lines-valid="10"><packages/></coverage>'
    )
    _bare, url = git_remote(
        {
            "reports/coverage.xml": coverage,
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: quality
                    quality_gate:
                      local: {coverage: reports/coverage.xml, min_coverage: 90}
                  - name: after
                    run: echo never
                """
            ),
        }
    )
    state, report = run(url)
    assert state.is_failed()
    quality = report.stage("quality")
    assert quality.status == "failed" and quality.gate is not None
    assert quality.gate.phase == "Failed"
    assert "quality gate failed: coverage 50" in quality.reason and "90" in quality.reason
    assert report.stage("after").status == "not-run"
    rows = artifacts(state.state_details.flow_run_id)["demo-quality-gate"].data
    assert "coverage" in str(rows) and "90" in str(rows)


def test_gate_with_missing_data_fails_unless_the_stage_allows_inconclusive(git_remote):
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                """
                app: demo
                stages:
                  - name: strict
                    needs: []
                    quality_gate: {local: {coverage: missing.xml}}
                  - name: lenient
                    needs: []
                    allow_inconclusive: true
                    quality_gate: {local: {coverage: missing.xml}}
                """
            )
        }
    )
    _state, report = run(url)
    assert report.stage("strict").status == "failed"
    assert "inconclusive" in report.stage("strict").reason
    assert report.stage("lenient").status == "passed"
    assert report.stage("lenient").gate.phase == "Inconclusive"


@pytest.mark.usefixtures("docker_host")
def test_a_stage_runs_in_a_container_with_its_reports_read_on_the_host(
    git_remote, docker_host, monkeypatch
):
    from tests.servers.docker_engine import BASE_IMAGE

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    junit = (
        '<testsuite name="c" tests="1"><testcase classname="box" name="t" time="0.1"/></testsuite>'
    )
    _bare, url = git_remote(
        {
            "slipway.yaml": spec(
                f"""
                app: demo
                env: {{GREETING: hello}}
                stages:
                  - name: boxed
                    container: {{image: "{BASE_IMAGE}"}}
                    run:
                      - test "$GREETING" = hello && test -n "$SLIPWAY_COMMIT"
                      - test ! -e /etc/hostname-of-the-worker-{os.getpid()}
                      - mkdir -p r && echo '{junit}' > r/c.xml && python3 --version
                    junit: r/c.xml
                """
            )
        }
    )
    state, report = run(url)
    assert state.is_completed(), state.message
    boxed = report.stage("boxed")
    assert boxed.tests is not None and boxed.tests.count("passed") == 1
