"""Failures as the Kubernetes API reports them: a ``Status`` body with reason and code.

Messages follow the apiserver's wording (``deployments.apps "web" not found``), so
a product that shows or parses them sees what a real cluster would send.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An API failure; :meth:`status` is the JSON body, :attr:`code` the HTTP status."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(group: str, plural: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = plural
    return details


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(group, plural)} "{name}" not found',
        _details(group, plural, name),
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(group, plural)} "{name}" already exists',
        _details(group, plural, name),
    )


def conflict(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(group, plural)} "{name}": the object '
        "has been modified; please apply your changes to the latest version and try again",
        _details(group, plural, name),
    )


def apply_conflict(
    group: str, plural: str, name: str, api_version: str, conflicts: list[tuple[str, str]]
) -> ApiError:
    """``conflicts``: (other manager, field path like ``.spec.replicas``)."""
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "{m}" using {api_version}',
            "field": f,
        }
        for m, f in conflicts
    ]
    if len(conflicts) == 1:
        manager, field = conflicts[0]
        message = (
            f'Apply failed with 1 conflict: conflict with "{manager}" using {api_version}: {field}'
        )
    else:
        by_manager: dict[str, list[str]] = {}
        for manager, field in conflicts:
            by_manager.setdefault(manager, []).append(field)
        blocks = [
            f'conflicts with "{m}" using {api_version}:\n' + "\n".join(f"- {f}" for f in fields)
            for m, fields in by_manager.items()
        ]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(blocks)
    details = _details(group, plural, name)
    details["causes"] = causes
    return ApiError(409, "Conflict", message, details)


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """``causes``: (field, reason like ``FieldValueRequired``, message)."""
    qualified = f"{kind}.{group}" if group else kind
    parts = [f"{field}: {message}" for field, _, message in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {joined}',
        {
            "name": name,
            **({"group": group} if group else {}),
            "kind": kind,
            "causes": [
                {"reason": reason, "message": message, "field": field}
                for field, reason, message in causes
            ],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}",
    )


def method_not_allowed(verb: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({verb})",
    )


def resource_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(user: str, verb: str, group: str, plural: str, name: str, namespace: str) -> ApiError:
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    subject = f'{_qualified(group, plural)} "{name}"' if name else _qualified(group, plural)
    return ApiError(
        403,
        "Forbidden",
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{plural}" in API group '
        f'"{group}"{where}',
        _details(group, plural, name),
    )


def forbidden_message(group: str, plural: str, name: str, message: str) -> ApiError:
    return ApiError(403, "Forbidden", message, _details(group, plural, name))


def namespace_terminating(group: str, plural: str, name: str, namespace: str) -> ApiError:
    return ApiError(
        403,
        "Forbidden",
        f'{_qualified(group, plural)} "{name}" is forbidden: unable to create new content in '
        f"namespace {namespace} because it is being terminated",
        _details(group, plural, name),
    )


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)
