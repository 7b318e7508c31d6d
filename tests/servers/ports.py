"""Loopback ports for the test servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on now: to start a server on, or to find closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# the name the stand-ins use where the port stands for "the service is unreachable"
unused_port = free_port
