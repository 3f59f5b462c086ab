from __future__ import annotations

import threading

import psycopg

from relay.migrate import current_version, migrate
from relay.queries import expected_schema_version
from tests.relayctx import SEEDED_EVENT_TYPES


def test_migrate_is_idempotent(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        assert current_version(conn) is None
        assert migrate(conn) == list(range(1, expected_schema_version() + 1))
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
    assert sorted(len(r) for r in results) == [0, 0, 0, expected_schema_version()]
