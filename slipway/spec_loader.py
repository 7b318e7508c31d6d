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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from slipway.exceptions import SpecError, SpecProblem
from slipway.safe_yaml import YamlProblem, load_round_trip
from slipway.spec import Pipeline, PipelineOverrides, Stage, StrictModel

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


_KNOWN_KEYS: dict[str, list[str]] = {}


def _known_keys(model: type) -> list[str]:
    name = model.__name__
    if name not in _KNOWN_KEYS:
        _KNOWN_KEYS[name] = [f.alias or key for key, f in model.model_fields.items()]
    return _KNOWN_KEYS[name]


def _message(error: Mapping[str, Any], loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        candidates = sorted({k for m in _all_models() for k in _known_keys(m)})
        close = difflib.get_close_matches(key, candidates, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {key!r}{hint}"
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


def _problems_from_validation(exc: ValidationError, lines: dict[Loc, int]) -> list[SpecProblem]:
    problems = []
    for error in exc.errors():
        # pydantic appends the name of a function validator to the location; drop it
        loc: Loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        problems.append(SpecProblem(render_path(loc), _message(error, loc), _line_for(loc, lines)))
    return problems


def _all_models() -> list[type]:
    """Every pipeline-file model (the stage families define theirs on StrictModel)."""
    found: list[type] = []
    pending: list[type] = [StrictModel]
    while pending:
        model = pending.pop()
        for sub in model.__subclasses__():
            if sub not in found:
                found.append(sub)
                pending.append(sub)
    return found


def dependencies(pipeline: Pipeline) -> dict[str, list[str]]:
    """Top-level stage -> the stages it waits for (default: the one before it)."""
    deps: dict[str, list[str]] = {}
    previous: str | None = None
    for stage in pipeline.stages:
        if stage.needs is None:
            deps[stage.name] = [previous] if previous else []
        else:
            deps[stage.name] = list(stage.needs)
        previous = stage.name
    return deps


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


def _semantic_problems(pipeline: Pipeline, lines: dict[Loc, int]) -> list[SpecProblem]:
    problems: list[SpecProblem] = []

    def add(loc: Loc, message: str) -> None:
        problems.append(SpecProblem(render_path(loc), message, _line_for(loc, lines)))

    seen: dict[str, Loc] = {}
    for i, stage in enumerate(pipeline.stages):
        entries: list[tuple[Loc, Stage]] = [(("stages", i, "name"), stage)]
        entries += [
            (("stages", i, "parallel", j, "name"), child)
            for j, child in enumerate(stage.parallel or [])
        ]
        for loc, item in entries:
            if item.name in seen:
                add(
                    loc,
                    f"duplicate stage name {item.name!r} (first at {render_path(seen[item.name])})",
                )
            else:
                seen[item.name] = loc

    top = [s.name for s in pipeline.stages]
    for i, stage in enumerate(pipeline.stages):
        for j, dep in enumerate(stage.needs or []):
            loc = ("stages", i, "needs", j)
            if dep == stage.name:
                add(loc, f"stage {stage.name!r} cannot need itself")
            elif dep not in top:
                inner = dep in seen
                close = difflib.get_close_matches(dep, top, n=1)
                hint = (
                    " (stages inside a parallel group cannot be needed; need the group)"
                    if inner
                    else (f" (did you mean {close[0]!r}?)" if close else "")
                )
                add(loc, f"unknown stage {dep!r} in needs{hint}")
    builders = {s.name for s in pipeline.all_stages() if s.build_image is not None}
    for i, stage in enumerate(pipeline.stages):
        if stage.push_image is not None and stage.push_image.from_stage not in builders:
            add(
                ("stages", i, "push_image", "from"),
                f"{stage.push_image.from_stage!r} is not a build_image stage"
                + (f" (build_image stages: {', '.join(sorted(builders))})" if builders else ""),
            )
    _deploy_problems(pipeline, add)
    if not problems:
        cycle = _find_cycle(dependencies(pipeline))
        if cycle:
            index = top.index(cycle[0])
            add(("stages", index, "needs"), "dependency cycle: " + " -> ".join(cycle))
    return problems


def _deploy_problems(pipeline: Pipeline, add: Callable[[Loc, str], None]) -> None:
    """``deploy.image_from`` must name a stage that pushes an image."""
    deploy = pipeline.deploy
    if deploy is None or deploy.image_from is None:
        return
    pushers = sorted(
        s.name
        for s in pipeline.all_stages()
        if s.push_image is not None or (s.build_image is not None and s.build_image.push)
    )
    if deploy.image_from not in pushers:
        add(
            ("deploy", "image_from"),
            f"{deploy.image_from!r} does not push an image"
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
    try:
        pipeline = Pipeline.model_validate(_plain(tree))
    except ValidationError as exc:
        raise SpecError(file, _problems_from_validation(exc, lines)) from None
    problems = _semantic_problems(pipeline, lines)
    if problems:
        raise SpecError(file, problems)
    return pipeline


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
