"""HTTP for the stand-in: routing, bearer-token auth, JSON bodies, watch streams, proxy.

URLs are the apiserver's: ``/api/v1[/namespaces/<ns>]/<plural>[/<name>[/<sub>]]`` and
``/apis/<group>/<version>/...``; ``<sub>`` is ``status``, ``scale`` or ``proxy``.
Query parameters honoured: ``labelSelector``, ``fieldSelector``, ``limit``,
``continue``, ``watch``, ``resourceVersion`` (watch), ``timeoutSeconds`` (watch),
``fieldManager``, ``force``, ``dryRun=All``, ``propagationPolicy``. A write without
``fieldManager`` is attributed to the User-Agent's product name, as the apiserver
does (``OpenAPI-Generator`` for the Python client).

A watch answers with a chunked stream of ``{"type", "object"}`` lines: the current
objects as ADDED first unless a ``resourceVersion`` is given, then every change;
an object that starts or stops matching the label selector arrives as ADDED or
DELETED; a resourceVersion older than the kept history gets an ERROR event with a
410 ``Expired`` Status.

``services/<name>[:<port>]/proxy/<path>`` and ``pods/<name>[:<port>]/proxy/<path>``
forward the request to a ready endpoint (as ``kubectl proxy`` URLs do), which is
useful when pods are backed by real local processes.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.servers.kube_standin import errors
from tests.servers.kube_standin.errors import ApiError
from tests.servers.kube_standin.resources import (
    ENDPOINTS,
    PODS,
    SERVER_VERSION,
    SERVICES,
    ResourceType,
    api_group_doc,
    api_group_list_doc,
    api_versions_doc,
    group_versions,
    lookup,
    parse_field_selector,
    parse_label_selector,
    resource_list_doc,
)
from tests.servers.kube_standin.store import Store

READ_VERBS = {"get", "list", "watch"}


class ApiServer(ThreadingHTTPServer):
    """The listening socket; :attr:`store` holds the state."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], store: Store, tokens: dict[str, tuple[str, bool]]
    ) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.tokens = tokens  # token -> (user name, may write)
        self.stopping = threading.Event()
        self.requests: deque[tuple[str, str]] = deque(maxlen=10000)  # (method, path), latest
        self._round_robin = itertools.count()

    def next_index(self, n: int) -> int:
        return next(self._round_robin) % n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms stalls
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # --- plumbing ---------------------------------------------------------------------

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.server.requests.append((method, url.path))
        try:
            if url.path in ("/healthz", "/livez", "/readyz"):
                self._send(200, b"ok", "text/plain; charset=utf-8")
                return
            user, may_write = self._authenticate()
            self._route(method, url.path, url.query, query, raw, user, may_write)
        except ApiError as exc:
            self._send(exc.code, exc.status())
        except BrokenPipeError:
            pass
        except Exception as exc:  # a bug in the stand-in: say so like an apiserver would
            self._send(500, ApiError(500, "InternalError", f"stand-in error: {exc!r}").status())

    def _authenticate(self) -> tuple[str, bool]:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.server.tokens:
            raise errors.unauthorized()
        return self.server.tokens[token.strip()]

    def _manager(self, query: dict[str, str]) -> str:
        if query.get("fieldManager"):
            return query["fieldManager"]
        agent = self.headers.get("User-Agent", "") or "unknown"
        return agent.split("/", 1)[0][:128]

    # --- routing ----------------------------------------------------------------------------

    def _route(
        self,
        method: str,
        path: str,
        raw_query: str,
        query: dict[str, str],
        raw: bytes,
        user: str,
        may_write: bool,
    ) -> None:
        parts = [unquote(p) for p in path.split("/") if p]
        if method == "GET":
            doc = self._discovery(parts)
            if doc is not None:
                self._send(200, doc)
                return
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        if (
            group
            and version not in group_versions().get(group, [])
            or (not group and version != "v1")
        ):
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and lookup(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise errors.resource_not_found()
        rt = lookup(group, version, rest[0])
        if rt is None or (namespace is not None and not rt.namespaced):
            raise errors.resource_not_found()
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub == "proxy" and rt in (SERVICES, PODS) and namespace:
            self._proxy(rt, namespace, name, "/".join(rest[3:]), method, raw_query, raw)
            return
        if (sub and sub not in rt.subresources) or len(rest) > 3:
            raise errors.resource_not_found()
        verb = self._verb(method, name, query)
        if not may_write and verb not in READ_VERBS:
            raise errors.forbidden(user, verb, rt.group, rt.plural, name, namespace or "")
        ns = namespace or ""
        if rt.namespaced and not ns and verb not in ("list", "watch"):
            raise errors.resource_not_found()
        self._serve(rt, verb, ns if rt.namespaced else "", namespace, name, sub, query, raw)

    @staticmethod
    def _verb(method: str, name: str, query: dict[str, str]) -> str:
        if method == "GET":
            if name:
                return "get"
            return "watch" if query.get("watch") in ("true", "1", "True") else "list"
        if method == "POST":
            if name:
                raise errors.method_not_allowed("POST")
            return "create"
        if not name:
            if method == "DELETE":
                return "deletecollection"
            raise errors.method_not_allowed(method)
        return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        if parts == ["version"]:
            return SERVER_VERSION
        if parts == ["api"]:
            return api_versions_doc()
        if parts == ["apis"]:
            return api_group_list_doc()
        if len(parts) == 2 and parts[0] == "api":
            return resource_list_doc("", parts[1])
        if len(parts) == 2 and parts[0] == "apis":
            return api_group_doc(parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return resource_list_doc(parts[1], parts[2])
        return None

    # --- verbs -------------------------------------------------------------------------------

    def _serve(
        self,
        rt: ResourceType,
        verb: str,
        ns: str,
        list_ns: str | None,
        name: str,
        sub: str,
        query: dict[str, str],
        raw: bytes,
    ) -> None:
        store = self.server.store
        dry_run = query.get("dryRun") == "All"
        manager = self._manager(query)
        if verb == "get":
            obj = store.get(rt, ns, name)
            self._send(200, store.scale_of(rt, obj) if sub == "scale" else obj)
        elif verb == "list":
            items, rv, token, remaining = store.list(
                rt,
                list_ns if rt.namespaced else None,
                label_selector=query.get("labelSelector", ""),
                field_selector=query.get("fieldSelector", ""),
                limit=int(query.get("limit") or 0),
                continue_token=query.get("continue", ""),
            )
            self._send(200, _list_doc(rt, items, rv, token, remaining))
        elif verb == "watch":
            self._watch(rt, list_ns if rt.namespaced else None, query)
        elif verb == "create":
            body = _json(raw)
            self._send(201, store.create(rt, ns, body, manager=manager, dry_run=dry_run))
        elif verb == "update":
            body = _json(raw)
            self._send(
                200,
                store.replace(
                    rt, ns, name, body, manager=manager, subresource=sub, dry_run=dry_run
                ),
            )
        elif verb == "patch":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            obj, created = store.patch(
                rt, ns, name, content_type, raw, manager=query.get("fieldManager", "")
                if content_type == "application/apply-patch+yaml" else manager,
                force=query.get("force") in ("true", "1", "True"), subresource=sub, dry_run=dry_run,
            )  # fmt: skip
            self._send(201 if created else 200, obj)
        elif verb == "delete":
            options = _json(raw) if raw.strip() else {}
            options = options if isinstance(options, dict) else {}
            propagation = query.get("propagationPolicy") or options.get("propagationPolicy")
            body, code = store.delete(
                rt, ns, name, propagation=propagation, preconditions=options.get("preconditions"),
                dry_run=dry_run or options.get("dryRun") == ["All"],
            )  # fmt: skip
            self._send(code, body)
        elif verb == "deletecollection":
            items = store.delete_collection(
                rt,
                list_ns if rt.namespaced else None,
                label_selector=query.get("labelSelector", ""),
                field_selector=query.get("fieldSelector", ""),
                propagation=query.get("propagationPolicy"),
            )
            self._send(200, _list_doc(rt, items, str(store.resource_version), "", 0))

    # --- watch -------------------------------------------------------------------------------

    def _watch(self, rt: ResourceType, namespace: str | None, query: dict[str, str]) -> None:
        store = self.server.store
        labels_ok = parse_label_selector(query.get("labelSelector", ""))
        fields_ok = parse_field_selector(query.get("fieldSelector", ""))

        def matches(obj: dict[str, Any] | None) -> bool:
            return (
                obj is not None
                and (namespace is None or obj["metadata"].get("namespace") == namespace)
                and labels_ok(obj["metadata"].get("labels") or {})
                and fields_ok(obj)
            )

        timeout = min(float(query.get("timeoutSeconds") or 1800), 1800)
        deadline = time.monotonic() + timeout
        start = query.get("resourceVersion", "")
        pending: list[dict[str, Any]] = []
        with store.lock:
            if start in ("", "0"):
                last = store.resource_version
                items, *_ = store.list(rt, namespace)
                pending = [{"type": "ADDED", "object": o} for o in items if matches(o)]
            else:
                try:
                    last = int(start)
                except ValueError as exc:
                    raise errors.bad_request(f"invalid resource version: {start}") from exc
                history = store.events
                if len(history) == history.maxlen and history and last < history[0].rv - 1:
                    pending = [{
                        "type": "ERROR",
                        "object": errors.gone(
                            f"too old resource version: {last} ({history[0].rv - 1})"
                        ).status(),
                    }]  # fmt: skip
                    deadline = 0.0
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            self._chunks(pending)
            while time.monotonic() < deadline and not self.server.stopping.is_set():
                with store.changed:
                    fresh = [e for e in store.events if e.rv > last]
                    if not fresh:
                        store.changed.wait(min(0.2, max(deadline - time.monotonic(), 0)))
                        continue
                    last = fresh[-1].rv
                out = []
                for event in fresh:
                    if event.rt is not rt:
                        continue
                    now, before = matches(event.obj), matches(event.previous)
                    kind = event.type
                    if kind == "MODIFIED" and now != before:
                        kind = "ADDED" if now else "DELETED"
                    elif not now and not (kind == "DELETED" and before):
                        continue
                    out.append({"type": kind, "object": event.obj})
                self._chunks(out)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _chunks(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()

    # --- proxy ---------------------------------------------------------------------------------

    def _proxy(
        self, rt: ResourceType, namespace: str, target: str, path: str, method: str,
        raw_query: str, raw: bytes,
    ) -> None:  # fmt: skip
        store = self.server.store
        name, _, port = target.partition(":")
        if rt is SERVICES:
            service = store.get(SERVICES, namespace, name)
            ports = service["spec"].get("ports") or []
            wanted = next(
                (
                    p
                    for p in ports
                    if not port or str(p.get("port")) == port or p.get("name") == port
                ),
                None,
            )
            endpoints = store.find(ENDPOINTS, namespace, name) or {}
            choices = []
            for subset in endpoints.get("subsets") or []:
                for ep_port in subset.get("ports") or []:
                    if wanted is None or ep_port.get("name", "") == wanted.get("name", ""):
                        choices += [
                            (a["ip"], ep_port["port"]) for a in subset.get("addresses") or []
                        ]
            if wanted is None or not choices:
                raise ApiError(
                    503, "ServiceUnavailable", f'no endpoints available for service "{name}"'
                )
            host, number = choices[self.server.next_index(len(choices))]
        else:
            pod = store.get(PODS, namespace, name)
            host = (pod.get("status") or {}).get("podIP", "")
            container_ports = [
                p.get("containerPort")
                for c in pod["spec"].get("containers") or []
                for p in c.get("ports") or []
            ]
            number = (
                int(port) if port.isdigit() else (container_ports[0] if container_ports else 80)
            )
            if not host:
                raise ApiError(503, "ServiceUnavailable", f'pod "{name}" has no IP address')
        upstream = "/" + path + (f"?{raw_query}" if raw_query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
        try:
            conn = http.client.HTTPConnection(host, int(number), timeout=10)
            conn.request(method, upstream, body=raw or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
        except OSError as exc:
            raise ApiError(
                503, "ServiceUnavailable",
                f"error trying to reach service: dial tcp {host}:{number}: {exc}",
            ) from exc  # fmt: skip
        self._send(response.status, data, response.getheader("Content-Type") or "text/plain")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8") or "null")
    except ValueError as exc:
        raise errors.bad_request(
            f"the body of the request was in an unknown format - accepted media types include: "
            f"application/json, application/yaml ({exc})"
        ) from exc


def _list_doc(
    rt: ResourceType, items: list[dict[str, Any]], rv: str, token: str, remaining: int
) -> dict[str, Any]:
    if rt.builtin:  # the apiserver leaves apiVersion/kind out of built-in list items
        items = [
            {k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items
        ]
    meta: dict[str, Any] = {"resourceVersion": rv}
    if token:
        meta["continue"] = token
        meta["remainingItemCount"] = remaining
    return {
        "kind": f"{rt.kind}List",
        "apiVersion": rt.api_version,
        "metadata": meta,
        "items": items,
    }
