"""``relay prune``: delete finished history older than a duration, or count what would go.

The same batches as the daemon's pruner (relay/daemon/pruner.py, the SQL in
relay/sql/queries/retention.sql): deliveries that ended (``delivered`` or ``dead``) before the
cutoff with their attempts, then outbox rows created before it that were dispatched and have
no delivery left. Pending work (an undispatched row, a pending delivery and its event) is
never touched. Each batch is its own short transaction, so a prune of years of history never
holds a long lock and can be interrupted at any point without leaving anything half-deleted.
"""

from __future__ import annotations

import time
from typing import Any

from relay.admin.db import Conn, db_errors, fetch_one
from relay.errors import DatabaseError

#: Rows of each kind per statement (a few ms of locks each).
BATCH = 2000
#: How long to wait for a running relay's prune batch (the lock holder) before giving up.
LOCK_WAIT_SECONDS = 60.0
TABLES = ("deliveries", "delivery_attempts", "outbox")


def preview(conn: Conn, older_than: int) -> dict[str, int]:
    """What :func:`prune` would delete now, per table; nothing is changed."""
    with db_errors():
        row = fetch_one(conn, "prune_preview", {"older_than": float(older_than)})
    assert row is not None
    return {table: int(row[table]) for table in TABLES}


def prune(conn: Conn, older_than: int, *, batch: int = BATCH) -> dict[str, int]:
    """Delete finished history that ended over ``older_than`` seconds ago; counts per table.

    ``conn`` must be in autocommit mode: each batch commits on its own.
    """
    pruned = dict.fromkeys(TABLES, 0)
    params: dict[str, Any] = {"older_than": float(older_than), "limit": batch}
    with db_errors():
        while True:
            row = _batch(conn, "prune_deliveries", params)
            pruned["deliveries"] += int(row["deliveries"])
            pruned["delivery_attempts"] += int(row["delivery_attempts"])
            if int(row["deliveries"]) < batch:
                break
        params["after"] = 0
        while True:
            row = _batch(conn, "prune_outbox", params)
            pruned["outbox"] += int(row["outbox"])
            if row["reached_young"] or row["last_id"] is None or int(row["scanned"]) < batch:
                break
            params["after"] = int(row["last_id"])
    return pruned


def _batch(conn: Conn, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """One batch, waiting while a relay holds the prune lock (its batches take milliseconds)."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        row = fetch_one(conn, name, params)
        assert row is not None
        if row["ours"]:
            return row
        if time.monotonic() > deadline:
            raise DatabaseError(
                f"another relay held the prune lock for {LOCK_WAIT_SECONDS:.0f}s; try again"
            )
        time.sleep(0.05)
