"""Render an environment's manifests to plain objects: a folder of YAML, or kustomize.

Two kinds, chosen in the deploy spec:

``plain``
    every ``*.yaml`` / ``*.yml`` under the path (or the one file the path names),
    recursively, in sorted path order; each file may hold several documents; empty
    documents and ``kustomization.yaml`` files are skipped; ``kind: List`` is unpacked.

``kustomize``
    a pure-Python subset of ``kustomize build`` (kustomize v5), so rendering needs no
    binary. A kustomization may use ``resources`` (YAML files, and directories holding
    a kustomization, recursively), ``namespace``, ``namePrefix`` / ``nameSuffix``,
    ``commonLabels``, ``labels`` (``pairs``, ``includeSelectors``, ``includeTemplates``),
    ``commonAnnotations``, ``images`` (``name``, ``newName``, ``newTag``, ``digest``) and
    ``replicas`` (``name``, ``count``). Transformers run in kustomize's order (namespace,
    prefix/suffix, labels, annotations, replicas, images) on everything the
    kustomization's resources produced; labels reach selectors and pod templates where
    kustomize puts them; a renamed ConfigMap, Secret, ServiceAccount or
    PersistentVolumeClaim is renamed where pod specs refer to it; the output is in
    kustomize's (legacy) order, Namespaces first and Services before Deployments.
    Any other key (``patches``, ``configMapGenerator``, ``components``, remote
    resources...) is refused with a :class:`~slipway.exceptions.ManifestRenderError`
    naming the file and the key, rather than deploying something kustomize would have
    rendered differently. tests/tasks/test_manifests_render.py compares the output with
    ``kubectl kustomize`` where kubectl is installed.

Files come from a repository, so they are untrusted: YAML is loaded by
:func:`slipway.safe_yaml.load_manifests` (libyaml's safe loader, reading what kubectl
reads, trailing tabs included; nesting and alias expansion capped), files are capped
in size, and every path (the one asked for, each resource,
each symlink's target) must stay inside ``root`` (:class:`UnsafeInputError`
otherwise). Every object must have ``apiVersion``, ``kind`` and ``metadata.name``; the
error names the file and the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slipway.exceptions import ManifestRenderError, UnsafeInputError
from slipway.safe_yaml import YamlProblem, load_manifests

ManifestKind = Literal["plain", "kustomize"]

MAX_FILE_BYTES = 4 * 1024 * 1024  # a manifest file is a few kB; anything huge is a mistake
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "commonLabels",
        "labels",
        "commonAnnotations",
        "images",
        "replicas",
    }
)
_IMAGE_KEYS = frozenset({"name", "newName", "newTag", "digest"})
_REPLICA_KEYS = frozenset({"name", "count"})
_LABEL_KEYS = frozenset({"pairs", "includeSelectors", "includeTemplates"})

# Kinds without a namespace (kustomize's namespace transformer leaves them alone).
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "APIService",
        "CertificateSigningRequest",
        "ClusterRole",
        "ClusterRoleBinding",
        "ComponentStatus",
        "CSIDriver",
        "CSINode",
        "CustomResourceDefinition",
        "FlowSchema",
        "IngressClass",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Node",
        "PersistentVolume",
        "PodSecurityPolicy",
        "PriorityClass",
        "PriorityLevelConfiguration",
        "RuntimeClass",
        "StorageClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
        "VolumeAttachment",
    }
)
# kustomize's legacy output order (api/resid/gvk.go): these first, in this order ...
_ORDER_FIRST = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)
# ... these last, everything else in between.
_ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
_NO_PREFIX_KINDS = frozenset({"CustomResourceDefinition", "APIService", "Namespace"})
_REPLICA_KINDS = frozenset({"Deployment", "ReplicaSet", "ReplicationController", "StatefulSet"})
_TEMPLATE_KINDS = frozenset(
    {"Deployment", "ReplicaSet", "ReplicationController", "DaemonSet", "StatefulSet", "Job"}
)


@dataclass
class _Resource:
    """One object while a kustomization is built: where it came from, and its names."""

    obj: dict[str, Any]
    source: str
    names: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def key(self) -> tuple[str, str, str, str]:
        group = str(self.obj["apiVersion"]).rpartition("/")[0]
        namespace = str(self.obj["metadata"].get("namespace") or "")
        return group, self.kind, namespace, self.name


def render_manifests(root: Path, path: str, kind: ManifestKind) -> list[dict[str, Any]]:
    """The objects the manifests at ``root/path`` describe, ready to apply.

    Args:
        root: the checkout of the manifests repository; nothing outside it is read.
        path: a folder (or, for ``plain``, a file) relative to ``root``.
        kind: ``plain`` or ``kustomize`` (see the module docstring).

    Raises:
        UnsafeInputError: ``path``, a resource or a symlink leads outside ``root``.
        ManifestRenderError: bad YAML, an object without apiVersion/kind/metadata.name,
            or a kustomization this subset does not support (names the file and key).

    Example:
        ```python
        objects = render_manifests(checkout, "k8s/overlays/staging", "kustomize")
        ```
    """
    base = Path(root).resolve()
    target = _inside(base, base / path, f"manifest path {path!r}")
    if not target.exists():
        raise ManifestRenderError(f"manifest path {path!r} does not exist in the repository")
    if kind == "plain":
        return _render_plain(base, target)
    if kind == "kustomize":
        if not target.is_dir():
            raise ManifestRenderError(
                f"kustomize needs a folder holding a kustomization.yaml, {path!r} is a file"
            )
        resources = _build(base, target, ())
        return [r.obj for r in sorted(resources, key=_legacy_order)]
    raise ManifestRenderError(f"unknown manifest kind {kind!r}: use 'plain' or 'kustomize'")


# --- reading files --------------------------------------------------------------------


def _inside(root: Path, candidate: Path, what: str) -> Path:
    """``candidate`` resolved (symlinks followed); UnsafeInputError when it leaves root."""
    if "\x00" in str(candidate):
        raise UnsafeInputError(f"{what} contains a NUL character")
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise UnsafeInputError(f"{what} leads outside the manifests repository")
    return resolved


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() or "."


def _render_plain(root: Path, target: Path) -> list[dict[str, Any]]:
    if target.is_file():
        files = [target]
    else:
        files = sorted(
            (
                p
                for p in target.rglob("*")
                if p.suffix in (".yaml", ".yml") and p.name not in KUSTOMIZATION_FILES
            ),
            key=lambda p: p.relative_to(target).as_posix(),
        )
    objects: list[dict[str, Any]] = []
    for file in files:
        real = _inside(root, file, f"manifest file {_relative(root, file)}")
        if real.is_file():
            objects.extend(_load_objects(root, real))
    return objects


def _read_text(root: Path, file: Path) -> str:
    name = _relative(root, file)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise ManifestRenderError(f"{name}: larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestRenderError(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise ManifestRenderError(f"{name}: cannot read ({exc.strerror})") from None


def _load_documents(root: Path, file: Path) -> list[tuple[int, Any]]:
    """(document number from 1, content) of each non-empty document."""
    name = _relative(root, file)
    try:
        documents = load_manifests(_read_text(root, file))
    except YamlProblem as exc:
        where = f" line {exc.line}" if exc.line else ""
        raise ManifestRenderError(f"{name}:{where}: {exc.problem}") from None
    return [(i, doc) for i, doc in enumerate(documents, start=1) if doc is not None]


def _load_objects(root: Path, file: Path) -> list[dict[str, Any]]:
    name = _relative(root, file)
    objects: list[dict[str, Any]] = []
    for number, doc in _load_documents(root, file):
        where = f"{name} (document {number})"
        _check_object(doc, where)
        if str(doc["kind"]).endswith("List") and isinstance(doc.get("items"), list):
            for index, item in enumerate(doc["items"]):
                _check_object(item, f"{where} items[{index}]")
                objects.append(item)
        else:
            objects.append(doc)
    return objects


def _check_object(doc: Any, where: str) -> None:
    if not isinstance(doc, dict):
        raise ManifestRenderError(f"{where}: expected a Kubernetes object (a mapping)")
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        return
    missing = [key for key in ("apiVersion", "kind") if not isinstance(doc.get(key), str)]
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        missing.append("metadata.name")
    if missing:
        raise ManifestRenderError(f"{where}: missing {', '.join(missing)}")


# --- kustomize -------------------------------------------------------------------------


def _build(root: Path, folder: Path, stack: tuple[Path, ...]) -> list[_Resource]:
    """kustomize build of ``folder``: its resources, then its transformers."""
    if folder in stack:
        chain = " -> ".join(_relative(root, p) for p in (*stack, folder))
        raise ManifestRenderError(f"kustomization cycle: {chain}")
    file = next((folder / n for n in KUSTOMIZATION_FILES if (folder / n).is_file()), None)
    if file is None:
        raise ManifestRenderError(
            f"{_relative(root, folder)}: no kustomization.yaml (kustomize needs one here)"
        )
    file = _inside(root, file, f"kustomization {_relative(root, folder)}")
    name = _relative(root, file)
    spec = _load_kustomization(root, file)

    resources: list[_Resource] = []
    seen: dict[tuple[str, str, str, str], str] = {}
    for entry in _string_list(spec, "resources", name):
        for resource in _resource(root, folder, entry, name, (*stack, folder)):
            if resource.key in seen:
                raise ManifestRenderError(
                    f"{name}: {resource.kind} {resource.name!r} is defined twice "
                    f"({seen[resource.key]} and {resource.source})"
                )
            seen[resource.key] = resource.source
            resources.append(resource)

    if "namespace" in spec:
        _set_namespace(resources, _string(spec, "namespace", name))
    prefix = _string(spec, "namePrefix", name) if "namePrefix" in spec else ""
    suffix = _string(spec, "nameSuffix", name) if "nameSuffix" in spec else ""
    if prefix or suffix:
        _rename(resources, prefix, suffix)
    if "commonLabels" in spec:
        _add_labels(resources, _string_map(spec, "commonLabels", name), selectors=True)
    for index, entry in enumerate(_entries(spec, "labels", _LABEL_KEYS, name)):
        where = f"{name}: labels[{index}]"
        pairs = _string_map(entry, "pairs", where)
        selectors = _bool(entry, "includeSelectors", where)
        templates = _bool(entry, "includeTemplates", where)
        _add_labels(resources, pairs, selectors=selectors, templates=templates or selectors)
    if "commonAnnotations" in spec:
        _add_annotations(resources, _string_map(spec, "commonAnnotations", name))
    for index, entry in enumerate(_entries(spec, "replicas", _REPLICA_KEYS, name)):
        _set_replicas(resources, entry, f"{name}: replicas[{index}]")
    for index, entry in enumerate(_entries(spec, "images", _IMAGE_KEYS, name)):
        _set_images(resources, entry, f"{name}: images[{index}]")
    return resources


def _load_kustomization(root: Path, file: Path) -> dict[str, Any]:
    name = _relative(root, file)
    documents = _load_documents(root, file)
    if len(documents) != 1 or not isinstance(documents[0][1], dict):
        raise ManifestRenderError(f"{name}: a kustomization is one YAML mapping")
    spec: dict[str, Any] = documents[0][1]
    unsupported = sorted(str(key) for key in spec if key not in SUPPORTED_KEYS)
    if unsupported:
        raise ManifestRenderError(
            f"{name}: unsupported kustomize key {unsupported[0]!r}"
            + (f" (also {', '.join(map(repr, unsupported[1:]))})" if unsupported[1:] else "")
            + f"; slipway renders only: {', '.join(sorted(SUPPORTED_KEYS))}"
        )
    kind = spec.get("kind", "Kustomization")
    if kind != "Kustomization":
        raise ManifestRenderError(f"{name}: unsupported kind {kind!r} (only Kustomization)")
    return spec


def _resource(
    root: Path, folder: Path, entry: str, name: str, stack: tuple[Path, ...]
) -> list[_Resource]:
    if "://" in entry or entry.startswith(("git@", "github.com/", "gitlab.com/")):
        raise ManifestRenderError(
            f"{name}: resources entry {entry!r}: remote resources are not supported"
        )
    target = _inside(root, folder / entry, f"{name}: resources entry {entry!r}")
    if target.is_dir():
        return _build(root, target, stack)
    if not target.is_file():
        raise ManifestRenderError(f"{name}: resources entry {entry!r} does not exist")
    source = _relative(root, target)
    return [
        _Resource(obj, source, {str(obj["metadata"]["name"])})
        for obj in _load_objects(root, target)
    ]


def _string(spec: dict[str, Any], key: str, where: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str):
        raise ManifestRenderError(f"{where}: {key} must be a string")
    return value


def _bool(spec: dict[str, Any], key: str, where: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise ManifestRenderError(f"{where}: {key} must be true or false")
    return value


def _string_list(spec: dict[str, Any], key: str, where: str) -> list[str]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestRenderError(f"{where}: {key} must be a list of strings")
    return value


def _string_map(spec: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise ManifestRenderError(f"{where}: {key} must be a mapping")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ManifestRenderError(
                f'{where}: {key}.{k} must be a string (quote values like "true" or "1")'
            )
    return value


def _entries(
    spec: dict[str, Any], key: str, allowed: frozenset[str], where: str
) -> list[dict[str, Any]]:
    value = spec.get(key) or []
    if not isinstance(value, list):
        raise ManifestRenderError(f"{where}: {key} must be a list")
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ManifestRenderError(f"{where}: {key}[{index}] must be a mapping")
        extra = sorted(str(k) for k in entry if k not in allowed)
        if extra:
            raise ManifestRenderError(
                f"{where}: unsupported kustomize key {key}[{index}].{extra[0]!r} "
                f"(supported: {', '.join(sorted(allowed))})"
            )
    return value


# --- transformers ----------------------------------------------------------------------


def _set_namespace(resources: list[_Resource], namespace: str) -> None:
    """kustomize's namespace transformer, with its two special cases: a Namespace object
    is renamed to the namespace, and role bindings' ServiceAccount subjects named
    ``default`` move into it."""
    for r in resources:
        if r.kind == "Namespace":
            r.obj["metadata"]["name"] = namespace
            r.names.add(namespace)
        elif r.kind not in CLUSTER_SCOPED_KINDS:
            r.obj["metadata"]["namespace"] = namespace
        if r.kind in ("RoleBinding", "ClusterRoleBinding"):
            for subject in _dicts(r.obj.get("subjects")):
                if subject.get("kind") == "ServiceAccount" and subject.get("name") == "default":
                    subject["namespace"] = namespace


def _rename(resources: list[_Resource], prefix: str, suffix: str) -> None:
    renamed: dict[tuple[str, str], str] = {}
    namespaces: dict[str, str] = {}  # a renamed ServiceAccount's namespace, for subjects
    for r in resources:
        if r.kind in _NO_PREFIX_KINDS:
            continue
        old = r.name
        new = f"{prefix}{old}{suffix}"
        r.obj["metadata"]["name"] = new
        r.names.add(new)
        renamed[(r.kind, old)] = new
        if r.kind == "ServiceAccount" and r.obj["metadata"].get("namespace"):
            namespaces[new] = str(r.obj["metadata"]["namespace"])
    for r in resources:
        for pod in _pod_specs(r.obj):
            _rename_references(pod, renamed)
        if r.kind in ("RoleBinding", "ClusterRoleBinding"):
            _rename_binding(r.obj, renamed, namespaces)


def _rename_binding(
    binding: dict[str, Any], renamed: dict[tuple[str, str], str], namespaces: dict[str, str]
) -> None:
    """Follow a renamed Role / ClusterRole (roleRef) and ServiceAccounts (subjects)."""
    role = binding.get("roleRef")
    if isinstance(role, dict) and (str(role.get("kind")), str(role.get("name"))) in renamed:
        role["name"] = renamed[(str(role["kind"]), str(role["name"]))]
    for subject in _dicts(binding.get("subjects")):
        key = ("ServiceAccount", str(subject.get("name")))
        if subject.get("kind") == "ServiceAccount" and key in renamed:
            subject["name"] = renamed[key]
            if subject["name"] in namespaces:
                subject["namespace"] = namespaces[subject["name"]]


def _rename_references(pod: dict[str, Any], renamed: dict[tuple[str, str], str]) -> None:
    """Follow renamed ConfigMaps, Secrets, ServiceAccounts and PVCs in a pod spec."""

    def fix(holder: Any, key: str, kind: str) -> None:
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            holder[key] = renamed.get((kind, holder[key]), holder[key])

    fix(pod, "serviceAccountName", "ServiceAccount")
    fix(pod, "serviceAccount", "ServiceAccount")
    for secret in _dicts(pod.get("imagePullSecrets")):
        fix(secret, "name", "Secret")
    for volume in _dicts(pod.get("volumes")):
        fix(volume.get("configMap"), "name", "ConfigMap")
        fix(volume.get("secret"), "secretName", "Secret")
        fix(volume.get("persistentVolumeClaim"), "claimName", "PersistentVolumeClaim")
        for source in _dicts((volume.get("projected") or {}).get("sources")):
            fix(source.get("configMap"), "name", "ConfigMap")
            fix(source.get("secret"), "name", "Secret")
    for container in _containers(pod):
        for env in _dicts(container.get("env")):
            value_from = env.get("valueFrom") or {}
            fix(value_from.get("configMapKeyRef"), "name", "ConfigMap")
            fix(value_from.get("secretKeyRef"), "name", "Secret")
        for env_from in _dicts(container.get("envFrom")):
            fix(env_from.get("configMapRef"), "name", "ConfigMap")
            fix(env_from.get("secretRef"), "name", "Secret")


def _add_labels(
    resources: list[_Resource],
    labels: dict[str, str],
    *,
    selectors: bool,
    templates: bool = True,
) -> None:
    """kustomize's label fieldSpecs: metadata, selectors and pod templates by kind."""
    if not labels:
        return
    for r in resources:
        obj, kind = r.obj, r.kind
        group = str(obj["apiVersion"]).rpartition("/")[0]
        _merge(obj, ("metadata", "labels"), labels, create=True)
        if kind in ("Service", "ReplicationController") and group == "" and selectors:
            _merge(obj, ("spec", "selector"), labels, create=True)
        if kind in ("Deployment", "ReplicaSet", "DaemonSet", "StatefulSet") and selectors:
            _merge(obj, ("spec", "selector", "matchLabels"), labels, create=True)
        if kind in _TEMPLATE_KINDS and templates:
            _merge(obj, ("spec", "template", "metadata", "labels"), labels, create=True)
        if kind == "StatefulSet" and templates:
            for claim in _dicts(_get(obj, ("spec", "volumeClaimTemplates"))):
                _merge(claim, ("metadata", "labels"), labels, create=True)
        if kind == "Job" and selectors:
            _merge(obj, ("spec", "selector", "matchLabels"), labels, create=False)
        if kind == "CronJob":
            if selectors:
                path = ("spec", "jobTemplate", "spec", "selector", "matchLabels")
                _merge(obj, path, labels, create=False)
            if templates:
                _merge(obj, ("spec", "jobTemplate", "metadata", "labels"), labels, create=True)
                path = ("spec", "jobTemplate", "spec", "template", "metadata", "labels")
                _merge(obj, path, labels, create=True)
        if kind == "PodDisruptionBudget" and selectors:
            _merge(obj, ("spec", "selector", "matchLabels"), labels, create=False)
        if kind == "NetworkPolicy" and selectors:
            _merge(obj, ("spec", "podSelector", "matchLabels"), labels, create=False)


