"""The security scan: several scanners at once, judged by one policy.

Four sub-scans, each a plain function returning :class:`Finding` objects and run
in its own thread (they are subprocesses or file reads, so threads overlap well):

- ``bandit`` (:func:`scan_code`): the application's Python source, as
  ``python -m bandit -f json``.
- ``detect-secrets`` (:func:`scan_secrets`): every text file of the workspace but
  ``.git``, in process.
- ``checkov`` (:func:`scan_config`): Kubernetes manifests and Dockerfiles, as
  ``python -m checkov.main``.
- ``trivy`` (:func:`scan_image`): the built image (OS packages, dependencies,
  secrets, licenses) when trivy is installed; skipped, with that reason, when it is
  not. :func:`parse_trivy_report` reads every JSON layout trivy writes (image, fs,
  config and k8s reports) and refuses any other: an unknown layout is an error,
  never a clean scan. Findings a VEX statement marks ``not_affected`` or ``fixed``
  are kept as ``suppressed`` and shown with the statement.

All four run offline. checkov is told not to fetch Prisma Cloud's check metadata
(``--skip-download``, ``BC_SKIP_MAPPING``), which is where its severities come
from, so a table here ranks the workload checks (:data:`CHECKOV_SEVERITY`); the
rest are ``UNKNOWN`` and the policy's ``unknown_as`` ranks them.

Outcomes follow the gate convention (Argo Rollouts' measurement phases): the scan
returns a frozen :class:`ScanResult` and the flow decides what it means.

- ``Failed``: an open finding at or above the environment's ``fail_on``.
- ``Error``: nothing failed, but a requested sub-scan broke (tool crash, a file it
  could not parse, a path that is not there).
- ``Inconclusive``: nothing failed or broke, but a requested sub-scan could not
  run at all (trivy not installed, no image to scan).
- ``Successful``: every requested sub-scan ran and nothing open reached ``fail_on``.

A sub-scan never raises into the caller: its error becomes ``status="error"`` with
a short detail, and whatever findings it did produce are still judged.

Secrets: a secret's value never leaves the scanner. detect-secrets findings carry
the type, file and line only; bandit's messages have their quoted literals masked
(B105 "Possible hardcoded password: '...'" quotes the password); trivy's ``Match``
and ``Code`` are never read. Scanners' own output (``code`` snippets) is dropped.

In-file suppressions (``# nosec``, ``pragma: allowlist secret``, checkov's skip
comments and ``checkov.io/skip`` annotations) and the tools' config files in the
repository (``.bandit``, ``.checkov.yaml``) are not honoured: allowances belong in
the policy, with a reason and an expiry.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import Field, model_validator

from slipway.blocks.security_policy import (
    SEVERITY_RANK,
    EnvironmentPolicy,
    SecurityPolicy,
    Severity,
)
from slipway.exceptions import ScannerError, ScannerUnavailable, UnsafeInputError
from slipway.safe_yaml import load_manifests
from slipway.spec_types import NAME_PATTERN, RelGlobs, StrictModel
from slipway.workspace import inside

ScanPhase = Literal["Successful", "Failed", "Inconclusive", "Error"]
FindingStatus = Literal["open", "allowed", "allowance-expired", "suppressed"]
SubScanStatus = Literal["ran", "skipped", "error"]

SCANNER_TIMEOUT_SECONDS = 600.0
MESSAGE_LIMIT = 160
MARKDOWN_FINDINGS_LIMIT = 50

# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Finding:
    """One problem a scanner reported, after the policy has looked at it.

    ``file`` is relative to the workspace (for image findings: trivy's target inside
    the image); ``line`` is ``None`` where the scanner has none. ``ids`` are the
    rule's other names (trivy's ``AVDID``); ``kind`` is trivy's finding type
    (``license`` findings are judged by the license policy). ``allowed_by`` says which
    allowance matched which id; ``allow_reason`` is the allowance's reason, or for a
    ``suppressed`` finding the VEX status, justification and source.
    """

    tool: str
    rule: str
    severity: Severity
    file: str | None
    line: int | None
    message: str
    status: FindingStatus = "open"
    allow_reason: str | None = None
    ids: tuple[str, ...] = ()
    kind: str = ""
    allowed_by: str | None = None

    @property
    def location(self) -> str:
        if not self.file:
            return "-"
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class SubScan:
    """How one scanner's run went: ``ran``, ``skipped`` (with why) or ``error``."""

    tool: str
    status: SubScanStatus
    detail: str
    seconds: float = 0.0


@dataclass(frozen=True)
class ScanResult:
    """The scan's verdict; ``failing`` are the open findings that decided ``Failed``."""

    phase: ScanPhase
    reason: str
    findings: tuple[Finding, ...]
    scans: tuple[SubScan, ...]
    failing: tuple[Finding, ...] = ()
    fail_on: str = "HIGH"


# ------------------------------------------------------------------------------- spec


