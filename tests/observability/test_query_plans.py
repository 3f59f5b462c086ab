"""The queries relay runs on every loop stay cheap on big tables: they read partial indexes.

relay.outbox and relay.deliveries grow without bound (delivered rows are history); the
dispatcher, the deliverer and the gauge refresh must read only the small "not done yet"
part of them, through ``outbox_undispatched`` and ``deliveries_due``/``deliveries_dead``.
relay plans each statement once per connection (``plan_cache_mode = force_generic_plan``,
relay/daemon/store.py), so the plans checked are the *generic* ones: what Postgres chose without
knowing the parameter values. Run with ``-s`` to see the plans.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.sql import q
from tests.conftest import TEMPLATE_DB, _admin, _with_db

Conn = psycopg.Connection[Any]

BIG = 200_000
BIG_TABLES = ("outbox", "deliveries", "delivery_attempts")
PENDING = 5

# Parameters of each query, as relay/daemon/store.py passes them.
PARAMS: dict[str, dict[str, Any]] = {
    "refresh_stats": {"relay_id": "plan-test", "interval": 0.0, "exact_below": 100_000},
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
    "ack_deliveries": {
        "ids": [1, 2],
        "tokens": [uuid.uuid4(), uuid.uuid4()],
        "outcomes": ["delivered", "retry"],
        "delays": [0.0, 5.0],
        "codes": [204, 500],
        "errors": [None, "HTTP 500"],
        "started": [datetime.datetime.now(datetime.UTC)] * 2,
        "durations": [1.5, 2.5],
        "bodies": [None, "oops"],
        "relay_id": "plan-test",
    },
    "release_deliveries": {"ids": [1, 2], "tokens": [uuid.uuid4(), uuid.uuid4()]},
}

# Queries that only call a relay function: their plan is that of the function's statement,
# with these parameters as its arguments, in order.
FUNCTION_BODIES: dict[str, tuple[str, list[str]]] = {
    "dispatch_outbox": (
        "dispatch_outbox",
        ["limit", "lease_limit", "owner", "token", "lease_seconds"],
    ),
    "claim_deliveries": (
        "claim_deliveries",
        ["limit", "saturated", "owner", "token", "lease_seconds"],
    ),
    "ack_deliveries": (
        "ack_deliveries",
        [
            "relay_id",
            *("ids", "tokens", "outcomes", "delays", "codes", "errors", "started"),
            *("durations", "bodies"),
        ],
    ),
    "release_deliveries": ("release_deliveries", ["ids", "tokens"]),
}

# The partial indexes (relay/sql/migrations/0001_initial.sql) each query must read.
# Partial indexes of the dead rows (0001, 0010, 0011): reading one whole is a count of the
# dead rows kept, which the queries do only while that is small (under exact_below).
DEAD_INDEXES = {"deliveries_dead", "deliveries_subscription_dead", "deliveries_dead_id"}

# Partial indexes of the pending rows (the backlog): deliveries_due in due order for the claim;
# deliveries_pending_id (0011, `delivery list --status pending`) serves a count as well.
BACKLOG_INDEXES = {"deliveries_due", "deliveries_pending_id"}

PARTIAL_INDEXES: dict[str, set[str]] = {
    # the dead count (only while small, see DEAD_INDEXES) may read either index of dead rows;
    # the pending count either index of the backlog (the oldest-pending age is deliveries_due)
    "refresh_stats": {"outbox_undispatched", "deliveries_due"},
    "claim_due_saturated": {"deliveries_subscription_due"},
    # its row selection is relay.claim_due(), checked by the test below
    "claim_deliveries": set(),
    "dispatch_outbox": {"outbox_undispatched"},
    "seconds_until_due": {"deliveries_due"},
    "read_stats": set(),
    # by primary key, the ids given
    "ack_deliveries": set(),
    "release_deliveries": set(),
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


def _explain(
    conn: Conn,
    text_sql: str,
    args: list[Any],
    mode: str,
    settings: Sequence[str] = (),
    types: str = "",
) -> tuple[dict[str, Any], str]:
    """The plan of ``text_sql`` (with ``$n`` parameters) prepared and explained for
    ``args``, as Postgres makes it under ``plan_cache_mode = force_<mode>_plan`` and the
    ``settings`` (a function's SET clauses); JSON and text."""
    literals = ", ".join(sql.Literal(a).as_string(conn) for a in args)
    execute = f"EXECUTE plan_test ({literals})" if literals else "EXECUTE plan_test"
    with conn.transaction():
        for setting in settings:
            name, _, value = setting.partition("=")
            conn.execute(f"SET LOCAL {name} = {value}")
        conn.execute(f"SET LOCAL plan_cache_mode = force_{mode}_plan")
        # the simple-query protocol: the $n are the prepared statement's, not this call's
        result = conn.pgconn.exec_(f"PREPARE plan_test {types} AS {text_sql}".encode())
        assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message
        try:
            row = conn.execute(f"EXPLAIN (FORMAT JSON) {execute}").fetchone()
            text = "\n".join(r[0] for r in conn.execute(f"EXPLAIN {execute}"))
            jit = conn.execute(
                "SELECT current_setting('jit') = 'on', current_setting('jit_above_cost')::float8"
            ).fetchone()
        finally:
            conn.execute("DEALLOCATE plan_test")
    assert row is not None and jit is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan = doc[0]["Plan"]
    # A plain EXPLAIN does not say whether the executor would JIT compile the plan: it does
    # when JIT is on and the plan's cost is above jit_above_cost (a disabled node's cost is).
    if jit[0] and 0 <= jit[1] < plan["Total Cost"]:
        text += f"\nJIT: would compile (cost {plan['Total Cost']} > jit_above_cost {jit[1]})"
    return plan, text


def _query_plan(
    conn: Conn, name: str, params: dict[str, Any], mode: str
) -> tuple[dict[str, Any], str]:
    """The plan of daemon query ``name`` for ``params``: "custom" (made for these values,
    what Postgres does for the first runs of a prepared statement) or "generic" (made once
    for any values, what it may cache after that)."""
    order: list[str] = []

    def placeholder(m: re.Match[str]) -> str:
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    text_sql = re.sub(r"%\((\w+)\)[sb]", placeholder, q(name))
    return _explain(conn, text_sql, [params[p] for p in order], mode)


def _statement_end(body: str, start: int) -> int:
    """Where the SQL statement starting at ``start`` ends: its ``;`` outside parentheses,
    quotes and ``--`` comments (a comment may hold a ``;``)."""
    depth, i = 0, start
    while i < len(body):
        ch = body[i]
        if body.startswith("--", i):
            i = body.find("\n", i)
            if i < 0:
                return len(body)
        elif ch == "'":
            i = body.find("'", i + 1)
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ";" and depth == 0:
            return i
        i += 1
    return len(body)


def _function_plan(
    conn: Conn,
    function: str,
    args: list[Any],
    mode: str = "generic",
    branch: int = 1,
    extra_settings: tuple[str, ...] = (),
) -> tuple[dict[str, Any], str]:
    """The plan of the statement inside relay function ``function`` (plain SQL, or the
    ``RETURN QUERY`` of a PL/pgSQL one) under the function's own SET clauses. "generic" is
    what a function caches: the plan a relay keeps using after a few calls. ``branch``: which
    ``RETURN QUERY`` (1-based) of a function that has several; ``extra_settings``: the
    ``SET LOCAL`` that branch runs before its query."""
    row = conn.execute(
        "SELECT p.prosrc, coalesce(p.proconfig, '{}'), p.proargnames,"
        "       oidvectortypes(p.proargtypes)"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'relay' AND p.proname = %s",
        (function,),
    ).fetchone()
    assert row is not None, function
    body, settings, argnames, types = row
    if "RETURN QUERY" in body:
        # the ``branch``-th query: up to its ';' (comments and strings may hold others)
        start = body.split("RETURN QUERY")[branch]
        body = start[: _statement_end(start, 0)]
    settings = [*settings, *extra_settings]
    for i, arg in enumerate(argnames[: len(args)]):
        body = re.sub(rf"\b{arg}\b", f"${i + 1}", body)
    for variable, expression in FUNCTION_LOCALS.get(function, {}).items():
        body = re.sub(rf"\b{variable}\b", expression, body)
    return _explain(conn, body, args, mode, settings, f"({types})")


# Local variables a function's statements read, as the expressions that set them (after its
# arguments became $1, $2, ...): relay.claim_deliveries() keeps the due ids in an array (0011).
FUNCTION_LOCALS: dict[str, dict[str, str]] = {
    "claim_deliveries": {"due_ids": "ARRAY(SELECT relay.claim_due($1, $2))"},
}


def _whole_reads(plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Tables of BIG_TABLES read by a Seq Scan, and their full (non-partial) indexes walked
    end to end (an index scan without a condition: a merge join walking all of outbox_pkey
    is a sequential scan in disguise)."""
    seq = [
        str(n["Relation Name"])
        for n in _nodes(plan)
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in BIG_TABLES
    ]
    partial = set().union(*PARTIAL_INDEXES.values(), DEAD_INDEXES, BACKLOG_INDEXES)
    whole = [
        str(n["Index Name"])
        for n in _nodes(plan)
        if n["Node Type"] in ("Index Scan", "Index Only Scan")
        and n.get("Relation Name") in BIG_TABLES
        and "Index Cond" not in n
        and n["Index Name"] not in partial
    ]
    return seq, whole


@pytest.mark.parametrize("mode", ["custom", "generic"])
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_loop_queries_use_partial_indexes_not_seq_scans(
    big_conn: Conn, name: str, mode: str
) -> None:
    """The plans of each per-loop query on 200k-row tables read no relay.outbox,
    relay.deliveries or relay.delivery_attempts whole: the partial indexes (or the keys
    given) bound the work by the backlog. Both the plan made for the values and the one
    made for any values (which Postgres may cache for a prepared statement)."""
    if name in FUNCTION_BODIES:  # the query is a call: check the statement inside
        function, arg_names = FUNCTION_BODIES[name]
        plan, text = _function_plan(big_conn, function, [PARAMS[name][a] for a in arg_names], mode)
    else:
        plan, text = _query_plan(big_conn, name, PARAMS[name], mode)
    print(f"\n--- {name} ({mode})\n{text}")
    seq, whole = _whole_reads(plan)
    assert not seq, f"{name} scans relay.{', relay.'.join(seq)} sequentially:\n{text}"
    assert not whole, f"{name} walks all of {', '.join(whole)}:\n{text}"
    # The partial indexes meant for these queries are the ones read.
    used = {
        str(n["Index Name"])
        for n in _nodes(plan)
        if n.get("Relation Name") in ("outbox", "deliveries") and "Index Name" in n
    }
    print(f"indexes: {sorted(used)}")
    assert PARTIAL_INDEXES[name] <= used, (name, sorted(used), text)


def test_dispatch_plan_made_on_a_small_outbox_stays_right_as_it_grows(conn: Conn) -> None:
    """relay.dispatch_outbox() keeps one plan per connection, so the plan made when the
    outbox was small (a new install) is the one used once it holds millions of rows: it
    must not read the outbox whole (a sequential scan is cheapest for a one-page table),
    nor be JIT compiled (the disabled scan's cost would trigger it: 300 ms a call)."""
    conn.execute("INSERT INTO relay.subscriptions (url) VALUES ('http://127.0.0.1:9/hook')")
    # A new install's first events, most of them dispatched: a page of outbox. (An outbox
    # never written to is assumed to hold 10 pages, and gets index scans anyway.)
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, dispatched_at)"
        " SELECT 'order.created', '{}', CASE WHEN g > 5 THEN now() END"
        " FROM generate_series(1, 50) g"
    )
    plan, text = _function_plan(conn, "dispatch_outbox", [100, 64, "plan-test", uuid.uuid4(), 60.0])
    print(f"\n--- dispatch_outbox on a nearly empty outbox\n{text}")
    seq, whole = _whole_reads(plan)
    assert not seq and not whole, text
    assert "JIT" not in text, text


def test_claim_due_walks_the_due_index_in_order(big_conn: Conn) -> None:
    """relay.claim_due (the claim's row selection, a function so its SET clauses pin the
    plan) reads deliveries_due in order and stops at the limit: no bitmap scan, no sort. The
    plan checked is the generic one (parameters, not values), as the function caches it: it
    is the plan a relay keeps using after a few claims."""
    _, text = _function_plan(big_conn, "claim_due", [100, []])
    print(f"\n--- claim_due\n{text}")
    assert "Index Scan using deliveries_due" in text, text
    assert "Bitmap" not in text and "Sort" not in text, text
    assert "JIT" not in text, text


def test_claim_due_with_saturated_subscriptions_reads_each_other_subscription(
    big_conn: Conn,
) -> None:
    """With saturated subscriptions, relay.claim_due takes each other subscription's first
    due rows from deliveries_subscription_due (an index condition on the subscription): it
    never walks the saturated ones' due rows (issue 14)."""
    _, text = _function_plan(big_conn, "claim_due", [100, [1]], branch=2)
    print(f"\n--- claim_due (saturated)\n{text}")
    assert "Index Scan using deliveries_subscription_due" in text, text
    assert "Bitmap" not in text and "JIT" not in text, text


@pytest.mark.parametrize("mode", ["custom", "generic"])
@pytest.mark.parametrize("name", ["ack_deliveries", "release_deliveries", "claim_deliveries"])
def test_keyed_updates_stay_key_lookups_when_analyzed_while_empty(
    conn: Conn, name: str, mode: str
) -> None:
    """Statements that update deliveries by id look each id up in the primary key, even when
    the statistics say relay's tables are empty (a VACUUM ANALYZE right after install, or
    autovacuum analyzing a young table, then a burst): not a bitmap walk of the whole
    deliveries_due index joined by hash. That walk also reads every dead index entry left
    since the last vacuum, so it grows with the traffic: in a 20,000-event drain the ack
    cost 495 us of Postgres CPU per delivery instead of 25."""
    sub = conn.execute(
        "INSERT INTO relay.subscriptions (url) VALUES ('http://127.0.0.1:9/hook') RETURNING id"
    ).fetchone()
    assert sub is not None
    conn.execute("VACUUM ANALYZE relay.outbox")
    conn.execute("VACUUM ANALYZE relay.deliveries")
    conn.execute("VACUUM ANALYZE relay.delivery_attempts")
    # Then a burst: pending deliveries, and as many index entries of finished ones.
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, dispatched_at)"
        " SELECT 'order.created', '{}', now() FROM generate_series(1, 4000)"
    )
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type)"
        " SELECT id, %s, event_type FROM relay.outbox",
        (sub[0],),
    )
    conn.execute("UPDATE relay.deliveries SET status = 'delivered' WHERE id % 2 = 0")
    if name in FUNCTION_BODIES:
        function, arg_names = FUNCTION_BODIES[name]
        plan, text = _function_plan(conn, function, [PARAMS[name][a] for a in arg_names], mode)
    else:
        plan, text = _query_plan(conn, name, PARAMS[name], mode)
    print(f"\n--- {name} ({mode}), tables analyzed while empty\n{text}")
    scans = [
        n
        for n in _nodes(plan)
        if n.get("Relation Name") == "deliveries" and n["Node Type"] != "ModifyTable"
    ]
    assert scans, text
    for node in scans:
        assert node["Node Type"] == "Index Scan", text
        assert node["Index Name"] == "deliveries_pkey", text
        assert "Index Cond" in node, text


