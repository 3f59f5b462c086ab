"""The ``ordered`` scenario: ordered subscriptions against unordered ones (issue 13).

1. 20,000 events over 1,000 aggregates to one subscription, unordered then ordered: drain
   rates (target: ordered >= 0.8x unordered), and order violations seen by the receiver
   (first successful arrival of each event, per aggregate; must be 0 when ordered).
2. 20,000 events of a single aggregate to an ordered subscription: one request per round
   trip, and the claim statement's time with the whole backlog parked (start), half of it,
   and none (end): it must not grow with the backlog.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import psycopg

from bench.harness import ReceiverProc, add_subscriptions, log
from bench.scenarios import Context, _drain, _strip
from relay.sql import q

AGGREGATES = 1_000

BACKLOG_SQL = """
INSERT INTO relay.outbox (event_type, payload, aggregate_id)
SELECT 'order.created', jsonb_build_object('k', g, 'orderId', 'ord-' || (g %% %(aggs)s)),
       'ord-' || (g %% %(aggs)s)
FROM generate_series(1, %(n)s::bigint) AS g
"""


def _backlog(db: str, n: int, aggregates: int) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(BACKLOG_SQL, {"n": n, "aggs": aggregates})
        conn.execute("ANALYZE relay.outbox")


def _set_ordered(db: str, ordered: bool) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE relay.subscriptions SET ordered = %s", (ordered,))


def _violations(dump: dict[str, Any], aggregates: int) -> int:
    """Events whose first successful arrival came after a later event of its aggregate."""
    seen: set[int] = set()
    last: dict[int, int] = {}
    bad = 0
    order = sorted(
        (a, k) for k, a, ok in zip(dump["keys"], dump["arrivals"], dump["ok"], strict=True) if ok
    )
    for _, k in order:
        if k in seen:
            continue
        seen.add(k)
        agg = k % aggregates
        if last.get(agg, -1) > k:
            bad += 1
        last[agg] = max(last.get(agg, -1), k)
    return bad


def claim_ms(db: str, runs: int = 15) -> float:
    """Median time of the claim statement (undone each time), as a relay runs it."""
    params = {"limit": 100, "saturated": [], "owner": "bench", "lease_seconds": 60.0}
    times = []
    with psycopg.connect(db) as conn:
        for _ in range(runs + 1):
            with conn.transaction(force_rollback=True):
                t0 = time.perf_counter()
                conn.execute(q("claim_deliveries"), {**params, "token": uuid.uuid4()}).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times[1:]), 3)  # the first call plans the function


def ordered(ctx: Context) -> dict[str, Any]:
    n = ctx.settings.drain_n
    out: dict[str, Any] = {"events": n, "aggregates": AGGREGATES}
    for is_ordered in (False, True):
        label = "ordered" if is_ordered else "unordered"
        with ctx.dbs.fresh(f"ordered_{label}") as db, ReceiverProc(workdir=ctx.workdir) as rx:
            add_subscriptions(db, [rx.url("/hook")])
            _set_ordered(db, is_ordered)
            _backlog(db, n, AGGREGATES)
            log(f"ordered: {n} events over {AGGREGATES} aggregates, {label}")
            res = _drain(
                ctx, db, rx, expected_ok=n, n_relays=1, timeout=max(120.0, n / 50), label=label
            )
            res["order_violations"] = _violations(res["_dump"], AGGREGATES)
        out[label] = _strip(res)
        log(f"ordered {label}: {res.get('rate_per_s')} deliveries/s")
    a, b = out["ordered"].get("rate_per_s"), out["unordered"].get("rate_per_s")
    out["ratio_ordered_to_unordered"] = round(a / b, 3) if a and b else None

    # 2. one aggregate: one request per round trip; the claim's cost against the backlog
    with ctx.dbs.fresh("ordered_single") as db, ReceiverProc(workdir=ctx.workdir) as rx:
        add_subscriptions(db, [rx.url("/hook")])
        _set_ordered(db, True)
        _backlog(db, n, 1)
        with psycopg.connect(db, autocommit=True) as conn:  # fan out: the head due, rest parked
            conn.execute(
                "SELECT count(*) FROM relay.dispatch_outbox(%s, 0, 'b', %s, 60)", (n, uuid.uuid4())
            )
            conn.execute("VACUUM ANALYZE relay.deliveries")
        claims = {f"start_backlog_{n}": claim_ms(db)}
        half = [False]

        def on_poll(st: dict[str, Any], procs: Any) -> None:
            if not half[0] and st["ok"] >= n // 2:
                half[0] = True
                claims[f"half_backlog_{n - st['ok']}"] = claim_ms(db, runs=5)

        log(f"ordered: {n} events of one aggregate")
        res = _drain(
            ctx,
            db,
            rx,
            expected_ok=n,
            n_relays=1,
            timeout=max(300.0, n / 20),
            label="single aggregate",
            on_poll=on_poll,
        )
        claims["end_backlog_0"] = claim_ms(db)
        res["claim_statement_ms"] = claims
        res["order_violations"] = _violations(res["_dump"], 1)
        out["single_aggregate"] = _strip(res)
        log(f"ordered single aggregate: {res.get('rate_per_s')} deliveries/s; claims {claims}")
    return out
