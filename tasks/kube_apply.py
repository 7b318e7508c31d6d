"""Apply rendered manifests to a cluster with server-side apply.

Server-side apply (``PATCH`` with ``application/apply-patch+yaml``) is what
``kubectl apply --server-side`` does: the API server merges the object, records
slipway (``field_manager``) as the owner of the fields it sent, and drops fields
slipway sent last time but not this time. ``force_conflicts=True`` takes fields over
from other managers (someone's ``kubectl edit``): the manifests repository is the
source of truth, as in GitOps.

Objects go through ``kubernetes.dynamic.DynamicClient``, so any kind the cluster
serves (Deployments, Services, Istio VirtualServices...) is applied the same way; one
DynamicClient (and its discovery) is kept per ApiClient.

Release history: :data:`HISTORY_ANNOTATIONS` are set on the Deployment's metadata by
the deploy stage; the Deployment controller copies Deployment annotations onto the
ReplicaSet of each revision, so ``rollout_history`` (tasks/rollout.py) can say which
image, commit, build, run and approver each revision came from, and
``kubectl rollout history`` shows ``kubernetes.io/change-cause``.

Errors from the API are translated here, once: 403 (forbidden), 422 (invalid), 409
(conflict) and the rest become :class:`~slipway.exceptions.DeployError` carrying the
API server's own message (it names the field at fault); an API server that does not
answer becomes :class:`~slipway.exceptions.ClusterUnreachable`.
"""

from __future__ import annotations

import copy
import json
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

from slipway.exceptions import ClusterUnreachable, DeployError

FIELD_MANAGER = "slipway"

ANNOTATION_IMAGE = "slipway.dev/image"
ANNOTATION_SOURCE_COMMIT = "slipway.dev/source-commit"
ANNOTATION_BUILD = "slipway.dev/build"
ANNOTATION_RUN = "slipway.dev/run"
ANNOTATION_APPROVER = "slipway.dev/approver"
ANNOTATION_MANIFESTS_COMMIT = "slipway.dev/manifests-commit"
ANNOTATION_CHANGE_CAUSE = "kubernetes.io/change-cause"
HISTORY_ANNOTATIONS = (
    ANNOTATION_IMAGE,
    ANNOTATION_SOURCE_COMMIT,
    ANNOTATION_BUILD,
    ANNOTATION_RUN,
    ANNOTATION_APPROVER,
    ANNOTATION_MANIFESTS_COMMIT,
    ANNOTATION_CHANGE_CAUSE,
)

_MESSAGE_CHARS = 500
_dynamic_clients: weakref.WeakKeyDictionary[ApiClient, DynamicClient] = weakref.WeakKeyDictionary()

Log = Callable[[str], None]


@dataclass(frozen=True)
class AppliedObject:
    """One object as the API server answered the apply."""

    api_version: str
    kind: str
    name: str
    namespace: str | None
    generation: int | None
    resource_version: str
    action: Literal["created", "configured", "unchanged"]

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.kind.lower()}/{self.name}{where} {self.action}"


def dynamic_client(api: ApiClient) -> DynamicClient:
    """The DynamicClient of ``api`` (made once: discovery costs a dozen requests)."""
    found = _dynamic_clients.get(api)
    if found is None:
        try:
            found = DynamicClient(api)
        except ApiException as exc:
            raise translate_api_error(exc, "discovering the cluster's APIs") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable(api, exc) from None
        _dynamic_clients[api] = found
    return found


