"""Delivery history and replay.

Replay gives a delivery a fresh retry budget (``failures = 0``, due now, no lease) while
keeping its history: ``attempts`` keeps counting and every ``delivery_attempts`` row stays.
It wakes running relays with ``pg_notify('relay_deliveries', '')`` in the same transaction, so
the notification is only sent if the replay commits.

Tenant scope: each operation takes a keyword-only ``tenant`` (see
:mod:`relay.admin.subscriptions`): a tenant sees the deliveries of its own subscriptions that
carry its own events, and any other delivery is :class:`NotFound` exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from relay.admin.db import Conn, db_errors, execute, fetch_all, fetch_one
from relay.errors import Conflict, NotFound, ValidationError

STATUSES = ("pending", "delivered", "dead")
DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000
RESPONSE_BODY_LIMIT = 500  # characters of a response body shown by `delivery show`


def list_deliveries(
    conn: Conn,
    *,
    status: str | None = None,
    subscription_id: int | None = None,
    event_type: str | None = None,
    limit: int = DEFAULT_LIMIT,
    tenant: str | None = None,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Deliveries matching every given filter, newest first, at most ``limit``.

    ``tenant`` limits them to that tenant's; ``before`` (an id) starts a keyset page.
    """
    if status is not None and status not in STATUSES:
        raise ValidationError("status", f"must be one of {', '.join(STATUSES)}, got {status!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError("limit", f"must be between 1 and {MAX_LIMIT}, got {limit}")
    params = {
        "status": status,
        "subscription_id": subscription_id,
        "event_type": event_type,
        "limit": limit,
        "tenant": tenant,
        "before": before,
    }
    query = "admin_delivery_list" if tenant is None else "admin_delivery_list_tenant"
    with db_errors():
        return fetch_all(conn, query, params)


def get_delivery(conn: Conn, delivery_id: int, *, tenant: str | None = None) -> dict[str, Any]:
    """One delivery with its event and its whole attempt history (``attempt_history``).

    :class:`NotFound` if it does not exist or, with ``tenant``, is not that tenant's, and
    when its event (outbox row) was deleted outside relay: the message says so.

    Response bodies are cut to :data:`RESPONSE_BODY_LIMIT` characters
    (``response_truncated`` says when).
    """
    with db_errors():
        row = fetch_one(conn, "admin_delivery_get", {"id": delivery_id, "tenant": tenant})
        if row is None:
            raise NotFound(f"delivery {delivery_id} not found")
        if row.pop("event_gone"):
            # No foreign key keeps the outbox row (migration 0011): the application or an
            # operator deleted it. The delivery still shows in `relay delivery list`.
            raise NotFound(
                f"delivery {delivery_id}: its event (outbox row {row['outbox_id']}) was deleted"
                " outside relay"
            )
        row["attempt_history"] = fetch_all(
            conn, "admin_delivery_attempts", {"id": delivery_id, "body_limit": RESPONSE_BODY_LIMIT}
        )
    return row


def replay(conn: Conn, delivery_ids: Iterable[int], *, tenant: str | None = None) -> int:
    """Replay the given deliveries (any status); return how many.

    All or nothing: an unknown id (or, with ``tenant``, another tenant's) raises
    :class:`NotFound` naming every such id, a delivery of a removed subscription raises
    :class:`ValidationError`, and one in flight (leased, its request may be under way) raises
    :class:`Conflict` rather than send it twice; nothing is replayed.
    """
    ids = sorted(set(delivery_ids))
    if not ids:
        raise ValidationError("id", "give at least one delivery id")
    with db_errors(), conn.transaction():
        # FOR UPDATE: a concurrent `subscription remove` cannot slip in between check and write.
        owners = fetch_all(conn, "admin_delivery_owners", {"ids": ids, "tenant": tenant})
        missing = sorted(set(ids) - {row["id"] for row in owners})
        if missing:
            noun = "delivery" if len(missing) == 1 else "deliveries"
            raise NotFound(f"{noun} not found: {', '.join(map(str, missing))}")
        removed = sorted(row["id"] for row in owners if row["subscription_removed"])
        if removed:
            raise ValidationError(
                "id",
                "cannot replay deliveries of removed subscriptions: "
                + ", ".join(map(str, removed)),
            )
        in_flight = [row for row in owners if row["in_flight"]]
        if in_flight:
            # Clearing a running attempt's lease would send it twice (DESIGN: refuse).
            raise Conflict(
                "cannot replay deliveries in flight (an attempt may be running; replay once "
                "it ends): "
                + ", ".join(
                    f"{row['id']} (relay {row['lease_owner']}, lease until "
                    f"{row['lease_until']:%Y-%m-%d %H:%M:%S%z})"
                    for row in in_flight
                )
            )
        foreign = sorted(row["id"] for row in owners if row["foreign_tenant"])
        if foreign:
            raise ValidationError(
                "id",
                "cannot replay deliveries of events of another tenant than their "
                "subscription's (its tenant changed): " + ", ".join(map(str, foreign)),
            )
        count = execute(conn, "admin_replay_ids", {"ids": ids})
        # ordered subscriptions: later deliveries of a replayed one's aggregate wait for it
        subscriptions = sorted({int(row["subscription_id"]) for row in owners})
        execute(conn, "admin_ordered_park", {"ids": subscriptions})
        execute(conn, "admin_notify_deliveries")
    return count


def replay_dead(
    conn: Conn,
    *,
    subscription_id: int | None = None,
    since: datetime | None = None,
    tenant: str | None = None,
) -> int:
    """Replay every dead delivery (of one subscription / dead since ``since``); return how many.

    Deliveries of removed subscriptions are left dead: their endpoint was retired on purpose.
    """
    with db_errors(), conn.transaction():
        if subscription_id is not None:
            exists = fetch_one(
                conn, "admin_subscription_get", {"id": subscription_id, "tenant": tenant}
            )
            if exists is None:
                raise NotFound(f"subscription {subscription_id} not found")
        count = execute(
            conn,
            "admin_replay_dead",
            {"subscription_id": subscription_id, "since": since, "tenant": tenant},
        )
        if count:
            ids = None if subscription_id is None else [subscription_id]
            execute(conn, "admin_ordered_park", {"ids": ids})
            execute(conn, "admin_notify_deliveries")
    return count
