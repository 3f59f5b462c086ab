"""History reads and retention batches stay index reads however much history is kept.

On a modest history (HISTORY deliveries, mostly delivered, a few percent dead, pending and
of a rare event type; vacuumed and analyzed as autovacuum would), the plans of `relay status`,
`relay delivery list` with each filter, `relay delivery show` and the prune batches read the
index meant for them: no sequential scan of relay's big tables, no walk of the primary key
filtering row by row. The timings at 10M rows are `make bench` figures (bench/retention.py,
docs/performance.md), not asserted here. Run with ``-s`` to see the plans.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.sql import q
from tests.conftest import TEMPLATE_DB, _admin, _with_db
from tests.observability.test_query_plans import _function_plan, _nodes, _query_plan

Conn = psycopg.Connection[Any]

BIG = ("outbox", "deliveries", "delivery_attempts")
# Over the 100,000 rows from which `relay status` estimates the delivered count.
HISTORY = 120_000


@pytest.fixture(scope="module")
def history(server_url: str, template_url: str) -> Iterator[Conn]:
    name = f"relay_test_history_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
    try:
        with psycopg.connect(_with_db(server_url, name), autocommit=True) as conn:
            _fill(conn)
            yield conn
    finally:
        with _admin(server_url) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _fill(conn: Conn) -> None:
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("SET session_replication_role = replica")
    for n in range(1, 6):
        conn.execute("INSERT INTO relay.subscriptions (url) VALUES (%s)", (f"http://h{n}/",))
    # one event per delivery; every 50th of a rare type; ids follow time (g seconds ago)
    conn.execute(
        """INSERT INTO relay.outbox (event_type, payload, created_at, dispatched_at)
           SELECT CASE WHEN g %% 50 = 0 THEN 'test.processed' ELSE 'order.created' END,
                  '{}', now() - make_interval(secs => %(n)s - g),
                  now() - make_interval(secs => %(n)s - g)
           FROM generate_series(1, %(n)s) g""",
        {"n": HISTORY},
    )
    # 2% dead, 1% pending (spread over history: retries, a disabled subscription), the rest
    # delivered; four subscriptions share 99% of the rows, a fifth gets 1%
    conn.execute(
        """INSERT INTO relay.deliveries
               (outbox_id, subscription_id, event_type, status, attempts, delivered_at,
                dead_at, next_attempt_at)
           SELECT o.id, CASE WHEN o.id % 100 = 50 THEN 5 ELSE 1 + o.id % 4 END,
                  o.event_type, s.status, 1,
                  CASE WHEN s.status = 'delivered' THEN o.created_at END,
                  CASE WHEN s.status = 'dead' THEN o.created_at END,
                  o.created_at
           FROM relay.outbox o,
                LATERAL (SELECT CASE WHEN o.id % 100 IN (1, 2) THEN 'dead'
                                     WHEN o.id % 100 = 3 THEN 'pending'
                                     ELSE 'delivered' END AS status) s"""
    )
    conn.execute(
        """INSERT INTO relay.delivery_attempts
               (delivery_id, attempt, relay_id, started_at, duration_ms, status_code)
           SELECT id, 1, 'r', created_at, 3.0, 200 FROM relay.deliveries"""
    )
    conn.execute("RESET session_replication_role")
    for table in ("outbox", "deliveries", "delivery_attempts"):
        conn.execute(f"VACUUM ANALYZE relay.{table}")


def _used(plan: dict[str, Any]) -> set[str]:
    return {str(n["Index Name"]) for n in _nodes(plan) if "Index Name" in n}


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    return [str(n["Relation Name"]) for n in _nodes(plan) if n["Node Type"] == "Seq Scan"]


# (`before`: the keyset page of the API; None is the first page)
LIST = {
    "status": None,
    "subscription_id": None,
    "event_type": None,
    "before": None,
    "limit": 100,
}


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"status": "dead"}, "deliveries_status_id"),
        # the backlog: deliveries_due (and a sort of the backlog) is as good
        ({"status": "pending"}, None),
        ({"status": "delivered"}, None),  # most rows: any index walk finds 100 at once
        ({"subscription_id": 5}, "deliveries_subscription"),  # 1% of the rows
        ({"event_type": "test.processed"}, "deliveries_event_type_id"),
        ({}, "deliveries_pkey"),
    ],
)
def test_delivery_list_reads_the_index_of_its_filter(
    history: Conn, filters: dict[str, Any], index: str | None
) -> None:
    """`relay delivery list` runs once per command: the plan made for its values (custom)."""
    plan, text = _query_plan(history, "admin_delivery_list", {**LIST, **filters}, "custom")
    print(f"\n--- delivery list {filters}\n{text}")
    assert not _seq_scans(plan), text
    if filters.get("status") != "pending":
        assert "Sort" not in text, text
    if index is not None:
        assert index in _used(plan), text


@pytest.mark.parametrize("name", ["admin_delivery_get", "admin_delivery_attempts"])
def test_delivery_show_is_key_lookups(history: Conn, name: str) -> None:
    plan, text = _query_plan(
        history, name, {"id": 777, "body_limit": 500, "tenant": None}, "custom"
    )
    print(f"\n--- {name}\n{text}")
    assert not _seq_scans(plan), text
    assert all("Index Cond" in n for n in _nodes(plan) if "Index Name" in n), text


def test_status_estimates_delivered_on_a_big_table_and_scans_nothing(history: Conn) -> None:
    """On a big table `relay status` does not count the delivered rows: it reads the
    planner's estimate (the exact count's subplan is never executed)."""
    row = history.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {q('admin_status')}").fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan = doc[0]["Plan"]
    ran = [n for n in _nodes(plan) if n.get("Actual Loops", 0) > 0]
    print(json.dumps(plan, indent=1)[:3000])
    scans = [n for n in ran if n["Node Type"] == "Seq Scan" and n["Relation Name"] in BIG]
    assert not scans, f"a sequential scan of relay's history ran: {scans}"
    with history.cursor(row_factory=psycopg.rows.dict_row) as cur:
        info = cur.execute(q("admin_status")).fetchone()
    assert info is not None and info["deliveries_delivered_estimated"] is True
    exact = HISTORY - 3 * HISTORY // 100
    assert abs(info["deliveries_delivered"] - exact) < exact * 0.05


@pytest.mark.parametrize("mode", ["custom", "generic"])
@pytest.mark.parametrize(
    ("name", "params", "indexes"),
    [
        (
            "prune_deliveries",
            {"older_than": 3600.0, "limit": 2000},
            {"deliveries_delivered", "deliveries_dead"},
        ),
        ("prune_outbox", {"older_than": 3600.0, "limit": 2000, "after": 0}, {"outbox_pkey"}),
    ],
)
def test_prune_batches_read_their_indexes(
    history: Conn, name: str, params: dict[str, Any], indexes: set[str], mode: str
) -> None:
    """Both the plan for these values and the generic one a function caches."""
    # the query calls relay.<name>(): check the statement inside, under its SET clauses
    plan, text = _function_plan(history, name, list(params.values()), mode)
    print(f"\n--- {name} ({mode})\n{text}")
    assert not _seq_scans(plan), text
    assert indexes <= _used(plan), text
