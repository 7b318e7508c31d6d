"""A real Prometheus (Debian's ``prometheus`` package) scraping the real example app.

Nothing here is a stand-in:

- :class:`PrometheusProcess` runs ``/usr/bin/prometheus`` on ``127.0.0.1`` on a free
  port, its TSDB in a temporary folder, scraping the given targets every second
  (each target can carry extra labels, e.g. ``app`` and ``namespace``, the way a
  Kubernetes service discovery would add them). Optional basic auth goes through
  Prometheus' own ``--web.config.file`` with a bcrypt hash made by ``htpasswd``.
- :class:`ExampleApp` runs ``python -m example_app`` from ``examples/example-app/src``
  as a child process on a free port with a given ``ERROR_RATE``.
- :class:`TrafficGenerator` is a thread requesting ``GET /`` a few times a second,
  so ``rate(http_requests_total[...])`` has something to measure.

The fixtures at the bottom: ``start_example_app`` and ``start_prometheus`` are
factories whose processes are stopped after the test; ``metrics_stack`` is the
session's good and bad release under traffic, scraped by one Prometheus.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
import pytest

from tests.servers.ports import unused_port  # noqa: F401  (re-exported)

PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMETHEUS_PACKAGE = "prometheus"
EXAMPLE_SRC = Path(__file__).resolve().parents[2] / "examples" / "example-app" / "src"
STARTUP_TIMEOUT = 30.0  # seconds for Prometheus or the app to answer


def _wait_until_answering(
    url: str, proc: subprocess.Popen[bytes], what: str, auth: tuple[str, str] | None = None
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1, auth=auth).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready at {url} within {STARTUP_TIMEOUT} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True)
class ScrapeTarget:
    """``host:port`` to scrape, and the labels Prometheus adds to its series."""

    address: str
    labels: Mapping[str, str]


class PrometheusProcess:
    """Context manager running Debian's Prometheus on ``127.0.0.1`` on a free port.

    Args:
        targets: what to scrape (``/metrics``) every ``scrape_interval``.
        scrape_interval: Prometheus duration, e.g. ``"1s"``.
        basic_auth: ``(user, password)`` that the web API then requires.
        file_sd: a file_sd JSON file (e.g. a PodRunner's) whose targets are scraped too,
            re-read every second: pods come and go as a kubernetes_sd job would see them.
    """

    def __init__(
        self,
        targets: Sequence[ScrapeTarget] = (),
        *,
        scrape_interval: str = "1s",
        basic_auth: tuple[str, str] | None = None,
        file_sd: Path | None = None,
    ) -> None:
        self.file_sd = file_sd
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.basic_auth = basic_auth
        self.port = unused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="slipway-prometheus-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def _config(self) -> str:
        lines = [
            "global:",
            f"  scrape_interval: {self.scrape_interval}",
            f"  evaluation_interval: {self.scrape_interval}",
            "scrape_configs:",
            "  - job_name: example-app",
            f"    scrape_timeout: {self.scrape_interval}",
        ]
        if self.file_sd is not None:
            lines += [
                "    file_sd_configs:",
                f'      - files: ["{self.file_sd}"]',
                "        refresh_interval: 1s",
            ]
        if self.targets:
            lines.append("    static_configs:")
        for target in self.targets:
            lines.append(f'      - targets: ["{target.address}"]')
            if target.labels:
                lines.append("        labels:")
                lines.extend(f'          {key}: "{value}"' for key, value in target.labels.items())
        return "\n".join(lines) + "\n"

    def _web_config(self, user: str, password: str) -> Path:
        # Prometheus wants a bcrypt hash; htpasswd (apache2-utils) makes one.
        htpasswd = shutil.which("htpasswd")
        if htpasswd is None:
            pytest.fail("htpasswd is missing: install the Debian package 'apache2-utils'")
        line = subprocess.run(
            [htpasswd, "-nbBC", "4", user, password], check=True, capture_output=True, text=True
        ).stdout.strip()
        hashed = line.split(":", 1)[1]
        path = self._dir / "web.yml"
        path.write_text(f'basic_auth_users:\n  {user}: "{hashed}"\n')
        return path

    def start(self) -> PrometheusProcess:
        if not os.access(PROMETHEUS_BINARY, os.X_OK):
            pytest.fail(
                f"{PROMETHEUS_BINARY} is missing: install the Debian package "
                f"'{PROMETHEUS_PACKAGE}' (apt-get install -y {PROMETHEUS_PACKAGE})"
            )
        config = self._dir / "prometheus.yml"
        config.write_text(self._config())
        argv = [
            PROMETHEUS_BINARY,
            f"--config.file={config}",
            f"--storage.tsdb.path={self._dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        if self.basic_auth is not None:
            argv.append(f"--web.config.file={self._web_config(*self.basic_auth)}")
        self._stderr = open(self._dir / "stderr.log", "wb")  # closed in stop()
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._stderr)
        _wait_until_answering(f"{self.url}/-/ready", self._proc, "prometheus", self.basic_auth)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
        if self._stderr is not None:
            self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def query(self, promql: str) -> list[dict[str, object]]:
        """The instant query's ``data.result`` (a test helper, not the product's client)."""
        answer = httpx.get(
            f"{self.url}/api/v1/query", params={"query": promql}, auth=self.basic_auth, timeout=5
        )
        answer.raise_for_status()
        return answer.json()["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 20.0) -> None:
        """Block until ``promql`` returns at least one sample (scrapes have landed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(promql):
                return
            time.sleep(0.2)
        raise RuntimeError(f"no samples for {promql!r} after {timeout} s")

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ExampleApp:
    """The example app as a child process (``python -m example_app``) on 127.0.0.1."""

    def __init__(self, *, error_rate: float = 0.0, version: str = "1.0.0") -> None:
        self.error_rate = error_rate
        self.version = version
        self.port = unused_port()
        self.address = f"127.0.0.1:{self.port}"
        self.base_url = f"http://{self.address}"
        self.traffic: TrafficGenerator | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ExampleApp:
        env = {
            **os.environ,
            "PYTHONPATH": str(EXAMPLE_SRC),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "ERROR_RATE": str(self.error_rate),
            "APP_VERSION": self.version,
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "example_app"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # one line per request
        )
        _wait_until_answering(f"{self.base_url}/healthz", self._proc, "example-app")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc)


