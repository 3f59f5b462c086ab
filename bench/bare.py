"""The issue's reference point: a bare hand-written claim-100 + POST loop.

As lean as such a loop can be: uvloop, the payload taken as Postgres's JSON text and wrapped by
string concatenation (no JSON decode or encode), constant headers, ``webhook-id`` from the row id.
No fan-out, no subscriptions, no attempt log, no retries (a failed POST is simply left out of
``bare_done``), no metrics: claim up to 100 undispatched outbox rows (``FOR UPDATE SKIP
LOCKED``, marking them in the same statement), POST each one's notification to one URL (at
most ``BARE_CONCURRENCY`` requests in flight), and record the batch as done in one INSERT.
Several claim loops share one aiohttp session so the HTTP side never waits on a single loop's
statement. It is what a drain costs with the
least bookkeeping a durable queue can get away with, so the drain scenario can report relay's
rate against it on the same machine, in the same run.

Configured by environment (it is started like a relay, by :class:`bench.harness.RelayProc`):
``RELAY_DATABASE_URL``, ``BARE_TARGET_URL``, ``BARE_CONCURRENCY`` (64), ``BARE_BATCH`` (100),
``BARE_LOOPS`` (3). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import psycopg

import relay

CLAIM = """
UPDATE relay.outbox o SET dispatched_at = now()
FROM (SELECT id FROM relay.outbox WHERE dispatched_at IS NULL
      ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED) c
WHERE o.id = c.id
RETURNING o.id, upper(o.event_type), o.version, o.payload::text
"""
DONE = "INSERT INTO bare_done (id) SELECT unnest(%(ids)s::bigint[])"
HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": f"relay-bench-bare/{relay.__version__}",
}
SETUP = "CREATE TABLE IF NOT EXISTS bare_done (id bigint PRIMARY KEY)"


async def _post(
    session: aiohttp.ClientSession, sem: asyncio.Semaphore, url: str, row: tuple[Any, ...]
) -> bool:
    id_, name, version, payload = row
    # The notification by concatenation: Postgres already renders the payload as JSON text,
    # so the loop neither decodes nor re-encodes it (the least CPU a sender can spend).
    body = f'{{"eventType":"{name}","version":"{version}",{payload[1:]}'.encode()
    headers = {**HEADERS, "webhook-id": f"msg_{id_}", "webhook-timestamp": str(int(time.time()))}
    async with sem:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status < 300
        except aiohttp.ClientError:
            return False


async def _loop(
    db_url: str,
    session: aiohttp.ClientSession,
    sem: asyncio.Semaphore,
    url: str,
    batch: int,
    stop: asyncio.Event,
) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        while not stop.is_set():
            cur = await conn.execute(CLAIM, {"batch": batch})
            rows = await cur.fetchall()
            if not rows:
                await asyncio.sleep(0.01)
                continue
            oks = await asyncio.gather(*(_post(session, sem, url, r) for r in rows))
            await conn.execute(DONE, {"ids": [r[0] for r, ok in zip(rows, oks, strict=True) if ok]})


async def main() -> None:
    db_url = os.environ["RELAY_DATABASE_URL"]
    url = os.environ["BARE_TARGET_URL"]
    concurrency = int(os.environ.get("BARE_CONCURRENCY", "64"))
    batch = int(os.environ.get("BARE_BATCH", "100"))
    loops = int(os.environ.get("BARE_LOOPS", "3"))
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(SETUP)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        await asyncio.gather(*(_loop(db_url, session, sem, url, batch, stop) for _ in range(loops)))


if __name__ == "__main__":
    import uvloop  # as relay runs (uvloop: less CPU per request)

    uvloop.run(main())
