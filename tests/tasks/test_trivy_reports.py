"""trivy's JSON reports as trivy writes them, through the parser and the policy.

trivy cannot be installed here, so the reports under ``trivy_reports/`` were written
in the layout trivy 0.50-0.68 produce (``trivy image`` with OS and language packages,
licenses, secrets, a Dockerfile check and VEX-suppressed findings; ``trivy k8s`` with
``--report all`` and ``--report summary``; ``trivy config`` before and after the
check ids were renamed from ``DS002`` to ``DS-0002``).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from slipway.blocks.security_policy import Allowance, EnvironmentPolicy, LicensePolicy
from slipway.tasks.security_scan import (
    Finding,
    ScannerError,
    ScanResult,
    SubScan,
    _run_sub_scan,
    apply_policy,
    decide,
    findings_rows,
    parse_trivy_report,
    scan_markdown,
)

REPORTS = Path(__file__).parent / "trivy_reports"
TODAY = date(2030, 6, 1)


def _report(name: str) -> Any:
    return json.loads((REPORTS / name).read_text(encoding="utf-8"))


def _judge(findings: list[Finding], policy: EnvironmentPolicy) -> ScanResult:
    judged = apply_policy(findings, policy, TODAY)
    scans = (SubScan("trivy", "ran", f"{len(findings)} findings"),)
    phase, reason, failing = decide(judged, scans, policy)
    return ScanResult(phase, reason, tuple(judged), scans, failing, policy.fail_on)


def _by_rule(findings: Any) -> dict[str, Finding]:
    return {f.rule: f for f in findings}


# ------------------------------------------------------------------------ image report


def test_image_report_reads_every_kind_of_finding() -> None:
    findings = _by_rule(parse_trivy_report(_report("image-debian-python.json")))

    assert {f.kind for f in findings.values()} == {
        "vulnerability",
        "license",
        "secret",
        "misconfiguration",
    }
    gpl = findings["GPL-3.0-only"]
    assert (gpl.kind, gpl.severity, gpl.file) == ("license", "HIGH", "OS Packages")
    assert gpl.message == "restricted license GPL-3.0-only (libreadline8)"
    agpl = findings["AGPL-3.0"]
    assert (agpl.severity, agpl.message) == (
        "CRITICAL",
        "forbidden license AGPL-3.0 (/app/vendor/reportlib/LICENSE)",
    )
    assert findings["DS-0026"].ids == ("AVD-DS-0026",)
    assert "********" not in repr(findings)  # trivy's masked Match is never read


def test_restricted_licenses_fail_the_default_policy() -> None:
    result = _judge(parse_trivy_report(_report("image-debian-python.json")), EnvironmentPolicy())

    assert result.phase == "Failed"
    failing = {f.rule for f in result.failing}
    assert {"GPL-3.0-only", "AGPL-3.0"} <= failing
    assert not {"Zlib", "Apache-2.0"} & failing  # LOW: notice licenses pass at HIGH


def test_licenses_have_their_own_threshold_and_allowlist() -> None:
    findings = parse_trivy_report(_report("image-debian-python.json"))
    policy = EnvironmentPolicy(
        licenses=LicensePolicy(fail_on="CRITICAL", allowed=["agpl-3.0"]),
    )

    result = _judge(findings, policy)

    judged = _by_rule(result.findings)
    assert judged["AGPL-3.0"].status == "allowed"
    assert judged["AGPL-3.0"].allowed_by == "licenses.allowed: AGPL-3.0"
    assert judged["GPL-3.0-only"].status == "open"  # open, but HIGH < CRITICAL for licenses
    failing = {f.rule for f in result.failing}
    assert not {"GPL-3.0-only", "AGPL-3.0"} & failing
    assert "CVE-2024-5535" in failing  # vulnerabilities still fail at HIGH


def test_vex_not_affected_and_fixed_are_suppressed_and_shown() -> None:
    result = _judge(parse_trivy_report(_report("image-debian-python.json")), EnvironmentPolicy())

    judged = _by_rule(result.findings)
    zlib = judged["CVE-2023-45853"]
    assert (zlib.status, zlib.severity) == ("suppressed", "CRITICAL")
    assert zlib.allow_reason == (
        "VEX not_affected: vulnerable_code_not_in_execute_path "
        "(OpenVEX file: vex/example-app.openvex.json)"
    )
    assert judged["CVE-2024-2511"].status == "suppressed"
    assert "VEX fixed: backported in the distribution build (CSAF VEX)" == (
        judged["CVE-2024-2511"].allow_reason
    )
    failing = {f.rule for f in result.failing}
    assert not {"CVE-2023-45853", "CVE-2024-2511"} & failing
    markdown = scan_markdown(result)
    assert "## Suppressed (VEX: status, justification, source)" in markdown
    assert "VEX not_affected: vulnerable_code_not_in_execute_path" in markdown
    rows = {row["rule"]: row for row in findings_rows(result)}
    assert rows["CVE-2023-45853"]["status"] == "suppressed"


def test_a_vulnerability_whose_status_is_fixed_stays_open() -> None:
    """In ``Vulnerabilities``, ``Status: fixed`` means a fixed version exists: the
    installed one is still vulnerable."""
    result = _judge(parse_trivy_report(_report("image-debian-python.json")), EnvironmentPolicy())

    ssl = _by_rule(result.findings)["CVE-2024-5535"]
    assert (ssl.status, ssl.severity) == ("open", "HIGH")
    assert "(fixed in 3.0.15-1~deb12u1)" in ssl.message
    assert ssl in result.failing


def test_an_ignore_file_suppression_is_not_honoured() -> None:
    result = _judge(parse_trivy_report(_report("image-debian-python.json")), EnvironmentPolicy())

    util = _by_rule(result.findings)["CVE-2022-0563"]
    assert util.status == "open"
    assert util.message.endswith("[trivy: ignored by .trivyignore.yaml, not honoured]")
    assert util in result.failing


def test_a_vendor_not_affected_status_is_suppressed() -> None:
    report = _report("image-debian-python.json")
    report["Results"][0]["Vulnerabilities"][0]["Status"] = "not_affected"

    finding = _by_rule(parse_trivy_report(report))["CVE-2024-5535"]

    assert (finding.status, finding.allow_reason) == ("suppressed", "not_affected (vendor status)")


# ----------------------------------------------------------------------- k8s reports


def test_k8s_report_findings_are_read_from_each_resource() -> None:
    findings = parse_trivy_report(_report("k8s-cluster-all.json"))

    where = {(f.rule, f.file) for f in findings}
    assert where == {
        ("CVE-2024-6119", "shop/Deployment/web: registry.local/shop/web:2.4.0 (alpine 3.19.1)"),
        ("CVE-2023-45288", "shop/Deployment/web: usr/local/bin/web"),
        ("KSV-0017", "shop/Deployment/web: Deployment/web"),
        ("KSV-0011", "shop/Deployment/web: Deployment/web"),
        ("KSV-0044", "ClusterRole/shop-admin: ClusterRole/shop-admin"),
    }
    result = _judge(findings, EnvironmentPolicy())
    assert result.phase == "Failed"
    assert {f.rule for f in result.failing} == {"CVE-2024-6119", "KSV-0017", "KSV-0044"}


def test_k8s_summary_report_with_an_unscanned_resource_is_an_error() -> None:
    with pytest.raises(
        ScannerError, match=r"could not scan 1 resource\(s\): shop/CronJob/report"
    ) as err:
        parse_trivy_report(_report("k8s-cluster-summary.json"))

    assert {f.rule for f in err.value.findings} == {"KSV-0017", "CVE-2024-6119"}


def test_k8s_report_of_a_clean_cluster() -> None:
    assert parse_trivy_report({"ClusterName": "kind-staging"}) == []


# -------------------------------------------------------------------- unknown layouts


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ({}, "layout slipway does not know"),
        ({"ArtifactName": "app:1", "ArtifactType": "container_image"}, "keys: ArtifactName"),
        ({"Results": []}, "layout slipway does not know"),
        ([{"Target": "app (debian 9)", "Vulnerabilities": []}], "not a JSON object"),
        ({"SchemaVersion": 2, "Results": {"Target": "x"}}, "Results is not a list"),
        ({"ClusterName": "c", "Resources": {"Kind": "Pod"}}, "Resources is not a list"),
        ({"SchemaVersion": 3, "Results": []}, "schema version 3"),
    ],
)
def test_an_unknown_layout_is_an_error_never_clean(report: Any, message: str) -> None:
    with pytest.raises(ScannerError, match=message):
        parse_trivy_report(report)

    scan, findings = _run_sub_scan("trivy", lambda: parse_trivy_report(report))
    phase, _, _ = decide(findings, [scan], EnvironmentPolicy())
    assert (scan.status, phase) == ("error", "Error")


# ------------------------------------------------------------------ renamed check ids


def _dockerfile_allowance(rule: str) -> EnvironmentPolicy:
    allowance = Allowance(
        tool="trivy", rule=rule, reason="the build image needs root", expires=TODAY
    )
    return EnvironmentPolicy(allow=[allowance])


@pytest.mark.parametrize(
    ("report", "rule", "allowed_by"),
    [
        ("config-dockerfile-v0.50.json", "DS002", "allow DS002"),
        ("config-dockerfile-v0.50.json", "DS-0002", "allow DS-0002 (matched DS002)"),
        ("config-dockerfile-v0.50.json", "AVD-DS-0002", "allow AVD-DS-0002"),
        ("config-dockerfile-v0.68.json", "DS002", "allow DS002 (matched DS-0002)"),
        ("config-dockerfile-v0.68.json", "AVD-DS-0002", "allow AVD-DS-0002"),
        ("config-dockerfile-v0.68.json", "ds-0002", "allow ds-0002 (matched DS-0002)"),
    ],
)
def test_an_allowance_survives_trivy_renaming_its_check_ids(
    report: str, rule: str, allowed_by: str
) -> None:
    result = _judge(parse_trivy_report(_report(report)), _dockerfile_allowance(rule))

    root = next(f for f in result.findings if "DS002" in (f.rule, *f.ids) or f.rule == "DS-0002")
    assert (root.status, root.allowed_by) == ("allowed", allowed_by)
    assert result.phase == "Successful"
    rows = {row["rule"]: row for row in findings_rows(result)}
    assert rows[root.rule]["allowed by"] == allowed_by
    assert f"{allowed_by} the build image needs root" in scan_markdown(result)


def test_an_allowance_for_another_check_does_not_match() -> None:
    result = _judge(
        parse_trivy_report(_report("config-dockerfile-v0.68.json")),
        _dockerfile_allowance("DS-0020"),
    )

    assert result.phase == "Failed"
