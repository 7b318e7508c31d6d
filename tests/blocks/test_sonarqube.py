"""SonarQubeServer: Prefect's block standards, validation, secrets, and its real client."""

from __future__ import annotations

import base64

import pydantic
import pytest
import requests
from sonarqube import SonarQubeClient
from sonarqube.utils.exceptions import AuthError
from sonarqube.utils.rest_client import RestClient

from slipway.blocks.sonarqube import SonarQubeServer
from tests.blocks.block_suite import OfflineBlockTestSuite
from tests.servers.sonarqube import SonarQubeStandIn

TOKEN = "squ_blocktest0123456789abcdef0123456789ab"


class TestSonarQubeServerStandards(OfflineBlockTestSuite):
    @pytest.fixture
    def block(self) -> type[SonarQubeServer]:
        return SonarQubeServer


def test_defaults_and_normalised_url() -> None:
    server = SonarQubeServer(url="https://sonar.example.com/", token=TOKEN)

    assert server.url == "https://sonar.example.com"
    assert server.organization is None
    assert server.verify_tls is True
    assert server.request_timeout_seconds == 30


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sonar.example.com", "absolute http"),
        ("ftp://sonar.example.com", "absolute http"),
        (f"https://ci:{TOKEN}@sonar.example.com", "credentials"),
        ("https://sonar.example.com/?x=1", "query"),
    ],
)
def test_bad_urls_are_refused_without_echoing_them(url: str, problem: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        SonarQubeServer(url=url, token=TOKEN)

    text = str(caught.value)
    assert "url" in text and problem in text
    assert TOKEN not in text and url not in text


def test_validation_errors_from_a_dict_do_not_echo_the_token() -> None:
    """A block document read back holds the raw token; a rejected one must not show it."""
    with pytest.raises(pydantic.ValidationError) as caught:
        SonarQubeServer.model_validate(
            {"url": "https://sonar.example.com", "token": TOKEN, "request_timeout_seconds": -1}
        )

    assert "request_timeout_seconds" in str(caught.value)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("token", ["", "   "])
def test_blank_token_is_refused(token: str) -> None:
    # python-sonarqube-api would silently send no credentials at all
    with pytest.raises(pydantic.ValidationError, match="token must not be empty"):
        SonarQubeServer(url="https://sonar.example.com", token=token)


def test_secret_values_cover_the_token_and_its_basic_auth_form() -> None:
    server = SonarQubeServer(url="https://sonar.example.com", token=TOKEN)

    basic = base64.b64encode(f"{TOKEN}:".encode()).decode()
    assert server.secret_values() == [TOKEN, basic]


def test_repr_and_dump_keep_the_token_masked() -> None:
    server = SonarQubeServer(url="https://sonar.example.com", token=TOKEN)

    assert TOKEN not in repr(server)
    assert TOKEN not in server.model_dump_json()


def test_scanner_env() -> None:
    server = SonarQubeServer(url="https://sonarcloud.io", token=TOKEN, organization="team")

    assert server.scanner_env() == {
        "SONAR_HOST_URL": "https://sonarcloud.io",
        "SONAR_TOKEN": TOKEN,
        "SONAR_ORGANIZATION": "team",
    }
    no_org = SonarQubeServer(url="https://sonar.example.com", token=TOKEN).scanner_env()
    assert "SONAR_ORGANIZATION" not in no_org


def test_get_client_is_configured_from_the_block() -> None:
    server = SonarQubeServer(
        url="https://sonar.example.com", token=TOKEN, verify_tls=False, request_timeout_seconds=7
    )

    client = server.get_client()

    assert isinstance(client, SonarQubeClient)
    assert client.base_url == "https://sonar.example.com"
    assert client.session.verify is False
    assert client.timeout == 7
    assert client.session.auth.username == TOKEN and client.session.auth.password == ""


def test_client_talks_to_the_standin_with_the_token_as_basic_auth_user() -> None:
    with SonarQubeStandIn(token=TOKEN) as sonar:
        task_id = sonar.submit("app")
        client = SonarQubeServer(url=sonar.url, token=TOKEN).get_client()

        version = client.server.get_server_version()  # a method of the library itself
        answer = RestClient(client).request("GET", "/api/ce/task", params={"id": task_id}).json()

    assert version == sonar.version
    assert answer["task"]["id"] == task_id and answer["task"]["status"] == "PENDING"
    basic = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
    assert sonar.auth_headers[-1] == basic
    assert sonar.requests[-1] == ("GET", "/api/ce/task", True)


def test_standin_checks_tokens_the_way_sonarqube_does() -> None:
    """Basic (token as user, empty password) and Bearer pass; anything else is a bare 401."""
    with SonarQubeStandIn(token=TOKEN) as sonar:
        task_id = sonar.submit("app")
        url = f"{sonar.url}/api/ce/task?id={task_id}"

        bearer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        wrong = requests.get(url, headers={"Authorization": "Bearer squ_wrong"}, timeout=5)
        password = requests.get(url, auth=(TOKEN, "not-empty"), timeout=5)
        anonymous = requests.get(url, timeout=5)
        status = requests.get(f"{sonar.url}/api/system/status", timeout=5)
        wrong_client = SonarQubeServer(url=sonar.url, token="squ_wrong").get_client()
        with pytest.raises(AuthError):
            RestClient(wrong_client).request("GET", "/api/ce/task", params={"id": task_id})

    assert bearer.status_code == 200
    assert [r.status_code for r in (wrong, password, anonymous)] == [401, 401, 401]
    assert wrong.content == b""
    assert status.status_code == 200 and status.json()["status"] == "UP"
