"""The security scan with the real scanners: bandit, detect-secrets and checkov.

Each real scanner runs once per workspace (module-scoped fixtures): on a copy of
the example app, which must pass, and on a workspace with planted problems, which
must fail for the right reasons. The policy tests re-judge those real findings.
trivy cannot be installed here: its parser is tested on reports written in its
documented JSON schema, and the live call is skipped with the reason.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import shutil
import string
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import pydantic
import pytest
from git import Repo
from prefect import flow
from prefect.artifacts import Artifact
from ruamel.yaml import YAML

from slipway.blocks.security_policy import Allowance, EnvironmentPolicy, SecurityPolicy
from slipway.tasks.security_scan import (
    CHECKOV_SEVERITY,
    Finding,
    ScannerError,
    ScanResult,
    SecurityScanSpec,
    apply_policy,
    decide,
    findings_rows,
    normalise_severity,
    parse_trivy_report,
    resolve_policy,
    run_security_scan,
    scan_image,
    scan_markdown,
    scan_secrets,
    security_scan,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_APP = ROOT / "examples" / "example-app"
TODAY = date(2030, 6, 1)

# Planted secrets are made up at import time, so this file holds no key-shaped text.
_KEY_CHARS = string.ascii_uppercase + "234567"
AWS_KEY_ID = "AKIA" + "".join(secrets.choice(_KEY_CHARS) for _ in range(16))
AWS_KEY_ID_ALLOWLISTED = "AKIA" + "".join(secrets.choice(_KEY_CHARS) for _ in range(16))
AWS_KEY_ID_IN_BINARY = "AKIA" + "".join(secrets.choice(_KEY_CHARS) for _ in range(16))
AWS_KEY_ID_IN_GIT = "AKIA" + "".join(secrets.choice(_KEY_CHARS) for _ in range(16))
AWS_SECRET_KEY = secrets.token_urlsafe(30)[:40]
# A PEM body is standard base64. (URL-safe base64 has '-' and '_', which detect-secrets'
# private-key pattern does not take: one in the first 9 characters hid the key.)
PRIVATE_KEY_BODY = base64.b64encode(secrets.token_bytes(48)).decode()
PRIVATE_KEY = "\n".join(
    ["-----BEGIN " + "RSA PRIVATE KEY-----", PRIVATE_KEY_BODY, "-----END RSA PRIVATE KEY-----"]
)
SECRET_VALUES = [
    AWS_KEY_ID,
    AWS_KEY_ID_ALLOWLISTED,
    AWS_KEY_ID_IN_BINARY,
    AWS_KEY_ID_IN_GIT,
    AWS_SECRET_KEY,
    PRIVATE_KEY_BODY,
]

SHELL_PY = """\
import subprocess

import yaml


def run(command: str) -> int:
    return subprocess.call(command, shell=True)


def load(text: str) -> object:
    return yaml.load(text)  # nosec
"""

SETTINGS_PY = f"""\
AWS_ACCESS_KEY_ID = "{AWS_KEY_ID}"
AWS_SECRET_ACCESS_KEY = "{AWS_SECRET_KEY}"
"""

PRIVILEGED_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: planted
  annotations:
    checkov.io/skip1: CKV_K8S_20=an in-file skip, which the scan does not honour
spec:
  selector:
    matchLabels: {app: planted}
  template:
    metadata:
      labels: {app: planted}
    spec:
      containers:
        - name: planted
          image: registry.local/planted:1.0
          securityContext:
            privileged: true
"""

ROOT_DOCKERFILE = """\
FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends curl
USER root
CMD ["sleep", "infinity"]
"""


