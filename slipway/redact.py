"""Masking of secret values before text reaches a log, an artifact or a message.

Secrets are unwrapped late (a block's ``get_client`` or the moment a subprocess is
started), but command output, git errors and HTTP errors can echo them back. Every
piece of text that leaves the process passes through one :class:`Redactor` holding
the values of the secrets the run has touched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

MASK = "***"

# userinfo in URLs (https://user:token@host) is masked even when the value is unknown.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+(?::[^/@\s]*)?@")


class Redactor:
    """Replaces every known secret value (and URL credentials) with ``***``.

    Short values (< 4 characters) are ignored: masking them would shred ordinary text
    and they are not credentials anyone should use.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()  # stages and notifications redact from other threads
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        for value in secrets:
            if value and len(value) >= 4:
                with self._lock:
                    self._secrets.add(value)
                    # the same secret percent-encoded, as it appears inside a URL
                    self._secrets.add(quote(value, safe=""))

    def redact(self, text: str) -> str:
        with self._lock:
            values = sorted(self._secrets, key=len, reverse=True)
        for value in values:
            text = text.replace(value, MASK)
        return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)

    def __contains__(self, text: str) -> bool:
        """True when ``text`` still holds a known secret (used by tests and guards)."""
        with self._lock:
            values = list(self._secrets)
        return any(value in text for value in values)
