"""``--stage X``: X plus what it needs, directly or not, in file order."""

from __future__ import annotations

import textwrap

from slipway.spec import PipelineOverrides
from slipway.spec_loader import parse_pipeline
from slipway.stage_selection import with_needs

PIPELINE = parse_pipeline(
    textwrap.dedent(
        """
        app: demo
        stages:
          - {name: lint, run: "true"}
          - {name: build, run: "true"}
          - name: test
            parallel:
              - {name: unit, run: "true"}
              - {name: integration, run: "true"}
          - {name: docs, needs: [lint], run: "true"}
          - {name: package, needs: [test, docs], run: "true"}
          - {name: alone, needs: [], run: "true"}
        """
    )
)


def chosen(*only: str) -> list[str] | None:
    return with_needs(PIPELINE, PipelineOverrides(only=list(only))).only


def test_a_stage_brings_what_it_needs_transitively():
    assert chosen("build") == ["lint", "build"]
    assert chosen("package") == ["lint", "build", "test", "docs", "package"]
    assert chosen("alone") == ["alone"]


def test_a_group_member_brings_its_groups_needs_but_not_its_neighbours():
    assert chosen("unit") == ["lint", "build", "unit"]


def test_no_selection_stays_no_selection():
    overrides = PipelineOverrides(skip=["docs"])
    assert with_needs(PIPELINE, overrides) == overrides
