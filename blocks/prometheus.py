"""The Prometheus server a metric analysis asks, and the credentials it asks with.

The block holds configuration and hands out clients, never analysis logic (that lives
in ``slipway.tasks.analysis``). Prometheus itself knows only basic auth
(``--web.config.file``); a bearer token is for what usually sits in front of it (an
OAuth proxy, Grafana Cloud, Thanos or Cortex gateways). Secrets are ``SecretStr``s,
unwrapped in :meth:`PrometheusServer.get_client` and, for the run's redactor, in
:meth:`PrometheusServer.secret_values`.
"""

from __future__ import annotations

import base64

import httpx
from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from slipway.urls import check_server_url

_PROMETHEUS_LOGO = "https://github.com/prometheus.png?size=200"
_DOCS = "https://prometheus.io/docs/prometheus/latest/querying/api/"


class PrometheusServer(Block):
    """A Prometheus server (or anything speaking its HTTP API) for metric analyses.

    At most one kind of credentials: a bearer token, or a username and password
    (basic auth); none for an open server.

    Example:
        Load a saved server and run an instant query:
        ```python
        from slipway.blocks.prometheus import PrometheusServer

        prometheus_server = PrometheusServer.load("BLOCK_NAME")
        with prometheus_server.get_client() as client:
            answer = client.get("/api/v1/query", params={"query": "up"})
        ```

        Save one:
        ```python
        from slipway.blocks.prometheus import PrometheusServer

        PrometheusServer(
            url="https://prometheus.example.com", username="ci", password="..."
        ).save("prometheus")
        ```
    """

    _block_type_name = "Slipway Prometheus Server"
    _logo_url = _PROMETHEUS_LOGO  # type: ignore[assignment]
    _documentation_url = _DOCS  # type: ignore[assignment]
    # A rejected config (a dict, or a block document read back) may hold a raw secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str = Field(
        description=(
            "Base URL of the server's HTTP API, http:// or https://, without credentials; "
            "a path prefix is kept (e.g. https://example.com/prometheus). No default."
        )
    )
    bearer_token: SecretStr | None = Field(
        default=None,
        description="Token sent as 'Authorization: Bearer <token>'. Default: none.",
    )
    username: str | None = Field(
        default=None,
        description="User for basic auth, together with password. Default: none.",
    )
    password: SecretStr | None = Field(
        default=None,
        description="Password for basic auth, together with username. Default: none.",
    )
    verify_tls: bool = Field(
        default=True,
        description="Check the server's TLS certificate (https only). Default: true.",
    )
    timeout_seconds: float = Field(
        default=10,
        gt=0,
        le=300,
        description="Seconds one API request may take before it is given up. Default: 10.",
    )

    @field_validator("url")
    @classmethod
    def _http_url_without_credentials(cls, value: str) -> str:
        return check_server_url(value, credentials_hint="use username/password instead")

    @field_validator("bearer_token", "password")
    @classmethod
    def _secret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (leave it unset for none)")
        return value

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> PrometheusServer:
        if (self.username is None) != (self.password is None):
            raise ValueError("basic auth needs both username and password")
        if self.bearer_token is not None and self.username is not None:
            raise ValueError("give a bearer_token or username/password, not both")
        return self

    def get_client(self) -> httpx.Client:
        """An httpx client for the API: base URL, credentials, TLS and timeout from the block.

        Request paths are relative to ``url`` (``/api/v1/query`` keeps a path prefix).
        The caller closes the client (it is a context manager).
        """
        auth: httpx.Auth | None = None
        headers = {"Accept": "application/json"}
        if self.username is not None and self.password is not None:
            auth = httpx.BasicAuth(self.username, self.password.get_secret_value())
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token.get_secret_value()}"
        return httpx.Client(
            base_url=self.url,
            auth=auth,
            headers=headers,
            verify=self.verify_tls,
            timeout=self.timeout_seconds,
            follow_redirects=False,  # a redirect elsewhere would carry the credentials
        )

    def secret_values(self) -> list[str]:
        """The secrets and their header forms, for ``Redactor.add``."""
        values: list[str] = []
        if self.bearer_token is not None:
            values.append(self.bearer_token.get_secret_value())
        if self.username is not None and self.password is not None:
            password = self.password.get_secret_value()
            basic = base64.b64encode(f"{self.username}:{password}".encode()).decode()
            values += [password, basic]
        return values
