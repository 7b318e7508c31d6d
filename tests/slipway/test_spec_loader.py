"""The pipeline file: a valid file parses, and every problem names file, key path and line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slipway.exceptions import ConfigError, SpecError, SpecProblem
from slipway.spec import PipelineOverrides
from slipway.spec_loader import check_overrides, dependencies, load_pipeline, parse_pipeline

FILE = "ci/slipway.yaml"


def spec(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str) -> list[SpecProblem]:
    with pytest.raises(SpecError) as caught:
        parse_pipeline(spec(text), FILE)
    error = caught.value
    assert error.file == FILE
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    # the exception text lists every problem as "file:line: path: message"
    for problem in error.problems:
        assert problem.render(FILE) in str(error)
    return error.problems


def only_problem(text: str) -> SpecProblem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


VALID = """
    app: demo
    env:
      LANG: C.UTF-8
    max_parallel: 2
    stages:
      - name: lint
        run: ruff check .
      - name: build
        run:
          - make build
          - make dist
        artifacts: dist/**/*.whl
        retries: 2
      - name: tests
        parallel:
          - name: unit
            run: pytest tests/unit
            junit: reports/unit.xml
          - name: integration
            run: pytest tests/integration
            dir: services/api
      - name: docs
        needs: []
        run: make docs
        when:
          changeset: ["docs/**"]
      - name: deploy
        needs: [tests, docs]
        run: ./deploy.sh
        when:
          allOf:
            - branch: [main, "release/*"]
            - not:
                env: {DRY_RUN: "1"}
    """


def test_valid_spec_parses_with_defaults():
    pipeline = parse_pipeline(spec(VALID), FILE)

    assert pipeline.app == "demo"
    assert [s.name for s in pipeline.all_stages()] == [
        "lint",
        "build",
        "tests",
        "unit",
        "integration",
        "docs",
        "deploy",
    ]
    build = pipeline.stage("build")
    assert build.run == ["make build", "make dist"]
    assert build.artifacts == ["dist/**/*.whl"]  # a single string becomes a list
    assert build.retries is not None and build.retries.attempts == 2
    assert pipeline.stage("lint").run == ["ruff check ."]
    assert pipeline.stage("lint").dir == "."
    assert pipeline.stage("tests").is_group
    assert pipeline.defaults.timeout == 3600
    assert pipeline.stage("deploy").when is not None
    assert pipeline.stage("deploy").when.all_of[1].not_.env == {"DRY_RUN": "1"}


def test_needs_defaults_to_previous_stage_and_empty_list_means_none():
    deps = dependencies(parse_pipeline(spec(VALID), FILE))

    assert deps == {
        "lint": [],
        "build": ["lint"],
        "tests": ["build"],
        "docs": [],
        "deploy": ["tests", "docs"],
    }


def test_unknown_key_suggests_the_close_one():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: build
            run: make
            timout: 60
        """
    )
    assert problem.path == "stages[0].timout"
    assert problem.line == 5
    assert problem.message == "unknown key 'timout' (did you mean 'timeout'?)"
    assert problem.render(FILE) == (
        "ci/slipway.yaml:5: stages[0].timout: unknown key 'timout' (did you mean 'timeout'?)"
    )


def test_wrong_type_shows_the_value_given():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: build
            run: make
            timeout: soon
        """
    )
    assert (problem.path, problem.line) == ("stages[0].timeout", 5)
    assert "valid number" in problem.message
    assert "(got 'soon')" in problem.message


def test_missing_required_key_points_at_its_mapping():
    problem = only_problem(
        """
        app: demo
        stages:
          - run: make
        """
    )
    assert problem.path == "stages[0].name"
    assert problem.line == 3
    assert problem.message == "required key 'name' is missing"


def test_dependency_cycle_is_shown():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: a
            run: x
            needs: [c]
          - name: b
            run: x
            needs: [a]
          - name: c
            run: x
            needs: [b]
        """
    )
    assert problem.path == "stages[0].needs"
    assert problem.line == 5
    assert problem.message == "dependency cycle: a -> c -> b -> a"


def test_unknown_stage_in_needs_with_hint():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: build
            run: x
          - name: test
            run: x
            needs: [biuld]
        """
    )
    assert (problem.path, problem.line) == ("stages[1].needs[0]", 7)
    assert problem.message == "unknown stage 'biuld' in needs (did you mean 'build'?)"


def test_stage_cannot_need_itself():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: a
            run: x
            needs: [a]
        """
    )
    assert problem.path == "stages[0].needs[0]"
    assert "cannot need itself" in problem.message


