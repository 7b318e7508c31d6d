"""The stage walker, driven by hand: what starts when, and what never runs."""

from __future__ import annotations

import textwrap

from slipway.flows.scheduler import Decision, StageWalker
from slipway.report import StageOutcome
from slipway.spec import Stage
from slipway.spec_loader import parse_pipeline


def walker(text: str, skip: dict[str, str] | None = None) -> StageWalker:
    pipeline = parse_pipeline(textwrap.dedent(text).lstrip("\n"), "slipway.yaml")
    skip = skip or {}

    def decide(stage: Stage) -> Decision:
        if stage.name in skip:
            return Decision(False, skip[stage.name])
        return Decision(True)

    return StageWalker(pipeline, decide)


def names(stages) -> list[str]:
    return [s.name for s in stages]


def finish(w: StageWalker, name: str, status: str = "passed", reason: str = "") -> None:
    w.record(StageOutcome(name, status, 1.0, reason))  # type: ignore[arg-type]


SEQUENTIAL = """
    app: demo
    stages:
      - {name: lint, run: x}
      - {name: build, run: x}
      - {name: test, run: x}
    """


def test_default_order_is_sequential():
    w = walker(SEQUENTIAL)
    order = []
    while not w.done:
        w.advance()
        started = w.take(8)
        assert len(started) == 1  # nothing else may start alongside
        assert w.running == 1
        order += names(started)
        finish(w, started[0].name)
        assert w.running == 0

    assert order == ["lint", "build", "test"]
    assert [o.status for o in w.ordered()] == ["passed"] * 3


def test_stages_with_empty_needs_start_at_once():
    w = walker(
        """
        app: demo
        stages:
          - {name: build, run: x}
          - {name: lint, run: x, needs: []}
          - {name: docs, run: x, needs: []}
          - {name: test, run: x}
        """
    )

    w.advance()
    assert names(w.take(8)) == ["build", "lint", "docs"]
    w.advance()
    assert w.take(8) == []  # test waits for docs, the stage before it

    finish(w, "lint")
    finish(w, "build")
    w.advance()
    assert w.take(8) == []
    finish(w, "docs")
    w.advance()
    assert names(w.take(8)) == ["test"]


def test_slots_are_respected_in_file_order():
    w = walker(
        """
        app: demo
        stages:
          - {name: a, run: x, needs: []}
          - {name: b, run: x, needs: []}
          - {name: c, run: x, needs: []}
          - {name: d, run: x, needs: []}
        """
    )

    w.advance()
    assert names(w.take(2)) == ["a", "b"]
    assert w.running == 2
    assert names(w.take(0)) == []
    finish(w, "b")
    w.advance()
    assert names(w.take(1)) == ["c"]
    assert names(w.take(5)) == ["d"]
    assert w.running == 3


def test_failure_stops_dependents_but_not_independent_stages():
    w = walker(
        """
        app: demo
        stages:
          - {name: build, run: x}
          - {name: test, run: x}
          - {name: package, run: x}
          - {name: docs, run: x, needs: []}
          - {name: publish-docs, run: x}
        """
    )
    w.advance()
    assert names(w.take(8)) == ["build", "docs"]

    finish(w, "build", "failed", "exit code 2 from 'make'")
    settled = w.advance()

    assert [(o.name, o.status) for o in settled] == [("test", "not-run"), ("package", "not-run")]
    assert w.outcomes["test"].reason == "needs 'build', which failed"
    assert w.outcomes["package"].reason == "needs 'test', which did not run ('build' failed)"
    assert not w.done  # docs is still running, and publish-docs still to come

    finish(w, "docs")
    w.advance()
    assert names(w.take(8)) == ["publish-docs"]
    finish(w, "publish-docs")
    assert w.done
    assert [(o.name, o.status) for o in w.ordered()] == [
        ("build", "failed"),
        ("test", "not-run"),
        ("package", "not-run"),
        ("docs", "passed"),
        ("publish-docs", "passed"),
    ]


GROUPED = """
    app: demo
    stages:
      - {name: build, run: x}
      - name: tests
        parallel:
          - {name: unit, run: x}
          - {name: integration, run: x}
          - {name: e2e, run: x}
      - {name: deploy, run: x}
    """


def pass_build(w: StageWalker) -> None:
    w.advance()
    assert names(w.take(8)) == ["build"]
    finish(w, "build")


