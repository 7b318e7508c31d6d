"""Prometheus metrics of one server instance.

Each :class:`AppMetrics` owns its own :class:`~prometheus_client.CollectorRegistry`
(never the global default one), so a test can run several servers in one
process without "Duplicated timeseries" errors and each ``/metrics`` shows only
its own server's counts.

Series exposed:

- ``http_requests_total{method, path, code}``: counter of answered requests.
- ``http_request_duration_seconds{path}``: histogram of handling time, from
  the parsed request line to the last byte written.
- ``example_app_build_info{version}``: constant 1, tells which release is
  serving (an analysis can join on it).
- the standard ``process_*``, ``python_gc_*`` and ``python_info`` series.

Label values are bounded: ``path`` is a known route or ``"unmatched"`` and
``method`` a known method or ``"OTHER"``, so a scanner requesting random URLs
cannot blow up the number of series.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
)
from prometheus_client.exposition import choose_encoder

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AppMetrics:
    """The request metrics of one server, in their own registry.

    Args:
        version: Value of the ``version`` label of ``example_app_build_info``.
        registry: Registry to register in; a new one when omitted.
    """

    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # The process/platform/gc collectors only read state, so sharing the
        # module-level instances between registries is safe.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by method, route and status code.",
            labelnames=("method", "path", "code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time spent handling an HTTP request, in seconds, by route.",
            labelnames=("path",),
            registry=self.registry,
        )
        Info(
            "example_app_build", "Release of example-app that is serving.", registry=self.registry
        ).info({"version": version})

    def observe(self, method: str | None, path: str, code: int, seconds: float) -> None:
        """Record one answered request.

        Args:
            method: HTTP method as sent; unknown ones are counted as ``"OTHER"``.
            path: Route label (see :func:`example_app.app.route_label`).
            code: HTTP status code sent.
            seconds: Handling time in seconds.
        """
        method_label = method if method in KNOWN_METHODS else "OTHER"
        self.requests.labels(method=method_label, path=path, code=str(code)).inc()
        self.duration.labels(path=path).observe(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Exposition of the registry, in the format the ``Accept`` header asks for.

        Returns:
            The body and its ``Content-Type`` (Prometheus text format 0.0.4
            unless the client asks for OpenMetrics).
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