def test_duplicate_stage_names_across_groups():
    found = problems(
        """
        app: demo
        stages:
          - name: unit
            run: x
          - name: tests
            parallel:
              - name: unit
                run: y
        """
    )
    assert [(p.path, p.line) for p in found] == [("stages[1].parallel[0].name", 7)]
    assert found[0].message == "duplicate stage name 'unit' (first at stages[0].name)"


def test_needs_naming_a_parallel_member_says_to_need_the_group():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: tests
            parallel:
              - name: unit
                run: x
          - name: deploy
            run: y
            needs:
              - unit
        """
    )
    assert (problem.path, problem.line) == ("stages[1].needs[0]", 10)
    assert "unknown stage 'unit' in needs" in problem.message
    assert "need the group" in problem.message


def test_yaml_syntax_error_has_its_line():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: a
           run: x
        """
    )
    assert problem.path == ""
    assert problem.line == 4
    assert problem.message.startswith("not valid YAML:")
    assert problem.render(FILE).startswith("ci/slipway.yaml:4: not valid YAML:")


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("", "an empty file"),
        ("# only a comment\n", "an empty file"),
        ("- a\n- b\n", "a list"),
        ("just text\n", "the value 'just text'"),
    ],
)
def test_top_level_must_be_a_mapping(text, got):
    problem = only_problem(text)
    assert problem.message == f"the top level must be a mapping, got {got}"
    assert problem.line is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dir", "../x", "path '../x' leaves the workspace"),
        ("dir", "src/../../x", "path 'src/../../x' leaves the workspace"),
        ("dir", "/etc", "path '/etc' must be relative to the workspace"),
        ("artifacts", "[dist/*.whl, ../x]", "path '../x' leaves the workspace"),
        ("artifacts", "/etc/passwd", "path '/etc/passwd' must be relative to the workspace"),
        ("junit", "[/etc/x.xml]", "path '/etc/x.xml' must be relative to the workspace"),
        ("junit", "reports/../../r.xml", "path 'reports/../../r.xml' leaves the workspace"),
    ],
)
def test_paths_that_escape_the_workspace(key, value, message):
    problem = only_problem(
        f"""
        app: demo
        stages:
          - name: a
            run: x
            {key}: {value}
        """
    )
    assert (problem.path, problem.line, problem.message) == (f"stages[0].{key}", 5, message)


def test_path_staying_inside_is_fine():
    pipeline = parse_pipeline(
        "app: demo\nstages:\n  - name: a\n    run: x\n    dir: src/../api\n", FILE
    )
    assert pipeline.stages[0].dir == "src/../api"


def test_empty_when_is_refused():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: a
            run: x
            when: {}
        """
    )
    assert (problem.path, problem.line) == ("stages[0].when", 5)
    assert problem.message.startswith("empty condition")


def test_empty_nested_condition_is_located():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: a
            run: x
            when:
              anyOf:
                - branch: main
                - {}
        """
    )
    assert (problem.path, problem.line) == ("stages[0].when.anyOf[1]", 8)


@pytest.mark.parametrize(
    "body",
    [
        "    run: x\n    parallel:\n      - name: b\n        run: y\n",
        "    dir: src\n",
    ],
    ids=["both", "neither"],
)
def test_stage_needs_exactly_one_kind(body):
    problem = only_problem("app: demo\nstages:\n  - name: a\n" + body)
    assert (problem.path, problem.line) == ("stages[0]", 3)
    assert problem.message.startswith(
        "a stage needs exactly one of run, parallel, quality_gate, security_scan, "
        "build_image, push_image"
    )
    assert ("found run, parallel" if "parallel" in body else "found none") in problem.message


def test_built_in_stage_kinds_validate_their_sections():
    problem = only_problem(
        "app: demo\nstages:\n  - name: img\n    build_image:\n      repository: Bad Name\n"
    )
    assert problem.path.startswith("stages[0].build_image")
    problem = only_problem(
        "app: demo\nstages:\n  - name: g\n    quality_gate:\n      local: {min_coverag: 5}\n"
    )
    assert problem.path == "stages[0].quality_gate.local.min_coverag"
    assert "did you mean 'min_coverage'" in problem.message
    problem = only_problem(
        "app: demo\nstages:\n  - name: c\n    security_scan: {code: [src]}\n"
        "    container: {image: x}\n"
    )
    assert problem.message == "'container' goes with 'run' only"