class SecurityScanSpec(StrictModel):
    """Which sub-scans to run, on what, and under which policy."""

    code: RelGlobs | None = Field(
        default=["src"],
        description=(
            "Paths (relative to the workspace) of Python source for bandit. "
            "Default: ['src']; null or [] turns the code scan off."
        ),
    )
    secrets: bool = Field(
        default=True,
        description="Scan every text file of the workspace (but .git) for secrets. Default: true.",
    )
    config: RelGlobs | None = Field(
        default=None,
        description=(
            "Kubernetes manifest and Dockerfile paths (files or directories) for checkov. "
            "Default: none (no config scan)."
        ),
    )
    image: bool = Field(
        default=False,
        description="Scan the built image with trivy (the image ref is passed in). Default: false.",
    )
    policy: str | None = Field(
        default=None,
        description="Name of a SecurityPolicy block. Default: none (inline_policy or defaults).",
    )
    inline_policy: EnvironmentPolicy | None = Field(
        default=None,
        description=(
            "A policy written in the pipeline file instead of a block. "
            "Default: none (fail on HIGH, no allowances, when no block is named either)."
        ),
    )
    environment: str = Field(
        default="ci",
        pattern=NAME_PATTERN,
        description="Environment of the SecurityPolicy block to apply. Default: ci.",
    )

    @model_validator(mode="after")
    def _sane(self) -> SecurityScanSpec:
        if self.policy is not None and self.inline_policy is not None:
            raise ValueError("give 'policy' (a block name) or 'inline_policy', not both")
        if not (self.code or self.secrets or self.config or self.image):
            raise ValueError(
                "the security scan enables no scanner: set code, secrets, config or image"
            )
        return self


