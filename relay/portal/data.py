"""The portal's one door to the data: relay.admin operations, scoped to one tenant.

Every read and write the portal makes goes through here, and every one checks ownership
first: a subscription belongs to the tenant named in its ``tenant_id``, a delivery to the
tenant of its subscription. Anything else (another tenant's id, a removed subscription, an
id that never existed) is the same :class:`NotFound`, so ids leak nothing.

Check and action run in one transaction, and the write functions take the row lock that the
admin operation takes anyway, so an operator moving a subscription to another tenant cannot
slip in between. When relay.admin grows tenant-scoped operations this module switches to them;
the portal's routes do not change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from relay import admin
from relay.admin.db import Conn, db_errors, fetch_all
from relay.admin.validation import MAX_EVENT_NAME
from relay.errors import NotFound, ValidationError

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def _not_found(what: str, ident: int) -> NotFound:
    return NotFound(f"{what} {ident} not found")


def _owned_subscription(conn: Conn, tenant: str, subscription_id: int) -> dict[str, Any]:
    # The tenant rule is the admin layer's (``tenant=``), shared with the HTTP API; a removed
    # subscription is gone for the portal too.
    try:
        row = admin.get_subscription(conn, subscription_id, tenant=tenant)
    except NotFound:
        raise _not_found("subscription", subscription_id) from None
    if row["removed_at"] is not None:
        raise _not_found("subscription", subscription_id)
    return row


def event_types(conn: Conn) -> list[dict[str, Any]]:
    """The catalog (name, object, description), for the subscription form."""
    return admin.list_event_types(conn)


def list_subscriptions(conn: Conn, tenant: str) -> list[dict[str, Any]]:
    """The tenant's live subscriptions (masked), each with its ``health`` figures."""
    rows = admin.list_subscriptions(conn, tenant=tenant)
    with db_errors():
        health = {
            h["id"]: h for h in fetch_all(conn, "portal_subscription_health", {"tenant": tenant})
        }
    for row in rows:
        figures = health.get(row["id"], {})
        total = figures.get("recent_attempts") or 0
        row["health"] = {
            "pending": figures.get("pending", 0),
            "dead": figures.get("dead", 0),
            "recent_attempts": total,
            "success_rate": None if not total else figures["recent_ok"] / total,
            "last_error": figures.get("last_error"),
            "last_error_at": figures.get("last_error_at"),
        }
    return rows


def get_subscription(conn: Conn, tenant: str, subscription_id: int) -> dict[str, Any]:
    """One of the tenant's live subscriptions (masked) with its health; else NotFound."""
    _owned_subscription(conn, tenant, subscription_id)
    for row in list_subscriptions(conn, tenant):
        if row["id"] == subscription_id:
            return row
    raise _not_found("subscription", subscription_id)


def add_subscription(
    conn: Conn, tenant: str, changes: admin.SubscriptionChanges
) -> admin.SubscriptionResult:
    """Create a subscription owned by ``tenant`` (whatever ``changes.tenant_id`` said)."""
    changes.tenant_id = tenant
    changes.clear_tenant = False
    return admin.add_subscription(conn, changes, tenant=tenant)


def update_subscription(
    conn: Conn, tenant: str, subscription_id: int, changes: admin.SubscriptionChanges
) -> admin.SubscriptionResult:
    """Change one of the tenant's subscriptions; the tenant itself cannot be changed here."""
    if changes.tenant_id is not None or changes.clear_tenant:
        raise ValidationError("tenant", "cannot be changed from the portal")
    with conn.transaction():
        _owned_subscription(conn, tenant, subscription_id)
        return admin.update_subscription(conn, subscription_id, changes, tenant=tenant)


def rotate_secret(conn: Conn, tenant: str, subscription_id: int) -> str:
    """A new generated secret (the old one keeps signing for the default overlap); shown once."""
    changes = admin.SubscriptionChanges(secret=admin.GENERATE)
    result = update_subscription(conn, tenant, subscription_id, changes)
    assert result.generated_secret is not None
    return result.generated_secret


def set_enabled(conn: Conn, tenant: str, subscription_id: int, enabled: bool) -> None:
    """Enable or disable one of the tenant's subscriptions."""
    with conn.transaction():
        _owned_subscription(conn, tenant, subscription_id)
        admin.set_enabled(conn, subscription_id, enabled, tenant=tenant)


def remove_subscription(conn: Conn, tenant: str, subscription_id: int) -> int:
    """Remove one of the tenant's subscriptions; returns how many pending deliveries died."""
    with conn.transaction():
        _owned_subscription(conn, tenant, subscription_id)
        return admin.remove_subscription(conn, subscription_id, tenant=tenant)


def list_deliveries(
    conn: Conn,
    tenant: str,
    *,
    status: str | None = None,
    event_type: str | None = None,
    subscription_id: int | None = None,
    since: datetime | None = None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> list[dict[str, Any]]:
    """The tenant's deliveries matching every filter, newest first; ``before`` pages on id."""
    if status is not None and status not in admin.STATUSES:
        raise ValidationError("status", f"must be one of {', '.join(admin.STATUSES)}")
    if event_type is not None and len(event_type) > MAX_EVENT_NAME:
        raise ValidationError("event_type", "too long")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError("limit", f"must be between 1 and {MAX_PAGE_SIZE}")
    params = {
        "tenant": tenant,
        "status": status,
        "event_type": event_type,
        "subscription_id": subscription_id,
        "since": since,
        "before": before,
        "limit": limit,
    }
    with db_errors():
        return fetch_all(conn, "portal_delivery_list", params)


def get_delivery(conn: Conn, tenant: str, delivery_id: int) -> dict[str, Any]:
    """One of the tenant's deliveries with every attempt, and its subscription (masked)."""
    try:
        row = admin.get_delivery(conn, delivery_id, tenant=tenant)
    except NotFound:
        raise _not_found("delivery", delivery_id) from None
    row["subscription"] = admin.get_subscription(conn, row["subscription_id"], tenant=tenant)
    return row


def replay(conn: Conn, tenant: str, delivery_ids: Sequence[int]) -> int:
    """Replay some of the tenant's deliveries (all or nothing)."""
    return admin.replay(conn, delivery_ids, tenant=tenant)


def replay_dead(conn: Conn, tenant: str, subscription_id: int) -> int:
    """Replay every dead delivery of one of the tenant's subscriptions; return how many."""
    with conn.transaction():
        _owned_subscription(conn, tenant, subscription_id)
        return admin.replay_dead(conn, subscription_id=subscription_id, tenant=tenant)


def body_map_text(row: dict[str, Any]) -> str:
    """A subscription's body map as indented JSON for the edit form ('' when none)."""
    body_map = row.get("body_map")
    return "" if body_map is None else json.dumps(body_map, indent=2, ensure_ascii=False)