def start_group(w: StageWalker) -> None:
    pass_build(w)
    w.advance()
    assert names(w.take(8)) == ["unit", "integration", "e2e"]


def test_parallel_group_fails_only_after_every_member_finished():
    w = walker(GROUPED)
    start_group(w)

    finish(w, "integration", "failed", "exit code 1")
    assert "tests" not in w.outcomes  # the others are still running
    w.advance()
    assert "deploy" not in w.outcomes
    finish(w, "unit")
    assert "tests" not in w.outcomes
    finish(w, "e2e")

    group = w.outcomes["tests"]
    assert group.status == "failed"
    assert group.reason == "integration: exit code 1"
    assert group.seconds == 1.0
    settled = w.advance()
    assert [(o.name, o.status, o.reason) for o in settled] == [
        ("deploy", "not-run", "needs 'tests', which failed")
    ]
    assert w.done


def test_parallel_group_passes_when_members_pass_and_then_dependents_run():
    w = walker(GROUPED)
    start_group(w)
    for member in ("e2e", "unit", "integration"):
        finish(w, member)

    assert w.outcomes["tests"].status == "passed"
    w.advance()
    assert names(w.take(8)) == ["deploy"]


def test_skipped_group_skips_its_members_and_the_stage_after_it_still_runs():
    w = walker(GROUPED, skip={"tests": "no changed file matches tests/**"})
    pass_build(w)

    settled = w.advance()

    assert {(o.name, o.status) for o in settled} == {
        ("unit", "skipped"),
        ("integration", "skipped"),
        ("e2e", "skipped"),
        ("tests", "skipped"),
    }
    for name in ("unit", "integration", "e2e"):
        assert w.outcomes[name].reason == "no changed file matches tests/**"
        assert w.outcomes[name].group == "tests"
    # the stage after it only follows it (no `needs:`): order, not dependency
    assert names(w.take(8)) == ["deploy"]


def test_skipped_members_run_the_rest_of_the_group():
    w = walker(GROUPED, skip={"e2e": "branch 'x' does not match main"})
    pass_build(w)

    settled = w.advance()

    assert [(o.name, o.status) for o in settled] == [("e2e", "skipped")]
    assert names(w.take(8)) == ["unit", "integration"]
    finish(w, "unit")
    finish(w, "integration")
    assert w.outcomes["tests"].status == "passed"


def test_every_member_skipped_makes_the_group_skipped():
    w = walker(GROUPED, skip={"unit": "u", "integration": "i", "e2e": "e"})
    pass_build(w)
    w.advance()

    assert w.outcomes["tests"].status == "skipped"
    assert w.outcomes["tests"].reason == "every member skipped"


def test_all_members_cached_makes_the_group_cached():
    w = walker(GROUPED)
    start_group(w)
    for member in ("unit", "integration", "e2e"):
        finish(w, member, "cached")

    assert w.outcomes["tests"].status == "cached"
    assert w.outcomes["tests"].ok
    w.advance()
    assert names(w.take(8)) == ["deploy"]


def test_ordered_puts_members_right_after_their_group():
    w = walker(GROUPED)
    start_group(w)
    for member in ("e2e", "integration", "unit"):  # finish out of file order
        finish(w, member)
    w.advance()
    finish(w, "deploy")

    ordered = w.ordered()

    assert [(o.name, o.group) for o in ordered] == [
        ("build", None),
        ("tests", None),
        ("unit", "tests"),
        ("integration", "tests"),
        ("e2e", "tests"),
        ("deploy", None),
    ]
    assert w.group_of("unit") == "tests"
    assert w.group_of("deploy") is None


CHAIN = """
    app: demo
    stages:
      - {name: build, run: x}
      - {name: docs, run: x, when: {changeset: ["docs/**"]}}
      - {name: publish, run: x, needs: [docs]}
      - {name: announce, run: x, needs: [publish]}
      - {name: report, run: x, needs: [docs], run_if_needs_skipped: true}
      - {name: later, run: x}
    """


def test_a_condition_skip_propagates_down_the_chain():
    w = walker(CHAIN, skip={"docs": "when: no changed file matches docs/**"})
    pass_build(w)

    settled = w.advance()

    assert [(o.name, o.status, o.reason) for o in settled] == [
        ("docs", "skipped", "when: no changed file matches docs/**"),
        ("publish", "skipped", "needs 'docs', which was skipped"),
        ("announce", "skipped", "needs 'publish', which was skipped"),
    ]
    # report opted in with run_if_needs_skipped; later only follows report in file order
    assert names(w.take(8)) == ["report"]
    finish(w, "report")
    w.advance()
    assert names(w.take(8)) == ["later"]


