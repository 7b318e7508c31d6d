"""A stand-in for Istio's data plane (test code): one HTTP proxy routing by a VirtualService.

No Istio can run here, and the Kubernetes API stand-in only stores VirtualServices.
:class:`Mesh` plays the sidecar in front of one VirtualService so that tests can
send real traffic through canary weights: a threaded HTTP server on ``127.0.0.1``
that

- reads the VirtualService, and the Service and Endpoints of every destination it
  names, through the Kubernetes API (the real client, any cluster) every
  ``poll_seconds`` (0.2 s), keeping the last good view when a read fails;
- routes each request as Envoy does with Istio's configuration: the ``http`` routes
  in order, the first whose ``match`` holds (any match block; in a block every
  condition: ``headers`` and ``uri`` with ``exact`` / ``prefix`` / ``regex``,
  ``method``); a route without ``match`` takes everything; no route: 404;
- picks a destination of that route at random by ``weight`` (a lone destination
  takes it all), then one of the ready addresses in the destination Service's
  Endpoints, round robin, at the endpoint port behind the Service port
  (``destination.port.number``, else the Service's first port); no ready address:
  503 ``no healthy upstream``, as Envoy answers; a refused connection: 503;
- forwards the request (method, path, headers except hop-by-hop ones, body) and
  the answer, adding ``x-mesh-destination: <host>`` (not something Istio adds: it
  lets tests see where a request went) and counting it in :attr:`Mesh.routed`.

Destination hosts may be short (``web-canary``) or qualified
(``web-canary.<namespace>.svc.cluster.local``). Not modelled: retries, timeouts,
fault injection, mirroring, rewrites, subsets (DestinationRules), gateways, TLS.

Example:
    ```python
    with Mesh(kube.api_client(), kube.namespace, "web") as mesh:
        httpx.get(mesh.url + "/", headers={"x-canary": "always"})
    ```
"""

from __future__ import annotations

import itertools
import random
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.rest import ApiException

__all__ = ["Mesh", "Route", "choose_route"]

DESTINATION_HEADER = "x-mesh-destination"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


@dataclass(frozen=True)
class Route:
    """One ``http`` route of a VirtualService: its match blocks and weighted destinations."""

    matches: tuple[Mapping[str, Any], ...]
    destinations: tuple[tuple[str, int | None, int], ...]  # host, port number, weight

    @classmethod
    def from_spec(cls, route: Mapping[str, Any]) -> Route:
        found = []
        targets = route.get("route") or []
        for target in targets:
            dest = target.get("destination") or {}
            port = (dest.get("port") or {}).get("number")
            weight = target.get("weight", 100 if len(targets) == 1 else 0)
            found.append((str(dest.get("host", "")), port, int(weight)))
        return cls(tuple(route.get("match") or ()), tuple(found))


