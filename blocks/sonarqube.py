"""The SonarQube (or SonarCloud) server a quality gate asks, and the token it asks with.

The block holds configuration and hands out clients, never gate logic (that lives in
``slipway.tasks.quality_gate``). The token is a ``SecretStr``; it is unwrapped in
:meth:`SonarQubeServer.get_client` for the Web API, in
:meth:`SonarQubeServer.scanner_env` for the scanner (a separate process that reads
``SONAR_TOKEN`` from its environment, as SonarSource's scanners do), and in
:meth:`SonarQubeServer.secret_values`, which hands the values to the run's redactor.
"""

from __future__ import annotations

import base64

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator
from sonarqube import SonarQubeClient

from slipway.urls import check_server_url

_SONAR_LOGO = "https://github.com/SonarSource.png?size=200"
_DOCS = "https://docs.sonarsource.com/sonarqube-server/latest/extension-guide/web-api/"


class SonarQubeServer(Block):
    """A SonarQube server (or SonarCloud) and the token a quality gate uses with it.

    The token needs *Execute Analysis* (for the scanner) and *Browse* (for the
    compute-engine task and the quality gate status) on the project.

    Example:
        Load a saved server and ask it for the quality gate of an analysis:
        ```python
        from slipway.blocks.sonarqube import SonarQubeServer

        sonarqube_server = SonarQubeServer.load("BLOCK_NAME")
        client = sonarqube_server.get_client()
        ```

        Save one:
        ```python
        from slipway.blocks.sonarqube import SonarQubeServer

        SonarQubeServer(url="https://sonar.example.com", token="squ_...").save("sonar")
        ```
    """

    _block_type_name = "Slipway SonarQube Server"
    _logo_url = _SONAR_LOGO  # type: ignore[assignment]
    _documentation_url = _DOCS  # type: ignore[assignment]
    # A rejected config (a dict, or a block document read back) may hold the raw token.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str = Field(
        description=(
            "Base URL of the server, http:// or https://, without credentials, "
            "e.g. https://sonar.example.com or https://sonarcloud.io. No default."
        )
    )
    token: SecretStr = Field(
        description="User, project analysis or global analysis token. No default."
    )
    organization: str | None = Field(
        default=None,
        description=(
            "SonarCloud organization key, given to the scanner as SONAR_ORGANIZATION; "
            "SonarQube Server has none. Default: none."
        ),
    )
    verify_tls: bool = Field(
        default=True,
        description="Check the server's TLS certificate (https only). Default: true.",
    )
    request_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=600,
        description="Seconds one Web API request may take before it is given up. Default: 30.",
    )

    @field_validator("url")
    @classmethod
    def _http_url_without_credentials(cls, value: str) -> str:
        return check_server_url(value, credentials_hint="put the token in 'token' instead")

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        # python-sonarqube-api silently sends no credentials at all for an empty token
        if not value.get_secret_value().strip():
            raise ValueError("token must not be empty")
        return value

    def get_client(self) -> SonarQubeClient:
        """A python-sonarqube-api client: the token as the Basic-auth user, TLS per block."""
        return SonarQubeClient(
            sonarqube_url=self.url,
            token=self.token.get_secret_value(),
            verify=self.verify_tls,
            timeout=self.request_timeout_seconds,
        )

    def scanner_env(self) -> dict[str, str]:
        """Environment for the scanner: ``SONAR_HOST_URL``, ``SONAR_TOKEN`` (+ organization)."""
        env = {"SONAR_HOST_URL": self.url, "SONAR_TOKEN": self.token.get_secret_value()}
        if self.organization:
            env["SONAR_ORGANIZATION"] = self.organization
        return env

    def secret_values(self) -> list[str]:
        """The token and its Basic-auth form (``token:`` in base64), for ``Redactor.add``."""
        token = self.token.get_secret_value()
        return [token, base64.b64encode(f"{token}:".encode()).decode()]
