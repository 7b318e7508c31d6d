"""The quality gate against a SonarQube stand-in and against real reports of the example app.

SonarQube cannot run here: its gate runs python-sonarqube-api's real client over real
HTTP against ``tests/servers/sonarqube.py``, with a fake ``sonar-scanner`` on PATH that
submits a task and writes ``report-task.txt`` as the real scanner does. The local gate
reads coverage and ruff reports produced by really running the example app's unit
tests under coverage and ruff over its code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest
from prefect import flow
from prefect.states import Failed

from slipway.blocks.sonarqube import SonarQubeServer
from slipway.exceptions import (
    RemoteUnavailable,
    ReportError,
    StageFailed,
    UnsafeInputError,
    retry_temporary_errors,
)
from slipway.redact import Redactor
from slipway.tasks.quality_gate import (
    AnalysisFailed,
    GateAuthError,
    GateCondition,
    GateTimeout,
    LocalGateSpec,
    QualityGateResult,
    QualityGateSpec,
    ScannerReportError,
    SonarQubeGateSpec,
    gate_markdown,
    gate_rows,
    parse_properties,
    quality_gate,
    run_local_gate,
    run_sonarqube_gate,
)
from tests.conftest import ROOT
from tests.servers.fake_sonar_scanner import install
from tests.servers.sonarqube import SonarQubeStandIn, condition, unused_port

KEY = "example-app"
SCAN = f"sonar-scanner -Dsonar.projectKey={KEY}"
WRONG_TOKEN = "squ_wrongtoken0123456789abcdef0123456789"


class Log(list[str]):
    """Collects log lines, with the time each arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def __call__(self, line: str) -> None:
        self.append(line)
        self.times.append(time.monotonic())

    def first(self, text: str) -> float:
        return next(t for line, t in zip(self, self.times, strict=True) if text in line)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def scanner_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The worker's environment with the fake ``sonar-scanner`` first on PATH."""
    bin_dir = install(tmp_path_factory.mktemp("scanner-bin"))
    return {**os.environ, "PATH": f"{bin_dir.parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def sonar() -> Iterator[SonarQubeStandIn]:
    with SonarQubeStandIn(pending_polls=1, in_progress_polls=2) as standin:
        yield standin


@pytest.fixture
def server(sonar: SonarQubeStandIn) -> SonarQubeServer:
    return SonarQubeServer(url=sonar.url, token=sonar.token)


def sonar_spec(**overrides: object) -> SonarQubeGateSpec:
    values: dict[str, object] = {
        "server": "sonar",
        "project_key": KEY,
        "scanner": SCAN,
        "poll_interval": 0.05,
        "timeout": 10,
    }
    return SonarQubeGateSpec(**{**values, **overrides})


def write_report_task(task_id: str, server_url: str) -> str:
    """A scanner command that only writes report-task.txt (for a server the test set up)."""
    lines = [f"projectKey={KEY}", f"serverUrl={server_url}", f"ceTaskId={task_id}"]
    body = "\\n".join(lines)
    return f"mkdir -p .scannerwork && printf '{body}\\n' > .scannerwork/report-task.txt"


# --- specs ----------------------------------------------------------------------------


def test_spec_defaults_to_the_local_gate() -> None:
    spec = QualityGateSpec()

    assert spec.sonarqube is None
    assert spec.local == LocalGateSpec()
    assert spec.local.coverage == "coverage.xml" and spec.local.min_coverage == 80
    assert spec.local.max_findings == 0 and spec.local.lint is None


def test_spec_with_sonarqube_only() -> None:
    spec = QualityGateSpec.model_validate({"sonarqube": {"server": "sonar", "project_key": KEY}})

    assert spec.local is None and spec.sonarqube is not None
    assert spec.sonarqube.scanner == ["sonar-scanner"]
    assert spec.sonarqube.report_task == ".scannerwork/report-task.txt"
    assert (spec.sonarqube.timeout, spec.sonarqube.poll_interval) == (300, 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"sonarqube": {"server": "sonar", "project_key": KEY}, "local": {}},
            "exactly one of 'sonarqube' or 'local'",
        ),
        ({"local": {"lint": "ruff check ."}}, "'lint' needs 'lint_report'"),
        ({"local": {"coverage": "../coverage.xml"}}, "leaves the workspace"),
        ({"local": {"min_coverage": 101}}, "less than or equal to 100"),
        (
            {"sonarqube": {"server": "sonar", "project_key": KEY, "report_task": "/tmp/r.txt"}},
            "must be relative to the workspace",
        ),
        ({"sonarqube": {"server": "Sonar Server", "project_key": KEY}}, "server"),
        ({"local": {"min_coverge": 50}}, "min_coverge"),
    ],
)
def test_spec_problems(data: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        QualityGateSpec.model_validate(data)


@pytest.mark.parametrize("model", [SonarQubeGateSpec, LocalGateSpec, QualityGateSpec])
def test_every_spec_field_has_a_description_with_its_default(model: type) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
        assert "Default" in field.description or "No default" in field.description, name


def test_report_task_properties_are_read_as_java_properties() -> None:
    text = (
        "# written by the scanner\n"
        "projectKey=org\\:app\n"
        "serverUrl=http\\://sonar\\:9000\n"
        "dashboardUrl = http://sonar:9000/dashboard?id=org%3Aapp\n"
        "ceTaskUrl: http://sonar:9000/api/ce/\\\n"
        "    task?id=AX1\n"
        "ceTaskId=AX\\u0031\n"
    )

    assert parse_properties(text) == {
        "projectKey": "org:app",
        "serverUrl": "http://sonar:9000",
        "dashboardUrl": "http://sonar:9000/dashboard?id=org%3Aapp",
        "ceTaskUrl": "http://sonar:9000/api/ce/task?id=AX1",
        "ceTaskId": "AX1",
    }


# --- SonarQube ------------------------------------------------------------------------


def test_ok_gate_is_successful_with_its_conditions(
    sonar: SonarQubeStandIn, server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    sonar.set_gate(
        KEY,
        "OK",
        [
            condition("new_coverage", "LT", "80", "91.3"),
            condition("new_violations", "GT", "0", "0"),
        ],
    )
    log = Log()

    result = run_sonarqube_gate(
        server, sonar_spec(), workspace=workspace, env=scanner_env, redactor=Redactor(), log=log
    )

    assert result.phase == "Successful" and result.source == "sonarqube"
    assert result.conditions == (
        GateCondition("new_coverage", "LT", "80", "91.3", "OK"),
        GateCondition("new_violations", "GT", "0", "0", "OK"),
    )
    (task,) = sonar.tasks.values()
    assert result.analysis_id == task.analysis_id is not None
    assert result.dashboard_url == f"{sonar.url}/dashboard?id={KEY}"
    assert task.polls == 4  # PENDING, IN_PROGRESS x2, SUCCESS
    assert [line for line in log if "compute-engine task" in line] == [
        f"compute-engine task {task.id}: {status}"
        for status in ("PENDING", "IN_PROGRESS", "SUCCESS")
    ]
    assert all(
        authenticated
        for method, path, authenticated in sonar.requests
        if path != "/api/system/status"
    )
    assert not any(sonar.token in line for line in log)


def test_error_gate_is_failed_and_the_rows_list_each_failed_condition(
    sonar: SonarQubeStandIn, server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    sonar.set_gate(
        KEY,
        "ERROR",
        [
            condition("new_coverage", "LT", "80", "62.5", "ERROR"),
            condition("new_duplicated_lines_density", "GT", "3", "1.2", "OK"),
            condition("new_violations", "GT", "0", "4", "ERROR"),
        ],
    )

    result = run_sonarqube_gate(
        server, sonar_spec(), workspace=workspace, env=scanner_env, redactor=Redactor(), log=Log()
    )

    assert result.phase == "Failed"
    failed = [
        (row["metric"], row["threshold"], row["actual"])
        for row in gate_rows(result)
        if row["failed"]
    ]
    assert failed == [("new_coverage", "80", "62.5"), ("new_violations", "0", "4")]
    assert "new_coverage 62.5 < 80" in result.message and "new_violations 4 > 0" in result.message
    markdown = gate_markdown(result)
    assert "| **new_coverage** | LT | 80 | 62.5 | ❌ ERROR |" in markdown
    assert "| new_duplicated_lines_density | GT | 3 | 1.2 | OK |" in markdown
    assert "❌ Failed" in markdown and f"[dashboard](<{sonar.url}/dashboard?id={KEY}>)" in markdown


@pytest.mark.parametrize(
    ("status", "conditions", "expected"),
    [
        ("OK", [], "passed with no conditions"),
        (None, None, "no quality gate is associated"),  # the server answers NONE
    ],
)
def test_gate_that_measured_nothing_is_inconclusive(
    sonar: SonarQubeStandIn,
    server: SonarQubeServer,
    workspace: Path,
    scanner_env: dict[str, str],
    status: str | None,
    conditions: list[dict[str, str]] | None,
    expected: str,
) -> None:
    if status is not None:
        sonar.set_gate(KEY, status, conditions)  # type: ignore[arg-type]

    result = run_sonarqube_gate(
        server, sonar_spec(), workspace=workspace, env=scanner_env, redactor=Redactor(), log=Log()
    )

    assert result.phase == "Inconclusive" and expected in result.message
    assert "No conditions were evaluated" in gate_markdown(result)


def test_ce_task_that_never_finishes_times_out_on_time(
    sonar: SonarQubeStandIn, server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    sonar.ce_outcome = "never"
    log = Log()
    timeout = 1.0

    with pytest.raises(GateTimeout) as caught:
        run_sonarqube_gate(
            server,
            sonar_spec(timeout=timeout, poll_interval=0.1),
            workspace=workspace,
            env=scanner_env,
            redactor=Redactor(),
            log=log,
        )
    waited = time.monotonic() - log.first("compute-engine task")

    assert timeout - 0.3 <= waited < timeout + 1.0  # the margin: one last poll
    (task,) = sonar.tasks.values()
    assert f"compute-engine task {task.id} of {KEY} was still IN_PROGRESS after 1 s" in str(
        caught.value
    )
    assert task.polls >= 8


def test_server_that_stops_answering_cannot_hold_the_wait_past_the_timeout(
    sonar: SonarQubeStandIn, workspace: Path, scanner_env: dict[str, str]
) -> None:
    """The block allows 30 s per request; the gate's 1 s wait must still end near 1 s."""
    server = SonarQubeServer(url=sonar.url, token=sonar.token, request_timeout_seconds=30)
    sonar.hang = True
    log = Log()
    started = time.monotonic()

    with pytest.raises(RemoteUnavailable, match="did not answer /api/ce/task within 1 s"):
        run_sonarqube_gate(
            server,
            sonar_spec(timeout=1.0),
            workspace=workspace,
            env=scanner_env,
            redactor=Redactor(),
            log=log,
        )

    assert time.monotonic() - started < 1.0 + 3.0  # scanner start-up plus one short request


def test_unreachable_server_is_remote_unavailable(
    workspace: Path, scanner_env: dict[str, str]
) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    server = SonarQubeServer(url=url, token="squ_unreachable0123456789")
    spec = sonar_spec(scanner=write_report_task("AZ000001standinTask", url))

    with pytest.raises(RemoteUnavailable) as caught:
        run_sonarqube_gate(
            server, spec, workspace=workspace, env=scanner_env, redactor=Redactor(), log=Log()
        )

    assert (
        str(caught.value)
        == f"SonarQube at {url} could not be reached ([Errno 111] Connection refused)"
    )


def test_server_going_away_while_waiting_is_remote_unavailable(
    sonar: SonarQubeStandIn, server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    sonar.ce_outcome = "never"
    log = Log()

    def stop_once_waiting() -> None:
        # stops the server while the gate polls, however long the scanner took to start
        deadline = time.monotonic() + 60
        while not any("IN_PROGRESS" in line for line in log) and time.monotonic() < deadline:
            time.sleep(0.02)
        sonar.stop()

    stopper = threading.Thread(target=stop_once_waiting, daemon=True)
    stopper.start()
    try:
        with pytest.raises(RemoteUnavailable, match="could not be reached"):
            run_sonarqube_gate(
                server,
                sonar_spec(),
                workspace=workspace,
                env=scanner_env,
                redactor=Redactor(),
                log=log,
            )
    finally:
        stopper.join()
    assert any("IN_PROGRESS" in line for line in log)


def test_bad_token_is_a_clear_error_that_never_shows_the_token(
    sonar: SonarQubeStandIn, workspace: Path, scanner_env: dict[str, str]
) -> None:
    task_id = sonar.submit(KEY)  # analysed with a good token; the gate's token is revoked
    server = SonarQubeServer(url=sonar.url, token=WRONG_TOKEN)
    spec = sonar_spec(scanner=write_report_task(task_id, sonar.url))

    with pytest.raises(GateAuthError) as caught:
        run_sonarqube_gate(
            server, spec, workspace=workspace, env=scanner_env, redactor=Redactor(), log=Log()
        )

    message = str(caught.value)
    assert message.startswith(f"SonarQube at {sonar.url} refused the token (HTTP 401)")
    everything = "".join(traceback.format_exception(caught.value))
    basic = server.secret_values()[1]
    assert WRONG_TOKEN not in everything and basic not in everything
    assert sonar.requests[-1] == ("GET", "/api/ce/task", False)


def test_bad_token_stops_the_scanner_first_and_the_output_is_masked(
    sonar: SonarQubeStandIn, workspace: Path, scanner_env: dict[str, str]
) -> None:
    server = SonarQubeServer(url=sonar.url, token=WRONG_TOKEN)
    log = Log()
    # a scanner that echoes its settings, as `sonar-scanner -X` does
    spec = sonar_spec(scanner=['echo "token is $SONAR_TOKEN"', SCAN])

    with pytest.raises(StageFailed) as caught:
        run_sonarqube_gate(
            server, spec, workspace=workspace, env=scanner_env, redactor=Redactor(), log=log
        )

    assert "Not authorized" in str(caught.value)
    assert "token is ***" in log
    assert not any(WRONG_TOKEN in line for line in log) and WRONG_TOKEN not in str(caught.value)


@pytest.mark.parametrize("outcome", ["FAILED", "CANCELED"])
def test_ce_task_that_fails_is_analysis_failed(
    sonar: SonarQubeStandIn,
    server: SonarQubeServer,
    workspace: Path,
    scanner_env: dict[str, str],
    outcome: str,
) -> None:
    sonar.ce_outcome = outcome  # type: ignore[assignment]

    with pytest.raises(AnalysisFailed) as caught:
        run_sonarqube_gate(
            server,
            sonar_spec(),
            workspace=workspace,
            env=scanner_env,
            redactor=Redactor(),
            log=Log(),
        )

    (task,) = sonar.tasks.values()
    assert f"compute-engine task {task.id} {outcome}" in str(caught.value)
    if outcome == "FAILED":
        assert str(caught.value).endswith("Fail to extract report from database")


def test_missing_report_task_is_a_scanner_report_error(
    server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    with pytest.raises(ScannerReportError, match=r"no scanner report at \.scannerwork/report-task"):
        run_sonarqube_gate(
            server,
            sonar_spec(scanner="true"),
            workspace=workspace,
            env=scanner_env,
            redactor=Redactor(),
            log=Log(),
        )


def test_stale_report_task_from_an_earlier_run_is_not_reused(
    sonar: SonarQubeStandIn, server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    old_task = sonar.submit(KEY)
    subprocess.run(
        ["bash", "-c", write_report_task(old_task, sonar.url)], cwd=workspace, check=True
    )

    with pytest.raises(ScannerReportError, match="no scanner report"):
        run_sonarqube_gate(
            server,
            sonar_spec(scanner="true"),
            workspace=workspace,
            env=scanner_env,
            redactor=Redactor(),
            log=Log(),
        )


def test_report_task_for_another_project_is_refused(
    server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    spec = sonar_spec(scanner=SCAN, project_key="other-app")

    with pytest.raises(
        ScannerReportError, match="is for project 'example-app', the gate expects 'other-app'"
    ):
        run_sonarqube_gate(
            server, spec, workspace=workspace, env=scanner_env, redactor=Redactor(), log=Log()
        )


def test_report_task_escaping_the_workspace_is_refused(
    server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(pydantic.ValidationError, match="leaves the workspace"):
        sonar_spec(report_task="../report-task.txt")

    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / ".scannerwork").symlink_to(outside)  # the repository ships this symlink

    with pytest.raises(UnsafeInputError, match="resolves outside the workspace"):
        run_sonarqube_gate(
            server,
            sonar_spec(),
            workspace=workspace,
            env=scanner_env,
            redactor=Redactor(),
            log=Log(),
        )
    assert list(outside.iterdir()) == []  # refused before the scanner ran


def test_the_gate_never_asks_the_server_the_workspace_names(
    sonar: SonarQubeStandIn, server: SonarQubeServer, workspace: Path, scanner_env: dict[str, str]
) -> None:
    """report-task.txt is written by repository code; asking its serverUrl would leak the token."""
    sonar.set_gate(KEY, "OK", [condition("new_coverage", "LT", "80", "90")])
    with SonarQubeStandIn(token="squ_attackerwantsthetoken0000") as elsewhere:
        redirect = (
            f"sed -i 's#^serverUrl=.*#serverUrl={elsewhere.url}#' .scannerwork/report-task.txt"
        )
        log = Log()

        result = run_sonarqube_gate(
            server,
            sonar_spec(scanner=[SCAN, redirect]),
            workspace=workspace,
            env=scanner_env,
            redactor=Redactor(),
            log=log,
        )

    assert result.phase == "Successful"
    assert elsewhere.requests == []
    assert any(f"the scanner reported to {elsewhere.url}" in line for line in log)


# --- local gate: real reports of the example app ----------------------------------------


@dataclass(frozen=True)
class ExampleReports:
    workspace: Path
    coverage_percent: float


def _run(command: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": "src", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        command, cwd=cwd, env=env, check=True, text=True, capture_output=True, timeout=300, **kwargs
    )


@pytest.fixture(scope="module")
def example_reports(tmp_path_factory: pytest.TempPathFactory) -> ExampleReports:
    """The example app's real coverage.xml and ruff.json, made once for this module."""
    app = tmp_path_factory.mktemp("example") / "example-app"
    shutil.copytree(
        ROOT / "examples" / "example-app",
        app,
        ignore=shutil.ignore_patterns(
            "__pycache__", ".pytest_cache", ".coverage*", "dist", "reports"
        ),
    )
    _run(
        [
            "python",
            "-m",
            "coverage",
            "run",
            "-m",
            "pytest",
            "tests/unit",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        app,
    )
    _run(["python", "-m", "coverage", "xml"], app)
    ruff = _run(["ruff", "check", "--output-format", "json", "--exit-zero", "--no-cache", "."], app)
    (app / "ruff.json").write_text(ruff.stdout)
    # the test's own reading of the report: plain ElementTree on a file it just made
    rate = float(ET.parse(app / "coverage.xml").getroot().attrib["line-rate"])
    return ExampleReports(app, round(rate * 100, 2))


@pytest.fixture
def app_copy(example_reports: ExampleReports, tmp_path: Path) -> Path:
    """A private copy of the example workspace, reports included, for tests that change it."""
    copy = tmp_path / "example-app"
    shutil.copytree(example_reports.workspace, copy)
    return copy


def local(workspace: Path, **spec: object) -> QualityGateResult:
    return run_local_gate(
        LocalGateSpec(**spec),
        workspace=workspace,
        env=dict(os.environ),
        redactor=Redactor(),
        log=Log(),
    )


def test_real_coverage_above_the_minimum_is_successful(example_reports: ExampleReports) -> None:
    real = example_reports.coverage_percent
    assert 10 < real < 100  # the example app's tests really ran and measured something

    result = local(example_reports.workspace, min_coverage=real - 5, lint_report="ruff.json")

    assert result.phase == "Successful" and result.source == "local"
    assert result.conditions == (
        GateCondition("coverage", "LT", f"{real - 5:g}", f"{real:g}", "OK"),
        GateCondition("lint_findings", "GT", "0", "0", "OK"),
    )
    assert f"line coverage {real:g}% is at or above" in result.message


def test_real_coverage_below_the_minimum_is_failed(example_reports: ExampleReports) -> None:
    real = example_reports.coverage_percent
    minimum = min(real + 5, 100)

    result = local(example_reports.workspace, min_coverage=minimum)

    assert result.phase == "Failed"
    assert [
        (r["metric"], r["threshold"], r["actual"]) for r in gate_rows(result) if r["failed"]
    ] == [("coverage", f"{minimum:g}", f"{real:g}")]
    assert "| **coverage** | LT |" in gate_markdown(result)


def test_missing_coverage_report_is_inconclusive(example_reports: ExampleReports) -> None:
    result = local(example_reports.workspace, coverage="reports/none.xml", lint_report="ruff.json")

    assert result.phase == "Inconclusive"
    assert result.conditions[0] == GateCondition("coverage", "LT", "80", None, "NO_VALUE")
    assert "no coverage report at reports/none.xml" in result.message


def test_lint_findings_over_the_limit_fail_the_gate(
    app_copy: Path, example_reports: ExampleReports
) -> None:
    (app_copy / "src" / "example_app" / "leftover.py").write_text('import os\n\nVALUE = "x"\n')
    (app_copy / "ruff.json").write_text("[]")  # stale: the gate must not read this one

    result = local(
        app_copy,
        min_coverage=example_reports.coverage_percent - 5,
        lint="ruff check --no-cache --output-format json . > ruff.json",  # exits 1: findings
        lint_report="ruff.json",
        max_findings=0,
    )

    assert result.phase == "Failed"
    assert gate_rows(result)[1] == {
        "metric": "lint_findings",
        "comparator": "GT",
        "threshold": "0",
        "actual": "1",
        "status": "ERROR",
        "failed": True,
    }
    assert "1 lint finding (F401 x1), over the limit of 0" in result.message


def test_lint_findings_within_the_limit_pass(
    app_copy: Path, example_reports: ExampleReports
) -> None:
    (app_copy / "src" / "example_app" / "leftover.py").write_text("import os\n")

    result = local(
        app_copy,
        min_coverage=example_reports.coverage_percent - 5,
        lint="ruff check --no-cache --output-format json --exit-zero . > ruff.json",
        lint_report="ruff.json",
        max_findings=1,
    )

    assert result.phase == "Successful"


def test_a_lint_command_that_breaks_without_a_report_fails_the_stage(app_copy: Path) -> None:
    with pytest.raises(StageFailed, match="exit code 2"):
        local(app_copy, lint="exit 2", lint_report="ruff.json")


def test_coverage_xml_with_an_entity_bomb_is_refused(workspace: Path) -> None:
    bomb = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE coverage [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
        '<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>\n'
        '<coverage line-rate="1.0" version="&d;"/>\n'
    )
    (workspace / "coverage.xml").write_text(bomb)

    with pytest.raises(
        ReportError, match=r"coverage\.xml: refused unsafe XML \(EntitiesForbidden\)"
    ):
        local(workspace)


def test_cobertura_doctype_without_entities_is_read(workspace: Path) -> None:
    (workspace / "coverage.xml").write_text(
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE coverage SYSTEM "http://cobertura.sourceforge.net/xml/coverage-04.dtd">\n'
        '<coverage line-rate="0.9123" branch-rate="0.5" version="2.1.1" timestamp="1"/>\n'
    )

    result = local(workspace)

    assert result.phase == "Successful"
    assert result.conditions == (GateCondition("coverage", "LT", "80", "91.23", "OK"),)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("this is not xml", "is not XML"),
        ('<report line-rate="0.9"/>', "root element is <report>"),
        ('<coverage lines-valid="10"/>', "no line-rate between 0 and 1"),
        ('<coverage line-rate="nan"/>', "no line-rate between 0 and 1"),
    ],
)
def test_unreadable_coverage_report_is_an_error_phase(
    workspace: Path, content: str, problem: str
) -> None:
    (workspace / "coverage.xml").write_text(content)

    result = local(workspace)

    assert result.phase == "Error" and problem in result.message


def test_coverage_report_symlinked_outside_the_workspace_is_refused(
    workspace: Path, example_reports: ExampleReports
) -> None:
    (workspace / "coverage.xml").symlink_to(example_reports.workspace / "coverage.xml")

    with pytest.raises(UnsafeInputError, match="resolves outside the workspace"):
        local(workspace)


# --- the Prefect task -----------------------------------------------------------------


def test_retry_condition_retries_only_an_unreachable_server() -> None:
    assert retry_temporary_errors(None, None, Failed(data=RemoteUnavailable("down")))
    assert not retry_temporary_errors(None, None, Failed(data=GateAuthError("401")))
    assert not retry_temporary_errors(None, None, Failed(data=GateTimeout("slow")))


def test_task_retries_an_unreachable_server_once(
    flow_env: Path, workspace: Path, scanner_env: dict[str, str]
) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    SonarQubeServer(url=url, token="squ_unreachable0123456789").save("sonar-down", overwrite=True)
    count = f"echo attempt >> attempts.log && {write_report_task('AZ1', url)}"
    spec = QualityGateSpec(sonarqube=sonar_spec(server="sonar-down", scanner=count))
    gate = quality_gate.with_options(retry_delay_seconds=0)

    @flow
    def pipeline() -> QualityGateResult:
        return gate(spec, workspace, scanner_env)

    with pytest.raises(RemoteUnavailable):
        pipeline()
    assert (workspace / "attempts.log").read_text().splitlines() == ["attempt", "attempt"]


def test_task_returns_a_failed_gate_without_retrying(
    flow_env: Path, sonar: SonarQubeStandIn, workspace: Path, scanner_env: dict[str, str]
) -> None:
    SonarQubeServer(url=sonar.url, token=sonar.token).save("sonar-standin", overwrite=True)
    sonar.set_gate(KEY, "ERROR", [condition("new_coverage", "LT", "80", "12", "ERROR")])
    spec = QualityGateSpec(
        sonarqube=sonar_spec(
            server="sonar-standin", scanner=f"echo attempt >> attempts.log && {SCAN}"
        )
    )

    @flow
    def pipeline() -> QualityGateResult:
        return quality_gate(spec, workspace, scanner_env)

    result = pipeline()

    assert result.phase == "Failed" and result.failed_conditions[0].metric == "new_coverage"
    assert (workspace / "attempts.log").read_text().splitlines() == ["attempt"]


def test_task_runs_the_local_gate(flow_env: Path, example_reports: ExampleReports) -> None:
    spec = QualityGateSpec.model_validate(
        {
            "local": {
                "min_coverage": example_reports.coverage_percent - 5,
                "lint_report": "ruff.json",
            }
        }
    )

    @flow
    def pipeline() -> QualityGateResult:
        return quality_gate(spec, example_reports.workspace, dict(os.environ))

    assert pipeline().phase == "Successful"
