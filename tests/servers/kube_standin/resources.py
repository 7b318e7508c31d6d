"""The resource types the stand-in serves, their discovery documents, and label selectors.

Discovery answers like an apiserver's: ``/api`` (APIVersions), ``/apis`` (APIGroupList),
``/apis/<group>`` (APIGroup), ``/api/v1`` and ``/apis/<group>/<version>``
(APIResourceList with ``<plural>/status`` and ``<plural>/scale`` entries), so the
kubernetes client's ``DynamicClient`` finds every kind here by apiVersion and kind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tests.servers.kube_standin.errors import bad_request

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-slipway-standin",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and how it behaves.

    ``builtin`` is False for custom resources (VirtualService, Rollout): they have
    no strategic merge patch, their lists are atomic for apply, list items keep
    ``apiVersion``/``kind``, and a PUT must carry ``metadata.resourceVersion``.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    builtin: bool = True
    has_generation: bool = False
    name_rule: Literal["subdomain", "label"] = "subdomain"
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """``/api/v1`` or ``/apis/<group>/<version>``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str, name: str = "") -> str:
        base = self.prefix
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


CORE = "", "v1"
RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        *CORE, "namespaces", "Namespace", namespaced=False, short_names=("ns",),
        subresources=("status",), name_rule="label",
    ),
    ResourceType(
        *CORE, "pods", "Pod", short_names=("po",), subresources=("status",), categories=("all",)
    ),
    ResourceType(
        *CORE, "services", "Service", short_names=("svc",), subresources=("status",),
        name_rule="label", categories=("all",),
    ),
    ResourceType(*CORE, "endpoints", "Endpoints", short_names=("ep",)),
    ResourceType(*CORE, "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType(*CORE, "secrets", "Secret"),
    ResourceType(
        "apps", "v1", "deployments", "Deployment", short_names=("deploy",),
        subresources=("status", "scale"), has_generation=True, categories=("all",),
    ),
    ResourceType(
        "apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",),
        subresources=("status", "scale"), has_generation=True, categories=("all",),
    ),
    ResourceType(
        "networking.istio.io", "v1beta1", "virtualservices", "VirtualService",
        short_names=("vs",), subresources=("status",), builtin=False, has_generation=True,
        categories=("istio-io", "networking-istio-io"),
    ),
    ResourceType(
        "argoproj.io", "v1alpha1", "rollouts", "Rollout", short_names=("ro",),
        subresources=("status", "scale"), builtin=False, has_generation=True,
        categories=("all",),
    ),
)  # fmt: skip

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}
NAMESPACES = _BY_PATH[("", "v1", "namespaces")]
PODS = _BY_PATH[("", "v1", "pods")]
SERVICES = _BY_PATH[("", "v1", "services")]
ENDPOINTS = _BY_PATH[("", "v1", "endpoints")]
DEPLOYMENTS = _BY_PATH[("apps", "v1", "deployments")]
REPLICASETS = _BY_PATH[("apps", "v1", "replicasets")]


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    return _BY_KIND.get((api_version, kind))


def group_versions() -> dict[str, list[str]]:
    """Non-core groups and their versions, in table order."""
    groups: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in groups.setdefault(r.group, []):
            groups[r.group].append(r.version)
    return groups


def api_versions_doc() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group_doc(name: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list_doc() -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_doc(g, vs) for g, vs in group_versions().items()],
    }


def api_group_doc(group: str) -> dict[str, Any] | None:
    versions = group_versions().get(group)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group, versions)}


def resource_list_doc(group: str, version: str) -> dict[str, Any] | None:
    served = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not served:
        return None
    resources: list[dict[str, Any]] = []
    for r in served:
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.kind.lower(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        for sub in r.subresources:
            sub_entry: dict[str, Any] = {
                "name": f"{r.plural}/{sub}",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }
            if sub == "scale":
                sub_entry.update(group="autoscaling", version="v1", kind="Scale")
            resources.append(sub_entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


# --- label and field selectors ------------------------------------------------------

_KEY = r"(?:[a-z0-9A-Z.\-]+/)?[a-zA-Z0-9](?:[-a-zA-Z0-9_.]*[a-zA-Z0-9])?"
_VALUE = r"(?:[a-zA-Z0-9](?:[-a-zA-Z0-9_.]*[a-zA-Z0-9])?)?"
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_EQUALITY = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(\s*([^()]*)\)\s*$")

LabelMatcher = Callable[[Mapping[str, str]], bool]


def _split_requirements(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> LabelMatcher:
    if m := _SET.match(text):
        key, op, raw = m.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQUALITY.match(text):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(text):
        negate, key = m.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f'unable to parse requirement: found "{text.strip()}", expected a selector')


def parse_label_selector(text: str) -> LabelMatcher:
    """A ``labelSelector`` query: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``,
    ``a``, ``!a``, comma-separated (all must hold). A syntax error is a 400."""
    requirements = [_requirement(part) for part in _split_requirements(text)]
    return lambda labels: all(r(labels) for r in requirements)


def parse_field_selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """A ``fieldSelector`` over ``metadata.name`` and ``metadata.namespace`` (= / == / !=)."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.groups()
        if field not in ("metadata.name", "metadata.namespace"):
            raise bad_request(f"field label not supported: {field}")
        key = field.split(".", 1)[1]

        def check(obj: Mapping[str, Any], key: str = key, op: str = op, value: str = value) -> bool:
            actual = obj.get("metadata", {}).get(key, "")
            return (actual == value) != (op == "!=")

        checks.append(check)
    return lambda obj: all(c(obj) for c in checks)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector object (``matchLabels`` / ``matchExpressions``); empty matches all."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_string(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector as the query-string form the Scale subresource reports."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key = expr.get("operator"), expr.get("key")
        values = ",".join(sorted(expr.get("values") or []))
        parts.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": f"{key}",
                "DoesNotExist": f"!{key}",
            }.get(op, "")
        )
    return ",".join(p for p in parts if p)
