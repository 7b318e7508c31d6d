"""Loading YAML that someone else wrote: bounded in depth and in what aliases expand to.

Every YAML file slipway reads comes from a repository (the pipeline file, Application
files, manifests), so it is untrusted input. The safe loaders of ruamel.yaml and PyYAML
build only plain data, but they do not stop the two attacks left:

- **Alias bombs** ("billion laughs"): ``&a [x, x, ...]`` then ``&b [*a, *a, ...]``
  nested a few times. A loader shares the aliased node, so loading is cheap; anything
  that walks the result (our line map, pydantic, ``json.dumps`` for the Kubernetes
  API) expands it: 439 bytes became ten million nodes, 2.3 GB and minutes of CPU.
- **Deep nesting**: ``[[[[...`` or a ``when`` nested 400 deep. The composers and every
  recursive consumer after them end in a ``RecursionError`` (or, in C, a crash).

:func:`check_events` runs over the parser's event stream before anything is
composed, in one pass, without recursion: it counts the nesting depth and, for each
anchor, how many nodes its subtree expands to, so an alias costs what it would add
when expanded. A file over :class:`YamlLimits` is refused with the line to look at.
Anchors themselves stay allowed: real manifests and kustomizations use them, and so
may a pipeline file; what is capped is how much they may add.

Two loaders share it: :func:`load_round_trip` (ruamel.yaml's round-trip loader, for
spec files, whose errors need every key's line) and :func:`load_manifests`
(PyYAML on libyaml, for Kubernetes manifests). libyaml is the parser kubectl's YAML
library was ported from, so it reads what kubectl reads: the pure-Python scanners of
both libraries refuse a tab after a value (``found character '\\t' that cannot start
any token``), which upstream manifests such as kustomize's guestbook have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError as RuamelMarkedError
from ruamel.yaml.error import YAMLError as RuamelError

try:
    from yaml import CSafeLoader
except ImportError as exc:  # a PyYAML built without libyaml: its wheels on PyPI have it
    raise ImportError("slipway reads manifests with PyYAML's libyaml loader (CSafeLoader)") from exc


@dataclass(frozen=True)
class YamlLimits:
    """How deep a document may nest and how many nodes its aliases may add."""

    max_depth: int
    """Collections inside collections; the top-level mapping is depth 1."""
    max_alias_nodes: int
    """Nodes that expanding every alias adds, over the whole file."""


# A pipeline or Application file nests about 10 deep (stages[0].parallel[0].when.allOf
# [0].not.branch); a few anchors for shared settings add tens of nodes.
SPEC_LIMITS = YamlLimits(max_depth=64, max_alias_nodes=10_000)
# CRDs with a full pod schema nest 60-80 deep; 200 stays clear of Python's recursion
# limit in the consumers (json, the Kubernetes client). 100 000 added nodes are a few
# MB once expanded: far above what shared labels or env lists need.
MANIFEST_LIMITS = YamlLimits(max_depth=200, max_alias_nodes=100_000)


class YamlProblem(ValueError):
    """The text is not YAML, or it is over the limits; ``line`` is 1-based, if known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {problem}" if line else problem)
        self.problem = problem
        self.line = line


def _line(event: Any) -> int | None:
    mark = getattr(event, "start_mark", None)
    return mark.line + 1 if mark is not None else None


def check_events(events: Iterable[Any], limits: YamlLimits) -> None:
    """Refuse a stream over ``limits``: too deep, aliases adding too many nodes, an
    alias to an unknown anchor or to a node that contains it (a cycle).

    Works on the events of either library (same class names, ``anchor`` and
    ``start_mark`` fields). Each open collection counts its expanded size; a closed
    anchored one records it, so ``*a`` adds exactly what expanding it would.
    """
    open_sizes: list[int] = []  # expanded node count of each open collection
    open_anchors: list[str | None] = []
    sizes: dict[str, int] = {}  # anchor -> expanded node count (per document)
    added = 0

    def count(size: int) -> None:
        if open_sizes:
            open_sizes[-1] += size

    for event in events:
        kind = type(event).__name__
        if kind in ("SequenceStartEvent", "MappingStartEvent"):
            if len(open_sizes) >= limits.max_depth:
                raise YamlProblem(f"nested more than {limits.max_depth} levels deep", _line(event))
            open_sizes.append(1)
            open_anchors.append(event.anchor)
        elif kind in ("SequenceEndEvent", "MappingEndEvent"):
            size = open_sizes.pop()
            anchor = open_anchors.pop()
            if anchor is not None:
                sizes[anchor] = size
            count(size)
        elif kind == "ScalarEvent":
            if event.anchor is not None:
                sizes[event.anchor] = 1
            count(1)
        elif kind == "AliasEvent":
            name = event.anchor
            if name in open_anchors:
                raise YamlProblem(f"alias *{name} refers to a node that contains it", _line(event))
            if name not in sizes:
                raise YamlProblem(f"alias *{name} names no anchor before it", _line(event))
            added += sizes[name] - 1
            if added > limits.max_alias_nodes:
                raise YamlProblem(
                    f"aliases expand to more than {limits.max_alias_nodes} extra nodes "
                    f"(at *{name}); refusing what looks like an alias bomb",
                    _line(event),
                )
            count(sizes[name])
        elif kind == "DocumentEndEvent":
            sizes.clear()  # anchors do not cross documents


def _ruamel_problem(exc: RuamelError) -> YamlProblem:
    if isinstance(exc, RuamelMarkedError):
        mark = exc.problem_mark or exc.context_mark
        return YamlProblem(f"not valid YAML: {exc.problem}", mark.line + 1 if mark else None)
    return YamlProblem(f"not valid YAML: {exc}")


def load_round_trip(text: str, limits: YamlLimits = SPEC_LIMITS) -> Any:
    """One document with ruamel.yaml's round-trip loader (keys keep their lines)."""
    try:
        check_events(YAML(typ="rt").parse(text), limits)
        return YAML(typ="rt").load(text)
    except RuamelError as exc:
        raise _ruamel_problem(exc) from None


def load_manifests(text: str, limits: YamlLimits = MANIFEST_LIMITS) -> list[Any]:
    """Every document of a manifest file, read by libyaml as kubectl reads it."""
    try:
        check_events(yaml.parse(text, Loader=CSafeLoader), limits)
        return list(yaml.load_all(text, Loader=CSafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlProblem(f"invalid YAML: {exc.problem or type(exc).__name__}", line) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {exc}") from None
