"""Checks on the URLs that blocks and run parameters hold (SonarQube, Prometheus, ...)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# A URL with userinfo (scheme://user[:token]@host...). For run parameters, whose JSON
# schema the Prefect server checks before it creates a run from a deployment: a
# lookahead, since a schema pattern can only say what a value must match.
USERINFO_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*@")
NO_USERINFO_PATTERN = r"^(?![a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*@)"


def check_repository_reference(value: str) -> str:
    """A ``repository`` run parameter: a block name, a path or a URL without credentials.

    Refused before a run exists (the CLI, :func:`slipway.flows.pipeline.run_pipeline`,
    and the server for runs of a deployment, through the parameter's schema): a run's
    parameters are stored and shown in the UI, so a token there would be kept forever.
    The message never repeats the value.
    """
    if USERINFO_RE.match(value):
        raise ValueError(
            "the repository URL carries credentials (user:token@host): save them in an "
            "AppRepository block (username, token) and pass the block's name instead"
        )
    return value


def check_server_url(value: str, *, credentials_hint: str) -> str:
    """An absolute http(s) URL without credentials, query or fragment; no trailing '/'.

    Credentials in a URL end up in logs and error messages, so they are refused with
    a hint naming the block's own secret fields.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("url must be an absolute http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError(f"the URL carries credentials; {credentials_hint}")
    if parts.query or parts.fragment:
        raise ValueError("url must not have a query or a fragment")
    return value.rstrip("/")
