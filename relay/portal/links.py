"""Portal links and sessions: signed, expiring, revocable; no web framework needed here.

A link is ``<base>/portal/enter?token=<token>`` where the token is
``<link id>.<expiry>.<tenant>.<signature>``: the link id (a UUID, hex), the expiry as Unix
seconds, the tenant id base64url-encoded, and HMAC-SHA256 over the first three with a key kept
in ``relay.portal_keys`` (made on first use). The signature makes the token unforgeable and
tamper-evident without a lookup; the ``relay.portal_links`` row makes it revocable, so the
portal checks both, on entry and on every request of the session that follows (a revoked
link ends its sessions too).

A session (the cookie set on entry) is the same structure with a ``session`` purpose and a
random nonce, so the CSRF token of a session can be derived from it without storing anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from relay.admin import validation as v
from relay.admin.db import Conn, db_errors, execute, fetch_all, fetch_one
from relay.errors import NotFound, RelayError, ValidationError

DEFAULT_TTL = "1h"
MAX_TTL_S = 30 * 86400  # a portal link is a short-lived door, not a standing credential
DEFAULT_API_ADDR = "127.0.0.1:8480"
ENTER_PATH = "/portal/enter"

__all__ = [
    "DEFAULT_TTL",
    "LinkRefused",
    "Session",
    "create_portal_link",
    "csrf_token",
    "list_links",
    "new_session",
    "parse_ttl",
    "revoke_link",
    "revoke_tenant",
    "verify_session",
    "verify_token",
]


class LinkRefused(RelayError):
    """A link or session that must not open the portal; the message says why, for the user."""


@dataclass(frozen=True)
class Session:
    """Who a verified link or session cookie lets in, and until when (Unix seconds)."""

    link_id: uuid.UUID
    tenant: str
    expires: int
    nonce: str = ""


def parse_ttl(ttl: int | str | timedelta) -> int:
    """A link lifetime in whole seconds: ``3600``, ``"90m"``, ``"1h"``, ``"7d"``; 1 s..30 days."""
    if isinstance(ttl, timedelta):
        seconds = int(ttl.total_seconds())
    elif isinstance(ttl, str):
        text = ttl.strip()
        seconds = int(text) if text.isdigit() else v.parse_duration("ttl", text)
    else:
        seconds = ttl
    if not 1 <= seconds <= MAX_TTL_S:
        raise ValidationError("ttl", f"must be between 1s and 30d, got {seconds}s")
    return seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(conn: Conn) -> bytes:
    """The portal's HMAC key, created on first use (concurrent first uses agree on one)."""
    with db_errors():
        row = fetch_one(conn, "portal_key_get")
        if row is None:
            execute(conn, "portal_key_insert", {"key": secrets.token_bytes(32)})
            row = fetch_one(conn, "portal_key_get")
    assert row is not None
    return bytes(row["key"])


def _sign(key: bytes, purpose: str, fields: list[str]) -> str:
    message = "\n".join([purpose, *fields]).encode()
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _encode(key: bytes, purpose: str, fields: list[str]) -> str:
    return ".".join([*fields, _sign(key, purpose, fields)])


def _decode(key: bytes, purpose: str, token: str, n_fields: int) -> list[str]:
    parts = token.split(".")
    if len(parts) != n_fields + 1:
        raise LinkRefused("This link is not valid (it was cut or altered).")
    fields, signature = parts[:-1], parts[-1]
    if not hmac.compare_digest(signature, _sign(key, purpose, fields)):
        raise LinkRefused("This link is not valid (it was altered or signed with another key).")
    return fields


def create_portal_link(
    conn: Conn, tenant: str, ttl: int | str | timedelta = DEFAULT_TTL, base_url: str | None = None
) -> str:
    """Record a new link for ``tenant`` valid for ``ttl`` and return its URL.

    ``base_url`` is where the portal is served (default ``http://`` + ``RELAY_API_ADDR``, else
    ``http://127.0.0.1:8480``). Raises :class:`ValidationError` naming the field for a bad
    tenant, TTL or base URL; nothing is recorded then.
    """
    url, _ = create_portal_link_row(conn, tenant, ttl, base_url)
    return url


