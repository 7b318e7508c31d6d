"""Masking of secret values before text reaches a log, an artifact or a message.

Secrets are unwrapped late (a block's ``get_client`` or the moment a subprocess is
started), but command output, git errors and HTTP errors can echo them back. Every
piece of text that leaves the process passes through one :class:`Redactor` holding
the values of the secrets the run may touch: the pipeline registers every secret of
every block its file names as soon as the file is loaded (:func:`block_secret_values`),
before the first stage starts.

A value is masked as written and in the encodings a program prints without trying to
hide anything: percent-encoded, hex (lower and upper case), base64 (standard and
URL-safe alphabets, with and without padding) and base64 *inside a longer encoded
blob* (``user:token`` in a basic-auth header, a secret in a base64'd JSON file): for
each of the three byte offsets a value can start at, the characters that depend on
the value alone. What masking cannot catch (a value split over lines or chunks,
reversed, encrypted, compressed, or printed a few characters at a time) is listed in
the README's trust model: masking is a guard against accidents, not against a stage
that wants to leak.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, SecretBytes, SecretStr

MASK = "***"
MIN_SECRET_LENGTH = 4
# An encoded form shorter than this is not masked: a 6-character base64 fragment
# matches ordinary words and identifiers too often to be worth shredding text for.
MIN_ENCODED_LENGTH = 8

# userinfo in URLs (https://user:token@host) is masked even when the value is unknown.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+(?::[^/@\s]*)?@")

# Keys whose values are credentials inside plain dicts a block holds (a kubeconfig's
# users[].user, a JSON key file): pydantic only knows SecretStr fields as secret.
SECRET_KEYS = frozenset(
    {
        "token",
        "password",
        "client-key-data",
        "client_secret",
        "client-secret",
        "private_key",
        "private-key",
        "api_key",
        "api-key",
        "secret",
        "access_token",
        "refresh_token",
        "id-token",
        "refresh-token",
    }
)


def _base64_forms(raw: bytes) -> Iterator[str]:
    """base64 of ``raw`` on its own and the part that is stable inside a longer blob."""
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        yield whole
        yield whole.rstrip("=")
        for offset in range(3):
            # ``offset`` bytes before the value: the first characters mix its bits with
            # the prefix's, the last ones with the suffix's; the middle is the value's own
            encoded = encode(b"\0" * offset + raw).decode().rstrip("=")
            first = -(-8 * offset // 6)  # ceil: characters touched by the prefix
            last = (8 * (offset + len(raw))) // 6  # characters made of whole value bits
            yield encoded[first:last]


def encoded_forms(value: str) -> set[str]:
    """``value`` and the encodings of it a program commonly prints (see the module doc)."""
    raw = value.encode()
    forms = {
        quote(value, safe=""),
        quote(value, safe="/"),
        raw.hex(),
        raw.hex().upper(),
        *_base64_forms(raw),
    }
    return {value} | {f for f in forms if len(f) >= MIN_ENCODED_LENGTH}


class Redactor:
    """Replaces every known secret value (in its common encodings) and URL credentials
    with ``***``.

    Short values (< 4 characters) are ignored: masking them would shred ordinary text
    and they are not credentials anyone should use.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._values: list[str] = []  # longest first, rebuilt on add
        self._lock = threading.Lock()  # stages and notifications redact from other threads
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        new: set[str] = set()
        for value in secrets:
            if value and len(value) >= MIN_SECRET_LENGTH:
                new |= encoded_forms(value)
        with self._lock:
            if not new <= self._secrets:
                self._secrets |= new
                self._values = sorted(self._secrets, key=len, reverse=True)

    def redact(self, text: str) -> str:
        with self._lock:
            values = self._values
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)

    def __contains__(self, text: str) -> bool:
        """True when ``text`` still holds a known secret (used by tests and guards)."""
        with self._lock:
            values = self._values
        return any(value in text for value in values)


def _walk(value: Any, key: str | None) -> Iterator[str]:  # noqa: ANN401  (any field value)
    if isinstance(value, SecretStr | SecretBytes):
        secret = value.get_secret_value()
        yield secret.decode(errors="replace") if isinstance(secret, bytes) else secret
    elif hasattr(value, "get_secret_value"):  # prefect's SecretDict and other pydantic Secrets
        yield from _all_leaves(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name, None), name)
        if callable(getattr(value, "secret_values", None)):
            yield from value.secret_values()  # derived forms a block knows (a basic header)
    elif isinstance(value, Mapping):
        for child_key, child in value.items():
            if isinstance(child_key, str) and child_key.lower() in SECRET_KEYS:
                yield from _all_leaves(child)
            else:
                yield from _walk(child, str(child_key))
    elif isinstance(value, list | tuple):
        for child in value:
            yield from _walk(child, key)


def _all_leaves(value: Any) -> Iterator[str]:  # noqa: ANN401
    if isinstance(value, Mapping):
        for child in value.values():
            yield from _all_leaves(child)
    elif isinstance(value, list | tuple):
        for child in value:
            yield from _all_leaves(child)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield str(value)
    elif value is not None:
        yield from _walk(value, None)


def block_secret_values(block: BaseModel) -> list[str]:
    """Every secret a block (or any pydantic model) holds, nested blocks included:
    ``SecretStr``/``SecretBytes``/``SecretDict`` fields, values under credential keys
    (:data:`SECRET_KEYS`) of plain dicts such as a kubeconfig, and whatever the
    block's own ``secret_values()`` derives (e.g. a basic-auth header)."""
    return sorted({v for v in _walk(block, None) if v and len(v) >= MIN_SECRET_LENGTH})
