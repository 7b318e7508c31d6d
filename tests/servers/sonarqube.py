"""A local stand-in for SonarQube's Web API (no SonarQube server can run here).

It answers the endpoints a CI quality gate uses, with the shapes and status codes
SonarQube documents, so the product runs python-sonarqube-api's real client over
real HTTP against it:

- ``GET /api/system/status`` (no authentication):
  ``{"id": ..., "version": ..., "status": "UP"}``.
- ``GET /api/server/version`` (no authentication): the version as plain text.
- ``POST /api/ce/submit?projectKey=<key>``: what a scanner does at the end of an
  analysis (it uploads the report); answers ``{"taskId": ..., "projectId": ...}``.
  (The real server answers the scanner in protobuf; this stand-in's only client is
  the fake scanner beside it, which reads JSON.)
- ``GET /api/ce/task?id=<task>``: ``{"task": {"id", "type": "REPORT", "componentKey",
  "status", "submittedAt", ...}}``. A task answers ``PENDING`` for
  ``pending_polls`` requests, then ``IN_PROGRESS`` for ``in_progress_polls``, then
  its outcome: ``SUCCESS`` (with ``analysisId``), ``FAILED`` (with
  ``errorMessage``), ``CANCELED``; the outcome ``"never"`` stays ``IN_PROGRESS``.
  A missing ``id`` is ``400``, an unknown one ``404`` (``{"errors": [{"msg": ...}]}``).
- ``GET /api/qualitygates/project_status?analysisId=<id>`` (or ``projectKey=``):
  ``{"projectStatus": {"status": "OK" | "ERROR" | "NONE", "ignoredConditions": false,
  "conditions": [{"status", "metricKey", "comparator", "errorThreshold",
  "actualValue"}], "periods": []}}``, the gate set with :meth:`set_gate` for the
  analysed project. Unknown analysis: ``404``.

Authentication works as SonarQube's does: a token as the user name of HTTP Basic
auth with an empty password (what python-sonarqube-api and the scanners send), or
``Authorization: Bearer <token>`` (SonarQube 10.0+). A missing or wrong token is
``401`` with an empty body; the token itself is never logged or echoed.
"The server is down" is a closed port (:func:`unused_port`) or :meth:`stop`; with
``hang = True``, ``ce/task`` reads the request and never answers (until :meth:`stop`).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from tests.servers.ports import unused_port  # noqa: F401  (re-exported)

CeOutcome = Literal["SUCCESS", "FAILED", "CANCELED", "never"]
GateStatus = Literal["OK", "ERROR", "NONE"]

FAKE_SCANNER = Path(__file__).with_name("fake_sonar_scanner.py")


def condition(
    metric: str, comparator: str, threshold: str, actual: str, status: str = "OK"
) -> dict[str, str]:
    """One quality gate condition in the shape ``project_status`` answers with."""
    return {
        "status": status,
        "metricKey": metric,
        "comparator": comparator,
        "errorThreshold": threshold,
        "actualValue": actual,
    }


@dataclass
class CeTask:
    """A compute-engine task as the stand-in tracks it."""

    id: str
    project_key: str
    outcome: CeOutcome
    submitted_at: str
    polls: int = 0
    analysis_id: str | None = None
    error_message: str = "Fail to extract report from database"


@dataclass
class Gate:
    status: GateStatus
    conditions: list[dict[str, str]] = field(default_factory=list)


class SonarQubeStandIn:
    """Context manager running the stand-in on ``127.0.0.1`` on a free port.

    Args:
        token: the one token the server accepts.
        pending_polls: ``ce/task`` answers ``PENDING`` this many times per task.
        in_progress_polls: then ``IN_PROGRESS`` this many times, then the outcome.
        ce_outcome: how tasks submitted from now on end (``"never"``: they do not).
        version: what ``system/status`` and ``server/version`` report.

    Example:
        ```python
        with SonarQubeStandIn(token="squ_x") as sonar:
            sonar.set_gate("app", "OK", [condition("coverage", "LT", "80", "91.2")])
            task_id = sonar.submit("app")
        ```
    """

    def __init__(
        self,
        *,
        token: str = "squ_standin0123456789abcdef0123456789abcd",
        pending_polls: int = 1,
        in_progress_polls: int = 1,
        ce_outcome: CeOutcome = "SUCCESS",
        version: str = "10.7.0.96327",
    ) -> None:
        self.token = token
        self.pending_polls = pending_polls
        self.in_progress_polls = in_progress_polls
        self.ce_outcome: CeOutcome = ce_outcome
        self.version = version
        self.hang = False
        self.tasks: dict[str, CeTask] = {}
        self.gates: dict[str, Gate] = {}
        # (method, path without query, authenticated) of every request, in order
        self.requests: list[tuple[str, str, bool]] = []
        self.auth_headers: list[str | None] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closing = threading.Event()  # releases requests held by hang
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> SonarQubeStandIn:
        handler = type("_BoundHandler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._address = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sonarqube-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Shut the server down and close its port (later requests: connection refused)."""
        if self._server is None:
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    @property
    def url(self) -> str:
        """Base URL (the value for ``SonarQubeServer.url``); stays valid after :meth:`stop`."""
        host, port = self._address
        return f"http://{host}:{port}"

    # --- state -----------------------------------------------------------------------

    def set_gate(
        self, project_key: str, status: GateStatus, conditions: list[dict[str, str]] | None = None
    ) -> None:
        """The quality gate status every analysis of ``project_key`` gets."""
        with self._lock:
            self.gates[project_key] = Gate(status, list(conditions or []))

    def submit(self, project_key: str) -> str:
        """Queue a compute-engine task for ``project_key``, as ``ce/submit`` does; its id."""
        with self._lock:
            number = next(self._ids)
            task_id = f"AZ{number:06d}standinTask"
            self.tasks[task_id] = CeTask(
                id=task_id,
                project_key=project_key,
                outcome=self.ce_outcome,
                submitted_at=_now(),
            )
        return task_id

    def ce_polls(self, task_id: str) -> int:
        with self._lock:
            return self.tasks[task_id].polls

    def record(self, method: str, path: str, authenticated: bool, header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, authenticated))
            self.auth_headers.append(header)

    # --- protocol (called by the handler) --------------------------------------------

    def authenticated(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip() == self.token
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            # SonarQube: a token is the login with an empty password
            return user == self.token and password == ""
        return False

    def poll_task(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            task.polls += 1
            if task.polls <= self.pending_polls:
                status = "PENDING"
            elif task.polls <= self.pending_polls + self.in_progress_polls:
                status = "IN_PROGRESS"
            elif task.outcome == "never":
                status = "IN_PROGRESS"
            else:
                status = task.outcome
            body: dict[str, Any] = {
                "id": task.id,
                "type": "REPORT",
                "componentId": f"AY{task.project_key}",
                "componentKey": task.project_key,
                "componentName": task.project_key,
                "componentQualifier": "TRK",
                "status": status,
                "submittedAt": task.submitted_at,
                "submitterLogin": "ci",
                "logs": False,
                "hasScannerContext": True,
                "warningCount": 0,
                "warnings": [],
            }
            if status != "PENDING":
                body["startedAt"] = task.submitted_at
            if status in ("SUCCESS", "FAILED", "CANCELED"):
                body["executedAt"] = _now()
                body["executionTimeMs"] = 1234
            if status == "SUCCESS":
                if task.analysis_id is None:
                    task.analysis_id = f"AX{task.id}"
                body["analysisId"] = task.analysis_id
            if status == "FAILED":
                body["errorMessage"] = task.error_message
                body["hasErrorStacktrace"] = True
            return body

    def project_status(self, analysis_id: str | None, project_key: str | None) -> Gate | None:
        with self._lock:
            if analysis_id is not None:
                key = next(
                    (t.project_key for t in self.tasks.values() if t.analysis_id == analysis_id),
                    None,
                )
            else:
                key = project_key
            if key is None:
                return None
            return self.gates.get(key, Gate("NONE"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


class _Handler(BaseHTTPRequestHandler):
    standin: SonarQubeStandIn  # set on the per-server subclass
    server_version = "SonarQube-stand-in/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence the access log."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # the analysis report: accepted, not inspected
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        header = self.headers.get("Authorization")
        ok = self.standin.authenticated(header)
        self.standin.record(method, path, ok, header)

        if (method, path) == ("GET", "/api/system/status"):
            self._json(
                HTTPStatus.OK,
                {"id": "243F3D3A-AYSTANDIN", "version": self.standin.version, "status": "UP"},
            )
            return
        if (method, path) == ("GET", "/api/server/version"):
            self._send(HTTPStatus.OK, "text/plain", self.standin.version.encode())
            return
        routes = {
            ("POST", "/api/ce/submit"): self._ce_submit,
            ("GET", "/api/ce/task"): self._ce_task,
            ("GET", "/api/qualitygates/project_status"): self._project_status,
        }
        route = routes.get((method, path))
        if route is None:
            self._errors(HTTPStatus.NOT_FOUND, f"Unknown url : {path}")
            return
        if not ok:
            self._send(HTTPStatus.UNAUTHORIZED, "application/json", b"")
            return
        route(query)

    def _ce_submit(self, query: dict[str, str]) -> None:
        key = query.get("projectKey")
        if not key:
            self._errors(HTTPStatus.BAD_REQUEST, "The 'projectKey' parameter is missing")
            return
        task_id = self.standin.submit(key)
        self._json(HTTPStatus.OK, {"taskId": task_id, "projectId": f"AY{key}"})

    def _ce_task(self, query: dict[str, str]) -> None:
        if self.standin.hang:
            self.standin._closing.wait(60)
            return  # the connection closes without an answer
        task_id = query.get("id")
        if not task_id:
            self._errors(HTTPStatus.BAD_REQUEST, "The 'id' parameter is missing")
            return
        task = self.standin.poll_task(task_id)
        if task is None:
            self._errors(HTTPStatus.NOT_FOUND, f"No activity found for task '{task_id}'")
            return
        self._json(HTTPStatus.OK, {"task": task})

    def _project_status(self, query: dict[str, str]) -> None:
        analysis_id = query.get("analysisId")
        project_key = query.get("projectKey")
        if not analysis_id and not project_key:
            self._errors(
                HTTPStatus.BAD_REQUEST,
                "Either 'analysisId', 'projectId' or 'projectKey' must be provided",
            )
            return
        gate = self.standin.project_status(analysis_id, project_key)
        if gate is None:
            self._errors(HTTPStatus.NOT_FOUND, f"Analysis with id '{analysis_id}' is not found")
            return
        status: dict[str, Any] = {
            "status": gate.status,
            "ignoredConditions": False,
            "conditions": gate.conditions,
            "periods": [],
        }
        self._json(HTTPStatus.OK, {"projectStatus": status})

    # --- plumbing --------------------------------------------------------------------

    def _errors(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"errors": [{"msg": message}]})

    def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        # python-sonarqube-api compares the Content-Type header to "application/json"
        # exactly, as SonarQube sends it
        self._send(status, "application/json", json.dumps(payload).encode("utf-8"))

    def _send(self, status: HTTPStatus, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
