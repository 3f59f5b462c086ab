"""Schema migrations: idempotent, and safe when several relays start at once."""

from __future__ import annotations

from typing import Any

import psycopg

from relay.sql import migrations

# Any constant works; it only has to be the same for every relay on the database.
_MIGRATION_LOCK = 0x72656C6179  # "relay"


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply every migration not yet recorded; return the versions applied.

    Runs in one transaction holding a transaction-level advisory lock, so concurrent
    ``relay migrate`` calls serialize and the second one finds nothing to do.
    """
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS relay")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS relay.migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT version FROM relay.migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            conn.execute(sql.encode())  # bytes: run as a multi-statement script, no params
            conn.execute(
                "INSERT INTO relay.migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(version)
    return applied


def current_version(conn: psycopg.Connection[Any]) -> int | None:
    """The highest applied migration, or None when relay's schema is absent."""
    row = conn.execute("SELECT to_regclass('relay.migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM relay.migrations").fetchone()
    return None if row is None else row[0]