def resource_for(api: ApiClient, api_version: str, kind: str) -> Resource:
    """The API resource serving ``kind``; DeployError when the cluster lacks it (a CRD
    that is not installed)."""
    client = dynamic_client(api)
    try:
        return client.resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        raise DeployError(
            f"the cluster does not serve {api_version} {kind} (is its CRD installed?)"
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None


def get_object(
    api: ApiClient, api_version: str, kind: str, name: str, namespace: str | None
) -> dict[str, Any] | None:
    """The object as a plain dict, or None when it does not exist."""
    resource = resource_for(api, api_version, kind)
    try:
        found = resource.get(name=name, namespace=namespace if resource.namespaced else None)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise translate_api_error(exc, f"reading {kind} {name}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    return dict(found.to_dict())


def patch_object(
    api: ApiClient,
    api_version: str,
    kind: str,
    name: str,
    namespace: str | None,
    patch: dict[str, Any] | list[dict[str, Any]],
    *,
    log: Log,
    content_type: str = "application/merge-patch+json",
) -> dict[str, Any]:
    """Patch one object (JSON merge patch by default; a list is a JSON patch)."""
    resource = resource_for(api, api_version, kind)
    if isinstance(patch, list):
        content_type = "application/json-patch+json"
    try:
        patched = resource.patch(
            body=patch,
            name=name,
            namespace=namespace if resource.namespaced else None,
            content_type=content_type,
        )
    except ApiException as exc:
        raise translate_api_error(exc, f"patching {kind} {name}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    log(f"{kind.lower()}/{name} patched")
    return dict(patched.to_dict())


def ensure_namespace(api: ApiClient, namespace: str, log: Log) -> bool:
    """Create ``namespace`` unless it exists; True when it was created."""
    resource = resource_for(api, "v1", "Namespace")
    try:
        resource.get(name=namespace)
        return False
    except ApiException as exc:
        if exc.status != 404:
            raise translate_api_error(exc, f"reading namespace {namespace}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    try:
        resource.create(
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
    except ApiException as exc:
        if exc.status == 409:  # created meanwhile by someone else: fine
            return False
        raise translate_api_error(exc, f"creating namespace {namespace}") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(api, exc) from None
    log(f"namespace/{namespace} created")
    return True


def apply_objects(
    api: ApiClient,
    objects: Sequence[Mapping[str, Any]],
    *,
    namespace: str,
    create_namespace: bool = False,
    annotations: Mapping[str, str] | None = None,
    field_manager: str = FIELD_MANAGER,
    force_conflicts: bool = True,
    log: Log,
) -> list[AppliedObject]:
    """Server-side apply ``objects`` in order; what the API server answered for each.

    Namespaced objects without a namespace get ``namespace``; ``annotations`` are added
    to every object's ``metadata.annotations`` (the caller decides which objects carry
    release history by what it passes). The inputs are not modified.
    ``force_conflicts=False`` makes a field another manager owns a 409 DeployError
    instead of taking it over.

    Raises:
        DeployError: the cluster refused an object (forbidden, invalid, conflict, a kind
            it does not serve); objects before it stay applied.
        ClusterUnreachable: the API server did not answer.
    """
    prepared = [_prepared(obj, annotations) for obj in objects]
    if create_namespace:
        targets = [namespace] + [
            str(obj["metadata"]["namespace"])
            for obj in prepared
            if obj["metadata"].get("namespace")
        ]
        for target in dict.fromkeys(targets):
            ensure_namespace(api, target, log)
    applied: list[AppliedObject] = []
    for body in prepared:
        api_version, kind = str(body["apiVersion"]), str(body["kind"])
        name = str(body["metadata"]["name"])
        resource = resource_for(api, api_version, kind)
        target: str | None = None
        if resource.namespaced:
            target = str(body["metadata"].get("namespace") or namespace)
            body["metadata"]["namespace"] = target
        what = f"{kind} {name}" + (f" in namespace {target}" if target else "")
        try:
            before = _current(resource, name, target)
            answer = resource.server_side_apply(
                body=body,
                name=name,
                namespace=target,
                field_manager=field_manager,
                force_conflicts=force_conflicts,
            )
        except ApiException as exc:
            raise translate_api_error(exc, f"applying {what}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise unreachable(api, exc) from None
        meta = answer.metadata
        version = str(meta.resourceVersion)
        if before is None:
            action: Literal["created", "configured", "unchanged"] = "created"
        elif _content(before) == _content(answer.to_dict()):
            action = "unchanged"
        else:
            action = "configured"
        result = AppliedObject(
            api_version=api_version,
            kind=kind,
            name=name,
            namespace=target,
            generation=meta.generation,
            resource_version=version,
            action=action,
        )
        log(str(result))
        applied.append(result)
    return applied


def _prepared(obj: Mapping[str, Any], annotations: Mapping[str, str] | None) -> dict[str, Any]:
    body = copy.deepcopy(dict(obj))
    metadata = body.get("metadata")
    if (
        not isinstance(metadata, dict)
        or not metadata.get("name")
        or not body.get("apiVersion")
        or not body.get("kind")
    ):
        raise DeployError("every object needs apiVersion, kind and metadata.name")
    for drop in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        metadata.pop(drop, None)  # server-side apply refuses some of these; all are server's
    body.pop("status", None)
    if annotations:
        metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
    return body


def _current(resource: Resource, name: str, namespace: str | None) -> dict[str, Any] | None:
    """The object as it is before the apply, or None when it does not exist yet."""
    try:
        return dict(resource.get(name=name, namespace=namespace).to_dict())
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What an apply can change: the object less its status and bookkeeping (controllers
    update status and resourceVersion at any time, so those say nothing about the apply)."""
    content = {k: v for k, v in obj.items() if k != "status"}
    content["metadata"] = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in ("resourceVersion", "managedFields")
    }
    return content


def api_message(exc: ApiException) -> str:
    """The API server's message from a failed request (its ``Status.message``), cut short."""
    message = ""
    try:
        status = json.loads(exc.body or "")
        if isinstance(status, dict):
            message = str(status.get("message") or "")
    except ValueError:
        message = str(exc.body or "")
    message = message or f"{exc.status} {exc.reason}"
    return message[:_MESSAGE_CHARS]


def translate_api_error(exc: ApiException, doing: str) -> DeployError | ClusterUnreachable:
    """One boundary for API errors: what was being done, the status and the API's message.

    A busy or failing API server (429, 5xx) may answer a retry; anything else will not.
    """
    status = int(exc.status or 0)
    if status == 429 or status >= 500:
        return ClusterUnreachable(f"{doing}: the API server answered {status}: {api_message(exc)}")
    labels = {
        401: "unauthorized (credentials refused)",
        403: "forbidden",
        404: "not found",
        409: "conflict",
        422: "invalid",
    }
    label = labels.get(status, f"HTTP {status}")
    return DeployError(f"{doing}: {label}: {api_message(exc)}")


def unreachable(api: ApiClient, exc: Exception) -> ClusterUnreachable:
    """The error for an API server that did not answer (names the URL, never the token)."""
    url = str(api.configuration.host).rstrip("/")
    return ClusterUnreachable(f"the Kubernetes API at {url} did not answer ({type(exc).__name__})")
