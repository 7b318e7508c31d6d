"""Checks on the server URLs that blocks hold (SonarQube, Prometheus, ...)."""

from __future__ import annotations

from urllib.parse import urlsplit


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
