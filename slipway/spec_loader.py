"""Reading and checking a pipeline file, with errors that point into it.

The YAML is read with ruamel.yaml's round-trip loader (safe: it builds only plain
mappings, lists and scalars) so every key keeps its line number, through
:mod:`slipway.safe_yaml`, which refuses alias bombs and deep nesting first; pydantic's
errors and the cross-stage checks (unique names, ``needs`` that name real stages,
no cycles) are all reported together as :class:`SpecProblem` items with a key path
such as ``stages[2].when.allOf[0].branch`` and the line it sits on.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from slipway.exceptions import SpecError, SpecProblem
from slipway.matrix import combinations as matrix_combinations
from slipway.matrix import expand_matrices, matrix_problems, member_name
from slipway.safe_yaml import YamlProblem, load_round_trip
from slipway.spec import Pipeline, PipelineOverrides, Stage

DEFAULT_SPEC_FILE = "slipway.yaml"
MAX_SPEC_BYTES = 1_000_000

Loc = tuple[str | int, ...]


def render_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_map(node: Any, loc: Loc = (), lines: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Line (1-based) of every key and list item in a round-trip YAML tree."""
    lines = {} if lines is None else lines
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            line, _col = node.lc.key(key)
            lines[(*loc, str(key))] = line + 1
            _line_map(value, (*loc, str(key)), lines)
    elif isinstance(node, CommentedSeq):
        for index, value in enumerate(node):
            line, _col = node.lc.item(index)
            lines[(*loc, index)] = line + 1
            _line_map(value, (*loc, index), lines)
    return lines


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# Keys people bring from other CI systems, and what slipway uses in their place.
FOREIGN_KEYS: dict[str, str] = {
    "runs-on": "slipway runs a stage on a worker of a Prefect work pool: use 'work_pool' "
    "(or 'container' to run it in an image)",
    "agent": "use 'work_pool' on a stage (a Prefect work pool plays a Jenkins agent label's "
    "part), or 'container'",
    "strategy": "a stage takes 'matrix' directly (with 'fail_fast' and 'max_parallel' next to it)",
    "steps": "a stage's commands go in 'run' (a list runs in order)",
    "script": "a stage's commands go in 'run'",
    "uses": "slipway has no actions to call: write the commands in 'run', or use a built-in "
    "stage (quality_gate, security_scan, build_image, push_image)",
    "with": "options go in the section of a built-in stage (quality_gate, security_scan, "
    "build_image, push_image), or in 'env'",
    "if": "use 'when' (branch, env, changeset, changeset_ignore, allOf, anyOf, not)",
    "stage": "every item of 'stages' is a stage; order them with 'needs'",
    "jobs": "the stages of a pipeline go under 'stages'",
    "image": "use 'container: {image: ...}' on a 'run' stage",
    "depends_on": "use 'needs'",
    "dependencies": "use 'needs'",
    "variables": "use 'env'",
    "environment": "use 'env' (and 'deploy.environments' for where a release goes)",
}