def test_ordered_claim_guard_is_index_probes(conn: Conn) -> None:
    """With an ordered subscription, the claim still walks deliveries_due in order; its
    guard (an earlier pending delivery of the aggregate?) is one probe of
    deliveries_aggregate_pending per candidate row (a plain index scan, which marks finished
    rows' entries dead as it meets them), never a scan: so claim cost does not grow with an
    aggregate's backlog. Likewise the promotion that runs in the ack."""
    sub = conn.execute(
        "INSERT INTO relay.subscriptions (url, ordered) VALUES ('http://127.0.0.1:9/h', true)"
        " RETURNING id"
    ).fetchone()
    assert sub is not None
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, aggregate_id, dispatched_at)"
        " SELECT 'order.created', '{}', 'a' || (g % 50), now() FROM generate_series(1, 20000) g"
    )
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type, aggregate_id,"
        "                              next_attempt_at)"
        " SELECT id, %s, event_type, aggregate_id,"
        "        CASE WHEN id <= 50 THEN now() ELSE 'infinity' END"
        " FROM relay.outbox",
        (sub[0],),
    )
    conn.execute("VACUUM ANALYZE relay.outbox")
    conn.execute("VACUUM ANALYZE relay.deliveries")
    _, text = _function_plan(conn, "claim_due", [100, []])
    print(f"\n--- claim_due, ordered\n{text}")
    assert "Index Scan using deliveries_due" in text, text
    assert "deliveries_aggregate_pending" in text, text
    assert "Seq Scan" not in text and "Sort" not in text and "Bitmap" not in text, text
    assert "Index Only Scan" not in text, text  # see relay.claim_due: no kill bits
    # the promotion's lookup of an aggregate's head (relay.promote_ordered_heads)
    plan = conn.execute(
        "EXPLAIN (FORMAT TEXT) SELECT e.id FROM relay.deliveries e"
        " WHERE e.subscription_id = %s AND e.aggregate_id = 'a1' AND e.status = 'pending'"
        " ORDER BY e.outbox_id LIMIT 1",
        (sub[0],),
    ).fetchall()
    text = "\n".join(r[0] for r in plan)
    print(f"\n--- the head of an aggregate\n{text}")
    assert "deliveries_aggregate_pending" in text and "Sort" not in text, text