def _add_annotations(resources: list[_Resource], annotations: dict[str, str]) -> None:
    for r in resources:
        _merge(r.obj, ("metadata", "annotations"), annotations, create=True)
        if r.kind in _TEMPLATE_KINDS:
            path = ("spec", "template", "metadata", "annotations")
            _merge(r.obj, path, annotations, create=True)
        if r.kind == "CronJob":
            _merge(r.obj, ("spec", "jobTemplate", "metadata", "annotations"), annotations, True)
            path = ("spec", "jobTemplate", "spec", "template", "metadata", "annotations")
            _merge(r.obj, path, annotations, create=True)


def _set_replicas(resources: list[_Resource], entry: dict[str, Any], where: str) -> None:
    name = _string(entry, "name", where)
    count = entry.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ManifestRenderError(f"{where}: count must be a whole number >= 0")
    matched = [r for r in resources if r.kind in _REPLICA_KINDS and name in r.names]
    if not matched:
        raise ManifestRenderError(f"{where}: no Deployment, StatefulSet or ReplicaSet {name!r}")
    for r in matched:
        r.obj.setdefault("spec", {})["replicas"] = count


def _set_images(resources: list[_Resource], entry: dict[str, Any], where: str) -> None:
    name = _string(entry, "name", where)
    new = {
        key: _string(entry, key, where) for key in ("newName", "newTag", "digest") if key in entry
    }
    for r in resources:
        for container in _all_containers(r.obj):
            image = container.get("image")
            if isinstance(image, str) and split_image(image)[0] == name:
                container["image"] = _updated_image(image, new)