def _copy_example(target: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "reports", "dist", "wheels")
    shutil.copytree(EXAMPLE_APP, target, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def example_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_example(tmp_path_factory.mktemp("example") / "example-app")


@pytest.fixture(scope="module")
def example_scan(example_workspace: Path) -> ScanResult:
    spec = SecurityScanSpec(config=["k8s", "Dockerfile"])
    return run_security_scan(
        spec,
        workspace=example_workspace,
        image_ref=None,
        policy=EnvironmentPolicy(),
        today=TODAY,
        log=lambda line: None,
    )


@pytest.fixture(scope="module")
def planted_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkout with one of each problem the scan is meant to catch."""
    ws = tmp_path_factory.mktemp("planted") / "app"
    files: dict[str, str | bytes] = {
        "src/app/__init__.py": "",
        "src/app/shell.py": SHELL_PY,
        "src/app/settings.py": SETTINGS_PY,
        # A repository's own bandit config that would skip the planted issues.
        "src/.bandit": "[bandit]\nskips: B602,B506\n",
        "deploy/id_rsa": PRIVATE_KEY + "\n",
        "config/extra.env": f"API_KEY_ID={AWS_KEY_ID_ALLOWLISTED}  # pragma: allowlist secret\n",
        "assets/blob.dat": b"\x00\x01binary " + AWS_KEY_ID_IN_BINARY.encode() + b"\x00",
        "k8s/deployment.yaml": PRIVILEGED_DEPLOYMENT,
        # A repository's own checkov config that would skip the privileged check.
        "k8s/.checkov.yaml": "skip-check:\n  - CKV_K8S_16\n",
        "Dockerfile": ROOT_DOCKERFILE,
    }
    for name, content in files.items():
        path = ws / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    repo = Repo.init(ws)
    repo.index.add(list(files))
    repo.index.commit("planted problems")
    with repo.config_writer() as config:  # a secret inside .git, which is not scanned
        config.set_value("slipway", "leak", AWS_KEY_ID_IN_GIT)
    return ws


@pytest.fixture(scope="module")
def planted_scan(planted_workspace: Path) -> tuple[ScanResult, list[str]]:
    lines: list[str] = []
    result = run_security_scan(
        SecurityScanSpec(config=["k8s", "Dockerfile"]),
        workspace=planted_workspace,
        image_ref=None,
        policy=EnvironmentPolicy(),
        today=TODAY,
        log=lines.append,
    )
    return result, lines


def _find(result: ScanResult, tool: str, rule: str) -> list[Finding]:
    return [f for f in result.findings if f.tool == tool and f.rule == rule]


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# ----------------------------------------------------------------------- example app


def test_example_app_passes_the_default_policy(example_scan: ScanResult) -> None:
    assert example_scan.phase == "Successful", example_scan.reason
    assert [(s.tool, s.status) for s in example_scan.scans] == [
        ("bandit", "ran"),
        ("detect-secrets", "ran"),
        ("checkov", "ran"),
    ]
    assert example_scan.failing == ()
    assert not [f for f in example_scan.findings if f.tool == "detect-secrets"]


def test_example_app_findings_are_real_and_workspace_relative(example_scan: ScanResult) -> None:
    (bind_all,) = _find(example_scan, "bandit", "B104")  # HOST=0.0.0.0 default in a container
    assert bind_all.file == "src/example_app/config.py"
    assert bind_all.severity == "MEDIUM"
    (latest_tag,) = _find(example_scan, "checkov", "CKV_K8S_14")  # the base placeholder tag
    assert latest_tag.file == "k8s/base/deployment.yaml"
    assert latest_tag.severity == "MEDIUM"
    for finding in example_scan.findings:
        assert finding.file and not finding.file.startswith(("/", "./")), finding
        assert finding.status == "open"


def test_example_app_fails_a_stricter_environment(example_scan: ScanResult) -> None:
    strict = EnvironmentPolicy(fail_on="MEDIUM")
    judged = apply_policy(example_scan.findings, strict, TODAY)

    phase, reason, failing = decide(judged, example_scan.scans, strict)

    assert phase == "Failed"
    assert {f.rule for f in failing} >= {"B104", "CKV_K8S_14"}
    assert reason.startswith(f"{len(failing)} open findings at or above MEDIUM")


# --------------------------------------------------------------------- planted problems


def test_planted_problems_fail_the_scan(planted_scan: tuple[ScanResult, list[str]]) -> None:
    result, _ = planted_scan

    assert result.phase == "Failed"
    failing = {(f.tool, f.rule) for f in result.failing}
    assert failing >= {
        ("bandit", "B602"),
        ("detect-secrets", "AWS Access Key"),
        ("detect-secrets", "Private Key"),
        ("checkov", "CKV_K8S_16"),
        ("checkov", "CKV_DOCKER_8"),
    }
    assert all(s.status == "ran" for s in result.scans)


def test_each_secret_scan_starts_from_the_same_configuration(
    example_workspace: Path, tmp_path: Path
) -> None:
    """A scan in a worker thread (as in a flow), then one under settings a caller
    left behind: the second still runs every plugin and hands the settings back."""
    from detect_secrets.settings import get_settings, transient_settings

    ws = tmp_path / "key"
    (ws / "deploy").mkdir(parents=True)
    (ws / "deploy/id_rsa").write_text(PRIVATE_KEY + "\n")
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(scan_secrets, example_workspace).result() == []
    leftover = {
        "plugins_used": [{"name": "AWSKeyDetector"}],
        "filters_used": [
            {"path": "detect_secrets.filters.regex.should_exclude_file", "pattern": ["id_rsa"]}
        ],
    }

    with transient_settings(leftover):
        found = scan_secrets(ws)
        assert list(get_settings().plugins) == ["AWSKeyDetector"]
        assert "detect_secrets.filters.regex.should_exclude_file" in get_settings().filters

    assert [(f.rule, f.file, f.line) for f in found] == [("Private Key", "deploy/id_rsa", 2)]
    assert [(f.rule, f.file) for f in scan_secrets(ws)] == [("Private Key", "deploy/id_rsa")]


def test_bandit_finds_shell_true_and_yaml_load(
    planted_workspace: Path, planted_scan: tuple[ScanResult, list[str]]
) -> None:
    """Found despite `# nosec` and a `.bandit` file that skips both tests."""
    result, _ = planted_scan
    source = planted_workspace / "src/app/shell.py"

    (shell,) = _find(result, "bandit", "B602")
    assert (shell.file, shell.line, shell.severity) == (
        "src/app/shell.py",
        _line_of(source, "shell=True"),
        "HIGH",
    )
    (yaml_load,) = _find(result, "bandit", "B506")
    assert (yaml_load.line, yaml_load.severity) == (_line_of(source, "yaml.load"), "MEDIUM")


def test_secrets_are_reported_by_file_line_and_type(
    planted_workspace: Path, planted_scan: tuple[ScanResult, list[str]]
) -> None:
    result, _ = planted_scan
    found = {(f.rule, f.file, f.line) for f in result.findings if f.tool == "detect-secrets"}
    settings = planted_workspace / "src/app/settings.py"

    assert ("AWS Access Key", "src/app/settings.py", _line_of(settings, "AKIA")) in found
    assert any(rule == "Private Key" and file == "deploy/id_rsa" for rule, file, _ in found)
    # an in-file `pragma: allowlist secret` is not an allowance
    assert ("AWS Access Key", "config/extra.env", 1) in found
    files = {file for _, file, _ in found}
    assert "assets/blob.dat" not in files  # binary
    assert not any(file.startswith(".git/") for file in files)


def test_secret_values_appear_nowhere(planted_scan: tuple[ScanResult, list[str]]) -> None:
    result, log_lines = planted_scan
    texts = [
        repr(result),
        json.dumps(findings_rows(result)),
        scan_markdown(result),
        "\n".join(log_lines),
    ]

    for value in SECRET_VALUES:
        for text in texts:
            assert value not in text
    # bandit quotes a suspected password in its message (B105); the scan masks it
    (password,) = _find(result, "bandit", "B105")
    assert password.message == "Possible hardcoded password: '***'"


def test_secret_values_stay_out_of_the_logs(
    planted_workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger, scanners' own included, at DEBUG: no secret value."""
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("tests.security_scan")

    result = run_security_scan(
        SecurityScanSpec(code=["src"], secrets=True),
        workspace=planted_workspace,
        image_ref=None,
        policy=EnvironmentPolicy(),
        today=TODAY,
        log=logger.info,
    )

    assert result.phase == "Failed"
    assert "security scan: Failed" in caplog.text
    for value in SECRET_VALUES:
        assert value not in caplog.text


def test_kubernetes_misconfigurations(planted_scan: tuple[ScanResult, list[str]]) -> None:
    """Privileged and unlimited; found despite the repository's `.checkov.yaml`."""
    result, _ = planted_scan

    (privileged,) = _find(result, "checkov", "CKV_K8S_16")
    assert privileged.file == "k8s/deployment.yaml"
    assert privileged.severity == "HIGH"
    assert "Deployment.default.planted" in privileged.message
    assert _find(result, "checkov", "CKV_K8S_11")  # CPU limits
    assert _find(result, "checkov", "CKV_K8S_13")  # memory limits
    (escalation,) = _find(result, "checkov", "CKV_K8S_20")
    assert "checkov:skip in the file not honoured" in escalation.message
    assert escalation.status == "open"


def test_dockerfile_running_as_root(
    planted_workspace: Path, planted_scan: tuple[ScanResult, list[str]]
) -> None:
    result, _ = planted_scan

    (root,) = _find(result, "checkov", "CKV_DOCKER_8")
    assert root.file == "Dockerfile"
    assert root.line == _line_of(planted_workspace / "Dockerfile", "USER root")
    assert root.severity == "HIGH"


def test_checkov_severity_table_names_real_checks() -> None:
    """A renamed or removed checkov check must not leave a dead entry behind."""
    import checkov
    from checkov.dockerfile.registry import registry as dockerfile_registry
    from checkov.kubernetes.checks.resource.registry import registry as kubernetes_registry

    known: set[str] = set()
    for registry in (kubernetes_registry, dockerfile_registry):
        for checks in registry.checks.values():
            known.update(check.id for check in checks)
        for checks in registry.wildcard_checks.values():
            known.update(check.id for check in checks)
    package = Path(checkov.__file__).parent
    for graph_check in [
        *package.glob("kubernetes/checks/graph_checks/*.json"),
        *package.glob("dockerfile/checks/graph_checks/*.json"),
    ]:
        known.add(json.loads(graph_check.read_text())["metadata"]["id"])

    assert set(CHECKOV_SEVERITY) <= known, set(CHECKOV_SEVERITY) - known


# ------------------------------------------------------------------- policy on findings


def _rejudge(result: ScanResult, policy: EnvironmentPolicy, today: date = TODAY) -> ScanResult:
    findings = tuple(apply_policy(result.findings, policy, today))
    phase, reason, failing = decide(findings, result.scans, policy)
    return ScanResult(phase, reason, findings, result.scans, failing, policy.fail_on)


def _allow_all_failing(result: ScanResult, expires: date) -> list[Allowance]:
    return [
        Allowance(
            tool=f.tool,
            rule=f.rule,
            path=f.file,
            reason=f"planted on purpose: {f.rule}",
            expires=expires,
        )
        for f in result.failing
    ]


def test_threshold_decides(planted_scan: tuple[ScanResult, list[str]]) -> None:
    result, _ = planted_scan

    assert _rejudge(result, EnvironmentPolicy(fail_on="CRITICAL")).phase == "Successful"
    high = _rejudge(result, EnvironmentPolicy(fail_on="HIGH"))
    low = _rejudge(result, EnvironmentPolicy(fail_on="LOW"))
    assert high.phase == low.phase == "Failed"
    assert {f.severity for f in high.failing} == {"HIGH"}
    assert len(low.failing) == len(result.findings) > len(high.failing)


def test_an_allowance_with_a_reason_suppresses_a_finding(
    planted_scan: tuple[ScanResult, list[str]],
) -> None:
    result, _ = planted_scan
    allowance = Allowance(
        tool="bandit",
        rule="B602",
        path="src/**",
        reason="runs operator-written commands by design",
        expires=TODAY,  # still in force on its last day
    )

    judged = _rejudge(result, EnvironmentPolicy(allow=[allowance]))

    (shell,) = _find(judged, "bandit", "B602")
    assert shell.status == "allowed"
    assert shell.allow_reason == "runs operator-written commands by design"
    assert shell not in judged.failing
    assert judged.phase == "Failed"  # the other planted problems still fail it
    assert "runs operator-written commands by design" in scan_markdown(judged)


def test_allowing_every_failing_finding_passes(
    planted_scan: tuple[ScanResult, list[str]],
) -> None:
    result, _ = planted_scan
    policy = EnvironmentPolicy(allow=_allow_all_failing(result, TODAY + timedelta(days=30)))

    judged = _rejudge(result, policy)

    assert judged.phase == "Successful", judged.reason
    rows = findings_rows(judged)
    assert {r["status"] for r in rows if r["severity"] == "HIGH"} == {"allowed"}


def test_an_expired_allowance_no_longer_allows(
    planted_scan: tuple[ScanResult, list[str]],
) -> None:
    result, _ = planted_scan
    expired = TODAY - timedelta(days=1)
    policy = EnvironmentPolicy(allow=_allow_all_failing(result, expired))

    judged = _rejudge(result, policy)

    assert judged.phase == "Failed"
    assert len(judged.failing) == len(result.failing)
    assert {f.status for f in judged.failing} == {"allowance-expired"}
    assert f"(expired {expired.isoformat()})" in (judged.failing[0].allow_reason or "")
    markdown = scan_markdown(judged)
    assert "## Allowances expired" in markdown
    assert "allowance-expired" in {r["status"] for r in findings_rows(judged)}


def test_an_allowance_for_another_path_does_not_apply(
    planted_scan: tuple[ScanResult, list[str]],
) -> None:
    result, _ = planted_scan
    elsewhere = Allowance(rule="B602", path="scripts/**", reason="x", expires=TODAY)

    judged = _rejudge(result, EnvironmentPolicy(allow=[elsewhere]))

    assert _find(judged, "bandit", "B602")[0].status == "open"


# ------------------------------------------------------------------ broken sub-scans


@pytest.fixture
def broken_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "broken"
    (ws / "src").mkdir(parents=True)
    (ws / "src/broken.py").write_text("def f(:\n    pass\n")
    (ws / "k8s").mkdir()
    (ws / "k8s/broken.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x\n")
    (ws / "notes").mkdir()
    (ws / "notes/values.yaml").write_text("replicas: 2\n")
    (ws / "docs").mkdir()
    (ws / "docs/README.md").write_text("no manifests here\n")
    return ws


def _scan(ws: Path, image_ref: str | None = None, **spec: object) -> ScanResult:
    return run_security_scan(
        SecurityScanSpec(**spec),
        workspace=ws,
        image_ref=image_ref,
        policy=EnvironmentPolicy(),
        today=TODAY,
        log=lambda line: None,
    )


def test_files_a_scanner_cannot_read_make_an_error(broken_workspace: Path) -> None:
    result = _scan(broken_workspace, config=["k8s"], secrets=False)

    assert result.phase == "Error"
    status = {s.tool: (s.status, s.detail) for s in result.scans}
    assert status["bandit"] == ("error", "bandit could not analyse 1 file(s): src/broken.py")
    assert status["checkov"] == ("error", "checkov could not parse k8s/broken.yaml")


def test_an_alias_bomb_never_reaches_checkov(tmp_path: Path) -> None:
    """Manifests are read with slipway's safe loader first; a bomb is an error, unread."""
    ws = tmp_path / "bomb"
    (ws / "k8s").mkdir(parents=True)
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata: {name: x}", "x:"]
    lines.append("  a0: &a0 [" + ", ".join(["lol"] * 10) + "]")
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (ws / "k8s/bomb.yaml").write_text("\n".join(lines) + "\n")

    result = _scan(ws, code=None, secrets=False, config=["k8s"])

    assert result.phase == "Error"
    assert result.scans[0].detail == "checkov could not parse k8s/bomb.yaml"


def test_missing_paths_and_nothing_to_check_are_errors(broken_workspace: Path) -> None:
    result = _scan(broken_workspace, code=["app"], config=["docs"], secrets=False)

    assert result.phase == "Error"
    details = {s.tool: s.detail for s in result.scans}
    assert details["bandit"] == "bandit: 'app' does not exist in the workspace"
    assert details["checkov"] == "checkov: no manifest or Dockerfile under docs"


def test_yaml_without_kubernetes_objects_is_an_error(broken_workspace: Path) -> None:
    result = _scan(broken_workspace, code=None, secrets=False, config=["notes"])

    assert result.phase == "Error"
    assert result.scans[0].detail == "checkov found no Kubernetes object or Dockerfile in notes"


# ---------------------------------------------------------------------------- trivy


def _trivy_report() -> dict[str, object]:
    """A report in trivy's documented JSON layout (SchemaVersion 2)."""
    return {
        "SchemaVersion": 2,
        "ArtifactName": "registry.local/example-app:1.2.3",
        "ArtifactType": "container_image",
        "Results": [
            {
                "Target": "registry.local/example-app:1.2.3 (debian 12.5)",
                "Class": "os-pkgs",
                "Type": "debian",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-2024-2511",
                        "PkgName": "libssl3",
                        "InstalledVersion": "3.0.11-1~deb12u2",
                        "FixedVersion": "3.0.13-1~deb12u1",
                        "Severity": "HIGH",
                        "Title": "openssl: Unbounded memory growth with session handling",
                    },
                    {
                        "VulnerabilityID": "CVE-2011-3374",
                        "PkgName": "apt",
                        "InstalledVersion": "2.6.1",
                        "Severity": "low",
                        "Title": "It was found that apt-key in apt does not correctly validate",
                    },
                ],
            },
            {
                "Target": "app/deps/requirements.txt",
                "Class": "lang-pkgs",
                "Type": "pip",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "GHSA-0000-0000-0000",
                        "PkgName": "prometheus-client",
                        "InstalledVersion": "0.20.0",
                        "FixedVersion": "0.20.1",
                        "Severity": "MODERATE",
                    }
                ],
            },
            {
                "Target": "app/k8s/deployment.yaml",
                "Class": "config",
                "Type": "kubernetes",
                "Misconfigurations": [
                    {
                        "ID": "KSV017",
                        "AVDID": "AVD-KSV-0017",
                        "Title": "Privileged container",
                        "Message": "Container 'app' should set 'privileged' to false",
                        "Severity": "HIGH",
                        "Status": "FAIL",
                        "CauseMetadata": {"StartLine": 21, "EndLine": 24},
                    },
                    {
                        "ID": "KSV011",
                        "Title": "CPU not limited",
                        "Severity": "LOW",
                        "Status": "PASS",
                    },
                ],
            },
            {
                "Target": "app/config/.env",
                "Class": "secret",
                "Secrets": [
                    {
                        "RuleID": "aws-access-key-id",
                        "Category": "AWS",
                        "Severity": "CRITICAL",
                        "Title": "AWS Access Key ID",
                        "StartLine": 3,
                        "EndLine": 3,
                        "Match": f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}",
                        "Code": {"Lines": [{"Number": 3, "Content": f"KEY={AWS_KEY_ID}"}]},
                    }
                ],
            },
            {"Target": "usr/lib/python3/dist-packages", "Class": "lang-pkgs", "Type": "python"},
        ],
    }


