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


def test_skipped_group_skips_its_members_and_dependents_still_run():
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
    assert names(w.take(8)) == ["deploy"]  # skipped is not failed: what needs it carries on


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
