"""``when`` conditions: globs over branches and changed files, env equality, and nesting."""

from __future__ import annotations

import pytest

from slipway.conditions import ConditionContext, branch_matches, changed_matches, evaluate
from slipway.spec import When

CHANGED = ("src/app/main.py", "docs/index.md", ".github/workflows/ci.yml", "README.md")


def ctx(branch: str | None = "release/1.2", **env: str) -> ConditionContext:
    return ConditionContext(branch=branch, env=env or {"DEPLOY": "yes"}, changed_files=CHANGED)


def when(**raw: object) -> When:
    return When.model_validate(raw)


@pytest.mark.parametrize(
    ("branch", "pattern", "matches"),
    [
        ("release/1.2", "release/*", True),
        ("release/a/b", "release/*", False),  # '*' stays inside one path segment
        ("release/a/b", "release/**", True),  # '**' crosses segments
        ("main", "main", True),
        ("mainline", "main", False),
        ("feature/x", "{feature,fix}/*", True),
        ("hotfix/x", "{feature,fix}/*", False),
        (None, "*", False),  # a detached commit has no branch
    ],
)
def test_branch_globs(branch, pattern, matches):
    assert branch_matches(branch, [pattern]) is matches


def test_changed_files_with_globstar_and_braces():
    assert changed_matches(CHANGED, ["src/**/*.py"]) == ["src/app/main.py"]
    assert changed_matches(["src/main.py"], ["src/**/*.py"]) == ["src/main.py"]  # zero dirs
    assert changed_matches(CHANGED, ["{docs,site}/**"]) == ["docs/index.md"]
    assert changed_matches(CHANGED, ["*.md"]) == ["README.md"]  # not docs/index.md
    assert changed_matches(CHANGED, ["**/*.yml"]) == [".github/workflows/ci.yml"]  # dot dirs
    assert changed_matches(CHANGED, ["lib/**"]) == []


def test_branch_condition_and_reason():
    ok = evaluate(when(branch="release/*"), ctx())
    assert ok.holds
    assert ok.reason == "branch 'release/1.2' matches release/*"

    no = evaluate(when(branch=["main", "hotfix/*"]), ctx("release/a/b"))
    assert not no.holds
    assert no.reason == "branch 'release/a/b' does not match main, hotfix/*"


def test_env_equality_and_reason():
    assert evaluate(when(env={"DEPLOY": "yes"}), ctx()).holds

    wrong = evaluate(when(env={"DEPLOY": "no"}), ctx())
    assert not wrong.holds
    assert wrong.reason == "env DEPLOY='yes' is not 'no'"

    unset = evaluate(when(env={"TARGET": "prod"}), ctx())
    assert not unset.holds
    assert "TARGET" in unset.reason and "'prod'" in unset.reason


def test_changeset_condition_and_reason():
    hit = evaluate(when(changeset=["src/**/*.py", "lib/**"]), ctx())
    assert hit.holds
    assert hit.reason == "changeset matches src/**/*.py, lib/** (src/app/main.py)"

    several = evaluate(when(changeset="**/*.md"), ctx())
    assert several.reason == "changeset matches **/*.md (docs/index.md ...)"

    miss = evaluate(when(changeset="{web,site}/**"), ctx())
    assert not miss.holds
    assert miss.reason == "no changed file matches {web,site}/**"


def test_every_key_of_one_mapping_must_hold():
    both = evaluate(when(branch="release/*", env={"DEPLOY": "yes"}), ctx())
    assert both.holds
    assert "matches release/*" in both.reason and "DEPLOY" in both.reason

    one_fails = evaluate(when(branch="release/*", env={"DEPLOY": "no"}), ctx())
    assert not one_fails.holds
    assert one_fails.reason == "env DEPLOY='yes' is not 'no'"  # the failing key, not the other


def test_all_of_names_the_first_failing_part():
    verdict = evaluate(
        when(allOf=[{"branch": "release/*"}, {"changeset": "web/**"}, {"env": {"X": "1"}}]),
        ctx(),
    )
    assert not verdict.holds
    assert verdict.reason == "allOf: no changed file matches web/**"

    assert evaluate(when(allOf=[{"branch": "release/*"}, {"changeset": "src/**"}]), ctx()).holds


def test_any_of_lists_every_reason_when_none_holds():
    verdict = evaluate(when(anyOf=[{"branch": "main"}, {"env": {"DEPLOY": "no"}}]), ctx())
    assert not verdict.holds
    assert verdict.reason == (
        "anyOf: none holds (branch 'release/1.2' does not match main; env DEPLOY='yes' is not 'no')"
    )

    one = evaluate(when(anyOf=[{"branch": "main"}, {"changeset": "docs/**"}]), ctx())
    assert one.holds
    assert one.reason == "anyOf: changeset matches docs/** (docs/index.md)"


def test_not_inverts_and_says_what_it_negated():
    verdict = evaluate(when(**{"not": {"branch": "release/**"}}), ctx("release/a/b"))
    assert not verdict.holds
    assert verdict.reason == "not (branch 'release/a/b' matches release/**)"

    assert evaluate(when(**{"not": {"branch": "main"}}), ctx()).holds


def test_deep_nesting():
    # deploy from main or a release branch, unless it is a dry run, and only when code changed
    condition = when(
        allOf=[
            {"anyOf": [{"branch": "main"}, {"branch": "release/*"}]},
            {"not": {"env": {"DRY_RUN": "1"}}},
            {"changeset": ["src/**", "Dockerfile"]},
        ]
    )
    assert evaluate(condition, ctx("release/2.0", DRY_RUN="0")).holds
    assert evaluate(condition, ctx("main", DRY_RUN="0")).holds

    dry = evaluate(condition, ctx("main", DRY_RUN="1"))
    assert not dry.holds
    assert dry.reason == "allOf: not (env DRY_RUN='1')"

    other = evaluate(condition, ctx("feature/x", DRY_RUN="0"))
    assert not other.holds
    assert other.reason.startswith("allOf: anyOf: none holds (branch 'feature/x' does not match")


@pytest.mark.parametrize(
    ("changed", "ignore_holds", "not_changeset_holds"),
    [
        (["README.md", "docs/a.md"], False, False),  # docs only: both skip
        (["README.md", "src/app.py"], True, False),  # mixed: only changeset_ignore runs
        (["src/app.py"], True, True),  # code only: both run
        ([], False, True),  # nothing changed: no file counts, nothing matches
    ],
)
def test_changeset_ignore_is_paths_ignore_and_not_changeset_is_none_matches(
    changed, ignore_holds, not_changeset_holds
):
    context = ConditionContext(branch="main", env={}, changed_files=changed)

    ignore = evaluate(when(changeset_ignore=["**/*.md"]), context)
    negated = evaluate(when(**{"not": {"changeset": ["**/*.md"]}}), context)

    assert (ignore.holds, negated.holds) == (ignore_holds, not_changeset_holds)
    if changed == ["README.md", "src/app.py"]:
        assert ignore.reason == "src/app.py changed outside **/*.md"
    if changed == ["README.md", "docs/a.md"]:
        assert ignore.reason == "every changed file matches changeset_ignore **/*.md"
