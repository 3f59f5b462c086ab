"""Retention scenarios (issue 17): history reads at scale, pruning vs delivery, a soak.

- ``history``: builds ``history_n`` deliveries of history with SQL (generate_series), then
  times every history read an operator or the daemon makes (`relay status`, `delivery list`
  with each filter, `delivery show`, the gauge refresh, the history-size gauge) and one prune
  batch; then compares pruning a tenth of it by batched DELETE with dropping a time partition
  holding the same rows.
- ``prune_drain``: the drain rate of one relay with and without pruning running (the same
  prunable history in both runs; ``RELAY_RETENTION`` 1d vs off).
- ``soak``: steady load with a short retention: table + index sizes every few seconds (they
  must reach a plateau), and the claim's cost over time (it must not grow).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from bench.harness import ReceiverProc, add_subscriptions, insert_backlog, log, relays
from relay import admin
from relay.admin import retention
from relay.sql import EXACT_COUNT_BELOW, q

Conn = psycopg.Connection[Any]
TABLES = ("outbox", "deliveries", "delivery_attempts")


def _fill_history(conn: Conn, n: int, subs: int = 2) -> None:
    """``n`` deliveries (``n / subs`` events, one attempt each) spread over the last 10 days:
    2% dead, 0.5% pending, the rest delivered; every 50th event of a rare type."""
    events = n // subs
    conn.execute("SET session_replication_role = replica")  # no FK checks, no NOTIFY
    for s in range(subs):
        conn.execute("INSERT INTO relay.subscriptions (url) VALUES (%s)", (f"http://h{s}/",))
    conn.execute(
        """INSERT INTO relay.outbox (event_type, payload, aggregate_id, created_at, dispatched_at)
           SELECT CASE WHEN g %% 50 = 0 THEN 'test.processed' ELSE 'order.created' END,
                  jsonb_build_object('orderId', 'ord-' || g, 'customerId', 'cus-' || (g %% 997),
                                     'amount', 42.5, 'currency', 'EUR', 'items', 3),
                  'ord-' || g, t, t
           FROM generate_series(1, %(e)s) g,
                LATERAL (SELECT now() - make_interval(secs => 864000.0 * (%(e)s - g) / %(e)s)
                         AS t) ts""",
        {"e": events},
    )
    conn.execute(
        """INSERT INTO relay.deliveries
               (outbox_id, subscription_id, event_type, status, attempts, delivered_at,
                dead_at, next_attempt_at, created_at, updated_at)
           SELECT o.id, s.id, o.event_type, st.status, 1,
                  CASE WHEN st.status = 'delivered' THEN o.created_at END,
                  CASE WHEN st.status = 'dead' THEN o.created_at END,
                  o.created_at, o.created_at, o.created_at
           FROM relay.outbox o CROSS JOIN relay.subscriptions s,
                LATERAL (SELECT CASE WHEN (o.id + s.id) % 200 < 4 THEN 'dead'
                                     WHEN (o.id + s.id) % 200 = 4 THEN 'pending'
                                     ELSE 'delivered' END AS status) st"""
    )
    conn.execute(
        """INSERT INTO relay.delivery_attempts
               (delivery_id, attempt, relay_id, started_at, duration_ms, status_code)
           SELECT id, 1, 'bench', created_at, 3.0, 204 FROM relay.deliveries"""
    )
    conn.execute("RESET session_replication_role")
    for table in TABLES:
        conn.execute(f"VACUUM ANALYZE relay.{table}")


def _ms(fn: Callable[[], object], runs: int = 5) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def _sizes(conn: Conn) -> dict[str, int]:
    return {str(name): int(size) for name, size in conn.execute(q("history_bytes")).fetchall()}


def history(ctx: Any) -> dict[str, Any]:
    n = ctx.settings.history_n
    out: dict[str, Any] = {"deliveries": n}
    with ctx.dbs.fresh("history") as db, psycopg.connect(db, autocommit=True) as conn:
        t0 = time.monotonic()
        _fill_history(conn, n)
        out["build_s"] = round(time.monotonic() - t0, 1)
        out["bytes"] = _sizes(conn)
        log(f"history: {n} deliveries built in {out['build_s']}s, {out['bytes']}")
        some = int(conn.execute("SELECT max(id) / 2 FROM relay.deliveries").fetchone()[0])  # type: ignore[index]
        reads: dict[str, Callable[[], object]] = {
            "status": lambda: admin.status(conn),
            "list": lambda: admin.list_deliveries(conn),
            "list_status_pending": lambda: admin.list_deliveries(conn, status="pending"),
            "list_status_delivered": lambda: admin.list_deliveries(conn, status="delivered"),
            "list_status_dead": lambda: admin.list_deliveries(conn, status="dead"),
            "list_subscription": lambda: admin.list_deliveries(conn, subscription_id=2),
            "list_event_type": lambda: admin.list_deliveries(conn, event_type="test.processed"),
            "show": lambda: admin.get_delivery(conn, some),
            "gauge_refresh": lambda: conn.execute(
                q("refresh_stats"),
                {"relay_id": "bench", "interval": 0.0, "exact_below": EXACT_COUNT_BELOW},
            ),
            "history_bytes_gauge": lambda: _sizes(conn),
        }
        out["reads"] = {name: _ms(fn) for name, fn in reads.items()}
        log(f"history reads: {out['reads']}")

        # one prune batch of the daemon (2000 delivered + 2000 dead at most), in a transaction
        # rolled back so every run deletes the same rows
        def batch() -> None:
            with conn.transaction(force_rollback=True):
                conn.execute(q("prune_deliveries"), {"older_than": 9 * 86400.0, "limit": 2000})

        out["prune_batch_2000"] = _ms(batch, 3)
        out["partition_vs_delete"] = _partition_vs_delete(conn)
    return out


def _partition_vs_delete(conn: Conn) -> dict[str, Any]:
    """Removing the oldest day of 10 by batched DELETE (relay's prune) vs DROP of a daily
    partition of a copy of deliveries + attempts partitioned by day."""
    res: dict[str, Any] = {}
    older = 9 * 86400.0  # the oldest of the ten days
    row = retention.preview(conn, int(older))
    res["rows"] = row
    conn.execute("CREATE SCHEMA IF NOT EXISTS bench_part")
    conn.execute(
        "CREATE TABLE bench_part.deliveries (LIKE relay.deliveries INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (created_at)"
    )
    conn.execute(
        "CREATE TABLE bench_part.attempts (LIKE relay.delivery_attempts INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (started_at)"
    )
    # one fixed "now" for every bound (now() moves between autocommit statements); the last
    # partition takes rows stamped after it
    row0 = conn.execute("SELECT now()").fetchone()
    assert row0 is not None
    base = row0[0]
    for d in range(11):
        for table in ("deliveries", "attempts"):
            upper = "MAXVALUE" if d == 0 else f"'{base}'::timestamptz - interval '{d} days'"
            conn.execute(
                f"CREATE TABLE bench_part.{table}_{d} PARTITION OF bench_part.{table} FOR VALUES "
                f"FROM ('{base}'::timestamptz - interval '{d + 1} days') TO ({upper})"
            )
    conn.execute("INSERT INTO bench_part.deliveries SELECT * FROM relay.deliveries")
    conn.execute("INSERT INTO bench_part.attempts SELECT * FROM relay.delivery_attempts")
    t0 = time.perf_counter()
    with conn.transaction():
        for table in ("deliveries", "attempts"):
            conn.execute(f"ALTER TABLE bench_part.{table} DETACH PARTITION bench_part.{table}_9")
            conn.execute(f"DROP TABLE bench_part.{table}_9")
    res["drop_partition_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    t0 = time.perf_counter()
    pruned = retention.prune(conn, int(older))
    res["batched_delete_s"] = round(time.perf_counter() - t0, 2)
    res["batched_delete_rows"] = pruned
    total = pruned["deliveries"] + pruned["delivery_attempts"] + pruned["outbox"]
    res["batched_delete_rows_per_s"] = round(total / max(res["batched_delete_s"], 1e-6))
    conn.execute("DROP SCHEMA bench_part CASCADE")
    log(f"history: partition drop {res['drop_partition_ms']} ms vs batched delete "
        f"{res['batched_delete_s']} s for {pruned}")  # fmt: skip
    return res


def prune_drain(ctx: Any) -> dict[str, Any]:
    """Drain rate with pruning running vs without, same prunable history in both runs."""
    from bench.scenarios import _drain, _strip  # imported late: scenarios imports this module

    s = ctx.settings
    out: dict[str, Any] = {"events": s.drain_n, "prunable_deliveries": s.prune_history_n}
    for label, setting in (
        ("without_pruning", "off"),
        ("with_pruning", "1d"),
        ("without_pruning_2", "off"),
    ):
        with ctx.dbs.fresh(f"prune_{setting}") as db, ReceiverProc(workdir=ctx.workdir) as rx:
            with psycopg.connect(db, autocommit=True) as conn:
                _fill_history(conn, s.prune_history_n, subs=1)
                # all of it finished days ago: prunable with a 1d retention
                conn.execute("UPDATE relay.subscriptions SET enabled = false")
            add_subscriptions(db, [rx.url("/hook")])
            insert_backlog(db, s.drain_n)
            saved = dict(s.relay_env)
            s.relay_env["RELAY_RETENTION"] = setting
            try:
                res = _drain(
                    ctx, db, rx, expected_ok=s.drain_n, n_relays=1,
                    timeout=max(120.0, s.drain_n / 50), label=f"prune_drain_{label}",
                )  # fmt: skip
            finally:
                s.relay_env.clear()
                s.relay_env.update(saved)
        res = _strip(res)
        out[label] = {
            "rate_per_s": res.get("rate_per_s"),
            "drain_s": res.get("drain_s"),
            "pruned_rows": {
                k: v for k, v in res.get("relay_counters", {}).items() if "pruned" in k
            },
        }
        log(f"prune_drain {label}: {out[label]}")
    base = [out[k]["rate_per_s"] for k in ("without_pruning", "without_pruning_2")]
    if all(base) and out["with_pruning"]["rate_per_s"]:
        out["ratio"] = round(out["with_pruning"]["rate_per_s"] / statistics.mean(base), 3)
    return out


def soak(ctx: Any) -> dict[str, Any]:
    """Steady load, retention ``soak_retention``: sizes and claim cost every few seconds."""
    s = ctx.settings
    out: dict[str, Any] = {
        "rate_per_s": s.soak_rate,
        "seconds": s.soak_seconds,
        "retention": s.soak_retention,
    }
    curve: list[dict[str, Any]] = []
    with ctx.dbs.fresh("soak") as db, ReceiverProc(workdir=ctx.workdir) as rx:
        add_subscriptions(db, [rx.url("/hook"), rx.url("/hook2")])
        stop = threading.Event()
        emitted = [0]

        def emit() -> None:
            per_tick = max(1, round(s.soak_rate / 10))
            with psycopg.connect(db, autocommit=True) as c:
                nxt = time.monotonic()
                while not stop.is_set():
                    c.execute(
                        """INSERT INTO relay.outbox (event_type, payload, aggregate_id)
                           SELECT 'order.created',
                                  jsonb_build_object('k', g, 'orderId', 'ord-' || g,
                                                     'customerId', 'cus-' || (g %% 997),
                                                     'amount', 42.5, 'currency', 'EUR',
                                                     'items', 3), 'ord-' || g
                           FROM generate_series(%s::bigint, %s::bigint) g""",
                        (emitted[0] + 1, emitted[0] + per_tick),
                    )
                    emitted[0] += per_tick
                    nxt += 0.1
                    time.sleep(max(0.0, nxt - time.monotonic()))

        env = {"RELAY_RETENTION": s.soak_retention, "RELAY_LOG_LEVEL": "info"}
        with (
            relays(db, 1, ctx.workdir, extra_env=env) as procs,
            psycopg.connect(db, autocommit=True) as conn,
        ):
            thread = threading.Thread(target=emit, daemon=True)
            thread.start()
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < s.soak_seconds:
                    time.sleep(s.soak_sample_s)
                    if not procs[0].alive():
                        raise RuntimeError(procs[0].stderr_tail())
                    sizes = _sizes(conn)
                    with conn.transaction(force_rollback=True):
                        c0 = time.perf_counter()
                        conn.execute("SELECT count(*) FROM relay.claim_due(100, '{}')")
                        claim_ms = (time.perf_counter() - c0) * 1000
                    rows = conn.execute(
                        "SELECT (SELECT count(*) FROM relay.deliveries),"
                        " (SELECT count(*) FROM relay.outbox)"
                    ).fetchone()
                    assert rows is not None
                    point = {
                        "t": round(time.monotonic() - t0),
                        "total_bytes": sum(sizes.values()),
                        **{f"{k}_bytes": v for k, v in sizes.items()},
                        "deliveries_rows": int(rows[0]),
                        "outbox_rows": int(rows[1]),
                        "claim_ms": round(claim_ms, 2),
                        "emitted": emitted[0],
                        "received_ok": rx.stats()["ok"],
                    }
                    curve.append(point)
                    ctx.partial["soak"] = {"curve": curve}
                    log(f"soak: {point}")
            finally:
                stop.set()
                thread.join(5)
    out["curve"] = curve
    if len(curve) >= 4:
        half = len(curve) // 2
        out["max_bytes_first_half"] = max(p["total_bytes"] for p in curve[:half])
        out["max_bytes_second_half"] = max(p["total_bytes"] for p in curve[half:])
        out["claim_ms_first_half_median"] = statistics.median(p["claim_ms"] for p in curve[:half])
        out["claim_ms_second_half_median"] = statistics.median(p["claim_ms"] for p in curve[half:])
    return out
