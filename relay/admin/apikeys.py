"""API keys for ``relay api``: create (shown once), list (never the key), revoke, check.

A key is ``rk_`` followed by 43 URL-safe characters (256 random bits), so it is recognisable
in a leaked file or a secret scanner. Only its SHA-256 is stored: with that much entropy a
plain hash cannot be brute-forced, and a lookup by hash stays one index probe. The hash found
is compared again with :func:`hmac.compare_digest` so no Python comparison leaks timing.

A key with a tenant is scoped to that tenant in every admin operation it reaches (the
``tenant=`` argument of :mod:`relay.admin.subscriptions` and :mod:`relay.admin.deliveries`);
a key without one is an operator key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from relay.admin import validation as v
from relay.admin.db import Conn, db_errors, fetch_all, fetch_one
from relay.errors import NotFound

KEY_PREFIX = "rk_"
MAX_KEY_NAME = 200
# An Authorization header longer than this cannot hold a key: refuse it before hashing.
MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class Principal:
    """Who a request is: an API key's id and its tenant scope (None = operator)."""

    key_id: int
    tenant: str | None


def hash_key(key: str) -> bytes:
    """The stored form of a key: its SHA-256 digest."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def create_api_key(
    conn: Conn, *, tenant: str | None = None, name: str = ""
) -> tuple[str, dict[str, Any]]:
    """Make a new key; return ``(key, row)``. The key is never stored: show it once."""
    if tenant is not None:
        v.validate_tenant(tenant)
    v.validate_text("name", name, MAX_KEY_NAME)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    params = {"name": name, "tenant_id": tenant, "key_hash": hash_key(key)}
    with db_errors(), conn.transaction():
        row = fetch_one(conn, "api_key_insert", params)
    assert row is not None
    return key, row


def list_api_keys(conn: Conn) -> list[dict[str, Any]]:
    """Every key's id, name, tenant_id, created_at, last_used_at, revoked_at (no key, no hash)."""
    with db_errors():
        return fetch_all(conn, "api_key_list")


def revoke_api_key(conn: Conn, key_id: int) -> None:
    """Revoke a key (idempotent): from the next request on it gets 401."""
    with db_errors(), conn.transaction():
        row = fetch_one(conn, "api_key_revoke", {"id": key_id})
    if row is None:
        raise NotFound(f"api key {key_id} not found")


def authenticate(conn: Conn, key: str) -> Principal | None:
    """The principal of a presented key, or None for a wrong, malformed or revoked one."""
    if not key.startswith(KEY_PREFIX) or len(key) > MAX_KEY_LENGTH:
        return None
    digest = hash_key(key)
    with db_errors():
        row = fetch_one(conn, "api_key_authenticate", {"key_hash": digest})
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), digest):
        return None
    if row["revoked"]:
        return None
    return Principal(int(row["id"]), row["tenant_id"])
