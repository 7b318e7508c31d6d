"""Command-line entry point: ``python -m example_app`` (or the zipapp).

Reads the configuration from the environment (see :mod:`example_app.config`),
serves until SIGTERM or SIGINT, then shuts down gracefully: ``/readyz`` turns
503, the listener stops accepting, requests in flight finish, and the process
exits 0.

Exit codes: 0 after a clean shutdown, 2 for invalid configuration, 1 when the
address cannot be bound.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from types import FrameType

from example_app.app import make_server
from example_app.config import AppConfig, ConfigError

logger = logging.getLogger("example_app")

EXIT_OK = 0
EXIT_BIND_FAILED = 1
EXIT_BAD_CONFIG = 2

# How often serve_forever() checks for a shutdown request, in seconds: the most
# a SIGTERM waits before the listener stops (the stdlib default is 0.5).
SHUTDOWN_POLL_SECONDS = 0.1


def run(environ: Mapping[str, str]) -> int:
    """Configure, serve until a stop signal arrives, and return the exit code."""
    try:
        config = AppConfig.from_env(environ)
    except ConfigError as exc:
        print(f"example-app: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        server = make_server(
            config.host, config.port, version=config.version, error_rate=config.error_rate
        )
    except OSError as exc:
        print(
            f"example-app: cannot listen on {config.host}:{config.port} (HOST/PORT): {exc}",
            file=sys.stderr,
        )
        return EXIT_BIND_FAILED

    def request_shutdown(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        server.begin_shutdown()

    previous = {
        sig: signal.signal(sig, request_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    logger.info(
        "example-app %s listening on http://%s:%d (error rate %s)",
        config.version,
        config.host,
        server.port,
        float(config.error_rate),
    )
    try:
        server.serve_forever(poll_interval=SHUTDOWN_POLL_SECONDS)
    finally:
        server.server_close()  # waits for requests in flight
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("example-app stopped")
    return EXIT_OK


def main() -> None:
    """Entry point for ``python -m example_app`` and ``example-app.pyz``; exits the process."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(run(os.environ))


if __name__ == "__main__":
    main()