@pytest.mark.parametrize("mode", ["custom", "generic"])
def test_claim_looks_up_the_rows_it_ended_by_key(big_conn: Conn, mode: str) -> None:
    """After its lease, relay.claim_deliveries() looks up the deliveries it ended dead (to
    promote what they held back). By `status = 'dead' AND dead_at = now()` alone, the cached
    plan could walk deliveries_dead_id reading every dead row from the table; since 0011 it
    can read the due ids by primary key, and whichever index it picks, a condition bounds it."""
    row = big_conn.execute(
        "SELECT p.prosrc, coalesce(p.proconfig, '{}') FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'relay' AND p.proname = 'claim_deliveries'"
    ).fetchone()
    assert row is not None
    body, settings = row
    start = body.index("WITH ours AS MATERIALIZED")
    lookup = body[start : _statement_end(body, start)]
    lookup = re.sub(r"\bINTO ended_subs, ended_aggs, removed_subs\b", "", lookup)
    lookup = re.sub(r"\bdue_ids\b", "$1", lookup)
    plan, text = _explain(big_conn, lookup, [list(range(1, 101))], mode, settings, "(bigint[])")
    print(f"\n--- claim's ended lookup ({mode})\n{text}")
    scans = {
        str(n.get("Index Name")) for n in _nodes(plan) if n.get("Relation Name") == "deliveries"
    }
    assert scans == {"deliveries_pkey"}, text
