"""Start-up configuration read from environment variables.

Every variable has a default; a variable that is set must be valid. An unset
variable takes its default, a set-but-invalid one (including an empty string)
raises :class:`ConfigError`, whose message names the variable and the bad value,
so a misconfigured container dies at start-up instead of serving wrong answers.

Variables (unset -> default):

- ``HOST`` (default ``0.0.0.0``): address to listen on.
- ``PORT`` (default ``8080``): TCP port, 0-65535; 0 lets the OS pick a free one.
- ``APP_VERSION`` (default ``dev``): version reported by the endpoints and metrics.
- ``ERROR_RATE`` (default ``0``): share of ``/`` requests answered with HTTP 500,
  a number from 0 to 1 (see :mod:`example_app.error_injection`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8080
DEFAULT_VERSION = "dev"
DEFAULT_ERROR_RATE = Fraction(0)

_PORT_PATTERN = re.compile(r"[0-9]{1,5}")


class ConfigError(ValueError):
    """An environment variable holds a value the app cannot use.

    Attributes:
        variable: Name of the offending environment variable, e.g. ``"PORT"``.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable} {message}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class AppConfig:
    """Validated settings for one server process.

    Attributes:
        host: Address to listen on. Default ``"0.0.0.0"``.
        port: TCP port, 0-65535. Default 8080; 0 means "any free port".
        version: Reported by ``/``, ``/healthz``, ``/readyz`` and the
            ``example_app_build_info`` metric. Default ``"dev"``.
        error_rate: Exact share (0 to 1) of ``/`` requests that answer 500.
            Default 0. Kept as a :class:`~fractions.Fraction` so "0.1" means
            exactly one request in ten, not 0.1000000000000000055...
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    version: str = DEFAULT_VERSION
    error_rate: Fraction = DEFAULT_ERROR_RATE

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AppConfig:
        """Read the settings from ``environ`` (usually ``os.environ``).

        Raises:
            ConfigError: A variable is set to a value that is not allowed.

        Example:
            >>> AppConfig.from_env({"PORT": "9000", "ERROR_RATE": "0.25"}).port
            9000
        """
        return cls(
            host=_parse_host(environ.get("HOST")),
            port=_parse_port(environ.get("PORT")),
            version=_parse_version(environ.get("APP_VERSION")),
            error_rate=_parse_error_rate(environ.get("ERROR_RATE")),
        )


def _parse_host(raw: str | None) -> str:
    if raw is None:
        return DEFAULT_HOST
    host = raw.strip()
    if not host:
        raise ConfigError("HOST", "must be a host name or IP address, got an empty value")
    return host


def _parse_port(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PORT
    text = raw.strip()
    # A regex rather than int(): int() also takes "8_080", "+80" and non-ASCII digits.
    if not _PORT_PATTERN.fullmatch(text) or int(text) > 65535:
        raise ConfigError("PORT", f"must be an integer from 0 to 65535, got {raw!r}")
    return int(text)


def _parse_version(raw: str | None) -> str:
    if raw is None:
        return DEFAULT_VERSION
    version = raw.strip()
    if not version:
        raise ConfigError("APP_VERSION", "must not be empty")
    return version


def _parse_error_rate(raw: str | None) -> Fraction:
    if raw is None:
        return DEFAULT_ERROR_RATE
    try:
        # Fraction parses decimal text exactly ("0.1" == 1/10) and refuses nan/inf.
        rate = Fraction(raw.strip())
    except (ValueError, ZeroDivisionError):
        rate = None
    if rate is None or not 0 <= rate <= 1:
        raise ConfigError("ERROR_RATE", f"must be a number from 0 to 1, got {raw!r}")
    return rate
