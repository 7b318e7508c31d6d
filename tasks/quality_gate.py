"""The quality gate: hold a change to coverage and code-quality thresholds.

Two backends behind one result type, chosen by a one-of spec (``sonarqube`` |
``local``, the latter the default):

- **SonarQube** (like Jenkins' ``withSonarQubeEnv`` + ``waitForQualityGate``): run the
  scanner in the workspace with ``SONAR_HOST_URL``/``SONAR_TOKEN`` in its environment,
  read the compute-engine task id from the ``report-task.txt`` it writes, poll
  ``api/ce/task`` until the server has processed the report, then read
  ``api/qualitygates/project_status`` for that analysis. The Web API is always asked
  at the block's URL, never at the ``serverUrl`` the workspace file names: that file
  is written by code from the repository, and the request carries the token.
- **local**: line coverage from a Cobertura / coverage.py XML report and the number
  of findings in ruff's JSON output, compared with thresholds from the spec.

Gates return data. A :class:`QualityGateResult` has a phase, as Argo Rollouts'
measurements do, and the flow decides what it means:

- ``Successful``: every condition was measured and passed;
- ``Failed``: at least one condition failed (this wins over everything below);
- ``Error``: a measurement could not be taken (an unreadable report, an answer
  the gate does not understand);
- ``Inconclusive``: data is missing (no coverage report, a gate with no
  conditions, no gate for the project). Missing data is never ``Successful``.

What cannot produce a result raises, so the task's retry policy can tell a network
blip from a verdict::

    PermanentError
    ├── QualityGateError                the server's answer makes the gate impossible
    │   ├── GateTimeout                 the compute-engine task did not finish in time
    │   ├── GateAuthError               token refused (HTTP 401) or not allowed (403)
    │   └── AnalysisFailed              the compute-engine task FAILED or was CANCELED
    ├── StageFailed                     the scanner or lint command exited non-zero
    └── ReportError                     a coverage XML with entities (refused unread)
        └── ScannerReportError          report-task.txt missing, unreadable, other project
    ConfigError
    └── UnsafeInputError                a report path resolving outside the workspace
    TemporaryError
    └── RemoteUnavailable               SonarQube unreachable, timing out or answering 5xx

python-sonarqube-api and requests errors are translated once, in :func:`_api_get`.
Their messages name the server URL (which holds no credentials: the block refuses
them) and never the token, which travels in a header.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import defusedxml.ElementTree as SafeET
import requests
from defusedxml import DefusedXmlException
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field, model_validator
from sonarqube import SonarQubeClient
from sonarqube.utils.exceptions import AuthError, ClientError, NotFoundError, ServerError
from sonarqube.utils.rest_client import RestClient

from slipway.blocks.sonarqube import SonarQubeServer
from slipway.exceptions import (
    AnalysisFailed,
    ConfigError,
    GateAuthError,
    GateTimeout,
    QualityGateError,
    RemoteUnavailable,
    ReportError,
    ScannerReportError,
    StageFailed,
    StageTimeout,
    UnsafeInputError,
    retry_temporary_errors,
)
from slipway.redact import Redactor
from slipway.spec_types import RelPath, StrictModel, StrList
from slipway.tasks.commands import run_commands
from slipway.tasks.junit_reports import MAX_REPORT_BYTES

Phase = Literal["Successful", "Failed", "Inconclusive", "Error"]
Source = Literal["sonarqube", "local"]

STAGE = "quality-gate"
MAX_REPORT_TASK_BYTES = 64 * 1024
_MESSAGE_CHARS = 300
_CE_RUNNING = ("PENDING", "IN_PROGRESS")
_CE_FINISHED = ("SUCCESS", "FAILED", "CANCELED")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_HTTP_STATUS = re.compile(r"\[(\d{3})\]")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")

# --- spec -----------------------------------------------------------------------------

BlockName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,99}$")]
ProjectKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,400}$")]


class SonarQubeGateSpec(StrictModel):
    """Gate on a SonarQube analysis: run the scanner, wait for the server, read the gate."""

    server: BlockName = Field(
        description="Name of the SonarQubeServer block to ask (URL and token). No default."
    )
    project_key: ProjectKey = Field(
        description=(
            "SonarQube project key; the scanner's report-task.txt must name the same "
            "project. No default."
        )
    )
    scanner: StrList = Field(
        default_factory=lambda: ["sonar-scanner"],
        description=(
            "Shell command(s) run in the workspace with SONAR_HOST_URL and SONAR_TOKEN set, "
            "e.g. 'sonar-scanner -Dsonar.projectKey=app'. Default: sonar-scanner (settings "
            "from sonar-project.properties)."
        ),
    )
    report_task: RelPath = Field(
        default=".scannerwork/report-task.txt",
        description=(
            "Path of the report-task.txt the scanner writes, relative to the workspace. "
            "Default: .scannerwork/report-task.txt."
        ),
    )
    timeout: float = Field(
        default=300,
        gt=0,
        le=86400,
        description=(
            "Seconds to wait for the server's compute-engine task to finish processing "
            "the report. Default: 300."
        ),
    )
    poll_interval: float = Field(
        default=2,
        gt=0,
        le=300,
        description="Seconds between two polls of the compute-engine task. Default: 2.",
    )
    scanner_timeout: float = Field(
        default=1800,
        gt=0,
        le=86400,
        description="Seconds the scanner command(s) may run before they are killed. Default: 1800.",
    )


class LocalGateSpec(StrictModel):
    """Gate on reports the pipeline produced itself: coverage XML and ruff's JSON."""

    coverage: RelPath = Field(
        default="coverage.xml",
        description=(
            "Cobertura / coverage.py XML report, relative to the workspace; missing means "
            "Inconclusive. Default: coverage.xml."
        ),
    )
    min_coverage: float = Field(
        default=80,
        ge=0,
        le=100,
        description="Lowest line coverage that passes, in percent of lines. Default: 80.",
    )
    lint: StrList | None = Field(
        default=None,
        description=(
            "Shell command(s) writing ruff's JSON output to lint_report, e.g. "
            "'ruff check --output-format json --exit-zero . > ruff.json'. Default: none "
            "(lint_report, if set, is read as an earlier stage left it)."
        ),
    )
    lint_report: RelPath | None = Field(
        default=None,
        description=(
            "ruff JSON report (a list of findings), relative to the workspace. Default: "
            "none (no lint condition)."
        ),
    )
    max_findings: int = Field(
        default=0,
        ge=0,
        description="Most lint findings that pass, a count. Default: 0.",
    )
    lint_timeout: float = Field(
        default=600,
        gt=0,
        le=86400,
        description="Seconds the lint command(s) may run before they are killed. Default: 600.",
    )

    @model_validator(mode="after")
    def _lint_needs_a_report(self) -> LocalGateSpec:
        if self.lint is not None and self.lint_report is None:
            raise ValueError("'lint' needs 'lint_report': the file the command writes")
        return self


