"""Diff on the fields git sets: is a live object what the manifests say it should be?

A live object holds much more than its manifest: ``status``, bookkeeping
(``metadata.uid``, ``resourceVersion``, ``generation``, ``creationTimestamp``,
``managedFields``) and every default the API server filled in (a Deployment's
``strategy``, a container's ``terminationMessagePath``, a Service's ``clusterIP``).
None of that is drift. Argo CD solves this with a three-way diff against the
last-applied configuration; slipway compares like ``kubectl diff --server-side``
would show it to a person: **the desired object, against the live one restricted
to the paths present in desired** (:func:`diff_object`).

The walk, from the desired object down:

- a mapping: every key desired sets is compared; keys only the live object has
  (server defaults, other controllers' fields) are not. A key desired sets to
  ``null``, ``{}`` or ``[]`` matches a live object without it (the API server drops
  empty values).
- a list of mappings that all carry a merge key (``name``, else ``containerPort``,
  ``port``, ``mountPath``, ``ip``): items are matched by that key, whatever their
  order; an item desired has and live lacks, or live has and desired lacks (a
  sidecar added by hand), is drift. Other lists are compared item by item and
  must have the same length.
- scalars: equal, or equal as numbers, or equal as Kubernetes quantities
  (``"1000m"`` and ``1``, ``"1Gi"`` and ``"1073741824"``), since the API server
  normalises quantities.

Secrets: ``stringData`` is write-only (the API server moves it into ``data``,
base64-encoded), so desired ``stringData`` is compared as ``data``; and a Secret's
values are never shown: the readable diff prints every ``data`` value as
``********``, marked ``(live)`` and ``(git)`` where the two disagree.

The result, :class:`ObjectDiff`, names every differing field as a path
(``spec.replicas``, ``spec.template.spec.containers[name=web].image``) and holds a
unified diff of the two objects as YAML, restricted the same way.
"""

from __future__ import annotations

import base64
import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

