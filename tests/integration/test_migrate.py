from __future__ import annotations

import threading

import psycopg

from relay.sql import expected_schema_version, migrations
from relay.sql.migrate import current_version, migrate
from tests.relayctx import SEEDED_EVENT_TYPES


def test_migrate_is_idempotent(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        assert current_version(conn) is None
        # every migration file, in order (numbers may have gaps: 0005 is reserved on a branch)
        assert migrate(conn) == [version for version, _, _ in migrations()]
        assert migrate(conn) == []
        assert current_version(conn) == expected_schema_version()
        names = [r[0] for r in conn.execute("SELECT name FROM relay.event_types ORDER BY name")]
    assert names == sorted(SEEDED_EVENT_TYPES)


def test_concurrent_migrations_apply_once(empty_database_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(empty_database_url) as conn:
                results.append(migrate(conn))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, 0, len(migrations())]


async def test_vacuum_fallback_cleans_the_queue_tables(database_url: str) -> None:
    """With autovacuum off (as on CI's server), relay vacuums its own queue tables once dead
    rows pile up, so the claim's index walk does not degrade; one relay at a time."""
    from relay.daemon.store import Store

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE relay.deliveries SET (autovacuum_enabled = false)")
        conn.execute("INSERT INTO relay.subscriptions (url) VALUES ('http://x.invalid/')")
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', '{}' FROM generate_series(1, 3000)"
        )
        conn.execute(
            "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type)"
            " SELECT id, 1, event_type FROM relay.outbox"
        )
        conn.execute("UPDATE relay.deliveries SET status = 'delivered'")  # 3000 dead rows
        conn.execute("SELECT pg_stat_force_next_flush()")
    store = Store(database_url, pool_size=2, relay_id="vac")
    await store.open()
    try:
        assert await store.vacuum_if_needed(min_dead=10_000, min_interval=0) == []
        assert "deliveries" in await store.vacuum_if_needed(min_dead=1000, min_interval=0)
        # Just vacuumed: not again within the interval.
        assert await store.vacuum_if_needed(min_dead=1000, min_interval=3600) == []
    finally:
        await store.close()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables"
            " WHERE schemaname = 'relay' AND relname = 'deliveries'"
        ).fetchone()
    assert row == (True,)