def create_portal_link_row(
    conn: Conn, tenant: str, ttl: int | str | timedelta = DEFAULT_TTL, base_url: str | None = None
) -> tuple[str, dict[str, Any]]:
    """:func:`create_portal_link`, also returning the recorded row (id, expires_at)."""
    v.validate_tenant(tenant)
    seconds = parse_ttl(ttl)
    base = default_base_url() if base_url is None else base_url
    try:
        v.validate_url(base)
    except ValidationError as exc:
        raise ValidationError("base_url", exc.message) from None
    key = signing_key(conn)
    with db_errors(), conn.transaction():
        row = fetch_one(conn, "portal_link_insert", {"tenant": tenant, "ttl_s": seconds})
    assert row is not None
    expires = int(row["expires_at"].timestamp())
    token = _encode(key, "link", [row["id"].hex, str(expires), _b64(tenant.encode())])
    return f"{base.rstrip('/')}{ENTER_PATH}?token={token}", row


def default_base_url(environ: Mapping[str, str] | None = None) -> str:
    """``http://`` + ``RELAY_API_ADDR`` (the HTTP API that serves the portal)."""
    env = os.environ if environ is None else environ
    return "http://" + (env.get("RELAY_API_ADDR") or DEFAULT_API_ADDR)


def _check_row(conn: Conn, link_id: uuid.UUID, tenant: str) -> None:
    with db_errors():
        row = fetch_one(conn, "portal_link_get", {"id": link_id})
    if row is None or row["tenant_id"] != tenant:
        raise LinkRefused("This link is not valid.")
    if row["revoked_at"] is not None:
        raise LinkRefused("This link has been revoked. Ask for a new one.")
    if row["expired"]:
        raise LinkRefused("This link has expired. Ask for a new one.")


def _session_of(fields: list[str], now: float | None) -> Session:
    try:
        link_id = uuid.UUID(hex=fields[0])
        expires = int(fields[1])
        tenant = _unb64(fields[2]).decode()
    except (ValueError, UnicodeDecodeError):
        raise LinkRefused("This link is not valid.") from None
    if expires <= (time.time() if now is None else now):
        raise LinkRefused("This link has expired. Ask for a new one.")
    nonce = fields[3] if len(fields) > 3 else ""
    return Session(link_id, tenant, expires, nonce)


def verify_token(conn: Conn, token: str, now: float | None = None) -> Session:
    """The session a link token opens; :class:`LinkRefused` if altered, expired or revoked."""
    key = signing_key(conn)
    session = _session_of(_decode(key, "link", token, 3), now)
    _check_row(conn, session.link_id, session.tenant)
    return session


def new_session(conn: Conn, link: Session) -> str:
    """The session cookie value for a verified link: same tenant and expiry, a fresh nonce."""
    key = signing_key(conn)
    fields = [link.link_id.hex, str(link.expires), _b64(link.tenant.encode())]
    fields.append(_b64(secrets.token_bytes(16)))
    return _encode(key, "session", fields)


def verify_session(conn: Conn, cookie: str, now: float | None = None) -> Session:
    """The session of a cookie, re-checking its link (a revoked link ends its sessions)."""
    key = signing_key(conn)
    session = _session_of(_decode(key, "session", cookie, 4), now)
    _check_row(conn, session.link_id, session.tenant)
    return session


def csrf_token(key: bytes, session: Session) -> str:
    """The CSRF token of a session: derived from its nonce, so nothing is stored."""
    return _sign(key, "csrf", [session.link_id.hex, session.nonce])


def revoke_link(conn: Conn, link_id: str) -> None:
    """Revoke one link (and the sessions it opened); :class:`NotFound` if unknown or revoked."""
    try:
        parsed = uuid.UUID(link_id.strip())
    except ValueError:
        raise ValidationError("id", f"not a link id (a UUID): {link_id!r}") from None
    with db_errors(), conn.transaction():
        row = fetch_one(conn, "portal_link_revoke", {"id": parsed})
    if row is None:
        raise NotFound(f"portal link {parsed} not found or already revoked")


def revoke_tenant(conn: Conn, tenant: str) -> int:
    """Revoke every live link of a tenant; return how many."""
    v.validate_tenant(tenant)
    with db_errors(), conn.transaction():
        return execute(conn, "portal_link_revoke_tenant", {"tenant": tenant})


def list_links(conn: Conn, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Links handed out (newest first) with their state: active, expired or revoked."""
    if tenant is not None:
        v.validate_tenant(tenant)
    with db_errors():
        return fetch_all(conn, "portal_link_list", {"tenant": tenant, "limit": limit})


def expires_at(session: Session) -> datetime:
    """A session's expiry as an aware datetime."""
    return datetime.fromtimestamp(session.expires).astimezone()