def test_parallel_groups_do_not_nest():
    problem = only_problem(
        """
        app: demo
        stages:
          - name: a
            parallel:
              - name: b
                parallel:
                  - name: c
                    run: y
        """
    )
    assert (problem.path, problem.line) == ("stages[0]", 3)
    assert problem.message == "stage 'b': parallel groups do not nest"


def test_several_problems_are_reported_together():
    found = problems(
        """
        app: demo
        max_paralel: 3
        stages:
          - name: a
            run: x
            timeout: -1
            when:
              allOf:
                - brnch: main
        """
    )
    located = {(p.path, p.line) for p in found}
    assert located == {
        ("max_paralel", 2),
        ("stages[0].timeout", 6),
        ("stages[0].when.allOf[0].brnch", 9),
    }
    by_path = {p.path: p.message for p in found}
    assert by_path["max_paralel"] == "unknown key 'max_paralel' (did you mean 'max_parallel'?)"
    assert by_path["stages[0].when.allOf[0].brnch"].endswith("(did you mean 'branch'?)")
    assert "greater than 0" in by_path["stages[0].timeout"]


def test_several_cross_stage_problems_are_reported_together():
    found = problems(
        """
        app: demo
        stages:
          - name: a
            run: x
          - name: a
            run: y
            needs: [zzz]
        """
    )
    assert [(p.path, p.line) for p in found] == [("stages[1].name", 5), ("stages[1].needs[0]", 7)]


def test_check_overrides_names_unknown_stages():
    pipeline = parse_pipeline(spec(VALID), FILE)
    check_overrides(pipeline, PipelineOverrides(only=["unit", "deploy"], skip=["docs"]))

    with pytest.raises(SpecError) as caught:
        check_overrides(pipeline, PipelineOverrides(only=["lint", "biuld"], skip=["nope"]))
    error = caught.value
    assert error.file == "parameters"
    assert [p.path for p in error.problems] == ["overrides.only", "overrides.skip"]
    assert error.problems[0].message.startswith("unknown stage 'biuld' (stages: lint, build,")
    assert "unknown stage 'nope'" in error.problems[1].message


def test_load_pipeline_reports_missing_file(tmp_path: Path):
    with pytest.raises(SpecError) as caught:
        load_pipeline(tmp_path / "slipway.yaml", display_name="slipway.yaml")
    assert str(caught.value).endswith("slipway.yaml: pipeline file not found")


