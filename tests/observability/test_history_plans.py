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

from relay import admin
from relay.admin.db import fetch_one
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
    # subscription 2 belongs to a tenant: a quarter of the rows, 4% of them dead
    conn.execute("UPDATE relay.subscriptions SET tenant_id = 'acme' WHERE id = 2")
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
    conn.execute("UPDATE relay.deliveries SET tenant_id = 'acme' WHERE subscription_id = 2")
    conn.execute(
        """INSERT INTO relay.delivery_attempts
               (delivery_id, attempt, relay_id, started_at, duration_ms, status_code)
           SELECT id, 1, 'r', created_at, 3.0, 200 FROM relay.deliveries"""
    )
    conn.execute("RESET session_replication_role")
    # ANALYZE reads a sample of 300 x the statistics target rows: at the default target (100)
    # that is a quarter of this history, and the estimates (and so the plan between an
    # ordered index walk and a bitmap scan + sort, close for a page of 100 among ~1,200 rows)
    # changed from run to run. A target of 1,000 samples every row: the same statistics, and
    # the same plans, every run (production tables are far bigger than the page, where the
    # walk wins by a wide margin).
    for column in ("subscription_id", "tenant_id", "status", "event_type"):
        conn.execute(f"ALTER TABLE relay.deliveries ALTER COLUMN {column} SET STATISTICS 1000")
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
        ({"status": "dead"}, "deliveries_dead_id"),  # 2% of the rows
        ({"status": "pending"}, "deliveries_pending_id"),  # 1%: the backlog
        # most rows: the primary key walked backwards finds a page at once (0011)
        ({"status": "delivered"}, "deliveries_pkey"),
        ({"subscription_id": 5}, "deliveries_subscription"),  # 1% of the rows
        ({"event_type": "test.processed"}, "deliveries_event_type_id"),  # 2%
        ({}, "deliveries_pkey"),
    ],
)
def test_delivery_list_reads_the_index_of_its_filter(
    history: Conn, filters: dict[str, Any], index: str
) -> None:
    """`relay delivery list` runs once per command: the plan made for its values (custom).
    Executed, the rows it reads from relay.deliveries follow the page, not the history."""
    params = {**LIST, **filters}
    plan, text = _query_plan(history, "admin_delivery_list", params, "custom")
    print(f"\n--- delivery list {filters}\n{text}")
    assert not _seq_scans(plan), text
    assert "Sort" not in text, text
    assert index in _used(plan), text
    ran = _ran(history, q("admin_delivery_list"), params)
    read = sum(
        int(n.get("Actual Rows", 0)) + int(n.get("Rows Removed by Filter", 0))
        for n in ran
        if n.get("Relation Name") == "deliveries"
    )
    page = int(LIST["limit"] or 0)
    # (delivered: 97% of the rows, so a few others are stepped over)
    assert read <= page + 10, f"{read} rows read for a page of {page}"


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
    row = history.execute(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {q('admin_status')}", {"exact_below": 100_000}
    ).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan = doc[0]["Plan"]
    ran = [n for n in _nodes(plan) if n.get("Actual Loops", 0) > 0]
    print(json.dumps(plan, indent=1)[:3000])
    scans = [n for n in ran if n["Node Type"] == "Seq Scan" and n["Relation Name"] in BIG]
    assert not scans, f"a sequential scan of relay's history ran: {scans}"
    with history.cursor(row_factory=psycopg.rows.dict_row) as cur:
        info = cur.execute(q("admin_status"), {"exact_below": 100_000}).fetchone()
    assert info is not None and info["deliveries_delivered_estimated"] is True
    exact = HISTORY - 3 * HISTORY // 100
    assert abs(info["deliveries_delivered"] - exact) < exact * 0.05


DEAD = 2 * HISTORY // 100