def test_trivy_report_parsed(tmp_path: Path) -> None:
    report = tmp_path / "trivy.json"
    report.write_text(json.dumps(_trivy_report()))

    findings = parse_trivy_report(json.loads(report.read_text()))

    by_rule = {f.rule: f for f in findings}
    assert set(by_rule) == {
        "CVE-2024-2511",
        "CVE-2011-3374",
        "GHSA-0000-0000-0000",
        "KSV017",
        "aws-access-key-id",
    }
    ssl = by_rule["CVE-2024-2511"]
    assert (ssl.tool, ssl.severity, ssl.line) == ("trivy", "HIGH", None)
    assert ssl.file == "registry.local/example-app:1.2.3 (debian 12.5)"
    assert ssl.message.startswith("libssl3 3.0.11-1~deb12u2 (fixed in 3.0.13-1~deb12u1): openssl")
    assert by_rule["CVE-2011-3374"].severity == "LOW"
    assert "(no fix yet)" in by_rule["CVE-2011-3374"].message
    assert by_rule["GHSA-0000-0000-0000"].severity == "MEDIUM"
    privileged = by_rule["KSV017"]
    assert (privileged.file, privileged.line, privileged.message) == (
        "app/k8s/deployment.yaml",
        21,
        "Privileged container",
    )
    secret = by_rule["aws-access-key-id"]
    assert (secret.severity, secret.file, secret.line) == ("CRITICAL", "app/config/.env", 3)
    assert AWS_KEY_ID not in repr(findings)


