"""Helpers shared by the operator operations: named queries run and fetched as dicts.

Driver errors are translated by :func:`relay.errors.db_errors` (re-exported here, where the
operations import it from).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.errors import db_errors
from relay.sql import q

# Connection type the operations accept: any row factory, since they open their own cursors.
Conn = psycopg.Connection[Any]

__all__ = ["Conn", "db_errors", "execute", "fetch_all", "fetch_one"]


def fetch_all(
    conn: Conn, name: str, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Run the named query and return its rows as dicts."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(q(name), params or {})
        return cur.fetchall()


def fetch_one(
    conn: Conn, name: str, params: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Run the named query and return its first row as a dict (None when empty)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(q(name), params or {})
        return cur.fetchone()


def execute(conn: Conn, name: str, params: Mapping[str, Any] | None = None) -> int:
    """Run the named statement; return its row count."""
    with conn.cursor() as cur:
        cur.execute(q(name), params or {})
        return cur.rowcount
