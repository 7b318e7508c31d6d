"""example-app: the small web service that slipway's example pipeline ships.

It answers a JSON greeting on ``/``, liveness and readiness on ``/healthz`` and
``/readyz``, and Prometheus metrics on ``/metrics``. ``ERROR_RATE`` makes a
share of ``/`` requests fail, to simulate a bad release that an automatic
rollback must catch. Run it with ``python -m example_app``.
"""

from example_app.app import App, AppServer, Response, make_server
from example_app.config import AppConfig, ConfigError

__all__ = ["App", "AppConfig", "AppServer", "ConfigError", "Response", "make_server"]