def split_image(image: str) -> tuple[str, str, str]:
    """(name, tag, digest) as kustomize splits an image reference; a registry's port
    (``host:5000/app``) is part of the name."""
    slash = image.find("/")
    offset = slash if slash > 0 else 0
    search = image[offset:]
    at, colon = search.find("@"), search.find(":")
    if at < 0 and colon < 0:
        return image, "", ""
    if at >= 0 and (colon < 0 or at < colon):
        return image[: offset + at], "", image[offset + at + 1 :]
    if at >= 0:
        return (
            image[: offset + colon],
            image[offset + colon + 1 : offset + at],
            image[offset + at + 1 :],
        )
    return image[: offset + colon], image[offset + colon + 1 :], ""


def _updated_image(image: str, new: dict[str, str]) -> str:
    name, tag, digest = split_image(image)
    name = new.get("newName") or name
    new_tag, new_digest = new.get("newTag", ""), new.get("digest", "")
    if new_tag or new_digest:  # either replaces both the old tag and the old digest
        tag, digest = new_tag, new_digest
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# --- object walking --------------------------------------------------------------------


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _merge(
    obj: dict[str, Any], path: tuple[str, ...], values: dict[str, str], create: bool
) -> None:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict):
            return
        if node.get(key) is None:
            if not create:
                return
            node[key] = {}
        node = node[key]
    if isinstance(node, dict):
        node.update(values)


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path in (
        ("spec",),
        ("spec", "template", "spec"),
        ("spec", "jobTemplate", "spec", "template", "spec"),
    ):
        spec = _get(obj, path)
        if isinstance(spec, dict) and "containers" in spec:
            yield spec


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers"):
        yield from _dicts(pod.get(key))


def _all_containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every entry of a ``containers`` / ``initContainers`` list at any depth (what
    kustomize's image transformer visits, so custom resources with pod specs work too)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers"):
                yield from _dicts(value)
            else:
                yield from _all_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _all_containers(item)


def _legacy_order(r: _Resource) -> tuple[int, str, str, str]:
    kind = r.kind
    if kind in _ORDER_FIRST:
        rank = _ORDER_FIRST.index(kind) - len(_ORDER_FIRST)
    elif kind in _ORDER_LAST:
        rank = _ORDER_LAST.index(kind) + 1
    else:
        rank = 0
    group, _, version = str(r.obj["apiVersion"]).rpartition("/")
    gvk = f"{group or '~G'}_{version or '~V'}_{kind}"
    namespace = str(r.obj["metadata"].get("namespace") or "default")
    return rank, gvk, namespace, r.name