# --------------------------------------------------------------------------- helpers

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _short(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalise_severity(value: object) -> Severity:
    """Map a scanner's severity word onto LOW, MEDIUM, HIGH, CRITICAL or UNKNOWN."""
    word = str(value or "").strip().upper()
    aliases = {"INFO": "LOW", "NEGLIGIBLE": "LOW", "MODERATE": "MEDIUM", "IMPORTANT": "HIGH"}
    word = aliases.get(word, word)
    return word if word in SEVERITY_RANK else "UNKNOWN"  # type: ignore[return-value]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _run_tool(
    tool: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = SCANNER_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run a scanner as argv (never a shell) in its own process group, killed on time."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ScannerError(f"{tool} ran past {timeout:g} s and was killed") from None
    finally:
        _kill_group(proc)  # also when the task is cancelled from outside
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return _short(lines[-1], 200) if lines else ""


def _load_json(tool: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScannerError(f"{tool} printed no JSON report ({exc.msg})") from None


def _existing(workspace: Path, paths: Iterable[str], tool: str) -> list[Path]:
    found = []
    for path in paths:
        target = inside(workspace, path)
        if not target.exists():
            raise ScannerError(f"{tool}: {path!r} does not exist in the workspace")
        found.append(target)
    return found


def _relative(workspace: Path, path: str | os.PathLike[str]) -> str:
    """A scanner's path as the workspace-relative POSIX path findings carry."""
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            return candidate.resolve().relative_to(workspace.resolve()).as_posix()
        except ValueError:
            return candidate.as_posix()
    return posixpath.normpath(candidate.as_posix())


def _walk_files(root: Path) -> Iterator[Path]:
    """Regular files under root, never following symlinks out, never into .git."""
    if root.is_file():
        if not root.is_symlink():
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not path.is_symlink() and path.is_file():
                yield path


def _is_binary(path: Path) -> bool:
    """git's rule: a NUL byte in the first 8 KiB means binary."""
    try:
        with path.open("rb") as handle:
            return b"\0" in handle.read(8192)
    except OSError:
        return True


# ----------------------------------------------------------------------- code: bandit


def _bandit_message(issue: dict[str, Any]) -> str:
    # Quoted literals are masked: B105-B107 quote the suspected password itself.
    text = _QUOTED.sub("'***'", str(issue.get("issue_text", "")))
    return _short(text)


def scan_code(workspace: Path, paths: Sequence[str]) -> list[Finding]:
    """bandit over the given source paths (``python -m bandit -f json -r ...``)."""
    _existing(workspace, paths, "bandit")
    with tempfile.TemporaryDirectory(prefix="slipway-bandit-") as scratch:
        # An explicit, empty ini keeps a `.bandit` file in the repository (which can
        # skip tests) from applying.
        ini = Path(scratch, "bandit.ini")
        ini.write_text("[bandit]\n")
        argv = [sys.executable, "-m", "bandit", "-f", "json", "-q", "--ignore-nosec"]
        argv += ["--ini", str(ini), "-r", "--", *paths]
        proc = _run_tool("bandit", argv, cwd=workspace)
    # bandit exits 1 when it found issues: that is its normal answer, not an error.
    if proc.returncode not in (0, 1):
        raise ScannerError(f"bandit exited {proc.returncode}: {_last_line(proc.stderr)}")
    report = _load_json("bandit", proc.stdout)
    findings = [
        Finding(
            tool="bandit",
            rule=str(issue.get("test_id", "?")),
            severity=normalise_severity(issue.get("issue_severity")),
            file=_relative(workspace, issue.get("filename", "")),
            line=issue.get("line_number") or None,
            message=_bandit_message(issue),
        )
        for issue in report.get("results", [])
    ]
    errors = report.get("errors") or []
    if errors:
        files = ", ".join(sorted({_relative(workspace, e.get("filename", "?")) for e in errors}))
        raise ScannerError(f"bandit could not analyse {len(errors)} file(s): {files}", findings)
    return findings


# ------------------------------------------------------------- secrets: detect-secrets

# detect-secrets keeps its settings in a process-wide object; one scan at a time.
_DETECT_SECRETS_LOCK = threading.Lock()
_ALLOWLIST_FILTER = "detect_secrets.filters.allowlist.is_line_allowlisted"
# Pattern-free guesses (entropy, a keyword next to a string) are often wrong.
_HEURISTIC_SECRET_TYPES = {
    "Base64 High Entropy String",
    "Hex High Entropy String",
    "Secret Keyword",
}


def _secret_severity(kind: str) -> Severity:
    return "MEDIUM" if kind in _HEURISTIC_SECRET_TYPES else "HIGH"


def _detect_secrets_config() -> dict[str, Any]:
    """Every built-in plugin and detect-secrets' default filters, but the allowlist.

    Written out in full (a baseline's ``plugins_used`` and ``filters_used``) so that
    each scan runs the same configuration whatever ran before it in the process.
    """
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.settings import Settings

    plugins = sorted(
        cls.__name__
        for cls in get_mapping_from_secret_type_to_class().values()
        if cls.__module__.startswith("detect_secrets.plugins.")  # no custom plugin files
    )
    filters = sorted(set(Settings().filters) - Settings.DEFAULT_FILTERS - {_ALLOWLIST_FILTER})
    return {
        "plugins_used": [{"name": name} for name in plugins],
        "filters_used": [{"path": path} for path in filters],
    }


def scan_secrets(workspace: Path) -> list[Finding]:
    """detect-secrets over every text file of the workspace; values are never kept.

    Files are scanned one by one in this thread: detect-secrets' own ``scan_files``
    forks a process pool, which a worker thread of a Prefect flow should not do.
    """
    from detect_secrets import SecretsCollection
    from detect_secrets.core import scan
    from detect_secrets.settings import transient_settings

    files = [
        path.relative_to(workspace).as_posix()
        for path in _walk_files(workspace)
        if not _is_binary(path)
    ]
    found: list[tuple[str, str, int]] = []
    with _DETECT_SECRETS_LOCK:
        # The whole configuration is given (transient_settings starts from a fresh
        # Settings and clears the plugin and filter caches), never patched after the
        # fact: whatever an earlier scan or caller left in detect-secrets' globals
        # does not carry over, and the caller's settings come back afterwards.
        scan.read_raw_lines.cache_clear()  # keyed by path: may hold a file's old text
        with transient_settings(_detect_secrets_config()):
            collection = SecretsCollection(root=str(workspace))
            for relative in files:
                collection.scan_file(relative)
            for filename, secret in collection:
                found.append((str(filename), str(secret.type), int(secret.line_number or 0)))
        scan.read_raw_lines.cache_clear()
    return [
        Finding(
            tool="detect-secrets",
            rule=kind,
            severity=_secret_severity(kind),
            file=posixpath.normpath(filename),
            line=line or None,
            message=f"possible {kind} (value not shown)",
        )
        for filename, kind, line in sorted(set(found))
    ]


# ------------------------------------------------------- manifests, Dockerfile: checkov

# checkov has no severities offline (they come from Prisma Cloud). slipway ranks the
# workload checks after the Kubernetes Pod Security Standards: what the Baseline
# profile forbids (privileged, host namespaces, dangerous capabilities, root images)
# is HIGH, what Restricted adds is MEDIUM, hygiene is LOW. Other checks: UNKNOWN.
CHECKOV_SEVERITY: dict[str, Severity] = {
    "CKV_K8S_8": "LOW",  # liveness probe
    "CKV_K8S_9": "LOW",  # readiness probe
    "CKV_K8S_10": "LOW",  # CPU requests
    "CKV_K8S_11": "LOW",  # CPU limits
    "CKV_K8S_12": "LOW",  # memory requests
    "CKV_K8S_13": "LOW",  # memory limits
    "CKV_K8S_14": "MEDIUM",  # image tag latest or blank
    "CKV_K8S_15": "LOW",  # image pull policy
    "CKV_K8S_16": "HIGH",  # privileged container
    "CKV_K8S_17": "HIGH",  # host PID namespace
    "CKV_K8S_18": "HIGH",  # host IPC namespace
    "CKV_K8S_19": "HIGH",  # host network namespace
    "CKV_K8S_20": "MEDIUM",  # allowPrivilegeEscalation
    "CKV_K8S_21": "LOW",  # default namespace
    "CKV_K8S_22": "LOW",  # read-only root filesystem
    "CKV_K8S_23": "MEDIUM",  # root containers (runAsNonRoot)
    "CKV_K8S_25": "MEDIUM",  # added capabilities
    "CKV_K8S_26": "MEDIUM",  # hostPort
    "CKV_K8S_27": "HIGH",  # docker socket mounted
    "CKV_K8S_28": "LOW",  # NET_RAW not dropped
    "CKV_K8S_29": "LOW",  # pod security context
    "CKV_K8S_30": "LOW",  # container security context
    "CKV_K8S_31": "LOW",  # seccomp profile
    "CKV_K8S_35": "LOW",  # secrets as environment variables
    "CKV_K8S_37": "LOW",  # capabilities not dropped
    "CKV_K8S_38": "LOW",  # service account token mounted
    "CKV_K8S_39": "HIGH",  # CAP_SYS_ADMIN
    "CKV_K8S_40": "LOW",  # low UID
    "CKV_K8S_43": "LOW",  # image by digest
    "CKV2_K8S_6": "LOW",  # no NetworkPolicy
    "CKV_DOCKER_1": "MEDIUM",  # port 22 exposed
    "CKV_DOCKER_2": "LOW",  # no HEALTHCHECK
    "CKV_DOCKER_3": "HIGH",  # no USER: the image runs as root
    "CKV_DOCKER_4": "LOW",  # ADD instead of COPY
    "CKV_DOCKER_5": "LOW",  # update alone
    "CKV_DOCKER_7": "MEDIUM",  # base image latest tag
    "CKV_DOCKER_8": "HIGH",  # last USER is root
    "CKV_DOCKER_9": "LOW",  # apt instead of apt-get
    "CKV_DOCKER_10": "LOW",  # relative WORKDIR
    "CKV2_DOCKER_1": "MEDIUM",  # sudo
}

_MANIFEST_SUFFIXES = {".yaml", ".yml", ".json"}
_CHECKOV_ENV = {
    # No Prisma Cloud: no mapping download, no SCA package scan, no telemetry.
    "BC_SKIP_MAPPING": "TRUE",
    "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
    "CKV_NO_TELEMETRY": "true",
}


def _is_dockerfile(name: str) -> bool:
    return name == "Dockerfile" or name.startswith("Dockerfile.") or name.endswith(".Dockerfile")


def _config_files(workspace: Path, paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for root in _existing(workspace, paths, "checkov"):
        for path in _walk_files(root):
            if root.is_file() or path.suffix in _MANIFEST_SUFFIXES or _is_dockerfile(path.name):
                files.append(path)
    if not files:
        raise ScannerError(f"checkov: no manifest or Dockerfile under {', '.join(paths)}")
    return files


def _unparsable(workspace: Path, files: Sequence[Path]) -> list[str]:
    """Manifests that are not valid YAML/JSON (checkov skips those without a word), or
    that are alias bombs or nested absurdly deep (read with slipway's safe loader, so
    they never reach checkov's)."""
    broken = []
    for path in files:
        if path.suffix not in _MANIFEST_SUFFIXES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                json.loads(text)
            else:
                load_manifests(text)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, YamlProblem
            broken.append(_relative(workspace, path))
    return broken


def _checkov_reports(data: Any) -> list[dict[str, Any]]:
    # One framework: a dict; several: a list; nothing recognised: a bare summary.
    reports = data if isinstance(data, list) else [data]
    return [r for r in reports if isinstance(r, dict) and "results" in r]


def _checkov_finding(workspace: Path, check: dict[str, Any], skipped: bool) -> Finding:
    rule = str(check.get("check_id", "?"))
    severity = normalise_severity(check.get("severity"))
    if severity == "UNKNOWN":
        severity = CHECKOV_SEVERITY.get(rule, "UNKNOWN")
    resource = str(check.get("resource") or "")
    message = str(check.get("check_name", ""))
    if resource and "/" not in resource:  # Dockerfile resources are absolute paths
        message += f" ({resource})"
    if skipped:
        message += " [checkov:skip in the file not honoured]"
    lines = check.get("file_line_range") or [None]
    return Finding(
        tool="checkov",
        rule=rule,
        severity=severity,
        file=_relative(workspace, check.get("file_abs_path") or check.get("file_path", "")),
        line=lines[0] or None,
        message=_short(message),
    )


def scan_config(workspace: Path, paths: Sequence[str]) -> list[Finding]:
    """checkov's kubernetes and dockerfile checks over manifest files and Dockerfiles.

    Files are passed one by one (``-f``) from a scratch directory, so a
    ``.checkov.yaml`` in the repository (which can skip checks) is never read.
    """
    files = _config_files(workspace, paths)
    broken = _unparsable(workspace, files)
    files = [f for f in files if _relative(workspace, f) not in broken]
    if not files:
        raise ScannerError(f"checkov could not parse {', '.join(sorted(broken))}")
    argv = [sys.executable, "-m", "checkov.main", "--framework", "kubernetes", "dockerfile"]
    argv += ["-o", "json", "--compact", "--soft-fail", "--skip-download", "--skip-results-upload"]
    argv += ["-f", *(str(f) for f in files)]
    with tempfile.TemporaryDirectory(prefix="slipway-checkov-") as scratch:
        proc = _run_tool("checkov", argv, cwd=Path(scratch), env={**os.environ, **_CHECKOV_ENV})
    if proc.returncode != 0:  # --soft-fail: failed checks exit 0
        raise ScannerError(f"checkov exited {proc.returncode}: {_last_line(proc.stderr)}")
    findings: list[Finding] = []
    resources = 0
    for report in _checkov_reports(_load_json("checkov", proc.stdout)):
        results = report["results"]
        resources += int((report.get("summary") or {}).get("resource_count") or 0)
        for check in results.get("failed_checks") or []:
            findings.append(_checkov_finding(workspace, check, skipped=False))
        for check in results.get("skipped_checks") or []:
            findings.append(_checkov_finding(workspace, check, skipped=True))
        broken += [_relative(workspace, p) for p in results.get("parsing_errors") or []]
    if broken:
        raise ScannerError(f"checkov could not parse {', '.join(sorted(set(broken)))}", findings)
    if not resources:
        raise ScannerError(
            f"checkov found no Kubernetes object or Dockerfile in {', '.join(paths)}"
        )
    return findings


# ----------------------------------------------------------------------- image: trivy

# A VEX statement (OpenVEX, CycloneDX, CSAF) saying the product is not affected or has
# the fix: trivy moves such a vulnerability out of ``Vulnerabilities`` and, with
# ``--show-suppressed``, lists it under ``ExperimentalModifiedFindings``. CycloneDX's
# ``false_positive`` arrives as ``not_affected``. Note that a vulnerability's own
# ``Status: fixed`` means something else: the distribution has a fixed version (the
# installed one is still vulnerable), so it stays open.
VEX_SUPPRESSING = frozenset({"not_affected", "fixed"})
_MODIFIED_KEYS = ("ExperimentalModifiedFindings", "ModifiedFindings")


def _trivy_line(item: dict[str, Any]) -> int | None:
    cause = item.get("CauseMetadata") or {}
    return item.get("StartLine") or cause.get("StartLine") or None


def _trivy_vulnerability(vuln: dict[str, Any], target: str | None) -> Finding:
    package = f"{vuln.get('PkgName', '?')} {vuln.get('InstalledVersion', '')}".strip()
    fixed = vuln.get("FixedVersion")
    title = vuln.get("Title") or ""
    text = package + (f" (fixed in {fixed})" if fixed else " (no fix yet)")
    finding = Finding(
        tool="trivy",
        rule=str(vuln.get("VulnerabilityID", "?")),
        severity=normalise_severity(vuln.get("Severity")),
        file=target,
        line=None,
        message=_short(f"{text}: {title}" if title else text),
        kind="vulnerability",
    )
    if str(vuln.get("Status") or "") == "not_affected":  # the distribution says so
        return replace(finding, status="suppressed", allow_reason="not_affected (vendor status)")
    return finding


def _trivy_misconfiguration(item: dict[str, Any], target: str | None) -> Finding:
    # ID is DS002 in older trivy, DS-0002 in newer; AVDID (AVD-DS-0002) is deprecated
    # but still written. The finding keeps every id so an allowance matches any.
    ids = tuple(dict.fromkeys(str(i) for i in (item.get("ID"), item.get("AVDID")) if i))
    return Finding(
        tool="trivy",
        rule=ids[0] if ids else "?",
        severity=normalise_severity(item.get("Severity")),
        file=target,
        line=_trivy_line(item),
        message=_short(str(item.get("Title", ""))),
        ids=ids[1:],
        kind="misconfiguration",
    )


def _trivy_secret(secret: dict[str, Any], target: str | None) -> Finding:
    # Match and Code hold the value (masked or not): never read.
    return Finding(
        tool="trivy",
        rule=str(secret.get("RuleID", "?")),
        severity=normalise_severity(secret.get("Severity")),
        file=target,
        line=_trivy_line(secret),
        message=_short(f"possible {secret.get('Title', 'secret')} (value not shown)"),
        kind="secret",
    )


def _trivy_license(item: dict[str, Any], target: str | None) -> Finding:
    name = str(item.get("Name") or "?")
    where = item.get("PkgName") or item.get("FilePath") or ""
    category = item.get("Category") or "unknown"
    return Finding(
        tool="trivy",
        rule=name,
        severity=normalise_severity(item.get("Severity")),
        file=target,
        line=None,
        message=_short(f"{category} license {name}" + (f" ({where})" if where else "")),
        kind="license",
    )


_BUILDERS: dict[str, Callable[[dict[str, Any], str | None], Finding]] = {
    "vulnerability": _trivy_vulnerability,
    "misconfiguration": _trivy_misconfiguration,
    "secret": _trivy_secret,
    "license": _trivy_license,
}


def _trivy_modified(entry: dict[str, Any], target: str | None) -> Finding:
    """A finding trivy suppressed: VEX not_affected/fixed stays suppressed (and shown),
    anything else (an ignore file's ``ignored``) is open again: allowances belong in
    the policy."""
    kind = str(entry.get("Type") or "")
    inner = entry.get("Finding")
    if kind not in _BUILDERS or not isinstance(inner, dict):
        raise ScannerError(f"trivy suppressed finding of unknown type {kind!r} in {target}")
    finding = _BUILDERS[kind](inner, target)
    status = str(entry.get("Status") or "unknown")
    statement = str(entry.get("Statement") or "no justification given")
    source = str(entry.get("Source") or "unknown source")
    if kind == "vulnerability" and status in VEX_SUPPRESSING:
        reason = _short(f"VEX {status}: {statement} ({source})", 200)
        return replace(finding, status="suppressed", allow_reason=reason)
    note = f" [trivy: {status} by {source}, not honoured]"
    return replace(finding, status="open", allow_reason=None, message=finding.message + note)


def _trivy_results(results: Any, where: str, prefix: str = "") -> list[Finding]:
    """Findings of one report's ``Results`` (a list of targets)."""
    if results is None:
        return []
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ScannerError(f"trivy report: {where}Results is not a list of targets")
    findings: list[Finding] = []
    for result in results:
        target = prefix + str(result.get("Target") or "") or None
        for vuln in result.get("Vulnerabilities") or []:
            findings.append(_trivy_vulnerability(vuln, target))
        for misconfig in result.get("Misconfigurations") or []:
            if str(misconfig.get("Status", "FAIL")).upper() == "FAIL":
                findings.append(_trivy_misconfiguration(misconfig, target))
        for secret in result.get("Secrets") or []:
            findings.append(_trivy_secret(secret, target))
        for item in result.get("Licenses") or []:
            findings.append(_trivy_license(item, target))
        for key in _MODIFIED_KEYS:
            for entry in result.get(key) or []:
                findings.append(_trivy_modified(entry, target))
    return findings


def _trivy_k8s(data: dict[str, Any], key: str) -> list[Finding]:
    """``trivy k8s --format json``: findings nested per resource (``Resources`` for
    ``--report all``, ``Findings`` for ``--report summary``)."""
    resources = data[key]
    if not isinstance(resources, list) or not all(isinstance(r, dict) for r in resources):
        raise ScannerError(f"trivy k8s report: {key} is not a list of resources")
    findings: list[Finding] = []
    broken: list[str] = []
    for resource in resources:
        name = "/".join(
            str(resource.get(part)) for part in ("Namespace", "Kind", "Name") if resource.get(part)
        )
        where = f"{key}[{name}]."
        findings += _trivy_results(resource.get("Results"), where, prefix=f"{name}: ")
        if resource.get("Error"):
            broken.append(f"{name} ({_short(str(resource['Error']), 80)})")
    if broken:
        raise ScannerError(
            f"trivy could not scan {len(broken)} resource(s): {'; '.join(broken)}", findings
        )
    return findings


def parse_trivy_report(data: Any) -> list[Finding]:
    """Findings from a ``trivy --format json`` report, of any layout trivy writes.

    ``trivy image|fs|config|repo`` (schema version 2, ``Results``) and ``trivy k8s``
    (``ClusterName`` with ``Resources`` or ``Findings``, each holding ``Results``).
    Vulnerabilities, failed misconfigurations, secrets, licenses, and the findings trivy
    suppressed (VEX statements honoured, ignore files not). Anything else is an error,
    never a clean report: a layout this function does not know holds findings it would
    not see. A secret's ``Match`` and ``Code`` (which hold the value) are never read.
    """
    if not isinstance(data, dict):
        raise ScannerError("trivy report is not a JSON object")
    version = data.get("SchemaVersion")
    if version not in (None, 0, 2):
        raise ScannerError(f"trivy report schema version {version!r} is not supported (need 2)")
    if "ClusterName" in data:
        for key in ("Resources", "Findings"):
            if key in data:
                return _trivy_k8s(data, key)
        return []  # a cluster with nothing to report: trivy omits the empty list
    if version == 2:
        return _trivy_results(data.get("Results"), "")
    keys = ", ".join(sorted(map(str, data))[:8]) or "none"
    raise ScannerError(
        f"trivy report has a layout slipway does not know (keys: {keys}); "
        "expected SchemaVersion 2 with Results, or a trivy k8s report"
    )


def scan_image(image_ref: str | None) -> list[Finding]:
    """trivy over the built image, when trivy is installed; skipped (with why) otherwise."""
    if not image_ref:
        raise ScannerUnavailable("no image reference was passed to the scan")
    if image_ref.startswith("-"):
        raise UnsafeInputError(f"image reference {image_ref!r} must not start with '-'")
    trivy = shutil.which("trivy")
    if trivy is None:
        raise ScannerUnavailable("trivy is not installed")
    # --show-suppressed: VEX-suppressed findings are listed (and shown as suppressed).
    argv = [trivy, "image", "--format", "json", "--quiet", "--show-suppressed"]
    argv += ["--scanners", "vuln,secret,license", "--", image_ref]
    with tempfile.TemporaryDirectory(prefix="slipway-trivy-") as scratch:
        proc = _run_tool("trivy", argv, cwd=Path(scratch))
    if proc.returncode != 0:
        raise ScannerError(f"trivy exited {proc.returncode}: {_last_line(proc.stderr)}")
    return parse_trivy_report(_load_json("trivy", proc.stdout))


# ------------------------------------------------------------------------------ policy


def apply_policy(
    findings: Iterable[Finding], policy: EnvironmentPolicy, today: date
) -> list[Finding]:
    """Each finding with its status: allowed (by an active allowance, or a license on
    the allowlist), expired, open, or suppressed (VEX, kept as the parser set it)."""
    judged: list[Finding] = []
    for finding in findings:
        if finding.status == "suppressed":
            judged.append(finding)
            continue
        if finding.kind == "license" and policy.licenses.allows(finding.rule):
            judged.append(
                replace(
                    finding,
                    status="allowed",
                    allow_reason="license on the policy's allowlist",
                    allowed_by=f"licenses.allowed: {finding.rule}",
                )
            )
            continue
        ids = (finding.rule, *finding.ids)
        matching = [
            (a, matched)
            for a in policy.allow
            if (matched := a.match(finding.tool, ids, finding.file)) is not None
        ]
        active = next(((a, m) for a, m in matching if a.active_on(today)), None)
        if active is not None:
            allowance, matched = active
            judged.append(
                replace(
                    finding,
                    status="allowed",
                    allow_reason=allowance.reason,
                    allowed_by=_allowed_by(allowance.rule, matched),
                )
            )
        elif matching:
            latest, matched = max(matching, key=lambda pair: pair[0].expires)
            reason = f"{latest.reason} (expired {latest.expires.isoformat()})"
            judged.append(
                replace(
                    finding,
                    status="allowance-expired",
                    allow_reason=reason,
                    allowed_by=_allowed_by(latest.rule, matched),
                )
            )
        else:
            judged.append(replace(finding, status="open", allow_reason=None, allowed_by=None))
    return judged


def _allowed_by(rule: str, matched: str) -> str:
    return f"allow {rule}" if rule == matched else f"allow {rule} (matched {matched})"


def _fails(finding: Finding, policy: EnvironmentPolicy) -> bool:
    if finding.status in ("allowed", "suppressed"):
        return False
    return policy.fails(finding.severity, license=finding.kind == "license")


def _sort_key(finding: Finding) -> tuple[int, str, str, int, str]:
    rank = SEVERITY_RANK.get(finding.severity, 0)
    return (-rank, finding.tool, finding.file or "", finding.line or 0, finding.rule)


def decide(
    findings: Sequence[Finding], scans: Sequence[SubScan], policy: EnvironmentPolicy
) -> tuple[ScanPhase, str, tuple[Finding, ...]]:
    """The phase, a one-line reason, and the findings that fail the policy."""
    failing = tuple(f for f in findings if _fails(f, policy))
    errors = [s for s in scans if s.status == "error"]
    skipped = [s for s in scans if s.status == "skipped"]
    if failing:
        worst = ", ".join(f"{f.tool} {f.rule} at {f.location}" for f in failing[:3])
        more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
        noun = "finding" if len(failing) == 1 else "findings"
        reason = f"{len(failing)} open {noun} at or above {policy.fail_on}: {worst}{more}"
        if errors or skipped:  # the verdict stands, but the scan was not complete either
            missing = ", ".join(f"{s.tool} {s.status}" for s in [*errors, *skipped])
            reason += f" (also: {missing})"
        return "Failed", reason, failing
    if errors:
        return "Error", "; ".join(f"{s.tool}: {s.detail}" for s in errors), failing
    if skipped:
        return "Inconclusive", "; ".join(f"{s.tool} skipped: {s.detail}" for s in skipped), failing
    if not scans:
        return "Inconclusive", "no scanner ran", failing
    opened = sum(1 for f in findings if f.status not in ("allowed", "suppressed"))
    return "Successful", f"no open finding at or above {policy.fail_on} ({opened} below)", failing


# --------------------------------------------------------------------------------- run


def _run_sub_scan(tool: str, scan: Callable[[], list[Finding]]) -> tuple[SubScan, list[Finding]]:
    """Run one scanner; every outcome, crashes included, becomes a SubScan record."""
    started = time.monotonic()
    try:
        findings = scan()
    except ScannerUnavailable as exc:
        return SubScan(tool, "skipped", str(exc), time.monotonic() - started), []
    except ScannerError as exc:
        return SubScan(tool, "error", _short(str(exc), 300), time.monotonic() - started), list(
            exc.findings
        )
    except Exception as exc:  # noqa: BLE001 - a broken scanner is recorded, never raised
        detail = _short(f"{type(exc).__name__}: {exc}", 300)
        return SubScan(tool, "error", detail, time.monotonic() - started), []
    seconds = time.monotonic() - started
    noun = "finding" if len(findings) == 1 else "findings"
    return SubScan(tool, "ran", f"{len(findings)} {noun}", seconds), findings


def run_security_scan(
    spec: SecurityScanSpec,
    *,
    workspace: Path,
    image_ref: str | None,
    policy: EnvironmentPolicy,
    today: date,
    log: Callable[[str], None],
) -> ScanResult:
    """Run the requested sub-scans in parallel threads and judge them by ``policy``."""
    workspace = Path(workspace)
    jobs: list[tuple[str, Callable[[], list[Finding]]]] = []
    if spec.code:
        code = list(spec.code)
        jobs.append(("bandit", lambda: scan_code(workspace, code)))
    if spec.secrets:
        jobs.append(("detect-secrets", lambda: scan_secrets(workspace)))
    if spec.config:
        config = list(spec.config)
        jobs.append(("checkov", lambda: scan_config(workspace, config)))
    if spec.image:
        jobs.append(("trivy", lambda: scan_image(image_ref)))

    outcomes: list[tuple[SubScan, list[Finding]]] = []
    if jobs:
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="scan") as pool:
            futures = [pool.submit(_run_sub_scan, tool, scan) for tool, scan in jobs]
            outcomes = [future.result() for future in futures]

    scans = tuple(scan for scan, _ in outcomes)
    for scan in scans:
        log(f"security scan: {scan.tool} {scan.status} in {scan.seconds:.1f} s: {scan.detail}")
    raw = [finding for _, found in outcomes for finding in found]
    findings = tuple(sorted(apply_policy(raw, policy, today), key=_sort_key))
    phase, reason, failing = decide(findings, scans, policy)
    for finding in failing[:20]:
        log(
            f"security scan: {finding.severity} {finding.tool} {finding.rule} "
            f"{finding.location} [{finding.status}]: {finding.message}"
        )
    log(f"security scan: {phase}: {reason}")
    return ScanResult(
        phase=phase,
        reason=reason,
        findings=findings,
        scans=scans,
        failing=failing,
        fail_on=policy.fail_on,
    )


# --------------------------------------------------------------------------- reporting


def findings_rows(result: ScanResult) -> list[dict[str, str]]:
    """One row per finding, for a Prefect table artifact."""
    return [
        {
            "tool": f.tool,
            "rule": f.rule,
            "severity": f.severity,
            "file:line": f.location,
            "status": f.status,
            "message": f.message,
            "allowed by": f.allowed_by or "",
            "reason": f.allow_reason or "",
        }
        for f in result.findings
    ]


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: no pipes, no newlines, no code-span breaks."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def scan_markdown(result: ScanResult) -> str:
    """A human summary: verdict, sub-scans, failing findings, allowances in force."""
    icon = {"Successful": "✅", "Failed": "❌", "Inconclusive": "❔", "Error": "⚠️"}[result.phase]
    lines = [f"# Security scan: {icon} {result.phase}", "", _cell(result.reason), ""]
    lines += ["| scanner | status | detail | seconds |", "|---|---|---|---|"]
    for scan in result.scans:
        lines.append(f"| {scan.tool} | {scan.status} | {_cell(scan.detail)} | {scan.seconds:.1f} |")
    counts = Counter(
        f.severity for f in result.findings if f.status not in ("allowed", "suppressed")
    )
    if counts:
        order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"]
        summary = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
        lines += ["", f"Open findings: {summary} (the stage fails on {result.fail_on} and above)."]

    def table(title: str, findings: Sequence[Finding], note: bool) -> None:
        if not findings:
            return
        header = "| severity | tool | rule | file:line | message |"
        lines.extend(["", f"## {title}", "", header + (" reason |" if note else "")])
        lines.append("|---|---|---|---|---|" + ("---|" if note else ""))
        for f in findings[:MARKDOWN_FINDINGS_LIMIT]:
            row = f"| {f.severity} | {f.tool} | {_cell(f.rule)} | `{_cell(f.location)}` |"
            row += f" {_cell(f.message)} |"
            why = " ".join(part for part in (f.allowed_by, f.allow_reason) if part)
            lines.append(row + (f" {_cell(why)} |" if note else ""))
        if len(findings) > MARKDOWN_FINDINGS_LIMIT:
            lines.append(f"\n... and {len(findings) - MARKDOWN_FINDINGS_LIMIT} more")

    table("Failing the stage", result.failing, note=False)
    expired = [f for f in result.findings if f.status == "allowance-expired"]
    table("Allowances expired", expired, note=True)
    allowed = [f for f in result.findings if f.status == "allowed"]
    table("Allowed by the policy", allowed, note=True)
    suppressed = [f for f in result.findings if f.status == "suppressed"]
    table("Suppressed (VEX: status, justification, source)", suppressed, note=True)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ prefect task


def resolve_policy(
    spec: SecurityScanSpec,
    *,
    load: Callable[[str], SecurityPolicy] = SecurityPolicy.load,
) -> EnvironmentPolicy:
    """The policy the spec asks for: a block's environment, the inline one, or defaults."""
    if spec.policy is not None:
        return load(spec.policy).for_environment(spec.environment)
    if spec.inline_policy is not None:
        return spec.inline_policy
    return EnvironmentPolicy()


def _artifact_key(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


@task(
    name="security-scan",
    cache_policy=NO_CACHE,  # allowances expire: yesterday's verdict is not today's
    timeout_seconds=SCANNER_TIMEOUT_SECONDS + 60,
)
def security_scan(
    spec: SecurityScanSpec,
    workspace: Path,
    image_ref: str | None = None,
    artifact_key: str | None = None,
) -> ScanResult:
    """Run the security scan on a checked-out workspace and publish its artifacts.

    Args:
        spec: which sub-scans, on what paths, under which policy.
        workspace: the checkout the scan reads (never writes).
        image_ref: the built image for trivy (``spec.image``); default none.
        artifact_key: prefix of the artifacts' keys (e.g. the app name); default none
            (the artifacts then belong to this run only).

    Returns:
        The :class:`ScanResult`; the flow decides what its phase means.
    """
    logger = get_run_logger()
    policy = resolve_policy(spec)
    result = run_security_scan(
        spec,
        workspace=Path(workspace),
        image_ref=image_ref,
        policy=policy,
        today=datetime.now(UTC).date(),
        log=logger.info,
    )
    key = _artifact_key(artifact_key) if artifact_key else None
    create_markdown_artifact(
        key=f"{key}-security-scan" if key else None,
        markdown=scan_markdown(result),
        description=f"Security scan: {result.phase}",
    )
    create_table_artifact(
        key=f"{key}-security-findings" if key else None,
        table=findings_rows(result),
        description="Security findings with their policy status",
    )
    return result