GOOD_FILE = "app: demo\nstages:\n  - name: build\n    run: make\n  - name: test\n    run: x\n"
BAD_FILE = (
    "app: demo\nstages:\n  - name: build\n    run: make\n    timout: 60\n"
    "  - name: test\n    run: x\n    dir: ../up\n"
)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slipway", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_validate_good_file(tmp_path: Path):
    (tmp_path / "good.yaml").write_text(GOOD_FILE)

    result = run_cli("validate", "good.yaml", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "good.yaml: valid (demo, 2 stages)"
    assert result.stderr == ""


def test_cli_validate_bad_file_prints_the_same_lines(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text(BAD_FILE)
    with pytest.raises(SpecError) as caught:
        load_pipeline(tmp_path / "bad.yaml", display_name="bad.yaml")
    expected = [p.render("bad.yaml") for p in caught.value.problems]
    assert expected == [
        "bad.yaml:5: stages[0].timout: unknown key 'timout' (did you mean 'timeout'?)",
        "bad.yaml:8: stages[1].dir: path '../up' leaves the workspace",
    ]

    result = run_cli("validate", "bad.yaml", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    printed = [line.strip() for line in result.stderr.splitlines()]
    assert printed[0] == "invalid pipeline file bad.yaml (2 problems):"
    assert printed[1:] == expected


def test_push_image_must_name_a_build_image_stage():
    problem = only_problem(
        "app: demo\nstages:\n  - name: b\n    run: x\n  - name: p\n    push_image: {from: b}\n"
    )
    assert problem.path == "stages[1].push_image.from"
    assert problem.message == "'b' is not a build_image stage"


def test_schema_and_cross_stage_problems_come_together_in_line_order():
    found = problems(
        """
        app: demo
        stages:
          - name: build
            needs: [lnt]
            run: make
          - name: test
            timout: 5
            run: pytest
          - name: push
            push_image: {from: test}
        """
    )
    assert [p.render(FILE) for p in found] == [
        f"{FILE}:4: stages[0].needs[0]: unknown stage 'lnt' in needs",
        f"{FILE}:7: stages[1].timout: unknown key 'timout' (did you mean 'timeout'?)",
        f"{FILE}:10: stages[2].push_image.from: 'test' is not a build_image stage",
    ]


def test_hints_come_from_the_keys_valid_where_the_mistake_is():
    found = problems(
        """
        app: demo
        stages:
          - name: build
            run: make
            approval: true
            when: {brnch: main}
        deploy:
          environments:
            - name: staging
              namespace: staging
              aproval: true
              strategy: {rollin: {}}
        """
    )
    by_path = {p.path: p.message for p in found}
    # 'approval' is a key of an environment, not of a stage: no hint there
    assert by_path["stages[0].approval"] == "unknown key 'approval'"
    assert by_path["stages[0].when.brnch"] == "unknown key 'brnch' (did you mean 'branch'?)"
    assert by_path["deploy.environments[0].aproval"].endswith("(did you mean 'approval'?)")
    assert by_path["deploy.environments[0].strategy.rollin"].endswith("(did you mean 'rolling'?)")


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("runs-on", "use 'work_pool'"),
        ("agent", "use 'work_pool'"),
        ("strategy", "a stage takes 'matrix' directly"),
        ("steps", "go in 'run'"),
        ("script", "go in 'run'"),
        ("uses", "write the commands in 'run'"),
        ("with", "in the section of a built-in stage"),
        ("if", "use 'when'"),
        ("stage", "order them with 'needs'"),
    ],
)
def test_keys_from_other_ci_systems_say_what_slipway_uses(key: str, says: str):
    problem = only_problem(f"app: demo\nstages:\n  - name: a\n    run: x\n    {key}: 1\n")
    assert (problem.path, problem.line) == (f"stages[0].{key}", 5)
    assert problem.message.startswith(f"unknown key {key!r}: ") and says in problem.message
    assert "did you mean" not in problem.message


def test_jobs_at_the_top_says_stages():
    found = problems("app: demo\njobs: {}\nstages: [{name: a, run: x}]\n")
    assert [p.message for p in found] == [
        "unknown key 'jobs': the stages of a pipeline go under 'stages'"
    ]


def test_the_readmes_validate_example_is_what_slipway_prints():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("`slipway validate [FILE ...]` checks a file") :]
    blocks = section.split("```")
    yaml_text = blocks[1].removeprefix("yaml\n")
    printed = blocks[3].strip("\n")

    with pytest.raises(SpecError) as caught:
        parse_pipeline(yaml_text, "slipway.yaml")

    assert str(caught.value) == printed


def test_the_readmes_pipeline_file_is_valid_and_its_matrix_expands_as_described():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## The pipeline file") :]
    yaml_text = section.split("```")[1].removeprefix("yaml\n")

    pipeline = parse_pipeline(yaml_text, "slipway.yaml")

    compat = pipeline.stage("compat")
    assert [m.name for m in compat.parallel or []] == [
        "compat-3.11",
        "compat-3.12",
        "compat-3.13-true",
    ]
    assert compat.fail_fast is True


def test_stage_secrets_name_a_block_field() -> None:
    parsed = parse_pipeline(
        spec(
            """
            app: a
            stages:
              - name: login
                run: docker login -u ci --password-stdin <<<"$REGISTRY_PASSWORD"
                secrets:
                  REGISTRY_PASSWORD: {block: docker-registry-credentials/prod, field: password}
                  DB_PASSWORD: {block: secret/db-password}
            """
        ),
        FILE,
    )

    secrets = parsed.stage("login").secrets
    assert secrets["REGISTRY_PASSWORD"].block == "docker-registry-credentials/prod"
    assert secrets["REGISTRY_PASSWORD"].field == "password"
    assert secrets["DB_PASSWORD"].field == "value"  # Prefect's Secret block


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("run: x\n    secrets: {P: {block: prod}}", "String should match pattern"),
        ("run: x\n    secrets: {P: {block: secret/Prod}}", "String should match pattern"),
        ("run: x\n    env: {P: a}\n    secrets: {P: {block: secret/p}}", "also set in 'env'"),
        ("run: x\n    secrets: {HOME: {block: secret/p}}", "a name slipway sets itself"),
        ("run: x\n    secrets: {SLIPWAY_APP: {block: secret/p}}", "a name slipway sets itself"),
        (
            "security_scan: {code: [src]}\n    secrets: {P: {block: secret/p}}",
            "'secrets' goes with 'run' only",
        ),
    ],
)
def test_stage_secrets_are_checked(body: str, message: str) -> None:
    found = only_problem(f"app: a\nstages:\n  - name: s\n    {body}\n")

    assert message in found.message, found