# Written by the API server, never by git: dropped from desired before the comparison.
SERVER_METADATA = (
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
MERGE_KEYS = ("name", "containerPort", "port", "mountPath", "devicePath", "ip")
SECRET_MASK = "********"

_QUANTITY = re.compile(
    r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_SUFFIX = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_ABSENT = object()


@dataclass(frozen=True)
class ObjectDiff:
    """How a live object differs from desired on the fields desired sets.

    ``fields`` are the differing paths (empty: in sync); ``text`` is a unified diff,
    ``live`` (``-``) against ``git`` (``+``), of both objects as YAML restricted to
    desired's paths, with Secret values masked.
    """

    fields: tuple[str, ...]
    text: str

    @property
    def in_sync(self) -> bool:
        return not self.fields


def normalized_desired(desired: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` as the API server would store it: no status, no server metadata, and a
    Secret's ``stringData`` folded into ``data`` (base64), which is all a read returns."""
    obj = copy.deepcopy(dict(desired))
    obj.pop("status", None)
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        for key in SERVER_METADATA:
            metadata.pop(key, None)
    if obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1":
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, Mapping):
            data = dict(obj.get("data") or {})
            for key, value in string_data.items():
                data[str(key)] = base64.b64encode(str(value).encode("utf-8")).decode("ascii")
            obj["data"] = data
    return obj


def diff_object(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> ObjectDiff:
    """``live`` against ``desired`` on the paths desired sets (see the module docstring).

    ``live`` None: the object is missing; every field desired sets differs and the text
    shows the whole object as an addition.
    """
    want = normalized_desired(desired)
    secret = want.get("kind") == "Secret"
    if live is None:
        shown = _mask_secret(want, None, "git") if secret else want
        return ObjectDiff(("<object missing>",), _unified({}, shown))
    fields: list[str] = []
    projected = _project(want, live, "", fields)
    if not fields:
        return ObjectDiff((), "")
    if secret:
        want, projected = (
            _mask_secret(want, projected, "git"),
            _mask_secret(projected, want, "live"),
        )
    return ObjectDiff(tuple(fields), _unified(projected, want))


# --- the walk ---------------------------------------------------------------------------


def _project(want: Any, have: Any, path: str, fields: list[str]) -> Any:
    """``have`` restricted to ``want``'s shape; differing paths are appended to ``fields``.
    Returns ``_ABSENT`` where ``have`` lacks what ``want`` sets."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            if want:
                fields.append(path or "<object>")
            return have if have is not None else _ABSENT
        out: dict[str, Any] = {}
        for key, value in want.items():
            sub = _join(path, str(key))
            if key not in have or have[key] is None:
                if _empty(value):
                    out[str(key)] = value  # the server drops empty values: not a difference
                else:
                    fields.append(sub)
                continue
            projected = _project(value, have[key], sub, fields)
            if projected is not _ABSENT:
                out[str(key)] = projected
        return out
    if isinstance(want, list):
        if not isinstance(have, list):
            if want:
                fields.append(path)
            return have if have is not None else _ABSENT
        key = _merge_key(want, have)
        if key is not None:
            return _project_keyed(want, have, key, path, fields)
        if len(want) != len(have):
            fields.append(path)
            return have
        return [
            _project(w, h, f"{path}[{i}]", fields)
            for i, (w, h) in enumerate(zip(want, have, strict=True))
        ]
    if want is None:
        return have
    if not _same_scalar(want, have):
        fields.append(path)
        return have
    return want  # equal, perhaps written differently ("1000m" for 1): shown as git has it


def _project_keyed(
    want: list[Any], have: list[Any], key: str, path: str, fields: list[str]
) -> list[Any]:
    live = {item.get(key): item for item in have if isinstance(item, Mapping)}
    wanted = {item[key] for item in want}
    out: list[Any] = []
    for item in want:
        sub = f"{path}[{key}={item[key]}]"
        match = live.get(item[key])
        if match is None:
            fields.append(sub)
            continue
        out.append(_project(item, match, sub, fields))
    for item in have:
        if isinstance(item, Mapping) and item.get(key) not in wanted:
            fields.append(f"{path}[{key}={item.get(key)}]")
            out.append(item)  # shown whole: git does not have it at all
    return out


def _merge_key(want: Sequence[Any], have: Sequence[Any]) -> str | None:
    if not want or not all(isinstance(item, Mapping) for item in want):
        return None
    for key in MERGE_KEYS:
        if all(key in item for item in want) and all(
            isinstance(item, Mapping) and key in item for item in have
        ):
            values = [item[key] for item in want]
            if len(set(map(repr, values))) == len(values):
                return key
    return None


def _join(path: str, key: str) -> str:
    if not path:
        return key
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"  # annotation and label keys: metadata.labels['app.kubernetes.io/x']


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return want == have and isinstance(want, bool) and isinstance(have, bool)
    a, b = _quantity(want), _quantity(have)
    return a is not None and a == b


def _quantity(value: Any) -> Decimal | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


# --- showing it -------------------------------------------------------------------------


def _mask_secret(obj: Any, other: Any, side: str) -> Any:
    """The Secret with every ``data`` value masked; a value that differs from ``other``'s
    is marked with ``side`` (``live`` or ``git``), so the diff shows which keys differ
    without showing a value."""
    if not isinstance(obj, Mapping):
        return obj
    out = dict(obj)
    data = obj.get("data")
    theirs = other.get("data") if isinstance(other, Mapping) else None
    if isinstance(data, Mapping):
        masked = {}
        for key, value in data.items():
            same = not isinstance(theirs, Mapping) or theirs.get(key) == value
            masked[key] = SECRET_MASK if same else f"{SECRET_MASK} ({side})"
        out["data"] = masked
    return out


def _unified(live: Any, desired: Any) -> str:
    before = _yaml(live) if live not in ({}, None, _ABSENT) else ""
    after = _yaml(desired)
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile="live",
        tofile="git",
        n=3,
    )
    return "".join(lines)


def _yaml(obj: Any) -> str:
    return yaml.safe_dump(_plain(obj), sort_keys=False, default_flow_style=False, width=1000)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not _ABSENT}
    if isinstance(value, list):
        return [_plain(v) for v in value if v is not _ABSENT]
    return value
