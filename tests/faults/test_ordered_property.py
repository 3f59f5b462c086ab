"""Ordered subscriptions as a property: random aggregates, random receiver failures, two
relays on one database; each aggregate's events arrive in outbox id order, counting the
first successful arrival of each webhook-id (a retry or a duplicate after it is allowed)."""

from __future__ import annotations

import asyncio
import json
import random

import psycopg
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults._util import report
from tests.receiver import Behaviour, Receiver
from tests.relayctx import add_subscription, running_relay, wait_until


class Flaky(Behaviour):
    """Fails a request with probability ``p`` (seeded); records every answer."""

    def __init__(self, p: float, seed: int) -> None:
        self.p = p
        self.rng = random.Random(seed)
        self.log: list[tuple[str, str | None, int, int]] = []  # webhook-id, agg, seq, status

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        body = json.loads(await request.read())
        status = 500 if self.rng.random() < self.p else 204
        self.log.append((request.headers["webhook-id"], body["agg"], body["seq"], status))
        return web.Response(status=status)


def first_successes(log: list[tuple[str, str | None, int, int]]) -> dict[str | None, list[int]]:
    seen: set[str] = set()
    order: dict[str | None, list[int]] = {}
    for webhook_id, agg, seq, status in log:
        if status < 300 and webhook_id not in seen:
            seen.add(webhook_id)
            order.setdefault(agg, []).append(seq)
    return order


async def _scenario(url: str, events: list[str | None], p: float, seed: int) -> None:
    flaky = Flaky(p, seed)
    async with Receiver(default=flaky) as rx:
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("delivery_attempts", "deliveries", "outbox", "subscriptions"):
                conn.execute(f"DELETE FROM relay.{table}")
            add_subscription(conn, rx.url(), ordered=True, backoff_ms=20, max_retries=50)
            async with running_relay(url, concurrency=8), running_relay(url, concurrency=8):
                # emitted while both relays dispatch: their fan-outs race
                for seq, agg in enumerate(events):
                    conn.execute(
                        "SELECT relay.emit('order.created', %s::jsonb, %s)",
                        (json.dumps({"agg": agg, "seq": seq}), agg),
                    )
                    if seq % 3 == 0:
                        await asyncio.sleep(0.005)

                def done() -> bool:
                    row = conn.execute(
                        "SELECT count(*) FILTER (WHERE status = 'delivered'), count(*)"
                        " FROM relay.deliveries"
                    ).fetchone()
                    return row is not None and row[0] == row[1] == len(events)

                await wait_until(done, timeout=30)
    order = first_successes(flaky.log)
    for agg, seqs in order.items():
        if agg is not None:
            assert seqs == sorted(seqs), (agg, seqs, flaky.log)
    assert sum(len(s) for s in order.values()) == len(events)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=1, max_size=30),
    p=st.sampled_from([0.0, 0.2, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_each_aggregate_arrives_in_outbox_id_order(
    database_url: str, events: list[str | None], p: float, seed: int
) -> None:
    asyncio.run(_scenario(database_url, events, p, seed))
    report("ordered property example", events=len(events), failure_rate=p)
