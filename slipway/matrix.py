"""Matrix stages: one stage written once, run once per combination of values.

Semantics follow GitHub Actions' ``strategy.matrix`` so a team moving over finds
what it knows:

- every axis (``python: ["3.12", "3.13"]``) is a non-empty list of scalars; the
  combinations are their cartesian product, in file order;
- ``exclude`` entries remove every combination they match (a partial entry
  matches on the keys it gives); exclude keys must be axes;
- then each ``include`` entry is merged into every combination whose *axis*
  values it does not contradict (values an earlier include added may be
  overwritten); an entry that fits no combination becomes a combination of its
  own. Include may bring keys that are not axes (extra variables);
- at most :data:`MAX_MEMBERS` combinations (GitHub's cap).

A matrix stage becomes a parallel group named like the stage, so ``needs: [test]``
waits for every member; members are named ``<stage>-<value>-<value>...``
(``test-3.12``), valid stage and Prefect task names. Each member gets its values as
``MATRIX_<AXIS>`` environment variables (``MATRIX_PYTHON=3.12``), before the
stage's own ``env`` so that ``env`` values may use them (``TOXENV: py$MATRIX_PYTHON``).

Checks return problems with the key path below ``matrix`` so the loader can point at
the line; the expansion assumes a matrix that passed them.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Mapping
from typing import Any

from slipway.spec import NAME_PATTERN, Pipeline, Stage

MAX_MEMBERS = 256
RESERVED = ("include", "exclude")
_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_NAME = re.compile(NAME_PATTERN)
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

Loc = tuple[str | int, ...]
Combination = dict[str, str]


def env_name(axis: str) -> str:
    """``python`` -> ``MATRIX_PYTHON``; ``node-version`` -> ``MATRIX_NODE_VERSION``."""
    return "MATRIX_" + axis.upper().replace("-", "_")


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return f"{value!r} is a number: quote matrix values ('{value}'); YAML reads 3.10 as 3.1"
    return f"a matrix value must be a string, number or boolean, got {type(value).__name__}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _entries_problems(
    entries: Any, where: str, axes: list[str], *, keys_must_be_axes: bool
) -> list[tuple[Loc, str]]:
    if not isinstance(entries, list):
        return [((where,), f"'{where}' must be a list of mappings")]
    problems: list[tuple[Loc, str]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry:
            problems.append(((where, index), f"each '{where}' entry is a non-empty mapping"))
            continue
        for key, value in entry.items():
            loc: Loc = (where, index, str(key))
            if keys_must_be_axes and key not in axes:
                close = difflib.get_close_matches(str(key), axes, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"axes: {', '.join(axes)}"
                problems.append((loc, f"unknown key {key!r} in exclude ({hint})"))
            elif not _AXIS.match(str(key)) or key in RESERVED:
                problems.append((loc, f"{key!r} is not a valid matrix key"))
            elif (message := _scalar_problem(value)) is not None:
                problems.append((loc, message))
    return problems


def matrix_problems(matrix: Any, stage_name: str) -> list[tuple[Loc, str]]:
    """Everything wrong with a stage's ``matrix`` value, with key paths below it."""
    if not isinstance(matrix, Mapping):
        return []  # the schema check says it must be a mapping
    axes = [str(k) for k in matrix if k not in RESERVED]
    problems: list[tuple[Loc, str]] = []
    for axis in axes:
        values = matrix[axis]
        if not _AXIS.match(axis):
            problems.append(((axis,), f"{axis!r} is not a valid axis name (letters, digits, _ -)"))
        elif not isinstance(values, list):
            problems.append(((axis,), f"axis {axis!r} must be a list of values"))
        elif not values:
            problems.append(((axis,), f"axis {axis!r} is empty: give at least one value"))
        else:
            seen: set[str] = set()
            for index, value in enumerate(values):
                if (message := _scalar_problem(value)) is not None:
                    problems.append(((axis, index), message))
                elif _text(value) in seen:
                    problems.append(((axis, index), f"duplicate value {_text(value)!r}"))
                seen.add(_text(value))
    if "exclude" in matrix:
        problems += _entries_problems(matrix["exclude"], "exclude", axes, keys_must_be_axes=True)
    if "include" in matrix:
        problems += _entries_problems(matrix["include"], "include", axes, keys_must_be_axes=False)
    if not axes and not matrix.get("include"):
        problems.append(((), "an empty matrix: give at least one axis or an include entry"))
    if problems:
        return problems
    combos = combinations(matrix)
    if not combos:
        return [(("exclude",), "every combination is excluded: the matrix has no members")]
    if len(combos) > MAX_MEMBERS:
        return [((), f"{len(combos)} combinations; a matrix may have at most {MAX_MEMBERS}")]
    names: dict[str, Combination] = {}
    for combo in combos:
        name = member_name(stage_name, combo)
        if not _NAME.match(name):
            return [((), f"member name {name!r} is too long (63 characters at most)")]
        if name in names:
            return [((), f"combinations {names[name]} and {combo} both make the name {name!r}")]
        names[name] = combo
    return []


def combinations(matrix: Mapping[str, Any]) -> list[Combination]:
    """The member combinations, GitHub Actions' way (see the module docstring)."""
    axes = {str(k): [_text(v) for v in vals] for k, vals in matrix.items() if k not in RESERVED}
    excludes = [{str(k): _text(v) for k, v in e.items()} for e in matrix.get("exclude") or []]
    includes = [{str(k): _text(v) for k, v in e.items()} for e in matrix.get("include") or []]
    product = (
        [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
        if axes
        else []
    )
    kept = [
        c for c in product if not any(all(c.get(k) == v for k, v in e.items()) for e in excludes)
    ]
    merged = [dict(c) for c in kept]
    extra: list[Combination] = []
    for entry in includes:
        fitted = False
        for original, combo in zip(kept, merged, strict=True):
            if all(original[k] == v for k, v in entry.items() if k in original):
                combo.update(entry)
                fitted = True
        if not fitted:
            extra.append(dict(entry))
    return merged + extra


def member_name(stage_name: str, combo: Combination) -> str:
    """``test`` + {python: 3.12, os: linux} -> ``test-3.12-linux``."""
    parts = [_UNSAFE_IN_NAME.sub("_", value) or "_" for value in combo.values()]
    return "-".join([stage_name, *parts])


def expand_stage(stage: Stage) -> Stage:
    """A matrix stage as the parallel group of its members."""
    assert stage.matrix is not None
    members = [
        stage.model_copy(
            update={
                "name": member_name(stage.name, combo),
                "env": {**{env_name(k): v for k, v in combo.items()}, **stage.env},
                "matrix": None,
                "needs": None,
                "when": None,
                "run_if_needs_skipped": False,
                "fail_fast": None,
                "max_parallel": None,
            }
        )
        for combo in combinations(stage.matrix)
    ]
    return Stage(
        name=stage.name,
        parallel=members,
        needs=stage.needs,
        when=stage.when,
        run_if_needs_skipped=stage.run_if_needs_skipped,
        fail_fast=True if stage.fail_fast is None else stage.fail_fast,
        max_parallel=stage.max_parallel,
    )


def expand_matrices(pipeline: Pipeline) -> Pipeline:
    """The pipeline with every matrix stage replaced by its group of members."""
    if all(s.matrix is None for s in pipeline.stages):
        return pipeline
    stages = [expand_stage(s) if s.matrix is not None else s for s in pipeline.stages]
    return pipeline.model_copy(update={"stages": stages})
