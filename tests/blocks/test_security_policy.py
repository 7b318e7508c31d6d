"""SecurityPolicy: Prefect's block standards, allowances that must say why and until when."""

from __future__ import annotations

from datetime import date

import pydantic
import pytest

from slipway.blocks.security_policy import (
    Allowance,
    EnvironmentPolicy,
    SecurityPolicy,
    rule_key,
)
from slipway.exceptions import ConfigError
from tests.blocks.block_suite import OfflineBlockTestSuite

EXPIRES = date(2031, 1, 31)


class TestSecurityPolicyStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[SecurityPolicy]:
        return SecurityPolicy


def test_environment_defaults() -> None:
    policy = EnvironmentPolicy()

    assert policy.fail_on == "HIGH"
    assert policy.unknown_as == "HIGH"
    assert policy.allow == []


@pytest.mark.parametrize(
    ("fail_on", "severity", "fails"),
    [
        ("HIGH", "CRITICAL", True),
        ("HIGH", "HIGH", True),
        ("HIGH", "MEDIUM", False),
        ("MEDIUM", "MEDIUM", True),
        ("CRITICAL", "HIGH", False),
        ("LOW", "LOW", True),
    ],
)
def test_threshold(fail_on: str, severity: str, fails: bool) -> None:
    assert EnvironmentPolicy(fail_on=fail_on).fails(severity) is fails


def test_unknown_severity_is_ranked_by_unknown_as() -> None:
    assert EnvironmentPolicy().fails("UNKNOWN")  # default: treated as HIGH
    assert not EnvironmentPolicy(unknown_as="LOW").fails("UNKNOWN")
    assert EnvironmentPolicy(fail_on="MEDIUM", unknown_as="MEDIUM").fails("UNKNOWN")


def test_severities_are_read_in_any_case() -> None:
    assert EnvironmentPolicy(fail_on="critical").fail_on == "CRITICAL"


def test_a_bad_threshold_names_the_field() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        EnvironmentPolicy(fail_on="SEVERE")

    assert "fail_on" in str(caught.value)


@pytest.mark.parametrize("missing", ["reason", "expires", "rule"])
def test_an_allowance_without_a_required_field_names_it(missing: str) -> None:
    fields = {"rule": "B602", "reason": "legacy admin script", "expires": EXPIRES}
    del fields[missing]

    with pytest.raises(pydantic.ValidationError) as caught:
        Allowance(**fields)

    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [(missing,)]
    assert errors[0]["type"] == "missing"


def test_an_empty_reason_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Allowance(rule="B602", reason="   ", expires=EXPIRES)

    assert caught.value.errors()[0]["loc"] == ("reason",)
    assert "must say why" in str(caught.value)


def test_a_nested_error_names_the_path_to_the_field() -> None:
    """As a block or in a pipeline file, the message leads to the bad allowance."""
    with pytest.raises(pydantic.ValidationError) as caught:
        SecurityPolicy(
            environments={
                "production": {
                    "allow": [
                        {"rule": "B602", "reason": "ok", "expires": "2031-01-31"},
                        {"rule": "CKV_K8S_16", "reason": "needs the GPU driver"},
                    ]
                }
            }
        )

    assert "environments.production.allow.1.expires" in str(caught.value)


def test_unknown_keys_and_tools_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="reasn"):
        Allowance.model_validate(
            {"rule": "B602", "reasn": "typo", "reason": "x", "expires": "2031-01-31"}
        )
    with pytest.raises(pydantic.ValidationError, match="tool"):
        Allowance(tool="bandid", rule="B602", reason="x", expires=EXPIRES)


def test_an_absolute_path_glob_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="relative to the workspace"):
        Allowance(rule="B602", path="/etc/*", reason="x", expires=EXPIRES)


def test_matching_by_tool_rule_and_path_glob() -> None:
    allowance = Allowance(
        tool="bandit", rule="B602", path="src/admin/**", reason="x", expires=EXPIRES
    )

    assert allowance.matches("bandit", "B602", "src/admin/tools/run.py")
    assert not allowance.matches("bandit", "B602", "src/app.py")
    assert not allowance.matches("bandit", "B603", "src/admin/run.py")
    assert not allowance.matches("checkov", "B602", "src/admin/run.py")
    assert not allowance.matches("bandit", "B602", None)
    assert Allowance(rule="B602", reason="x", expires=EXPIRES).matches("bandit", "B602", None)


def test_an_allowance_applies_through_its_expiry_day() -> None:
    allowance = Allowance(rule="B602", reason="x", expires=EXPIRES)

    assert allowance.active_on(EXPIRES)
    assert not allowance.active_on(date(2031, 2, 1))


def test_for_environment() -> None:
    policy = SecurityPolicy(
        environments={"ci": EnvironmentPolicy(), "production": {"fail_on": "MEDIUM"}}
    )

    assert policy.for_environment("production").fail_on == "MEDIUM"
    with pytest.raises(ConfigError, match=r"no environment 'prod' \(it has: ci, production\)"):
        policy.for_environment("prod")


def test_a_policy_needs_an_environment() -> None:
    with pytest.raises(pydantic.ValidationError, match="environments"):
        SecurityPolicy(environments={})


def test_saved_and_loaded_through_the_prefect_api(prefect_harness: None) -> None:
    """Dates and nested models survive the block document round trip."""
    SecurityPolicy(
        environments={
            "production": EnvironmentPolicy(
                fail_on="MEDIUM",
                allow=[
                    Allowance(
                        tool="checkov",
                        rule="CKV_K8S_16",
                        path="k8s/gpu/*.yaml",
                        reason="the GPU driver daemonset must be privileged",
                        expires=EXPIRES,
                    )
                ],
            )
        }
    ).save("policy-round-trip", overwrite=True)

    loaded = SecurityPolicy.load("policy-round-trip").for_environment("production")

    assert loaded.fail_on == "MEDIUM"
    assert loaded.allow[0].expires == EXPIRES
    assert loaded.allow[0].matches("checkov", "CKV_K8S_16", "k8s/gpu/driver.yaml")


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ("DS002", "DS-0002"),
        ("DS-0002", "DS-0002"),
        ("AVD-DS-0002", "DS-0002"),
        ("avd-ksv-0017", "KSV-0017"),
        ("KSV017", "KSV-0017"),
        ("AVD-AWS-0086", "AWS-0086"),
        ("CVE-2024-2511", "CVE-2024-2511"),
        ("CKV_K8S_16", "CKV_K8S_16"),
        ("Private Key", "PRIVATE KEY"),
    ],
)
def test_rule_key_spells_every_form_of_a_check_id_alike(rule: str, key: str) -> None:
    assert rule_key(rule) == key


def test_an_allowance_says_which_of_a_findings_ids_it_matched() -> None:
    allowance = Allowance(tool="trivy", rule="DS002", reason="x", expires=EXPIRES)

    assert allowance.match("trivy", ("DS-0002", "AVD-DS-0002"), "Dockerfile") == "DS-0002"
    assert allowance.match("trivy", ("AVD-DS-0002", "DS002"), None) == "DS002"  # exact first
    assert allowance.match("trivy", ("DS-0020",), None) is None
    assert allowance.match("bandit", ("DS002",), None) is None


def test_license_allowlist_ignores_case() -> None:
    policy = EnvironmentPolicy(licenses={"allowed": ["GPL-2.0-only"], "fail_on": "critical"})

    assert policy.licenses.allows("gpl-2.0-only")
    assert not policy.licenses.allows("GPL-2.0-or-later")
    assert not policy.fails("HIGH", license=True)
    assert policy.fails("HIGH")
