"""The app-facing emit API: write an event into the outbox in the caller's transaction.

Both functions run one ``SELECT relay.emit(...)`` on the connection they are given and never
commit, roll back or open a transaction of their own: the event becomes visible to relay
exactly when (and only if) the app's transaction commits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from relay.errors import EMIT_REFUSALS, EmitError, emit_error

_EMIT_SQL = "SELECT relay.emit(%s, %s, %s, %s, %s)"
# What Postgres says about a bad event surfaces as EmitError (relay.errors.EMIT_REFUSALS).
# The app's transaction is then failed, as for any statement error, so its own write cannot
# commit without its event.


def _params(
    event_type: str,
    payload: Mapping[str, Any],
    aggregate_id: str | None,
    tenant_id: str | None,
    version: str,
) -> tuple[object, ...]:
    if not isinstance(event_type, str) or not event_type:
        raise EmitError("event_type: must be a non-empty string")
    if not isinstance(payload, Mapping):
        raise EmitError(f"payload: must be a dict (a JSON object), got {type(payload).__name__}")
    if not isinstance(version, str) or not version:
        raise EmitError("version: must be a non-empty string")
    try:
        # Serialise here, strictly: NaN/Infinity are not JSON, and an unserialisable or
        # absurdly deep value must be the app's clear EmitError, not a driver exception.
        text = json.dumps(dict(payload), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EmitError(f"payload: cannot be stored as JSON: {exc}") from None
    return (event_type, Jsonb(text, dumps=_as_is), aggregate_id, tenant_id, version)


def _as_is(text: Any) -> str:
    return str(text)


def emit(
    conn: psycopg.Connection[Any],
    event_type: str,
    payload: Mapping[str, Any],
    *,
    aggregate_id: str | None = None,
    tenant_id: str | None = None,
    version: str = "v1",
) -> int:
    """Add an event to the outbox inside ``conn``'s current transaction; return its id.

    Raises :class:`relay.EmitError` for an unknown event type or a payload that is not a JSON
    object. On a database error the caller's transaction is left failed (as psycopg leaves
    it), so the app's own write cannot commit without its event.
    """
    params = _params(event_type, payload, aggregate_id, tenant_id, version)
    try:
        row = conn.execute(_EMIT_SQL, params).fetchone()
    except EMIT_REFUSALS as exc:
        raise emit_error(exc) from exc
    assert row is not None
    return int(row[0])


async def emit_async(
    conn: psycopg.AsyncConnection[Any],
    event_type: str,
    payload: Mapping[str, Any],
    *,
    aggregate_id: str | None = None,
    tenant_id: str | None = None,
    version: str = "v1",
) -> int:
    """The :func:`emit` of an async psycopg connection."""
    params = _params(event_type, payload, aggregate_id, tenant_id, version)
    try:
        cur = await conn.execute(_EMIT_SQL, params)
        row = await cur.fetchone()
    except EMIT_REFUSALS as exc:
        raise emit_error(exc) from exc
    assert row is not None
    return int(row[0])
