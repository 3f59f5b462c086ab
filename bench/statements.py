"""Postgres CPU per delivery of relay's own statements, without HTTP: dispatch, then ack.

    python -m bench.statements [--events 20000] [--batch 50] [--analyze-empty]
                               [--payload-bytes 0] [--subscriptions 1] [--sizes]
                               [--then-sql FILE]

Creates a scratch database on the server (``RELAY_BENCH_DATABASE_URL``, default the local
test server), one subscription and ``--events`` outbox rows, then loops as a relay does under
load: ``PgStore.dispatch`` leasing ``--batch`` deliveries, ``PgStore.ack`` of all of them
delivered. Dispatch and ack run on two connections, so the CPU time of each backend
(``/proc/PID/stat``) is each statement's own. ``--analyze-empty`` runs ``VACUUM ANALYZE`` on
relay's tables while they are still empty, as after an install: the statistics state in
which planner-chosen plans went wrong (migration 0003). ``--payload-bytes`` pads each
payload with a string of that many characters (hex digits, compressing about as badly as
real JSON does). ``--subscriptions`` fans each event out to that many subscriptions.
``--sizes`` then prints the bytes per event of the history tables (table + indexes + TOAST of
``outbox``, ``deliveries``, ``delivery_attempts``) after a VACUUM (the files as they are:
what the queue's updates left for reuse included) and after a VACUUM FULL (packed: the rows
and index entries themselves). ``--then-sql`` runs a file of SQL after the migrations: a
candidate schema change measured beside the current one without a second checkout. The
database is dropped at the end.

A quick, low-noise way to compare SQL changes: run it from two checkouts in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime

import psycopg

from relay.daemon.store import Ack, PgStore
from relay.sql.migrate import migrate

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
HISTORY = ("outbox", "deliveries", "delivery_attempts")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _backend_pid(store: PgStore) -> int:
    async with store.pool.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


def _setup(
    url: str, events: int, analyze_empty: bool, pad: int, subscriptions: int, then_sql: str
) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        if then_sql:
            conn.execute(then_sql.encode())
        if analyze_empty:
            for table in HISTORY:
                conn.execute(f"VACUUM ANALYZE relay.{table}")
        for _ in range(subscriptions):
            conn.execute("INSERT INTO relay.subscriptions (url) VALUES ('http://127.0.0.1:9/hook')")
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created',"
            "        jsonb_build_object('k', g, 't', 1732800000.123, 'pad', left("
            "            (SELECT string_agg(md5(g || '.' || i), '')"
            "             FROM generate_series(0, %s / 32) i), %s))"
            " FROM generate_series(1, %s) g",
            (pad, pad, events),
        )
        conn.execute("ANALYZE relay.outbox")


async def _measure(url: str, deliveries: int, batch: int) -> str:
    dispatcher = PgStore(url, pool_size=1, relay_id="bench-dispatch")
    acker = PgStore(url, pool_size=1, relay_id="bench-ack")
    await dispatcher.open()
    await acker.open()
    try:
        pids = await _backend_pid(dispatcher), await _backend_pid(acker)
        before = [_cpu_seconds(p) for p in pids]
        done = 0
        t0 = time.perf_counter()
        while done < deliveries:
            # every delivery a dispatch creates is leased by it (up to a batch of events)
            _, _, jobs = await dispatcher.dispatch(batch, deliveries, 60.0)
            if not jobs:
                break
            now = datetime.now(UTC)
            await acker.ack(
                [Ack(j.id, j.token, "delivered", 0.0, 204, None, now, 1.0, None) for j in jobs]
            )
            done += len(jobs)
        wall = time.perf_counter() - t0
        d_us, a_us = ((_cpu_seconds(p) - b) / done * 1e6 for p, b in zip(pids, before, strict=True))
    finally:
        await dispatcher.close()
        await acker.close()
    return (
        f"{done} deliveries, {batch} events a dispatch: Postgres CPU per delivery"
        f" dispatch {d_us:.1f}"
        f" + ack {a_us:.1f} = {d_us + a_us:.1f} us; {done / wall:,.0f} deliveries/s"
    )


def _sizes(url: str, events: int) -> str:
    """Bytes per event of the history tables, after VACUUM and after VACUUM FULL."""
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        for how in ("VACUUM", "VACUUM FULL"):
            for table in HISTORY:
                conn.execute(f"{how} relay.{table}")
            sizes = {
                t: int(
                    conn.execute(
                        "SELECT pg_total_relation_size(%s::regclass)", (f"relay.{t}",)
                    ).fetchone()[0]  # type: ignore[index]
                )
                / events
                for t in HISTORY
            }
            parts = ", ".join(f"{t} {b:.0f}" for t, b in sizes.items())
            out.append(f"after {how}: {sum(sizes.values()):.0f} bytes/event ({parts})")
    return "; ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--analyze-empty", action="store_true")
    parser.add_argument("--payload-bytes", type=int, default=0)
    parser.add_argument("--subscriptions", type=int, default=1)
    parser.add_argument("--sizes", action="store_true")
    parser.add_argument("--then-sql", metavar="FILE")
    args = parser.parse_args()
    then_sql = ""
    if args.then_sql:
        with open(args.then_sql) as f:
            then_sql = f.read()
    server = os.environ.get("RELAY_BENCH_DATABASE_URL", DEFAULT_SERVER)
    name = f"relay_bench_statements_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = psycopg.conninfo.make_conninfo(server, dbname=name)
        _setup(
            url, args.events, args.analyze_empty, args.payload_bytes, args.subscriptions, then_sql
        )
        print(asyncio.run(_measure(url, args.events * args.subscriptions, args.batch)))
        if args.sizes:
            print(_sizes(url, args.events))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