def test_trivy_findings_go_through_the_policy() -> None:
    findings = parse_trivy_report(_trivy_report())
    policy = EnvironmentPolicy(
        allow=[
            Allowance(
                tool="trivy",
                rule="CVE-2024-2511",
                reason="fixed base image ships next sprint",
                expires=TODAY,
            )
        ]
    )

    judged = apply_policy(findings, policy, TODAY)

    phase, _, failing = decide(judged, [], policy)
    assert phase == "Failed"
    assert {f.rule for f in failing} == {"KSV017", "aws-access-key-id"}


def test_trivy_report_without_results_has_no_findings() -> None:
    assert parse_trivy_report({"SchemaVersion": 2, "ArtifactName": "x", "Results": None}) == []


def test_trivy_report_of_another_schema_is_refused() -> None:
    with pytest.raises(ScannerError, match="schema version 1 is not supported"):
        parse_trivy_report({"SchemaVersion": 1, "Results": []})


def test_live_trivy_image_scan() -> None:
    if shutil.which("trivy") is None:
        pytest.skip("trivy is not installed")
    findings = scan_image("registry.local/example-app:1.2.3")
    assert all(f.tool == "trivy" for f in findings)


def test_image_scan_is_skipped_with_the_reason_when_trivy_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # whatever this machine has, no trivy on PATH

    result = _scan(
        tmp_path, image_ref="registry.local/example-app:1.2.3", code=None, secrets=False, image=True
    )

    assert [(s.tool, s.status, s.detail) for s in result.scans] == [
        ("trivy", "skipped", "trivy is not installed")
    ]
    assert result.phase == "Inconclusive"
    assert result.reason == "trivy skipped: trivy is not installed"


