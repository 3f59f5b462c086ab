"""Credentials at rest, the operator's side: status, the start-up check and key rotation.

The crypto itself is :mod:`relay.crypto`; these functions walk ``relay.subscriptions`` with
it. None of them returns or logs a credential: only subscription ids and counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from relay import crypto
from relay.admin.db import Conn, db_errors, execute, fetch_all, fetch_one
from relay.errors import ConfigError

# Ids named in an error message at most (the count is always given).
_SHOWN_IDS = 10


def credentials_status(conn: Conn, keyring: crypto.Keyring | None) -> dict[str, Any]:
    """What ``relay status`` reports: whether this process has a key, and how many
    subscriptions hold encrypted and plain-text credentials."""
    with db_errors():
        row = fetch_one(conn, "credentials_counts")
    assert row is not None
    return {
        "encryption_key": keyring is not None,
        "keys": 0 if keyring is None else keyring.size,
        "subscriptions_encrypted": int(row["subscriptions_encrypted"]),
        "subscriptions_plaintext": int(row["subscriptions_plaintext"]),
    }


def _values(row: dict[str, Any]) -> list[str]:
    values = [str(v) for v in row["headers"].values()]
    values += [row[k] for k in ("secret", "previous_secret") if row[k] is not None]
    return values


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:_SHOWN_IDS])
    more = f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else ""
    return f"{shown}{more}"


def unreadable_subscriptions(conn: Conn, keyring: crypto.Keyring | None) -> list[int]:
    """Ids of active subscriptions whose stored credentials ``keyring`` cannot decrypt."""
    bad: list[int] = []
    with db_errors():
        rows = fetch_all(conn, "credentials_active")
    for row in rows:
        try:
            for value in _values(row):
                crypto.open_value(value, keyring)
        except crypto.CredentialsError:
            bad.append(int(row["id"]))
    return bad


def check_readable(conn: Conn, keyring: crypto.Keyring | None) -> None:
    """Raise :class:`ConfigError` naming ``RELAY_ENCRYPTION_KEY`` when an active
    subscription's credentials cannot be decrypted with ``keyring``."""
    bad = unreadable_subscriptions(conn, keyring)
    if not bad:
        return
    if keyring is None:
        why = f"are encrypted but {crypto.ENV} is not set"
    else:
        why = (
            f"cannot be decrypted with {crypto.ENV} ({keyring.size} key(s)): give the key "
            "they were encrypted with (new key first, old ones after it, comma-separated)"
        )
    raise ConfigError(f"the credentials of {len(bad)} subscription(s) ({_ids(bad)}) {why}")


@dataclass
class RotateResult:
    """What ``relay rotate-key`` did, in subscriptions."""

    reencrypted: list[int] = field(default_factory=list)  # older key → current key
    encrypted: list[int] = field(default_factory=list)  # plain text → current key
    current: int = 0  # already encrypted with the current key: untouched


def rotate_key(conn: Conn, keyring: crypto.Keyring | None) -> RotateResult:
    """Encrypt every subscription's credentials with the current (first) key.

    Values encrypted with an older key of ``keyring`` are re-encrypted, plain-text ones
    (written before a key was configured) are encrypted, current ones are left alone. One
    transaction with the rows locked: it all happens, or (a value no key decrypts) nothing.
    """
    if keyring is None:
        raise ConfigError(f"{crypto.ENV} is not set: there is no key to encrypt with")
    result = RotateResult()
    unreadable: list[int] = []
    with db_errors(), conn.transaction():
        for row in fetch_all(conn, "credentials_all"):
            values = _values(row)
            if all(crypto.is_sealed(v) and keyring.is_current(v) for v in values):
                result.current += 1
                continue
            try:
                headers = crypto.open_headers(row["headers"], keyring)
                secret = crypto.open_value(row["secret"], keyring)
                previous = crypto.open_value(row["previous_secret"], keyring)
            except crypto.CredentialsError:
                unreadable.append(int(row["id"]))
                continue
            params = {
                "id": row["id"],
                "headers": Jsonb(crypto.seal_headers(headers, keyring)),
                "secret": crypto.seal_value(secret, keyring),
                "previous_secret": crypto.seal_value(previous, keyring),
            }
            execute(conn, "credentials_store", params)
            sealed_before = any(crypto.is_sealed(v) for v in values)
            (result.reencrypted if sealed_before else result.encrypted).append(int(row["id"]))
        if unreadable:
            # Raised inside the transaction: the rows re-encrypted so far roll back too.
            raise ConfigError(
                f"{crypto.ENV} cannot decrypt the credentials of {len(unreadable)} "
                f"subscription(s) ({_ids(unreadable)}): add the key they were encrypted "
                "with after the new one (comma-separated); nothing was changed"
            )
    return result