def _string_match(rule: Mapping[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in rule:
        return value == rule["exact"]
    if "prefix" in rule:
        return value.startswith(str(rule["prefix"]))
    if "regex" in rule:
        return re.fullmatch(str(rule["regex"]), value) is not None
    return False


def _block_holds(
    block: Mapping[str, Any], method: str, path: str, headers: Mapping[str, str]
) -> bool:
    for name, rule in (block.get("headers") or {}).items():
        if not _string_match(rule, headers.get(name.lower())):
            return False
    if "uri" in block and not _string_match(block["uri"], path.split("?", 1)[0]):
        return False
    if "method" in block and not _string_match(block["method"], method):
        return False
    return not set(block) - {"headers", "uri", "method", "name"}  # unknown: never matches


def choose_route(
    routes: list[Route], method: str, path: str, headers: Mapping[str, str]
) -> Route | None:
    """The first route whose match holds (headers are looked up in lower case)."""
    lower = {k.lower(): v for k, v in headers.items()}
    for route in routes:
        if not route.matches or any(_block_holds(b, method, path, lower) for b in route.matches):
            return route
    return None


@dataclass
class _View:
    """What the mesh last read: routes, and per destination host its ready addresses."""

    routes: list[Route] = field(default_factory=list)
    upstreams: dict[tuple[str, int | None], list[str]] = field(default_factory=dict)
    resource_version: str = ""


class Mesh:
    """The proxy; see the module docstring.

    Args:
        api: a ``kubernetes.client.ApiClient`` for the cluster.
        namespace: where the VirtualService and its destinations live.
        virtual_service: the VirtualService's name.
        poll_seconds: how often the configuration is read again.
        seed: seeds the weighted choice (repeatable tests).
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        virtual_service: str,
        *,
        poll_seconds: float = 0.2,
        seed: int | None = None,
    ) -> None:
        self.namespace = namespace
        self.virtual_service = virtual_service
        self.poll_seconds = poll_seconds
        self.routed: Counter[str] = Counter()
        self.errors: list[str] = []
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._random = random.Random(seed)
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()
        self._view = _View()
        self._stop = threading.Event()
        self._upstream = httpx.Client(timeout=10.0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Mesh:
        self.refresh()
        for target, name in ((self._serve, "mesh-http"), (self._poll, "mesh-poll")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._upstream.close()

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- configuration --------------------------------------------------------------------

    def refresh(self) -> str:
        """Read the VirtualService and its destinations now; its resourceVersion
        (empty when it cannot be read: the previous view stays)."""
        try:
            vs = self._custom.get_namespaced_custom_object(
                "networking.istio.io", "v1beta1", self.namespace, "virtualservices",
                self.virtual_service,
            )  # fmt: skip
            routes = [Route.from_spec(r) for r in vs.get("spec", {}).get("http") or []]
            upstreams = {
                (host, port): self._addresses(host, port)
                for route in routes
                for host, port, _ in route.destinations
            }
        except (ApiException, ValueError, OSError) as exc:
            self.errors.append(f"reading the configuration: {type(exc).__name__}: {exc}"[:300])
            return ""
        version = str(vs.get("metadata", {}).get("resourceVersion", ""))
        with self._lock:
            self._view = _View(routes, upstreams, version)
        return version

    def _addresses(self, host: str, port: int | None) -> list[str]:
        """``ip:port`` of the ready endpoints behind ``host`` (a Service) and ``port``."""
        parts = host.split(".")
        name = parts[0]
        namespace = parts[1] if len(parts) > 1 and parts[1] != "svc" else self.namespace
        try:
            service = self._core.read_namespaced_service(name, namespace)
            endpoints = self._core.read_namespaced_endpoints(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        ports = service.spec.ports or []
        chosen = next((p for p in ports if port is None or p.port == port), None)
        if chosen is None:
            return []
        addresses = []
        for subset in endpoints.subsets or []:
            subset_ports = subset.ports or []
            target = next(
                (p.port for p in subset_ports if chosen.name and p.name == chosen.name),
                subset_ports[0].port if len(subset_ports) == 1 else None,
            )
            if target is None:
                continue
            addresses += [f"{a.ip}:{target}" for a in subset.addresses or []]
        return sorted(addresses)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.05)

    # --- routing --------------------------------------------------------------------------------

    def pick(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> tuple[int, str, str | None]:
        """Where a request goes: (status, destination host, ``ip:port``); status 200 means
        forward it, otherwise answer that status."""
        with self._lock:
            view = self._view
            route = choose_route(view.routes, method, path, headers)
            if route is None or not route.destinations:
                return 404, "", None
            weights = [w for _, _, w in route.destinations]
            if sum(weights) <= 0:
                return 503, "", None
            host, port, _ = self._random.choices(route.destinations, weights=weights)[0]
            addresses = view.upstreams.get((host, port)) or []
            if not addresses:
                return 503, host, None
            turn = next(self._round_robin.setdefault(host, itertools.count()))
            return 200, host, addresses[turn % len(addresses)]

    def forward(
        self,
        host: str,
        address: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, bytes, dict[str, str]]:
        """Send the request to ``address``; the answer's status, body and headers."""
        forwarded = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            answer = self._upstream.request(
                method, f"http://{address}{path}", headers=forwarded, content=body
            )
        except httpx.HTTPError:
            body = b"upstream connect error or disconnect/reset before headers"
            return 503, body, {"content-type": "text/plain", DESTINATION_HEADER: host}
        with self._lock:
            self.routed[host] += 1
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        out.pop("content-encoding", None)  # httpx hands over the decoded body
        out[DESTINATION_HEADER] = host
        return answer.status_code, answer.content, out


def _handler(mesh: Mesh) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, a keep-alive client's
        # delayed ACK holds the body back 40 ms.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per request would drown the test output

        def _reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _route(self) -> None:
            headers = {k: v for k, v in self.headers.items()}
            status, host, address = mesh.pick(self.command, self.path, headers)
            if status == 404:
                self._reply(404, b"", {})
                return
            if address is None:
                self._reply(503, b"no healthy upstream", {"content-type": "text/plain"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, content, out = mesh.forward(
                host, address, self.command, self.path, headers, body
            )
            self._reply(status, content, out)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _route

    return Handler