def test_image_scan_without_an_image_is_skipped(tmp_path: Path) -> None:
    result = _scan(tmp_path, code=None, secrets=False, image=True)

    assert result.scans[0].detail == "no image reference was passed to the scan"
    assert result.phase == "Inconclusive"


def test_an_image_ref_that_looks_like_an_option_is_refused(tmp_path: Path) -> None:
    result = run_security_scan(
        SecurityScanSpec(code=None, secrets=False, image=True),
        workspace=tmp_path,
        image_ref="--config=/etc/passwd",
        policy=EnvironmentPolicy(),
        today=TODAY,
        log=lambda line: None,
    )

    assert result.phase == "Error"
    assert "must not start with '-'" in result.scans[0].detail


@pytest.mark.parametrize(
    ("word", "severity"),
    [
        ("critical", "CRITICAL"),
        ("HIGH", "HIGH"),
        ("Moderate", "MEDIUM"),
        ("info", "LOW"),
        ("UNDEFINED", "UNKNOWN"),
        (None, "UNKNOWN"),
    ],
)
def test_severities_are_normalised(word: str | None, severity: str) -> None:
    assert normalise_severity(word) == severity


# ----------------------------------------------------------------------------- spec


def test_spec_defaults() -> None:
    spec = SecurityScanSpec()

    assert spec.code == ["src"]
    assert spec.secrets is True
    assert spec.config is None
    assert spec.image is False
    assert spec.environment == "ci"
    assert resolve_policy(spec) == EnvironmentPolicy()


