"""The queries relay runs on every loop stay cheap on big tables: they read partial indexes.

relay.outbox and relay.deliveries grow without bound (delivered rows are history); the
dispatcher, the deliverer and the gauge refresh must read only the small "not done yet"
part of them, through ``outbox_undispatched`` and ``deliveries_due``/``deliveries_dead``.
Run with ``-s`` to see the plans.
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

from relay.queries import q
from tests.conftest import TEMPLATE_DB, _admin, _with_db

Conn = psycopg.Connection[Any]

BIG = 200_000
PENDING = 5

# Parameters of each query, as relay/store.py passes them.
PARAMS: dict[str, dict[str, Any]] = {
    "refresh_stats": {"relay_id": "plan-test", "interval": 0.0},
    "claim_deliveries": {
        "limit": 100,
        "saturated": [],
        "owner": "plan-test",
        "token": uuid.uuid4(),
        "lease_seconds": 60.0,
    },
    "dispatch_outbox": {
        "limit": 500,
        "lease_limit": 64,
        "owner": "plan-test",
        "token": uuid.uuid4(),
        "lease_seconds": 60.0,
    },
    "seconds_until_due": {"saturated": []},
    "read_stats": {},
}

# The partial indexes (sql/migrations/0001_initial.sql) each query must read.
PARTIAL_INDEXES: dict[str, set[str]] = {
    "refresh_stats": {"outbox_undispatched", "deliveries_due", "deliveries_dead"},
    # its row selection is relay.claim_due(), checked by the test below
    "claim_deliveries": set(),
    "dispatch_outbox": {"outbox_undispatched"},
    "seconds_until_due": {"deliveries_due"},
    "read_stats": set(),
}


@pytest.fixture(scope="module")
def big_conn(server_url: str, template_url: str) -> Iterator[Conn]:
    """A database (one per module: filling it takes seconds) with BIG delivered deliveries
    (history), BIG undispatched outbox rows and a few pending deliveries, analyzed as
    autovacuum would have."""
    name = f"relay_test_plans_{uuid.uuid4().hex[:12]}"
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
    # Skip FK checks and the NOTIFY trigger while bulk loading (superuser only; the load
    # just takes longer without it).
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("SET session_replication_role = replica")
    sub = conn.execute(
        "INSERT INTO relay.subscriptions (url) VALUES ('http://127.0.0.1:9/hook') RETURNING id"
    ).fetchone()
    assert sub is not None
    # History: dispatched outbox rows, each delivered once.
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, dispatched_at, created_at)"
        " SELECT 'order.created', '{}'::jsonb, now() - interval '1 day',"
        "        now() - interval '1 day'"
        " FROM generate_series(1, %s) g",
        (BIG + PENDING,),
    )
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type, status,"
        "                              attempts, delivered_at, next_attempt_at)"
        " SELECT id, %s, event_type, 'delivered', 1, now() - interval '1 day',"
        "        now() - interval '1 day'"
        " FROM relay.outbox ORDER BY id LIMIT %s",
        (sub[0], BIG),
    )
    # A few pending deliveries (due now) for the rest of the dispatched rows.
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type)"
        " SELECT id, %s, event_type FROM relay.outbox ORDER BY id DESC LIMIT %s",
        (sub[0], PENDING),
    )
    # The backlog: undispatched outbox rows.
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload)"
        " SELECT 'order.created', '{}'::jsonb FROM generate_series(1, %s) g",
        (BIG,),
    )
    conn.execute("RESET session_replication_role")
    conn.execute("VACUUM ANALYZE relay.outbox")
    conn.execute("VACUUM ANALYZE relay.deliveries")
    conn.execute("ANALYZE relay.subscriptions")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_loop_queries_use_partial_indexes_not_seq_scans(big_conn: Conn, name: str) -> None:
    """EXPLAIN of each per-loop query on 200k-row tables shows no Seq Scan of
    relay.outbox or relay.deliveries: the partial indexes bound the work by the backlog."""
    row = big_conn.execute("EXPLAIN (FORMAT JSON) " + q(name), PARAMS[name]).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan = doc[0]["Plan"]
    text = "\n".join(r[0] for r in big_conn.execute("EXPLAIN " + q(name), PARAMS[name]).fetchall())
    print(f"\n--- {name}\n{text}")
    seq = [
        n["Relation Name"]
        for n in _nodes(plan)
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in ("outbox", "deliveries")
    ]
    assert not seq, f"{name} scans relay.{', relay.'.join(seq)} sequentially:\n{text}"
    # The partial indexes meant for these queries are the ones read.
    used = {
        str(n["Index Name"])
        for n in _nodes(plan)
        if n.get("Relation Name") in ("outbox", "deliveries") and "Index Name" in n
    }
    print(f"indexes: {sorted(used)}")
    assert PARTIAL_INDEXES[name] <= used, (name, sorted(used), text)


@pytest.mark.parametrize("saturated", ["{}", "{1}"])
def test_claim_due_walks_the_due_index_in_order(big_conn: Conn, saturated: str) -> None:
    """relay.claim_due (the claim's row selection, a function so its SET clauses pin the
    plan) reads deliveries_due in order and stops at the limit: no bitmap scan, no sort. The
    plan checked is the generic one (parameters, not values), as the function caches it: it
    is the plan a relay keeps using after a few claims."""
    row = big_conn.execute(
        "SELECT prosrc, proconfig FROM pg_proc WHERE proname = 'claim_due'"
    ).fetchone()
    assert row is not None
    body, settings = row
    with big_conn.transaction():
        for setting in settings:  # the function's own SET clauses, e.g. enable_bitmapscan=off
            name, _, value = setting.partition("=")
            big_conn.execute(f"SET LOCAL {name} = {value}")
        big_conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        sql = body.replace("p_limit", "$1").replace("p_saturated", "$2")
        # the simple-query protocol: $1 and $2 are the prepared statement's, not this call's
        result = big_conn.pgconn.exec_(
            f"PREPARE claim_due_plan (integer, bigint[]) AS {sql}".encode()
        )
        assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message
        try:
            text = "\n".join(
                r[0]
                for r in big_conn.execute(
                    f"EXPLAIN EXECUTE claim_due_plan (100, '{saturated}')"  # a test constant
                )
            )
        finally:
            big_conn.execute("DEALLOCATE claim_due_plan")
    print(f"\n--- claim_due\n{text}")
    assert "Index Scan using deliveries_due" in text, text
    assert "Bitmap" not in text and "Sort" not in text, text
