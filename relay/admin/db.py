"""Helpers shared by the operator operations: driver-error translation and row fetching."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.errors import DatabaseError
from relay.sql import q

# Connection type the operations accept: any row factory, since they open their own cursors.
Conn = psycopg.Connection[Any]

# Errors meaning "the relay schema is not there (yet)": the fix is `relay migrate`.
_SCHEMA_MISSING = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedColumn,
)


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Translate psycopg errors raised inside the block into :class:`DatabaseError`.

    relay's own errors (validation, not found) pass through untouched.
    """
    try:
        yield
    except _SCHEMA_MISSING as exc:
        raise DatabaseError(
            f"relay schema missing or out of date ({_message(exc)}); run `relay migrate`"
        ) from exc
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"database unavailable: {_message(exc)}") from exc
    except psycopg.Error as exc:
        raise DatabaseError(_message(exc)) from exc


def _message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    return primary or str(exc).strip() or type(exc).__name__


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