class TrafficGenerator:
    """A daemon thread requesting ``GET {base_url}/`` ``per_second`` times a second."""

    def __init__(self, base_url: str, per_second: float = 10.0) -> None:
        self.base_url = base_url
        self.per_second = per_second
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="traffic")

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.wait(1 / self.per_second):
                try:
                    self.statuses[client.get(f"{self.base_url}/").status_code] += 1
                except httpx.HTTPError:
                    self.statuses[0] += 1

    def start(self) -> TrafficGenerator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------------------- fixtures


class _Stack:
    """Stops what a factory fixture started, last started first."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def push(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        while self._stops:
            self._stops.pop()()


def _app_factory(stack: _Stack) -> Callable[..., ExampleApp]:
    def start(
        *, error_rate: float = 0.0, version: str = "1.0.0", traffic: float = 10.0
    ) -> ExampleApp:
        app = ExampleApp(error_rate=error_rate, version=version)
        stack.push(app.stop)
        app.start()
        if traffic:
            generator = TrafficGenerator(app.base_url, traffic).start()
            stack.push(generator.stop)
            app.traffic = generator
        return app

    return start


def _prometheus_factory(stack: _Stack) -> Callable[..., PrometheusProcess]:
    def start(
        targets: Sequence[ScrapeTarget] = (),
        *,
        basic_auth: tuple[str, str] | None = None,
        file_sd: Path | None = None,
    ) -> PrometheusProcess:
        prometheus = PrometheusProcess(targets, basic_auth=basic_auth, file_sd=file_sd)
        stack.push(prometheus.stop)
        return prometheus.start()

    return start


@pytest.fixture
def start_example_app() -> Iterator[Callable[..., ExampleApp]]:
    """Factory: ``start_example_app(error_rate=0.5, traffic=10)`` -> a running app."""
    stack = _Stack()
    try:
        yield _app_factory(stack)
    finally:
        stack.close()


@pytest.fixture
def start_prometheus() -> Iterator[Callable[..., PrometheusProcess]]:
    """Factory: ``start_prometheus([ScrapeTarget(...)], basic_auth=None)`` -> a ready one."""
    stack = _Stack()
    try:
        yield _prometheus_factory(stack)
    finally:
        stack.close()


@dataclass(frozen=True)
class MetricsStack:
    """Two releases of the example app under traffic, scraped by one real Prometheus.

    ``good`` runs with ``ERROR_RATE=0`` (version 1.0.0), ``bad`` with ``ERROR_RATE=0.5``
    (version 2.0.0); their series carry ``app`` (``good-app`` / ``bad-app``) and
    ``namespace`` (``staging``) labels. Prometheus requires basic auth
    (``user`` / ``password``).
    """

    prometheus: PrometheusProcess
    good: ExampleApp
    bad: ExampleApp
    user: str
    password: str
    namespace: str = "staging"


@pytest.fixture(scope="session")
def metrics_stack() -> Iterator[MetricsStack]:
    """The session's :class:`MetricsStack`, ready once both apps have a request rate.

    Prometheus applies new scrape targets about 5 s after it starts, so the first
    use costs some 7 s; later tests reuse it.
    """
    stack = _Stack()
    try:
        start_app = _app_factory(stack)
        good = start_app(error_rate=0.0, version="1.0.0")
        bad = start_app(error_rate=0.5, version="2.0.0")
        user, password = "slipway", "prometheus-test-password"
        prometheus = _prometheus_factory(stack)(
            [
                ScrapeTarget(good.address, {"app": "good-app", "namespace": "staging"}),
                ScrapeTarget(bad.address, {"app": "bad-app", "namespace": "staging"}),
            ],
            basic_auth=(user, password),
        )
        for app in ("good-app", "bad-app"):
            prometheus.wait_for(f'sum(rate(http_requests_total{{app="{app}",path="/"}}[15s]))')
        yield MetricsStack(prometheus, good, bad, user, password)
    finally:
        stack.close()