def _field_types(model: type[BaseModel], key: str | int) -> list[Any]:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return [info.annotation]
    return []


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of ``X | None`` and ``Annotated[X, ...]``, flattened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [t for arg in get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def models_at(loc: Loc, root: type[BaseModel] = Pipeline) -> list[type[BaseModel]]:
    """The models that may sit at ``loc`` of a pipeline file (empty when unknown).

    Follows field types through lists, dicts, optionals and unions; a part that no
    alternative knows (a union tag in pydantic's error location) is stepped over.
    """
    current: list[Any] = [root]
    for part in loc:
        following: list[Any] = []
        for annotation in (t for c in current for t in _unwrap(c)):
            origin = get_origin(annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                following += _field_types(annotation, part)
            elif origin is list and isinstance(part, int):
                following.append(get_args(annotation)[0])
            elif origin is dict and isinstance(part, str):
                following.append(get_args(annotation)[1])
        current = following or current
    return [
        t for c in current for t in _unwrap(c) if isinstance(t, type) and issubclass(t, BaseModel)
    ]


def key_hint(key: str, loc: Loc, root: type[BaseModel] = Pipeline) -> str:
    """What to say about an unknown ``key`` at ``loc`` of a ``root`` file: the close key
    valid *there*, or what slipway uses instead of another CI system's key."""
    models = models_at(loc, root)
    if key in FOREIGN_KEYS and any(m in (Stage, Pipeline) for m in models):
        return f": {FOREIGN_KEYS[key]}"
    candidates = sorted(
        {info.alias or name for m in models for name, info in m.model_fields.items()}
    )
    close = difflib.get_close_matches(key, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _message(error: Mapping[str, Any], loc: Loc, root: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        return f"unknown key {key!r}{key_hint(key, loc[:-1], root)}"
    if kind == "missing":
        return f"required key {str(loc[-1])!r} is missing"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and "input" in error:
        got = error["input"]
        shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = f"{message} (got {shown})"
    return message


def _problems_from_validation(
    exc: ValidationError, lines: dict[Loc, int], root: type[BaseModel] = Pipeline
) -> list[SpecProblem]:
    problems = []
    for error in exc.errors():
        # pydantic appends the name of a function validator to the location; drop it
        loc: Loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        problems.append(
            SpecProblem(render_path(loc), _message(error, loc, root), _line_for(loc, lines))
        )
    return problems


def dependency_map(stages: Iterable[tuple[str, list[str] | None]]) -> dict[str, list[str]]:
    """Stage -> the stages it waits for, from (name, needs) in file order: no ``needs``
    means the stage before it, ``[]`` means none."""
    deps: dict[str, list[str]] = {}
    previous: str | None = None
    for name, needs in stages:
        deps[name] = ([previous] if previous else []) if needs is None else list(needs)
        previous = name
    return deps


def dependencies(pipeline: Pipeline) -> dict[str, list[str]]:
    """Top-level stage -> the stages it waits for (default: the one before it)."""
    return dependency_map((s.name, s.needs) for s in pipeline.stages)


def _find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in deps.get(node, []):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if state.get(dep) is None and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in deps:
        if state.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_list(value: Any) -> list[str] | None:
    """A ``needs``-like value as written (a string or a list), strings only."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return None


def _semantic_problems(data: Mapping[str, Any], lines: dict[Loc, int]) -> list[SpecProblem]:
    """Cross-stage problems, read from the file's plain data so that they are found even
    when the schema check failed elsewhere (every problem at once, not the first)."""
    problems: list[SpecProblem] = []

    def add(loc: Loc, message: str) -> None:
        problems.append(SpecProblem(render_path(loc), message, _line_for(loc, lines)))

    raw_stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    stages = [_mapping(s) for s in raw_stages]
    named = [(i, s) for i, s in enumerate(stages) if isinstance(s.get("name"), str)]
    seen: dict[str, Loc] = {}
    members: set[str] = set()

    def claim(name: str, loc: Loc, what: str = "stage name") -> None:
        if name in seen:
            add(loc, f"duplicate {what} {name!r} (first at {render_path(seen[name])})")
        else:
            seen[name] = loc

    for i, stage in enumerate(stages):
        if isinstance(stage.get("name"), str):
            claim(stage["name"], ("stages", i, "name"))
        children = stage.get("parallel") if isinstance(stage.get("parallel"), list) else []
        for j, child in enumerate(children):
            if isinstance(_mapping(child).get("name"), str):
                claim(child["name"], ("stages", i, "parallel", j, "name"))
                members.add(child["name"])
    for i, stage in named:
        if "matrix" not in stage:
            continue
        found = matrix_problems(stage["matrix"], stage["name"])
        for sub, message in found:
            add(("stages", i, "matrix", *sub), message)
        if not found and isinstance(stage["matrix"], Mapping):
            for combo in matrix_combinations(stage["matrix"]):
                name = member_name(stage["name"], combo)
                claim(name, ("stages", i, "matrix"), "stage name (a matrix member's)")
                members.add(name)

    top = [s["name"] for _i, s in named]
    for i, stage in named:
        for j, dep in enumerate(_str_list(stage.get("needs")) or []):
            loc = ("stages", i, "needs", j)
            if dep == stage["name"]:
                add(loc, f"stage {stage['name']!r} cannot need itself")
            elif dep not in top:
                close = difflib.get_close_matches(dep, top, n=1)
                hint = (
                    " (stages inside a parallel group or matrix cannot be needed; need the group)"
                    if dep in members
                    else (f" (did you mean {close[0]!r}?)" if close else "")
                )
                add(loc, f"unknown stage {dep!r} in needs{hint}")
    every = stages + [_mapping(c) for s in stages for c in _list(s.get("parallel"))]
    builders = {s.get("name") for s in every if "build_image" in s}
    for i, stage in enumerate(stages):
        source = _mapping(stage.get("push_image")).get("from")
        if isinstance(source, str) and source not in builders:
            shown = sorted(b for b in builders if isinstance(b, str))
            add(
                ("stages", i, "push_image", "from"),
                f"{source!r} is not a build_image stage"
                + (f" (build_image stages: {', '.join(shown)})" if shown else ""),
            )
    _deploy_problems(data, every, add)
    if not problems:
        cycle = _find_cycle(
            dependency_map((s["name"], _str_list(s.get("needs"))) for _i, s in named)
        )
        if cycle:
            index = top.index(cycle[0])
            add(("stages", named[index][0], "needs"), "dependency cycle: " + " -> ".join(cycle))
    return problems


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _deploy_problems(
    data: Mapping[str, Any], stages: list[Mapping[str, Any]], add: Callable[[Loc, str], None]
) -> None:
    """``deploy.image_from`` must name a stage that pushes an image."""
    image_from = _mapping(data.get("deploy")).get("image_from")
    if not isinstance(image_from, str):
        return
    pushers = sorted(
        str(s.get("name"))
        for s in stages
        if "push_image" in s or _mapping(s.get("build_image")).get("push") is True
    )
    if image_from not in pushers:
        add(
            ("deploy", "image_from"),
            f"{image_from!r} does not push an image"
            + (f" (stages that do: {', '.join(pushers)})" if pushers else ""),
        )


def parse_pipeline(text: str, file: str = DEFAULT_SPEC_FILE) -> Pipeline:
    """Validate pipeline YAML text; raise :class:`SpecError` listing every problem."""
    try:
        tree = load_round_trip(text)
    except YamlProblem as exc:
        raise SpecError(file, [SpecProblem("", exc.problem, exc.line)]) from None
    if not isinstance(tree, Mapping):
        got = "an empty file" if tree is None else f"the value {str(tree)[:40]!r}"
        if isinstance(tree, list):
            got = "a list"  # not ruamel's class name, "CommentedSeq"
        raise SpecError(file, [SpecProblem("", f"the top level must be a mapping, got {got}")])
    lines = _line_map(tree)
    data = _plain(tree)
    problems = _semantic_problems(data, lines)
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        problems += _problems_from_validation(exc, lines)
    if problems:
        # in file order; problems of the file as a whole (no line) first
        problems.sort(key=lambda p: p.line or 0)
        raise SpecError(file, problems)
    return expand_matrices(pipeline)


def read_spec_text(
    path: Path, name: str, *, limit: int, what: str, error: type[SpecError] = SpecError
) -> str:
    """A spec file's text; a missing, oversized or non-UTF-8 file is an ``error``."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise error(name, [SpecProblem("", f"file is {size} bytes; limit {limit}")])
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(name, [SpecProblem("", f"{what} not found")]) from None
    except UnicodeDecodeError as exc:
        raise error(name, [SpecProblem("", f"not UTF-8 text: {exc.reason}")]) from None


def load_pipeline(path: Path, *, display_name: str | None = None) -> Pipeline:
    """Read and validate a pipeline file from disk."""
    name = display_name or str(path)
    text = read_spec_text(path, name, limit=MAX_SPEC_BYTES, what="pipeline file")
    return parse_pipeline(text, name)


def check_overrides(pipeline: Pipeline, overrides: PipelineOverrides) -> None:
    """Refuse overrides that name stages the pipeline does not have."""
    names = [s.name for s in pipeline.all_stages()]
    problems = [
        SpecProblem(f"overrides.{field}", f"unknown stage {name!r} (stages: {', '.join(names)})")
        for field, values in (("only", overrides.only or []), ("skip", overrides.skip))
        for name in values
        if name not in names
    ]
    if problems:
        raise SpecError("parameters", problems)
