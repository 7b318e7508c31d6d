"""Patch semantics and server-side apply field ownership.

- JSON merge patch (RFC 7386): maps merge, ``null`` deletes, lists are replaced.
- Strategic merge patch (built-in kinds only): like merge patch, except that the
  lists Kubernetes declares with a merge key merge item by item
  (``containers``/``env``/``volumes`` by ``name``, container ``ports`` by
  ``containerPort``, Service ``ports`` by ``port``, ``conditions`` by ``type``,
  ``ownerReferences`` by ``uid``...) and ``finalizers`` merge as a set; the
  directives ``$patch: replace|delete|merge``, ``$retainKeys``,
  ``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>`` are honoured.
- JSON patch (RFC 6902): add, remove, replace, move, copy, test.
- Server-side apply: every manager owns a set of field paths. An apply merges the
  applied configuration (same list rules as strategic merge; custom resources'
  lists are atomic), removes fields the manager applied before and no longer
  applies (unless another manager owns them too), and conflicts when it would
  change a value another manager owns, unless forced (then it takes ownership).
  An update (POST/PUT/PATCH) takes ownership of the fields whose value it changed.
  The paths are rendered as ``metadata.managedFields`` (``FieldsV1``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from tests.servers.kube_standin.errors import ApiError

_CONTAINERS = {"containers", "initContainers", "ephemeralContainers"}
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeDevices": "devicePath",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
_SET_LISTS = {"finalizers"}
# Fields no manager owns: identity and bookkeeping the server itself sets.
_UNMANAGED_META = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
}

Segment = str | tuple[str, str]
Path = tuple[Segment, ...]


def list_rule(keys: tuple[str, ...], builtin: bool) -> tuple[str, str | None]:
    """How a list at ``keys`` (the map keys leading to it) merges: ("map", merge key),
    ("set", None) or ("atomic", None)."""
    if not keys:
        return "atomic", None
    last = keys[-1]
    if not builtin and keys[0] != "metadata":
        return "atomic", None
    if last == "ports":
        if len(keys) >= 2 and keys[-2] in _CONTAINERS:
            return "map", "containerPort"
        return "map", "port"
    if last in _SET_LISTS:
        return "set", None
    if last in _MERGE_KEYS:
        return "map", _MERGE_KEYS[last]
    return "atomic", None


class PatchError(ApiError):
    """A patch that cannot be applied. 422 as the apiserver answers a JSON patch that does
    not apply (a generic "rejected" message, the reason in the cause), or 400."""

    def __init__(self, message: str, code: int = 422) -> None:
        if code != 422:
            super().__init__(code, "BadRequest", message)
            return
        details = {"causes": [{"reason": "UnexpectedServerResponse", "message": message}]}
        generic = "the server rejected our request due to an error in our request"
        super().__init__(422, "Invalid", generic, details)


# --- JSON merge patch -----------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch ------------------------------------------------------------

_DELETE = object()


def strategic_merge_patch(
    target: Any, patch: Any, *, builtin: bool = True, keys: tuple[str, ...] = ()
) -> Any:
    """Kubernetes' strategic merge patch for the list rules in :func:`list_rule`."""
    merged = _smp_map(target, patch, builtin, keys)
    return {} if merged is _DELETE else merged


def _smp_map(target: Any, patch: Any, builtin: bool, keys: tuple[str, ...]) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive}", 400)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in (value or [])]
            continue
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(result.get(key), value, builtin, (*keys, key))
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(result.get(key), value, builtin, (*keys, key))
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    for key, order in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(
            result.get(key.split("/", 1)[1]), list
        ):
            field = key.split("/", 1)[1]
            result[field] = _reorder(result[field], order, list_rule((*keys, field), builtin))
    return result


def _reorder(items: list[Any], order: list[Any], rule: tuple[str, str | None]) -> list[Any]:
    kind, merge_key = rule
    if kind != "map" or not merge_key:
        return items
    rank = {json.dumps(o.get(merge_key)): i for i, o in enumerate(order) if isinstance(o, dict)}
    return sorted(
        items,
        key=lambda item: rank.get(json.dumps(item.get(merge_key)), len(rank)),
    )


def _smp_list(target: Any, patch: list[Any], builtin: bool, keys: tuple[str, ...]) -> list[Any]:
    kind, merge_key = list_rule(keys, builtin)
    current = copy.deepcopy(target) if isinstance(target, list) else []
    if kind == "set":
        return current + [v for v in patch if v not in current]
    if kind == "atomic" or merge_key is None:
        return copy.deepcopy(patch)
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {merge_key}", 400)
        index = next(
            (
                i
                for i, c in enumerate(current)
                if isinstance(c, dict) and c.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                current.pop(index)
            continue
        if index is None:
            current.append(_smp_map({}, item, builtin, keys))
        else:
            current[index] = _smp_map(current[index], item, builtin, keys)
    return current


# --- JSON patch -------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], op: str, path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(
                f"jsonpatch {op} operation does not apply: doc is missing path: {path}"
            )
    return node


def _get(doc: Any, path: str, op: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, op, path), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"jsonpatch {op} operation does not apply: doc is missing key: {path}")


def _remove(doc: Any, path: str, op: str) -> Any:
    parts = _pointer(path)
    parent, last = _parent(doc, parts, op, path), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"jsonpatch {op} operation does not apply: doc is missing key: {path}")


