"""How the CLI prints operator data: JSON for scripts, aligned tables for people.

Rows arrive already masked (see :func:`relay.admin_subscriptions.masked`); this module only
lays them out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

Column = tuple[str, Callable[[Mapping[str, Any]], Any]]
_MAX_CELL = 60


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def to_json(value: Any) -> str:
    """``value`` as indented JSON; timestamps as ISO 8601, UUIDs as text."""
    return json.dumps(value, default=_json_default, indent=2, ensure_ascii=False)


def cell(value: Any, max_width: int = _MAX_CELL) -> str:
    """One table cell: ``-`` for none, ISO seconds for times, JSON for containers."""
    if value is None:
        text = "-"
    elif isinstance(value, datetime):
        text = value.isoformat(timespec="seconds")
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.1f}"
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=_json_default, ensure_ascii=False) if value else "-"
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Rows as a left-aligned text table with a header line."""
    grid = [[header for header, _ in columns]]
    grid += [[cell(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in grid
    )


def fields(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``key: value`` lines, for ``show`` commands."""
    width = max(len(k) for k in keys)
    return "\n".join(f"{k.ljust(width)}  {cell(row.get(k), 400)}" for k in keys)


SUBSCRIPTION_COLUMNS: list[Column] = [
    ("ID", lambda r: r["id"]),
    ("ENABLED", lambda r: "removed" if r["removed_at"] else r["enabled"]),
    ("METHOD", lambda r: r["method"]),
    ("ORDERED", lambda r: "yes" if r["ordered"] else "no"),
    ("URL", lambda r: r["url"]),
    ("EVENTS", lambda r: ",".join(r["events"]) or "*"),
    ("TENANT", lambda r: r["tenant_id"]),
    ("SECRET", lambda r: r["secret"]),
    ("HEADERS", lambda r: ",".join(r["headers"]) or None),
]

SUBSCRIPTION_FIELDS = [
    "id",
    "url",
    "method",
    "enabled",
    "removed_at",
    "events",
    "event_names",
    "headers",
    "body_map",
    "secret",
    "tenant_id",
    "max_retries",
    "backoff_ms",
    "timeout_ms",
    "ordered",
    "created_at",
    "updated_at",
]

DELIVERY_COLUMNS: list[Column] = [
    ("ID", lambda r: r["id"]),
    ("STATUS", lambda r: r["status"]),
    ("SUBSCRIPTION", lambda r: r["subscription_id"]),
    ("EVENT TYPE", lambda r: r["event_type"]),
    ("OUTBOX", lambda r: r["outbox_id"]),
    ("ATTEMPTS", lambda r: r["attempts"]),
    ("NEXT/DONE", lambda r: r["delivered_at"] or r["dead_at"] or r["next_attempt_at"]),
    ("LAST ERROR", lambda r: r["last_error"] or r["last_status_code"]),
]

DELIVERY_FIELDS = [
    "id",
    "status",
    "subscription_id",
    "event_type",
    "tenant_id",
    "outbox_id",
    "event_id",
    "aggregate_id",
    "version",
    "event_created_at",
    "attempts",
    "failures",
    "next_attempt_at",
    "lease_owner",
    "last_status_code",
    "last_error",
    "created_at",
    "updated_at",
    "delivered_at",
    "dead_at",
    "payload",
]

ATTEMPT_COLUMNS: list[Column] = [
    ("ATTEMPT", lambda r: r["attempt"]),
    ("STARTED", lambda r: r["started_at"]),
    ("RESULT", lambda r: r["status_code"] if r["status_code"] is not None else r["error"]),
    ("MS", lambda r: r["duration_ms"]),
    ("RELAY", lambda r: r["relay_id"]),
    ("RESPONSE", lambda r: r["response_body"]),
]

EVENT_TYPE_COLUMNS: list[Column] = [
    ("NAME", lambda r: r["name"]),
    ("OBJECT", lambda r: r["object"]),
    ("DESCRIPTION", lambda r: r["description"]),
]

PORTAL_LINK_COLUMNS: list[Column] = [
    ("ID", lambda r: r["id"]),
    ("TENANT", lambda r: r["tenant_id"]),
    ("STATE", lambda r: r["state"]),
    ("EXPIRES", lambda r: r["expires_at"]),
    ("CREATED", lambda r: r["created_at"]),
]

RELAY_COLUMNS: list[Column] = [
    ("RELAY", lambda r: r["relay_id"]),
    ("HOST", lambda r: r["hostname"]),
    ("PID", lambda r: r["pid"]),
    ("VERSION", lambda r: r["version"]),
    ("LAST SEEN", lambda r: r["last_seen"]),
]


API_KEY_COLUMNS: list[Column] = [
    ("ID", lambda r: r["id"]),
    ("NAME", lambda r: r["name"] or None),
    ("TENANT", lambda r: r["tenant_id"]),
    ("CREATED", lambda r: r["created_at"]),
    ("LAST USED", lambda r: r["last_used_at"]),
    ("REVOKED", lambda r: r["revoked_at"]),
]


def render_delivery(row: Mapping[str, Any]) -> str:
    """``delivery show``: the delivery's fields, then its attempts."""
    text = fields(row, DELIVERY_FIELDS)
    attempts = row.get("attempt_history") or []
    if not attempts:
        return text + "\n\nno attempts yet"
    return text + "\n\nattempts:\n" + table(attempts, ATTEMPT_COLUMNS)


def render_status(info: Mapping[str, Any]) -> str:
    """``relay status``: counts and ages, then the relays seen in the last minute."""
    lines = [
        f"outbox backlog            {info['outbox_backlog']}",
        f"deliveries pending        {info['deliveries_pending']} ({info['deliveries_due']} due)",
        f"oldest pending age        {info['oldest_pending_age_seconds']:.1f}s "
        f"(outbox {info['oldest_undispatched_age_seconds']:.1f}s, "
        f"deliveries {info['oldest_due_age_seconds']:.1f}s)",
        # "~": an estimate on a big table (see admin_status in relay/sql/queries/admin.sql)
        f"deliveries dead           "
        f"{'~' if info.get('deliveries_dead_estimated') else ''}{info['deliveries_dead']}",
        f"deliveries delivered      "
        f"{'~' if info.get('deliveries_delivered_estimated') else ''}"
        f"{info['deliveries_delivered']}",
    ]
    creds = info.get("credentials")
    if creds is not None:
        lines.append(f"credentials at rest       {credentials_line(creds)}")
    relays = info["relays"]
    if relays:
        lines += ["", f"relays seen (last minute): {len(relays)}", table(relays, RELAY_COLUMNS)]
    else:
        lines += ["", "relays seen (last minute): none"]
    return "\n".join(lines)


def credentials_line(creds: Mapping[str, Any]) -> str:
    """``relay status``'s line on credentials at rest (see relay.admin.credentials)."""
    plain = creds["subscriptions_plaintext"]
    if not creds["encryption_key"]:
        return (
            f"NOT ENCRYPTED: RELAY_ENCRYPTION_KEY is not set "
            f"({plain} subscription(s) with plain-text credentials)"
        )
    line = f"encrypted ({creds['subscriptions_encrypted']} subscription(s))"
    if plain:
        line += f"; {plain} still in plain text: run `relay rotate-key`"
    return line