def test_spec_with_an_inline_policy_from_a_pipeline_file() -> None:
    text = """\
code: [src, tools]
config: [k8s, Dockerfile]
inline_policy:
  fail_on: medium
  allow:
    - tool: bandit
      rule: B104
      path: src/**
      reason: the container binds 0.0.0.0 on purpose
      expires: 2030-12-31
"""
    spec = SecurityScanSpec.model_validate(YAML(typ="safe").load(text))

    policy = resolve_policy(spec)
    assert policy.fail_on == "MEDIUM"
    assert policy.allow[0].expires == date(2030, 12, 31)


def test_spec_inline_allowance_without_expiry_names_the_key() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        SecurityScanSpec.model_validate(
            {"inline_policy": {"allow": [{"rule": "B104", "reason": "on purpose"}]}}
        )

    assert [e["loc"] for e in caught.value.errors()] == [("inline_policy", "allow", 0, "expires")]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"policy": "team", "inline_policy": {}}, "not both"),
        ({"code": None, "secrets": False}, "enables no scanner"),
        ({"code": ["../other-repo"]}, "leaves the workspace"),
        ({"config": ["/etc/kubernetes"]}, "must be relative to the workspace"),
        ({"secrets": True, "timeout": 5}, "timeout"),
    ],
)
def test_spec_refuses(fields: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        SecurityScanSpec.model_validate(fields)


# ------------------------------------------------------------------ the Prefect task


def test_security_scan_task_in_a_flow(flow_env: Path, example_workspace: Path) -> None:
    """The task loads the policy block by name, scans, and publishes both artifacts."""
    SecurityPolicy(
        environments={
            "ci": EnvironmentPolicy(
                fail_on="MEDIUM",
                allow=[
                    Allowance(
                        tool="bandit",
                        rule="B104",
                        reason="the container must listen on all interfaces",
                        expires=date.today() + timedelta(days=30),
                    )
                ],
            ),
            "production": EnvironmentPolicy(fail_on="LOW"),
        }
    ).save("example-security", overwrite=True)
    spec = SecurityScanSpec(policy="example-security", environment="ci")

    @flow
    def scan_flow() -> ScanResult:
        return security_scan(spec, example_workspace, artifact_key="Example App")

    result = scan_flow()

    assert result.phase == "Successful", result.reason
    (bind_all,) = _find(result, "bandit", "B104")
    assert bind_all.status == "allowed"
    markdown = Artifact.get("example-app-security-scan")
    table = Artifact.get("example-app-security-findings")
    assert markdown is not None and "# Security scan: ✅ Successful" in str(markdown.data)
    assert table is not None and "B104" in str(table.data)