def _ran(conn: Conn, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan nodes that ran (EXPLAIN ANALYZE) when ``statement`` ran with ``params``."""
    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan = doc[0]["Plan"]
    print(json.dumps(plan, indent=1)[:3000])
    return [n for n in _nodes(plan) if n.get("Actual Loops", 0) > 0]


def _dead_rows_read(nodes: list[dict[str, Any]]) -> int:
    return sum(
        int(n.get("Actual Rows", 0)) * int(n.get("Actual Loops", 0))
        for n in nodes
        if n.get("Index Name") in ("deliveries_dead", "deliveries_dead_id")
        or (n["Node Type"] == "Seq Scan" and n.get("Relation Name") in BIG)
    )


@pytest.mark.parametrize("name", ["admin_status", "refresh_stats"])
def test_dead_count_is_an_estimate_once_big_and_reads_no_dead_row(history: Conn, name: str) -> None:
    """The dead rows kept are history: past ``exact_below`` of them, `relay status` and the
    gauge refresh read the catalog's estimate (relay.deliveries_dead_estimate) and count
    none; below it they count exactly. Here the threshold is lowered under the DEAD rows
    the fixture keeps, as if they were millions."""
    params = {"relay_id": "plan-test", "interval": 0.0}
    ran = _ran(history, q(name), {**params, "exact_below": DEAD // 2})
    assert _dead_rows_read(ran) == 0, "the dead rows were counted"
    ran = _ran(history, q(name), {**params, "exact_below": DEAD * 2})
    assert _dead_rows_read(ran) == DEAD, "below the threshold the dead rows are counted"


def test_status_dead_count_estimated_flag_and_value(history: Conn) -> None:
    with history.cursor(row_factory=psycopg.rows.dict_row) as cur:
        big = cur.execute(q("admin_status"), {"exact_below": DEAD // 2}).fetchone()
        small = cur.execute(q("admin_status"), {"exact_below": DEAD * 2}).fetchone()
        history.execute(
            q("refresh_stats"), {"relay_id": "t", "interval": 0.0, "exact_below": DEAD // 2}
        )
        gauge = cur.execute("SELECT deliveries_dead FROM relay.stats").fetchone()
    assert big is not None and small is not None and gauge is not None
    assert big["deliveries_dead_estimated"] is True
    # an estimate: exact after a VACUUM, from a sample after an (auto)ANALYZE
    assert abs(big["deliveries_dead"] - DEAD) <= DEAD * 0.1, big
    assert abs(gauge["deliveries_dead"] - DEAD) <= DEAD * 0.1, gauge
    assert small["deliveries_dead_estimated"] is False
    assert small["deliveries_dead"] == DEAD


@pytest.mark.parametrize("mode", ["custom", "generic"])
@pytest.mark.parametrize("status", ["dead", None])
def test_tenant_delivery_list_walks_only_what_it_returns(
    history: Conn, mode: str, status: str | None
) -> None:
    """`GET /v1/deliveries?status=dead` with a tenant key: a walk of the tenant's dead rows
    (deliveries_subscription_dead), in the plan for these values and in the generic plan a
    pooled API connection may cache; no status keeps the walk of deliveries_subscription."""
    params = {**LIST, "tenant": "acme", "status": status, "before": None}
    plan, text = _query_plan(history, "admin_delivery_list_tenant", params, mode)
    print(f"\n--- tenant list status={status} ({mode})\n{text}")
    assert not set(_seq_scans(plan)) & set(BIG), text
    if status == "dead":
        assert "deliveries_subscription_dead" in _used(plan), text
    # executed: the rows read from deliveries follow the page, not the history
    ran = _ran(history, q("admin_delivery_list_tenant"), params)
    read = sum(
        int(n.get("Actual Rows", 0)) + int(n.get("Rows Removed by Filter", 0))
        for n in ran
        if n.get("Relation Name") == "deliveries"
    )
    page = int(LIST["limit"] or 0)
    # a page from the dead branch (the other one does not run), and a little slack
    assert read <= 2 * page + 10, f"{read} rows read for a page of {page}"


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


def test_status_is_not_jit_compiled(history: Conn) -> None:
    """At 10M deliveries the status query's cost (its never-run exact counts included) passed
    jit_above_cost, and compiling it took 27 of its 38 ms; admin.status() runs it with jit
    off. Here jit_above_cost = 0 makes any plan a candidate, and auto_explain reports to the
    client whether each statement was compiled."""
    with psycopg.connect(history.info.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_jit_available()").fetchone() == (True,), (
            "this server cannot JIT: the test would prove nothing"
        )
        plans: list[str] = []
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_format = 'json'",
            "client_min_messages = log",
            "jit = on",
            "jit_above_cost = 0",
        ):
            conn.execute(f"SET {setting}")
        # the control: the same statement without admin.status()'s setting is compiled
        fetch_one(conn, "admin_status", {"exact_below": 100_000})
        assert any('"JIT"' in p for p in plans), plans
        plans.clear()
        admin.status(conn)
        status_plans = [p for p in plans if "deliveries_pending" in p or "relay.outbox" in p]
        assert status_plans, plans
        assert not any('"JIT"' in p for p in status_plans), status_plans
