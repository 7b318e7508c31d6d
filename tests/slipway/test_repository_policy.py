"""The repository allowlist on plain values: normal forms, globs and refusals.

Runs of a real deployment are in tests/flows/test_repository_allowlist.py.
"""

from __future__ import annotations

import pytest

from slipway.exceptions import ConfigError, RepositoryNotAllowed
from slipway.repository_policy import (
    RepositoryAllowlist,
    check_repository_allowed,
    normalise_repository,
)


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("https://git.example.com/team/app", "https://git.example.com/team/app"),
        ("HTTPS://GIT.Example.COM/team/app.git/", "https://git.example.com/team/app"),
        ("https://git.example.com:443/team/app.git", "https://git.example.com/team/app"),
        ("http://git.example.com:80/team/app", "http://git.example.com/team/app"),
        ("https://git.example.com:8443/team/app", "https://git.example.com:8443/team/app"),
        ("https://git.example.com/team/../other/x", "https://git.example.com/other/x"),
        ("https://git.example.com/team/%2e%2E/other/x", "https://git.example.com/other/x"),
        ("https://git.example.com/team/x%2F..%2F..%2Fother", "https://git.example.com/other"),
        ("https://git.example.com/team/x\\..\\..\\other", "https://git.example.com/other"),
        ("https://git.example.com//team/./app/", "https://git.example.com/team/app"),
        ("https://git.example.com./team/app", "https://git.example.com/team/app"),
        ("https://git.example.com/../../team/app", "https://git.example.com/team/app"),
        ("ssh://git.example.com:22/team/app.git", "ssh://git.example.com/team/app"),
        ("git@Git.Example.com:team/app.git", "ssh://git@git.example.com/team/app"),
        ("/srv/git/app.git", "/srv/git/app"),
        ("/srv/git/app/.git/", "/srv/git/app"),
        ("/srv/git/team/../../etc/x", "/srv/etc/x"),
        ("file:///srv/git/app.git", "/srv/git/app"),
        ("file://localhost/srv/git/a%20b.git", "/srv/git/a b"),
        ("./app.git", "/work/here/app"),
        ("../elsewhere/app", "/work/elsewhere/app"),
    ],
)
def test_normal_forms(given: str, normal: str) -> None:
    assert normalise_repository(given, cwd="/work/here") == normal


def test_credentials_never_reach_the_normal_form() -> None:
    normal = normalise_repository("https://ci:glpat-secret-1@git.example.com/team/app.git")
    assert normal == "https://git.example.com/team/app"
    # ssh keeps the login name (an identity, not a secret) and drops a password
    assert normalise_repository("ssh://git:pw-9@host/x") == "ssh://git@host/x"


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("ext::sh -c touch% /tmp/pwned", "transports"),
        ("fd::3", "transports"),
        ("ftp://host/app.git", "scheme ftp://"),
        ("https://host/app.git?ref=../other", "query or a fragment"),
        ("https://host/app.git#frag", "query or a fragment"),
        ("https://host/app.git?", "query or a fragment"),
        ("file://otherhost/srv/app.git", "this machine"),
        ("https://host:notaport/app", "port"),
        ("https:///app.git", "no host"),
    ],
)
def test_what_cannot_be_checked_is_refused(given: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        normalise_repository(given)


ALLOWLIST = RepositoryAllowlist.parse(
    "https://git.example.com/team/*, https://git.example.com/infra/**\n"
    "# a comment line\n\n/srv/git/app.git\ngit@git.example.com:ops/*",
    source="the test's list",
)


@pytest.mark.parametrize(
    "repository",
    [
        "https://git.example.com/team/app",
        "HTTPS://GIT.EXAMPLE.COM/team/app.git/",
        "https://git.example.com/team/sub/../app.git",
        "https://git.example.com/infra/deep/er/tool.git",
        "/srv/git/app",
        "file:///srv/git/app.git",
        "git@git.example.com:ops/deploy.git",
    ],
)
def test_listed_repositories_pass(repository: str) -> None:
    assert ALLOWLIST.allows(normalise_repository(repository))


@pytest.mark.parametrize(
    "repository",
    [
        "https://git.example.com/team/../other/x",
        "https://git.example.com/team/%2e%2e/other/x",
        "https://git.example.com/team/sub/app",  # '*' stays within one segment
        "https://git.example.com/team",
        "https://git.example.com.evil.test/team/app",
        "http://git.example.com/team/app",  # another scheme is another URL
        "https://git.example.com:8443/team/app",
        "/srv/git/app.git/../other.git",
        "/srv/git/apps",
        "ssh://other@git.example.com/ops/deploy",
    ],
)
def test_unlisted_repositories_do_not(repository: str) -> None:
    assert not ALLOWLIST.allows(normalise_repository(repository))


def test_a_bad_entry_is_named_by_its_source_and_position() -> None:
    with pytest.raises(ValueError, match=r"the worker's list: entry 2: .*query"):
        RepositoryAllowlist.parse("https://a/x\nhttps://b/y?z", source="the worker's list")


def _check(repository: str, default: str | None = None) -> None:
    check_repository_allowed(
        repository,
        allowlist=ALLOWLIST,
        deployment_default=default,
        deployment_name="pipeline/app",
    )


def test_block_names_and_the_deployments_own_default_pass() -> None:
    _check("example-app")
    _check("https://other.example.com/x.git/", default="HTTPS://other.example.com/x")


def test_the_refusal_names_repository_source_and_remedy_never_credentials() -> None:
    with pytest.raises(RepositoryNotAllowed) as refused:
        _check("https://ci:tok-77@evil.example.com/x.git", default="example-app")
    message = str(refused.value)
    assert isinstance(refused.value, ConfigError)
    assert "repository https://evil.example.com/x is not allowed" in message
    assert "'pipeline/app'" in message and "AppRepository block" in message
    assert "SLIPWAY_ALLOWED_REPOSITORIES" in message and "the test's list" in message
    assert "https://git.example.com/team/*" in message
    assert "tok-77" not in message and "ci:" not in message


def test_an_uncheckable_url_is_refused_as_not_allowed() -> None:
    with pytest.raises(RepositoryNotAllowed, match="transports"):
        _check("ext::sh -c id")
