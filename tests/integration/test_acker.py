"""The Acker batches attempt outcomes into ack statements, against a real Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import relay.daemon.acker
from relay.daemon.acker import Acker
from relay.daemon.store import Ack, Job, PgStore
from relay.metrics import Metrics
from tests.relayctx import add_subscription, emit

Conn = psycopg.Connection[Any]


class CountingStore(PgStore):
    """A real PgStore that records the size of every ack statement it runs."""

    def __init__(self, url: str) -> None:
        super().__init__(url, pool_size=2, relay_id="relay-acker-test")
        self.ack_sizes: list[int] = []

    async def ack(self, acks: Sequence[Ack]) -> set[int]:
        self.ack_sizes.append(len(acks))
        return await super().ack(acks)


def _ack(job: Job) -> Ack:
    return Ack(job.id, job.token, "delivered", 0.0, 204, None, datetime.now(UTC), 1.0, None)


async def _leased_jobs(conn: Conn, store: PgStore, n: int) -> list[Job]:
    add_subscription(conn, "http://127.0.0.1:9/hook")
    for k in range(n):
        emit(conn, "order.created", {"k": k})
    _, _, jobs = await store.dispatch(n, lease_limit=n)
    assert len(jobs) == n
    return jobs


async def _delivered(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
    return int(row.fetchone()[0])  # type: ignore[index]


@pytest.fixture
async def acker(database_url: str) -> AsyncIterator[tuple[CountingStore, Acker]]:
    """A running Acker on a counting store."""
    store = CountingStore(database_url)
    await store.open()
    acker = Acker(store, Metrics())
    task = asyncio.create_task(acker.run())
    try:
        yield store, acker
    finally:
        await acker.close(5)
        task.cancel()
        await store.close()


async def _wait_delivered(conn: Conn, n: int) -> None:
    async with asyncio.timeout(5):
        while await _delivered(conn) < n:
            await asyncio.sleep(0.02)


async def test_a_lone_outcome_is_written_at_once(
    conn: Conn, acker: tuple[CountingStore, Acker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay.daemon.acker, "ACK_GATHER_SECONDS", 30.0)  # would show as a long wait
    store, ack = acker
    (job,) = await _leased_jobs(conn, store, 1)
    ack.put(job, _ack(job))
    await _wait_delivered(conn, 1)
    assert store.ack_sizes == [1]


async def test_outcomes_arriving_together_gather_into_one_statement(
    conn: Conn, acker: tuple[CountingStore, Acker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay.daemon.acker, "ACK_GATHER_SECONDS", 0.5)
    store, ack = acker
    jobs = await _leased_jobs(conn, store, 13)
    for job in jobs[:10]:
        ack.put(job, _ack(job))
    await asyncio.sleep(0.1)  # the acker is gathering: more outcomes come in
    for job in jobs[10:]:
        ack.put(job, _ack(job))
    await _wait_delivered(conn, 13)
    assert store.ack_sizes == [13]
