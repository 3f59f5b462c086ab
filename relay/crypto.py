"""Customers' credentials at rest: signing secrets and header values, encrypted with Fernet.

``RELAY_ENCRYPTION_KEY`` holds one or more Fernet keys, comma-separated, newest first
(``MultiFernet``): values are encrypted with the first and decrypted with any. Stored values
are text either way, so no schema change is needed and a reader can tell the two apart:

- ``enc:v1:<Fernet token>``: encrypted (AES-128-CBC + HMAC-SHA256, authenticated);
- anything else: plain text, written before a key was configured or by a relay without one.

Only the processes that need a value decrypt it: the daemon when it loads a subscription for
delivery, and the admin write path (an update merges into the stored headers). Nothing here
logs a value or puts one in an exception message.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from relay.errors import ConfigError, ValidationError

ENV = "RELAY_ENCRYPTION_KEY"
PREFIX = "enc:v1:"
# Plaintexts the daemon keeps by ciphertext (a subscription's values are decrypted once,
# not once per delivery); cleared when full, so memory stays bounded.
CACHE_SIZE = 10_000

__all__ = [
    "ENV",
    "PREFIX",
    "CredentialsError",
    "Keyring",
    "generate_key",
    "is_sealed",
    "load_keyring",
    "open_headers",
    "open_value",
    "seal_headers",
    "seal_value",
]


class CredentialsError(ConfigError):
    """A stored credential cannot be decrypted (no key, or none of the keys fits).

    A configuration problem (the CLI exits 2); the message names ``RELAY_ENCRYPTION_KEY``
    and never the value.
    """


def generate_key() -> str:
    """A new random key for ``RELAY_ENCRYPTION_KEY`` (urlsafe base64 of 32 bytes)."""
    return Fernet.generate_key().decode("ascii")


def is_sealed(value: object) -> bool:
    """Whether a stored value is encrypted (starts with ``enc:v1:``)."""
    return isinstance(value, str) and value.startswith(PREFIX)


class Keyring:
    """The configured keys: encrypt with the first, decrypt with any."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._primary = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])
        self.size = len(keys)
        self._cache: dict[str, str] = {}

    def seal(self, plain: str) -> str:
        """Encrypt ``plain`` with the first key."""
        return PREFIX + self._primary.encrypt(plain.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        """Decrypt an ``enc:v1:`` value with whichever key fits."""
        try:
            return self._cache[sealed]
        except KeyError:
            pass
        try:
            plain = self._all.decrypt(sealed[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise CredentialsError(
                f"{ENV} cannot decrypt a stored credential: none of its "
                f"{self.size} key(s) is the one it was encrypted with"
            ) from None
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[sealed] = plain
        return plain

    def is_current(self, sealed: str) -> bool:
        """Whether an ``enc:v1:`` value is encrypted with the first key already."""
        try:
            self._primary.decrypt(sealed[len(PREFIX) :].encode("ascii"))
        except (InvalidToken, UnicodeError):
            return False
        return True


def parse_keys(raw: str) -> Keyring | None:
    """A :class:`Keyring` from the variable's text; None when it is empty.

    Raises :class:`ConfigError` naming the variable (and which key, by position, never its
    text) for a malformed key.
    """
    parts = [p.strip() for p in raw.split(",")]
    if not any(parts):
        return None
    keys: list[str] = []
    for n, part in enumerate(parts, 1):
        if not part:
            raise ConfigError(f"{ENV}: key {n} of {len(parts)} is empty (stray comma?)")
        try:
            Fernet(part)
        except (ValueError, binascii.Error, TypeError):
            raise ConfigError(
                f"{ENV}: key {n} of {len(parts)} is not a Fernet key (urlsafe base64 of "
                "32 bytes, as printed by `relay encryption-key generate`)"
            ) from None
        keys.append(part)
    return Keyring(keys)


_loaded: dict[str, Keyring | None] = {}


def load_keyring(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The keyring of ``RELAY_ENCRYPTION_KEY`` (None when unset or empty).

    Parsed once per distinct value (the decryption cache lives in the keyring). Raises
    :class:`ConfigError` for a malformed key.
    """
    raw = (os.environ if environ is None else environ).get(ENV, "")
    if raw not in _loaded:
        _loaded.clear()  # one value in use at a time; tests switch it
        _loaded[raw] = parse_keys(raw)
    return _loaded[raw]


def seal_value(value: str | None, keyring: Keyring | None, field: str = "secret") -> str | None:
    """What to store for a credential: encrypted with a keyring, else the plain text.

    Without a keyring a plain value that looks encrypted is refused (a
    :class:`ValidationError` naming ``field``): a later reader would take it for ciphertext.
    """
    if value is None:
        return None
    if keyring is not None:
        return keyring.seal(value)
    if is_sealed(value):
        raise ValidationError(field, f"a value starting with {PREFIX!r} needs {ENV} set")
    return value


def open_value(value: str | None, keyring: Keyring | None) -> str | None:
    """The plain text of a stored credential (plain ones pass through).

    Raises :class:`CredentialsError` for an encrypted value without a fitting key.
    """
    if value is None or not value.startswith(PREFIX):
        return value
    if keyring is None:
        raise CredentialsError(f"a stored credential is encrypted but {ENV} is not set")
    return keyring.open(value)


def seal_headers(headers: Mapping[str, str], keyring: Keyring | None) -> dict[str, str]:
    """Header values sealed (names stay readable: listings show them)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        sealed = seal_value(value, keyring, "header")
        assert sealed is not None
        out[name] = sealed
    return out


def open_headers(headers: Mapping[str, Any], keyring: Keyring | None) -> dict[str, str]:
    """Header values in plain text (see :func:`open_value`)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        opened = open_value(value, keyring)
        assert opened is not None
        out[name] = opened
    return out
