"""PrometheusServer: Prefect's block standards, validation, secrets, and a real Prometheus."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pydantic
import pytest

from slipway.blocks.prometheus import PrometheusServer
from tests.blocks.block_suite import OfflineBlockTestSuite
from tests.servers import prometheus as servers
from tests.servers.prometheus import PrometheusProcess

start_prometheus = servers.start_prometheus  # the fixture: Debian's prometheus binary

TOKEN = "prom-token-0123456789abcdef"
PASSWORD = "prom-password-0123456789"


class TestPrometheusServerStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[PrometheusServer]:
        return PrometheusServer


def test_defaults_and_normalised_url() -> None:
    server = PrometheusServer(url="https://prometheus.example.com/")

    assert server.url == "https://prometheus.example.com"
    assert server.bearer_token is None and server.username is None and server.password is None
    assert server.verify_tls is True
    assert server.timeout_seconds == 10


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("prometheus.example.com", "absolute http"),
        ("ftp://prometheus.example.com", "absolute http"),
        (f"https://ci:{PASSWORD}@prometheus.example.com", "credentials"),
        ("https://prometheus.example.com/?x=1", "query"),
    ],
)
def test_bad_urls_are_refused_without_echoing_them(url: str, problem: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        PrometheusServer(url=url)

    text = str(caught.value)
    assert "url" in text and problem in text
    assert PASSWORD not in text and url not in text


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"username": "ci"}, "needs both username and password"),
        ({"password": PASSWORD}, "needs both username and password"),
        ({"username": "ci", "password": PASSWORD, "bearer_token": TOKEN}, "not both"),
        ({"bearer_token": "  "}, "must not be empty"),
        ({"username": "ci", "password": ""}, "must not be empty"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_credentials_must_be_one_complete_kind(fields: dict[str, str], problem: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem) as caught:
        PrometheusServer.model_validate({"url": "https://prometheus.example.com", **fields})

    assert PASSWORD not in str(caught.value) and TOKEN not in str(caught.value)


def test_repr_and_dump_keep_secrets_masked() -> None:
    bearer = PrometheusServer(url="https://prometheus.example.com", bearer_token=TOKEN)
    basic = PrometheusServer(url="https://p.example.com", username="ci", password=PASSWORD)

    for server in (bearer, basic):
        assert TOKEN not in repr(server) and PASSWORD not in repr(server)
        assert TOKEN not in server.model_dump_json() and PASSWORD not in server.model_dump_json()


def test_get_client_sends_the_bearer_token_and_keeps_a_path_prefix() -> None:
    server = PrometheusServer(
        url="https://gateway.example.com/prometheus",
        bearer_token=TOKEN,
        verify_tls=False,
        timeout_seconds=3,
    )

    with server.get_client() as client:
        request = client.build_request("GET", "/api/v1/query", params={"query": "up"})

        assert str(request.url) == "https://gateway.example.com/prometheus/api/v1/query?query=up"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert client.timeout == httpx.Timeout(3)
        assert client.follow_redirects is False


def test_secret_values_cover_the_secrets_and_the_basic_auth_header() -> None:
    basic = PrometheusServer(url="https://p.example.com", username="ci", password=PASSWORD)
    bearer = PrometheusServer(url="https://p.example.com", bearer_token=TOKEN)

    header = base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
    assert basic.secret_values() == [PASSWORD, header]
    assert bearer.secret_values() == [TOKEN]
    assert PrometheusServer(url="https://p.example.com").secret_values() == []


def test_basic_auth_against_a_real_prometheus(
    start_prometheus: Callable[..., PrometheusProcess],
) -> None:
    """Prometheus' own --web.config.file basic auth accepts the block's client only."""
    prometheus = start_prometheus(basic_auth=("ci", PASSWORD))
    right = PrometheusServer(url=prometheus.url, username="ci", password=PASSWORD)
    wrong = PrometheusServer(url=prometheus.url, username="ci", password="not-the-password")
    anonymous = PrometheusServer(url=prometheus.url)

    with right.get_client() as client:
        answer = client.get("/api/v1/query", params={"query": "vector(42)"})
    with wrong.get_client() as client:
        refused = client.get("/api/v1/query", params={"query": "vector(42)"})
    with anonymous.get_client() as client:
        unauthenticated = client.get("/api/v1/query", params={"query": "vector(42)"})

    assert answer.status_code == 200
    assert answer.json()["data"]["result"][0]["value"][1] == "42"
    assert (refused.status_code, unauthenticated.status_code) == (401, 401)