def test_a_stage_left_out_by_a_run_parameter_does_not_skip_its_dependents():
    pipeline = parse_pipeline(textwrap.dedent(CHAIN).lstrip("\n"), "slipway.yaml")

    def decide(stage: Stage) -> Decision:
        if stage.name in ("build", "docs"):
            return Decision(False, "not among the 'stages' parameter", propagates=False)
        return Decision(True)

    w = StageWalker(pipeline, decide)
    assert [o.name for o in w.advance()] == ["build", "docs"]
    assert names(w.take(8)) == ["publish", "report"]  # announce waits for publish


def test_every_member_skipped_by_conditions_skips_the_dependents():
    w = walker(
        GROUPED.replace("{name: deploy, run: x}", "{name: deploy, run: x, needs: [tests]}"),
        skip={"unit": "u", "integration": "i", "e2e": "e"},
    )
    pass_build(w)
    w.advance()
    assert w.outcomes["tests"].status == "skipped"
    assert w.outcomes["deploy"].reason == "needs 'tests', which was skipped"


MATRIX = """
    app: demo
    stages:
      - name: test
        matrix: {python: ["3.10", "3.11", "3.12", "3.13"]}
        max_parallel: 2
        run: x
      - {name: package, run: x}
    """


def test_matrix_members_respect_max_parallel_and_the_group_gates_its_dependents():
    w = walker(MATRIX)
    w.advance()
    assert names(w.take(8)) == ["test-3.10", "test-3.11"]  # max_parallel: 2
    assert w.take(8) == []
    finish(w, "test-3.10")
    assert names(w.take(8)) == ["test-3.12"]
    for name in ("test-3.11", "test-3.12"):
        finish(w, name)
    assert names(w.take(8)) == ["test-3.13"]
    w.advance()
    assert w.take(8) == []  # package waits for every member
    finish(w, "test-3.13")
    assert w.outcomes["test"].status == "passed"
    w.advance()
    assert names(w.take(8)) == ["package"]


def test_matrix_fails_fast_by_default_members_not_started_do_not_start():
    w = walker(MATRIX)
    w.advance()
    w.take(8)
    finish(w, "test-3.11", "failed", "exit code 1")

    settled = w.advance()

    assert [(o.name, o.status, o.reason) for o in settled] == [
        ("test-3.12", "not-run", "fail_fast: 'test-3.11' failed"),
        ("test-3.13", "not-run", "fail_fast: 'test-3.11' failed"),
    ]
    assert "test" not in w.outcomes  # test-3.10 is still running: it ends on its own
    finish(w, "test-3.10")
    assert w.outcomes["test"].status == "failed"
    assert w.advance()[0].reason == "needs 'test', which failed"


def test_matrix_without_fail_fast_runs_every_member():
    w = walker(MATRIX.replace("max_parallel: 2", "max_parallel: 2\n        fail_fast: false"))
    w.advance()
    w.take(8)
    finish(w, "test-3.11", "failed", "exit code 1")
    assert w.advance() == []
    assert names(w.take(8)) == ["test-3.12"]


def test_a_parallel_group_that_says_fail_fast_stops_its_waiting_members():
    fast = GROUPED.replace(
        "parallel:", "fail_fast: true\n        max_parallel: 1\n        parallel:"
    )
    w = walker(fast)
    pass_build(w)
    w.advance()
    assert names(w.take(8)) == ["unit"]
    finish(w, "unit", "failed", "exit code 1")
    assert {(o.name, o.status) for o in w.advance()} == {
        ("integration", "not-run"),
        ("e2e", "not-run"),
        ("deploy", "not-run"),
    }
    assert w.outcomes["tests"].status == "failed"


def test_members_stopped_by_fail_fast_are_handed_out_even_when_nothing_follows():
    w = walker(
        MATRIX.replace("max_parallel: 2", "max_parallel: 1").split("      - {name: package")[0]
    )
    w.advance()
    assert names(w.take(8)) == ["test-3.10"]
    finish(w, "test-3.10", "failed", "exit code 1")
    assert w.outcomes["test"].status == "failed"
    assert not w.done  # the stopped members still need their task runs
    assert [o.name for o in w.advance()] == ["test-3.11", "test-3.12", "test-3.13"]
    assert w.done
