"""Operator operations as plain functions over a psycopg connection.

The ``relay`` CLI is a thin shell over these; tests and scripts can call them directly.
Writes run in ``conn.transaction()``: on an autocommit connection each call commits on its
own; inside a caller's transaction it becomes a savepoint and the caller decides.

Subscriptions live in :mod:`relay.admin.subscriptions`, deliveries and replay in
:mod:`relay.admin.deliveries`, API keys in :mod:`relay.admin.apikeys`; everything is
re-exported here. The subscription and delivery operations take a keyword-only ``tenant``
scope (None = everything): the CLI, the HTTP API and the portal share that one rule. This
module holds status, the event-type catalog and ``emit``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from relay import crypto, outbox
from relay.admin import validation as v
from relay.admin.apikeys import (
    Principal,
    authenticate,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from relay.admin.credentials import credentials_status, rotate_key
from relay.admin.db import Conn, db_errors, fetch_all, fetch_one
from relay.admin.deliveries import (
    DEFAULT_LIMIT,
    STATUSES,
    get_delivery,
    list_deliveries,
    replay,
    replay_dead,
)
from relay.admin.subscriptions import (
    GENERATE,
    SubscriptionChanges,
    SubscriptionResult,
    add_subscription,
    get_subscription,
    list_subscriptions,
    remove_subscription,
    set_enabled,
    update_subscription,
)
from relay.errors import ValidationError
from relay.sql import EXACT_COUNT_BELOW

__all__ = [
    "DEFAULT_LIMIT",
    "GENERATE",
    "STATUSES",
    "Principal",
    "SubscriptionChanges",
    "SubscriptionResult",
    "add_event_type",
    "add_subscription",
    "authenticate",
    "create_api_key",
    "emit",
    "get_delivery",
    "get_subscription",
    "list_api_keys",
    "list_deliveries",
    "list_event_types",
    "list_subscriptions",
    "remove_subscription",
    "replay",
    "replay_dead",
    "revoke_api_key",
    "rotate_key",
    "set_enabled",
    "status",
    "update_subscription",
]

MAX_OBJECT = 100
MAX_DESCRIPTION = 1000


def status(conn: Conn) -> dict[str, Any]:
    """Backlog, pending/due/dead/delivered counts, oldest ages and the relays seen lately.

    ``oldest_pending_age_seconds`` is the larger of the oldest undispatched outbox row's age
    and how long the most overdue due delivery has waited (0 when nothing waits).
    ``credentials`` says whether this process has ``RELAY_ENCRYPTION_KEY`` and how many
    subscriptions hold encrypted or plain-text credentials.
    """
    keyring = crypto.load_keyring()
    with db_errors(), conn.transaction():
        # SET LOCAL: for this statement only, also behind a transaction pooler (see the query)
        conn.execute("SET LOCAL jit = off")
        row = fetch_one(conn, "admin_status", {"exact_below": EXACT_COUNT_BELOW})
        relays = fetch_all(conn, "admin_status_relays")
    assert row is not None
    out: dict[str, Any] = {k: (0 if row[k] is None else row[k]) for k in row}
    out["oldest_pending_age_seconds"] = max(
        out["oldest_undispatched_age_seconds"], out["oldest_due_age_seconds"]
    )
    out["relays"] = relays
    out["credentials"] = credentials_status(conn, keyring)
    return out


def list_event_types(conn: Conn) -> list[dict[str, Any]]:
    """The event-type catalog, by name (each row has ``id`` = ``name``)."""
    with db_errors():
        return fetch_all(conn, "admin_event_type_list")


def add_event_type(conn: Conn, name: str, object_: str = "", description: str = "") -> str:
    """Register an event type; raises :class:`ValidationError` if invalid or already there."""
    v.validate_event_type_name(name)
    v.validate_text("object", object_, MAX_OBJECT)
    v.validate_text("description", description, MAX_DESCRIPTION)
    params = {"name": name, "object": object_, "description": description}
    with db_errors(), conn.transaction():
        created = fetch_one(conn, "admin_event_type_insert", params)
    if created is None:
        raise ValidationError("name", f"event type {name!r} already exists")
    return name


def emit(
    conn: Conn,
    event_type: str,
    payload: Mapping[str, Any] | str,
    *,
    aggregate_id: str | None = None,
    tenant_id: str | None = None,
    version: str = "v1",
) -> int:
    """Write one event to the outbox in its own transaction (``relay emit``); return its id.

    ``payload`` may be JSON text (parsed here: :class:`ValidationError` if it is not a JSON
    object). The event itself is checked once, by :func:`relay.outbox.emit` and the
    database, as for an app: :class:`relay.EmitError` for an unknown event type or a bad
    payload or version.
    """
    if isinstance(payload, str):
        payload = _parse_payload(payload)
    if tenant_id is not None:
        v.validate_tenant(tenant_id)
    with db_errors(), conn.transaction():
        return outbox.emit(
            conn,
            event_type,
            payload,
            aggregate_id=aggregate_id,
            tenant_id=tenant_id,
            version=version,
        )


def _parse_payload(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError("payload", f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationError("payload", f"must be a JSON object, got {type(value).__name__}")
    return value