class QualityGateSpec(StrictModel):
    """Exactly one of ``sonarqube`` or ``local``; nothing given means ``local`` defaults."""

    sonarqube: SonarQubeGateSpec | None = Field(
        default=None, description="Gate on a SonarQube analysis. Default: none."
    )
    local: LocalGateSpec | None = Field(
        default=None,
        description="Gate on local coverage and lint reports. Default: used when sonarqube is not.",
    )

    @model_validator(mode="before")
    @classmethod
    def _local_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sonarqube") is None and data.get("local") is None:
            return {**data, "local": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> QualityGateSpec:
        if self.sonarqube is not None and self.local is not None:
            raise ValueError("set exactly one of 'sonarqube' or 'local'; both are set")
        return self


# --- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class GateCondition:
    """One condition of a gate, in SonarQube's vocabulary.

    Attributes:
        metric: metric key (``coverage``, ``new_coverage``, ``lint_findings``...).
        comparator: ``LT`` (fails when actual < threshold) or ``GT`` (actual > threshold).
        threshold: the error threshold, as text (SonarQube sends numbers as strings).
        actual: the measured value, as text; None when it could not be measured.
        status: ``OK``, ``ERROR`` (failed), ``WARN`` (SonarQube < 7.6) or ``NO_VALUE``.
    """

    metric: str
    comparator: str
    threshold: str | None
    actual: str | None
    status: str

    @property
    def failed(self) -> bool:
        return self.status == "ERROR"


@dataclass(frozen=True)
class QualityGateResult:
    """The verdict of one gate; ``message`` is short, redacted and safe to show."""

    phase: Phase
    source: Source
    conditions: tuple[GateCondition, ...]
    message: str
    analysis_id: str | None = None
    dashboard_url: str | None = None

    @property
    def failed_conditions(self) -> tuple[GateCondition, ...]:
        return tuple(c for c in self.conditions if c.failed)


# --- errors ---------------------------------------------------------------------------


# --- shared helpers -------------------------------------------------------------------


def _inside_workspace(workspace: Path, relative: str, what: str) -> Path:
    """Resolve ``relative`` (following symlinks) and refuse it outside the workspace."""
    root = workspace.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise UnsafeInputError(f"{what} {relative!r} resolves outside the workspace")
    return path


def _remove_stale(path: Path) -> None:
    """A report left by an earlier run must never stand in for this run's."""
    if path.is_file():
        path.unlink()


def _clip(text: str, redactor: Redactor) -> str:
    text = redactor.redact(" ".join(str(text).split()))
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def _phase(conditions: Sequence[GateCondition], *, error: bool) -> Phase:
    if any(c.failed for c in conditions):
        return "Failed"
    if error:
        return "Error"
    if not conditions or any(c.status == "NO_VALUE" for c in conditions):
        return "Inconclusive"
    return "Successful"


# --- SonarQube: report-task.txt ---------------------------------------------------------

_PROPERTY_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            code = text[i + 2 : i + 6]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", code):
                out.append(chr(int(code, 16)))
                i += 6
                continue
            out.append(_PROPERTY_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _split_property(line: str) -> tuple[str, str]:
    """Key and value of one logical line: the key ends at an unescaped ``=``, ``:`` or blank."""
    i = 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] in "=: \t\f":
            break
        i += 1
    key, rest = line[:i], line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return _unescape(key), _unescape(rest)


def parse_properties(text: str) -> dict[str, str]:
    """A Java ``.properties`` text as a dict (comments, continuations and escapes)."""
    props: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        backslashes = len(line) - len(line.rstrip("\\"))
        if backslashes % 2 == 1:  # an odd count: the line continues on the next one
            pending += line[:-1]
            continue
        key, value = _split_property(pending + line)
        props[key] = value
        pending = ""
    if pending:
        key, value = _split_property(pending)
        props[key] = value
    return props


@dataclass(frozen=True)
class ReportTask:
    """What the scanner left in report-task.txt."""

    project_key: str
    ce_task_id: str
    server_url: str | None
    dashboard_url: str | None


def _http_url(value: str | None) -> str | None:
    if value and re.match(r"^https?://[^\s]+$", value):
        return value
    return None


def read_report_task(path: Path, *, display: str, project_key: str) -> ReportTask:
    """Parse report-task.txt; refuse a missing file, a bad task id or another project."""
    if not path.is_file():
        raise ScannerReportError(
            f"no scanner report at {display}: the scanner did not finish its analysis, or "
            "writes it elsewhere (set 'report_task')"
        )
    size = path.stat().st_size
    if size > MAX_REPORT_TASK_BYTES:
        raise ScannerReportError(f"{display}: {size} bytes is not a report-task.txt")
    props = parse_properties(path.read_text(encoding="utf-8", errors="replace"))
    task_id = props.get("ceTaskId", "")
    if not _TASK_ID.match(task_id):
        shown = "no ceTaskId" if not task_id else f"ceTaskId {task_id[:80]!r} is not a task id"
        raise ScannerReportError(f"{display}: {shown}")
    reported_key = props.get("projectKey", "")
    if reported_key != project_key:
        raise ScannerReportError(
            f"{display} is for project {reported_key[:200]!r}, the gate expects {project_key!r}"
        )
    return ReportTask(
        project_key=reported_key,
        ce_task_id=task_id,
        server_url=_http_url(props.get("serverUrl")),
        dashboard_url=_http_url(props.get("dashboardUrl")),
    )


# --- SonarQube: the Web API boundary ----------------------------------------------------


def _reason(exc: BaseException) -> str:
    found = _ERRNO.search(str(exc))
    return found.group(0).strip() if found else type(exc).__name__


def _api_get(
    client: SonarQubeClient,
    path: str,
    params: Mapping[str, str],
    *,
    server: str,
    timeout: float,
    redactor: Redactor,
) -> dict[str, Any]:
    """One GET to the Web API; the single place its errors become slipway errors."""
    client.timeout = timeout  # read by RestClient.request for each call
    try:
        response = RestClient(client).request("GET", path=path, params=dict(params))
        payload = response.json()
    except AuthError as exc:
        code = _HTTP_STATUS.search(str(exc))
        if code and code.group(1) == "403":
            raise GateAuthError(
                f"SonarQube at {server} refused {path} (HTTP 403): the token lacks the "
                "Browse permission on the project"
            ) from None
        # from None: the library's message carries the server's body, which we do not vet
        raise GateAuthError(
            f"SonarQube at {server} refused the token (HTTP 401): check the token of the "
            "SonarQube server block (expired, revoked, or for another server)"
        ) from None
    except NotFoundError as exc:
        raise QualityGateError(
            f"SonarQube at {server}: {path} found nothing (HTTP 404): {_clip(str(exc), redactor)}"
        ) from None
    except ServerError as exc:
        raise RemoteUnavailable(
            f"SonarQube at {server} failed on {path}: {_clip(str(exc), redactor)}"
        ) from exc
    except ClientError as exc:
        raise QualityGateError(
            f"SonarQube at {server} rejected {path}: {_clip(str(exc), redactor)}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        # not JSON, or a 4xx body the library could not read; checked before
        # RequestException because requests' JSONDecodeError is one too
        raise QualityGateError(
            f"SonarQube at {server} sent an answer to {path} that is not the Web API's "
            f"({type(exc).__name__})"
        ) from None
    except requests.Timeout as exc:
        raise RemoteUnavailable(
            f"SonarQube at {server} did not answer {path} within {timeout:g} s"
        ) from exc
    except requests.RequestException as exc:
        raise RemoteUnavailable(
            f"SonarQube at {server} could not be reached ({_reason(exc)})"
        ) from exc
    if not isinstance(payload, dict):
        raise QualityGateError(f"SonarQube at {server} answered {path} with a non-object")
    return payload


def _wait_for_ce_task(
    client: SonarQubeClient,
    server: SonarQubeServer,
    task_id: str,
    *,
    spec: SonarQubeGateSpec,
    redactor: Redactor,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Poll ``api/ce/task`` until it finishes (any end state) or the timeout runs out."""
    deadline = time.monotonic() + spec.timeout
    last_status: str | None = None
    polls = 0
    while True:
        remaining = deadline - time.monotonic()
        # no single request may carry the wait far past the deadline
        request_timeout = min(server.request_timeout_seconds, max(remaining, 1.0))
        payload = _api_get(
            client,
            "/api/ce/task",
            {"id": task_id},
            server=server.url,
            timeout=request_timeout,
            redactor=redactor,
        )
        polls += 1
        ce_task = payload.get("task")
        status = ce_task.get("status") if isinstance(ce_task, dict) else None
        if not isinstance(ce_task, dict) or not isinstance(status, str):
            raise QualityGateError(
                f"SonarQube at {server.url}: api/ce/task answered without a task"
            )
        if status != last_status:
            log(f"compute-engine task {task_id}: {status[:40]}")
            last_status = status
        if status in _CE_FINISHED:
            return ce_task
        if status not in _CE_RUNNING:
            raise QualityGateError(
                f"compute-engine task {task_id} has status {status[:40]!r}, which the gate "
                "does not know"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GateTimeout(
                f"compute-engine task {task_id} of {spec.project_key} was still {status} after "
                f"{spec.timeout:g} s ({polls} polls); the server's queue may be stuck: see "
                f"{server.url}/api/ce/task?id={task_id}"
            )
        time.sleep(min(spec.poll_interval, remaining))


def _sonar_conditions(raw: Any) -> tuple[GateCondition, ...]:
    if not isinstance(raw, list):
        return ()

    def text(value: Any) -> str | None:
        return None if value is None else str(value)[:100]

    return tuple(
        GateCondition(
            metric=str(c.get("metricKey", ""))[:100],
            comparator=str(c.get("comparator", ""))[:10],
            threshold=text(c.get("errorThreshold")),
            actual=text(c.get("actualValue")),
            status=str(c.get("status", "NO_VALUE"))[:20],
        )
        for c in raw
        if isinstance(c, dict)
    )


def _describe(condition: GateCondition) -> str:
    sign = {"LT": "<", "GT": ">"}.get(condition.comparator, condition.comparator)
    return f"{condition.metric} {condition.actual} {sign} {condition.threshold}"


def run_sonarqube_gate(
    server: SonarQubeServer,
    spec: SonarQubeGateSpec,
    *,
    workspace: Path,
    env: Mapping[str, str],
    redactor: Redactor,
    log: Callable[[str], None],
) -> QualityGateResult:
    """Scan, wait for the server to process the report, and read the quality gate.

    Args:
        server: the SonarQube server block (URL, token, TLS, request timeout).
        spec: what to run and how long to wait.
        workspace: the checked-out repository; the scanner runs here.
        env: the full environment for the scanner (PATH included); the server's
            ``SONAR_HOST_URL`` and ``SONAR_TOKEN`` are added to it.
        redactor: the run's redactor; the token is added to it first.
        log: receives redacted progress lines.

    Returns:
        The gate's verdict: ``Failed`` for a gate in ERROR, ``Inconclusive`` for no
        gate or no conditions, ``Error`` for a status the gate does not know.

    Raises:
        StageFailed: the scanner exited non-zero (its last line says why).
        ScannerReportError: no usable report-task.txt.
        UnsafeInputError: report-task.txt resolves outside the workspace.
        GateTimeout, GateAuthError, AnalysisFailed, QualityGateError: see the module.
        RemoteUnavailable: the server could not be reached or answered 5xx.

    Example:
        ```python
        result = run_sonarqube_gate(
            SonarQubeServer.load("sonar"),
            SonarQubeGateSpec(server="sonar", project_key="app",
                              scanner="sonar-scanner -Dsonar.projectKey=app"),
            workspace=Path("/ws/app"), env=os.environ, redactor=Redactor(), log=print,
        )
        ```
    """
    redactor.add(*server.secret_values())
    report_path = _inside_workspace(workspace, spec.report_task, "report_task")
    _remove_stale(report_path)

    run_commands(
        spec.scanner,
        stage=STAGE,
        cwd=workspace,
        env={**env, **server.scanner_env()},
        timeout=spec.scanner_timeout,
        redactor=redactor,
        log=log,
    )
    # the scanner may have replaced a directory on the way with a symlink: check again
    report_path = _inside_workspace(workspace, spec.report_task, "report_task")
    report = read_report_task(report_path, display=spec.report_task, project_key=spec.project_key)
    if report.server_url and report.server_url.rstrip("/") != server.url:
        log(
            redactor.redact(
                f"note: the scanner reported to {report.server_url}; the gate asks "
                f"{server.url} (the block's URL, never the workspace's)"
            )
        )

    client = server.get_client()
    ce_task = _wait_for_ce_task(
        client, server, report.ce_task_id, spec=spec, redactor=redactor, log=log
    )
    status = ce_task["status"]
    if status != "SUCCESS":
        detail = ce_task.get("errorMessage") or "no error message"
        raise AnalysisFailed(
            f"SonarQube could not process the analysis of {spec.project_key}: compute-engine "
            f"task {report.ce_task_id} {status}: {_clip(str(detail), redactor)}"
        )
    analysis_id = ce_task.get("analysisId")
    if not isinstance(analysis_id, str) or not analysis_id:
        return QualityGateResult(
            phase="Inconclusive",
            source="sonarqube",
            conditions=(),
            message=f"compute-engine task {report.ce_task_id} succeeded without an analysis id",
            dashboard_url=report.dashboard_url,
        )

    payload = _api_get(
        client,
        "/api/qualitygates/project_status",
        {"analysisId": analysis_id},
        server=server.url,
        timeout=server.request_timeout_seconds,
        redactor=redactor,
    )
    project_status = payload.get("projectStatus")
    if not isinstance(project_status, dict):
        project_status = {}
    gate_status = str(project_status.get("status", ""))[:20]
    conditions = _sonar_conditions(project_status.get("conditions"))
    failed = [c for c in conditions if c.failed]

    if gate_status == "ERROR":
        phase: Phase = "Failed"
        listed = "; ".join(_describe(c) for c in failed) or "no failed condition listed"
        message = f"quality gate of {spec.project_key} failed: {listed}"
    elif gate_status == "OK" and conditions:
        phase = "Successful"
        message = f"quality gate of {spec.project_key} passed ({len(conditions)} conditions)"
    elif gate_status == "OK":
        phase = "Inconclusive"
        message = f"quality gate of {spec.project_key} passed with no conditions: nothing measured"
    elif gate_status == "NONE":
        phase = "Inconclusive"
        message = f"no quality gate is associated with {spec.project_key}"
    elif gate_status == "WARN":
        phase = "Inconclusive"
        message = f"quality gate of {spec.project_key} is WARN (SonarQube < 7.6): a person decides"
    else:
        phase = "Error"
        message = f"quality gate status {gate_status!r} is not one the gate knows"
    log(f"quality gate {gate_status or '?'} -> {phase}")
    return QualityGateResult(
        phase=phase,
        source="sonarqube",
        conditions=conditions,
        message=redactor.redact(message),
        analysis_id=analysis_id,
        dashboard_url=report.dashboard_url,
    )


# --- local gate -----------------------------------------------------------------------


class _Unreadable(Exception):
    """A report that is safe but not what the gate reads: an Error phase, not a raise."""


def read_line_rate(path: Path, *, display: str) -> float:
    """Line coverage (0..1) from the root ``<coverage line-rate=...>`` of a Cobertura XML."""
    size = path.stat().st_size
    if size > MAX_REPORT_BYTES:
        raise ReportError(f"{display}: {size} bytes is over the {MAX_REPORT_BYTES} byte limit")
    try:
        root = SafeET.parse(str(path)).getroot()
    except DefusedXmlException as exc:
        raise ReportError(f"{display}: refused unsafe XML ({type(exc).__name__})") from None
    except SafeET.ParseError as exc:
        raise _Unreadable(f"{display} is not XML ({exc})") from None
    if root.tag != "coverage":
        raise _Unreadable(f"{display}: root element is <{root.tag[:40]}>, not <coverage>")
    raw = root.get("line-rate")
    try:
        rate = float(raw) if raw is not None else math.nan
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:
        raise _Unreadable(f"{display}: <coverage> has no line-rate between 0 and 1")
    return rate


def count_ruff_findings(path: Path, *, display: str) -> tuple[int, Counter[str]]:
    """Number of findings in ruff's JSON output, and how many of each rule code."""
    size = path.stat().st_size
    if size > MAX_REPORT_BYTES:
        raise ReportError(f"{display}: {size} bytes is over the {MAX_REPORT_BYTES} byte limit")
    try:
        findings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Unreadable(f"{display} is not JSON ({type(exc).__name__})") from None
    if not isinstance(findings, list):
        raise _Unreadable(f"{display} is not ruff's JSON output (a list of findings)")
    codes = Counter(
        str(f.get("code") or "syntax-error")[:20] if isinstance(f, dict) else "?" for f in findings
    )
    return len(findings), codes


def _coverage_condition(
    spec: LocalGateSpec, workspace: Path, notes: list[str]
) -> tuple[GateCondition, bool]:
    """The coverage condition, and whether its report was unreadable (an Error)."""
    threshold = f"{spec.min_coverage:g}"
    path = _inside_workspace(workspace, spec.coverage, "coverage report")
    if not path.is_file():
        notes.append(f"no coverage report at {spec.coverage}")
        return GateCondition("coverage", "LT", threshold, None, "NO_VALUE"), False
    try:
        percent = round(read_line_rate(path, display=spec.coverage) * 100, 2)
    except _Unreadable as exc:
        notes.append(str(exc))
        return GateCondition("coverage", "LT", threshold, None, "NO_VALUE"), True
    failed = percent < spec.min_coverage
    status = "ERROR" if failed else "OK"
    notes.append(
        f"line coverage {percent:g}% is {'below' if failed else 'at or above'} "
        f"the minimum {threshold}%"
    )
    return GateCondition("coverage", "LT", threshold, f"{percent:g}", status), False


def _lint_condition(
    spec: LocalGateSpec,
    workspace: Path,
    env: Mapping[str, str],
    redactor: Redactor,
    log: Callable[[str], None],
    notes: list[str],
) -> tuple[GateCondition, bool] | None:
    if spec.lint_report is None:
        return None
    threshold = str(spec.max_findings)
    path = _inside_workspace(workspace, spec.lint_report, "lint report")
    if spec.lint is not None:
        _remove_stale(path)
        try:
            run_commands(
                spec.lint,
                stage=STAGE,
                cwd=workspace,
                env=env,
                timeout=spec.lint_timeout,
                redactor=redactor,
                log=log,
            )
        except StageTimeout:
            raise
        except StageFailed:
            # ruff exits 1 when it finds something; a report written means it ran
            if not path.is_file():
                raise
            log("lint command exited non-zero but wrote its report; counting its findings")
        path = _inside_workspace(workspace, spec.lint_report, "lint report")
    if not path.is_file():
        notes.append(f"no lint report at {spec.lint_report}")
        return GateCondition("lint_findings", "GT", threshold, None, "NO_VALUE"), False
    try:
        count, codes = count_ruff_findings(path, display=spec.lint_report)
    except _Unreadable as exc:
        notes.append(str(exc))
        return GateCondition("lint_findings", "GT", threshold, None, "NO_VALUE"), True
    failed = count > spec.max_findings
    top = ", ".join(f"{code} x{n}" for code, n in codes.most_common(5))
    notes.append(
        f"{count} lint finding{'s' if count != 1 else ''}{f' ({top})' if top else ''}, "
        f"{'over' if failed else 'within'} the limit of {spec.max_findings}"
    )
    return GateCondition(
        "lint_findings", "GT", threshold, str(count), "ERROR" if failed else "OK"
    ), False


def run_local_gate(
    spec: LocalGateSpec,
    *,
    workspace: Path,
    env: Mapping[str, str],
    redactor: Redactor,
    log: Callable[[str], None],
) -> QualityGateResult:
    """Gate on a coverage XML report and (optionally) ruff's findings.

    Conditions: ``coverage LT min_coverage`` (percent of lines) and
    ``lint_findings GT max_findings``. A missing report makes its condition
    ``NO_VALUE`` and the gate ``Inconclusive`` (unless another condition failed);
    an unreadable one makes it ``Error``; XML with entities is refused
    (:class:`ReportError`), as are report paths outside the workspace.

    Example:
        ```python
        result = run_local_gate(
            LocalGateSpec(coverage="reports/coverage.xml", min_coverage=75),
            workspace=Path("/ws/app"), env=os.environ, redactor=Redactor(), log=print,
        )
        ```
    """
    notes: list[str] = []
    conditions = []
    error = False
    coverage, coverage_error = _coverage_condition(spec, workspace, notes)
    conditions.append(coverage)
    error |= coverage_error
    lint = _lint_condition(spec, workspace, env, redactor, log, notes)
    if lint is not None:
        conditions.append(lint[0])
        error |= lint[1]
    phase = _phase(conditions, error=error)
    message = redactor.redact("; ".join(notes))
    log(f"quality gate (local) {phase}: {message}")
    return QualityGateResult(
        phase=phase, source="local", conditions=tuple(conditions), message=message
    )


# --- presentation ---------------------------------------------------------------------

_PHASE_ICONS = {"Successful": "✅", "Failed": "❌", "Inconclusive": "❔", "Error": "⚠️"}


def _cell(text: str | None) -> str:
    if text is None:
        return "–"
    return text.replace("|", "\\|").replace("\n", " ")[:_MESSAGE_CHARS]


def gate_rows(result: QualityGateResult) -> list[dict[str, object]]:
    """One row per condition, for a Prefect table artifact; ``failed`` marks the failed ones."""
    return [
        {
            "metric": c.metric,
            "comparator": c.comparator,
            "threshold": c.threshold,
            "actual": c.actual,
            "status": c.status,
            "failed": c.failed,
        }
        for c in result.conditions
    ]


def gate_markdown(result: QualityGateResult) -> str:
    """The verdict as Markdown: phase, message, links and a table of the conditions."""
    icon = _PHASE_ICONS[result.phase]
    lines = [f"## Quality gate: {icon} {result.phase} ({result.source})", "", _cell(result.message)]
    links = []
    if result.analysis_id:
        links.append(f"analysis `{_cell(result.analysis_id)}`")
    if result.dashboard_url:
        links.append(f"[dashboard](<{result.dashboard_url.replace('>', '%3E')}>)")
    if links:
        lines += ["", " · ".join(links)]
    lines.append("")
    if not result.conditions:
        lines.append("_No conditions were evaluated._")
        return "\n".join(lines)
    lines += [
        "A condition fails when the actual value is LT (below) or GT (above) its threshold.",
        "",
        "| metric | comparator | threshold | actual | status |",
        "|---|---|---:|---:|---|",
    ]
    for c in result.conditions:
        metric = f"**{_cell(c.metric)}**" if c.failed else _cell(c.metric)
        status = f"❌ {_cell(c.status)}" if c.failed else _cell(c.status)
        lines.append(
            f"| {metric} | {_cell(c.comparator)} | {_cell(c.threshold)} | {_cell(c.actual)} "
            f"| {status} |"
        )
    return "\n".join(lines)


# --- Prefect task ---------------------------------------------------------------------


def evaluate_quality_gate(
    spec: QualityGateSpec,
    workspace: Path,
    env: Mapping[str, str],
    redactor: Redactor | None = None,
    log: Callable[[str], None] | None = None,
) -> QualityGateResult:
    """Run the gate the spec selects, loading the SonarQube server block by its name."""
    log = log if log is not None else get_run_logger().info
    redactor = redactor if redactor is not None else Redactor()
    if spec.sonarqube is not None:
        name = spec.sonarqube.server
        try:
            server = SonarQubeServer.load(name)
        except ValueError as exc:
            raise ConfigError(
                f"SonarQube server block {name!r} could not be loaded: {exc}"
            ) from exc
        result = run_sonarqube_gate(
            server, spec.sonarqube, workspace=workspace, env=env, redactor=redactor, log=log
        )
    else:
        assert spec.local is not None  # the spec's validator guarantees one of the two
        result = run_local_gate(
            spec.local, workspace=workspace, env=env, redactor=redactor, log=log
        )
    return result


quality_gate = task(
    evaluate_quality_gate,
    name="quality-gate",
    # A Failed gate is a result, not an exception, and is never retried; only
    # RemoteUnavailable is, once (see _retry_when_unreachable).
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_temporary_errors,
    # the inputs hold the run's redactor (secrets); a gate is cheap next to a wrong verdict
    cache_policy=NO_CACHE,
)