def _add(doc: Any, path: str, value: Any, op: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(doc, parts, op, path), parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"jsonpatch {op} operation does not apply: index out of range: {path}")
    else:
        raise PatchError(f"jsonpatch {op} operation does not apply: doc is missing path: {path}")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of ``doc``."""
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations", 400)
    doc = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"invalid json patch operation: {operation!r}", 400)
        op, path = operation["op"], operation["path"]
        value = copy.deepcopy(operation.get("value"))
        if op == "add":
            doc = _add(doc, path, value, op)
        elif op == "remove":
            _remove(doc, path, op)
        elif op == "replace":
            _get(doc, path, op)
            parts = _pointer(path)
            if not parts:
                doc = value
            else:
                parent = _parent(doc, parts, op, path)
                parent[int(parts[-1]) if isinstance(parent, list) else parts[-1]] = value
        elif op == "move":
            doc = _add(doc, path, _remove(doc, operation.get("from", ""), op), op)
        elif op == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, operation.get("from", ""), op)), op)
        elif op == "test":
            if _get(doc, path, op) != value:
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {op}", 400)
    return doc


# --- server-side apply field sets ---------------------------------------------------------


def field_paths(obj: dict[str, Any], builtin: bool) -> set[Path]:
    """The managed field paths of an object: leaves (scalars, atomic lists, empty maps)
    and the items of keyed lists (so that an item can be removed as a whole)."""
    paths: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata" and isinstance(value, dict):
            meta = {k: v for k, v in value.items() if k not in _UNMANAGED_META}
            _walk(meta, ("metadata",), ("metadata",), builtin, paths)
        else:
            _walk(value, (key,), (key,), builtin, paths)
    return paths


def _walk(value: Any, path: Path, keys: tuple[str, ...], builtin: bool, out: set[Path]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _walk(v, (*path, k), (*keys, k), builtin, out)
        return
    if isinstance(value, list) and value:
        kind, merge_key = list_rule(keys, builtin)
        if (
            kind == "map"
            and merge_key
            and all(isinstance(i, dict) and merge_key in i for i in value)
        ):
            for item in value:
                item_path = (*path, ("k", json.dumps({merge_key: item[merge_key]})))
                out.add(item_path)
                for k, v in item.items():
                    _walk(v, (*item_path, k), (*keys, k), builtin, out)
            return
        if kind == "set":
            for item in value:
                out.add((*path, ("v", json.dumps(item))))
            return
    out.add(path)


def _step(node: Any, segment: Segment) -> tuple[bool, Any]:
    if isinstance(segment, str):
        if isinstance(node, dict) and segment in node:
            return True, node[segment]
        return False, None
    kind, raw = segment
    if not isinstance(node, list):
        return False, None
    wanted = json.loads(raw)
    for item in node:
        if kind == "v" and item == wanted:
            return True, item
        if kind == "k" and isinstance(item, dict):
            if all(item.get(k) == v for k, v in wanted.items()):
                return True, item
    return False, None


def get_path(obj: Any, path: Path) -> tuple[bool, Any]:
    node = obj
    for segment in path:
        found, node = _step(node, segment)
        if not found:
            return False, None
    return True, node


def remove_path(obj: Any, path: Path) -> None:
    found, parent = get_path(obj, path[:-1])
    if not found:
        return
    last = path[-1]
    if isinstance(last, str):
        if isinstance(parent, dict):
            parent.pop(last, None)
        return
    exists, item = _step(parent, last)
    if exists:
        parent.remove(item)


def dotted(path: Path) -> str:
    """A path as the apiserver prints it in apply conflicts: ``.spec.replicas``,
    ``.spec.template.spec.containers[name="app"].image``."""
    out = ""
    for segment in path:
        if isinstance(segment, str):
            out += f".{segment}"
        else:
            kind, raw = segment
            if kind == "k":
                out += (
                    "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(raw).items()) + "]"
                )
            else:
                out += f"[={raw}]"
    return out


def apply_conflicts(
    live: dict[str, Any],
    applied: dict[str, Any],
    applied_paths: set[Path],
    others: Iterable[tuple[str, set[Path]]],
) -> list[tuple[str, Path]]:
    """(manager, path) pairs where the apply would change a value another manager owns."""
    conflicts: list[tuple[str, Path]] = []
    for manager, owned in others:
        for path in sorted(applied_paths & owned, key=dotted):
            if not isinstance(path[-1], str) and path[-1][0] == "k":
                continue  # owning the same list item is sharing, not a conflict
            had, old = get_path(live, path)
            _, new = get_path(applied, path)
            if had and old != new:
                conflicts.append((manager, path))
    return conflicts


def apply_merge(
    live: dict[str, Any],
    applied: dict[str, Any],
    dropped: set[Path],
    builtin: bool,
) -> dict[str, Any]:
    """The applied configuration merged into ``live``, after removing ``dropped`` paths."""
    result = copy.deepcopy(live)
    for path in sorted(dropped, key=len, reverse=True):
        remove_path(result, path)
    return strategic_merge_patch(result, applied, builtin=builtin)


def changed_paths(
    old: dict[str, Any] | None, new: dict[str, Any], builtin: bool
) -> tuple[set[Path], set[Path]]:
    """(paths an update set or changed, paths it removed)."""
    new_paths = field_paths(new, builtin)
    if old is None:
        return new_paths, set()
    old_paths = field_paths(old, builtin)
    changed = set()
    for path in new_paths:
        if path not in old_paths:
            changed.add(path)
        elif isinstance(path[-1], str) and get_path(old, path) != get_path(new, path):
            changed.add(path)
    return changed, old_paths - new_paths


def fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """Paths as a ``FieldsV1`` tree: ``f:spec: {f:replicas: {}}``, ``k:{"name":"a"}: {.: {}}``."""
    root: dict[str, Any] = {}
    for path in sorted(paths, key=len):
        node = root
        for segment in path:
            name = f"f:{segment}" if isinstance(segment, str) else f"{segment[0]}:{segment[1]}"
            node = node.setdefault(name, {})
        if not isinstance(path[-1], str):
            node.setdefault(".", {})
    return root
