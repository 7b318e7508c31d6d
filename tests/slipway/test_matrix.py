"""Matrix stages: GitHub Actions' include / exclude rules, member names and env, and
validation errors that point at the line."""

from __future__ import annotations

import textwrap

import pytest

from slipway.exceptions import SpecError
from slipway.matrix import combinations, env_name, member_name
from slipway.spec import PipelineOverrides
from slipway.spec_loader import check_overrides, dependencies, parse_pipeline


def load(text: str):  # noqa: ANN201
    return parse_pipeline(textwrap.dedent(text).lstrip("\n"), "slipway.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(text)
    return [p.render("slipway.yaml") for p in caught.value.problems]


def test_a_matrix_stage_becomes_a_group_of_members_that_needs_waits_for():
    pipeline = load(
        """
        app: demo
        stages:
          - name: test
            matrix: {python: ["3.10", "3.11", "3.12", "3.13"]}
            env: {TOXENV: "py$MATRIX_PYTHON"}
            run: tox
            timeout: 60
          - name: package
            run: make
        """
    )
    group = pipeline.stage("test")
    assert group.is_group and group.fail_fast is True and group.max_parallel is None
    members = group.parallel or []
    assert [m.name for m in members] == ["test-3.10", "test-3.11", "test-3.12", "test-3.13"]
    assert members[1].env == {"MATRIX_PYTHON": "3.11", "TOXENV": "py$MATRIX_PYTHON"}
    assert members[1].run == ["tox"] and members[1].timeout == 60 and members[1].matrix is None
    assert dependencies(pipeline) == {"test": [], "package": ["test"]}
    check_overrides(pipeline, PipelineOverrides(only=["test-3.12"]))  # members can be chosen


def test_include_and_exclude_follow_github_actions():
    matrix = {
        "os": ["linux", "mac"],
        "python": ["3.12", "3.13"],
        "include": [
            {"arch": "x64"},  # fits every combination: added to all
            {"arch": "arm64", "python": "3.12"},  # overwrites an added value, not an axis value
            {"os": "linux", "coverage": True},
            {"os": "windows"},  # contradicts every combination's os: a combination of its own
            {"os": "windows", "python": "3.12"},
        ],
    }
    assert combinations(matrix) == [
        {"os": "linux", "python": "3.12", "arch": "arm64", "coverage": "true"},
        {"os": "linux", "python": "3.13", "arch": "x64", "coverage": "true"},
        {"os": "mac", "python": "3.12", "arch": "arm64"},
        {"os": "mac", "python": "3.13", "arch": "x64"},
        {"os": "windows"},
        {"os": "windows", "python": "3.12"},
    ]
    excluded = {"os": ["linux", "mac"], "python": ["3.12", "3.13"], "exclude": [{"os": "mac"}]}
    assert combinations(excluded) == [
        {"os": "linux", "python": "3.12"},
        {"os": "linux", "python": "3.13"},
    ]
    # exclude is applied before include: an include may bring a combination back
    back = {**excluded, "include": [{"os": "mac", "python": "3.13"}]}
    assert combinations(back)[-1] == {"os": "mac", "python": "3.13"}
    assert combinations({"include": [{"node": 20}, {"node": 22}]}) == [
        {"node": "20"},
        {"node": "22"},
    ]


def test_member_names_stay_valid_stage_names_and_env_names_are_upper_case():
    assert member_name("test", {"os": "ubuntu 24.04", "py": "3.13"}) == "test-ubuntu_24.04-3.13"
    assert env_name("node-version") == "MATRIX_NODE_VERSION"


def test_fail_fast_and_max_parallel_are_kept_on_the_group():
    pipeline = load(
        """
        app: demo
        stages:
          - name: test
            matrix: {python: ["3.12", "3.13"]}
            fail_fast: false
            max_parallel: 1
            needs: []
            when: {branch: main}
            run: x
        """
    )
    group = pipeline.stage("test")
    assert (group.fail_fast, group.max_parallel, group.needs) == (False, 1, [])
    assert group.when is not None and group.when.branch == ["main"]
    assert all(m.when is None and m.needs is None for m in group.parallel or [])


def test_bad_matrices_are_reported_with_their_lines():
    assert problems(
        """
        app: demo
        stages:
          - name: test
            matrix:
              python: []
              os: [linux, 3.10]
              exclude: [{pyton: "3.12"}]
              include: [{include: x}]
            run: x
          - name: b
            matrix: "3.12"
            run: x
        """
    ) == [
        "slipway.yaml:5: stages[0].matrix.python: axis 'python' is empty: give at least one value",
        "slipway.yaml:6: stages[0].matrix.os[1]: 3.1 is a number: quote matrix values ('3.1'); "
        "YAML reads 3.10 as 3.1",
        "slipway.yaml:7: stages[0].matrix.exclude[0].pyton: unknown key 'pyton' in exclude "
        "(did you mean 'python'?)",
        "slipway.yaml:8: stages[0].matrix.include[0].include: 'include' is not a valid matrix key",
        "slipway.yaml:11: stages[1].matrix: Input should be a valid dictionary (got '3.12')",
    ]


def test_matrix_size_is_capped_at_256_like_github():
    axis = [str(n) for n in range(7)]
    found = problems(
        f"""
        app: demo
        stages:
          - name: test
            matrix: {{a: {axis}, b: {axis}, c: {axis}}}
            run: x
        """
    )
    assert found == [
        "slipway.yaml:4: stages[0].matrix: 343 combinations; a matrix may have at most 256"
    ]


def test_everything_excluded_and_colliding_names_are_refused():
    assert problems(
        """
        app: demo
        stages:
          - name: test
            matrix: {os: [linux], exclude: [{os: linux}]}
            run: x
          - name: lint
            needs: []
            matrix: {tool: ["a b", "a_b"]}
            run: x
        """
    ) == [
        "slipway.yaml:4: stages[0].matrix.exclude: every combination is excluded: the matrix "
        "has no members",
        "slipway.yaml:8: stages[1].matrix: combinations {'tool': 'a b'} and {'tool': 'a_b'} "
        "both make the name 'lint-a_b'",
    ]


def test_members_cannot_be_needed_and_cannot_clash_with_stages():
    assert problems(
        """
        app: demo
        stages:
          - name: test-3.12
            run: x
          - name: test
            matrix: {python: ["3.12"]}
            run: x
          - name: after
            needs: [test-3.13]
            run: x
          - name: grouped
            parallel:
              - {name: inner, run: x, matrix: {a: ["1"]}}
        """
    ) == [
        "slipway.yaml:6: stages[1].matrix: duplicate stage name (a matrix member's) 'test-3.12' "
        "(first at stages[0].name)",
        "slipway.yaml:9: stages[2].needs[0]: unknown stage 'test-3.13' in needs (did you mean "
        "'test-3.12'?)",
        "slipway.yaml:11: stages[3]: stage 'inner': a matrix inside 'parallel' is not supported "
        "(make it a stage of its own)",
    ]
    found = problems(
        """
        app: demo
        stages:
          - {name: test, matrix: {py: ["3.12"]}, run: x}
          - {name: after, needs: [test-3.12], run: x}
        """
    )
    assert found == [
        "slipway.yaml:4: stages[1].needs[0]: unknown stage 'test-3.12' in needs (stages inside "
        "a parallel group or matrix cannot be needed; need the group)"
    ]
