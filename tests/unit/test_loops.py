"""The daemon's loops without Postgres or HTTP: prefetch, saturation, claim sizing, dispatch
sizing, ack batching and backoff, against a scripted store (tests/unit/scripted_store.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import relay.daemon.acker
import relay.daemon.attempts
import relay.daemon.backoff
from relay.config import Config
from relay.daemon.acker import Acker
from relay.daemon.attempts import Attempts
from relay.daemon.backoff import Backoff
from relay.daemon.deliverer import Deliverer
from relay.daemon.dispatcher import Dispatcher
from relay.daemon.signals import Signals
from relay.daemon.store import Ack, Job
from relay.errors import DatabaseError
from relay.metrics import Metrics
from tests.unit.scripted_store import ScriptedSender, ScriptedStore, make_job

LEASE = 30.0


@dataclasses.dataclass
class Loops:
    """One relay's loops over a scripted store and sender (what relay.daemon.service wires)."""

    config: Config
    store: ScriptedStore
    sender: ScriptedSender
    signals: Signals
    attempts: Attempts
    deliverer: Deliverer
    dispatcher: Dispatcher
    outcomes: list[tuple[Job, Ack]]


def loops(**settings: Any) -> Loops:
    """The loops of one relay; its subscriptions uncapped (as many as concurrency) unless said."""
    settings.setdefault("subscription_concurrency", settings.get("concurrency"))
    config = Config(**{"lease_seconds": LEASE, "poll_interval": 0.01, **settings})
    store, sender, signals = ScriptedStore(), ScriptedSender(hold=True), Signals()
    metrics = Metrics(CollectorRegistry())
    outcomes: list[tuple[Job, Ack]] = []
    attempts = Attempts(
        config, store, sender, metrics, signals, on_outcome=lambda j, a: outcomes.append((j, a))
    )
    return Loops(
        config,
        store,
        sender,
        signals,
        attempts,
        Deliverer(config, store, metrics, attempts, signals),
        Dispatcher(config, store, metrics, attempts, signals),
        outcomes,
    )


async def settle(until: Callable[[], bool] = lambda: False, turns: int = 50) -> None:
    """Let the event loop run the ready callbacks (and the scripted coroutines) for a while."""
    for _ in range(turns):
        if until():
            return
        await asyncio.sleep(0)


async def finish_all(lo: Loops) -> None:
    """Let every held attempt answer and end (no task outlives its test)."""
    lo.sender.hold = False
    lo.sender.finish(*lo.sender.sent)
    await settle(lambda: not lo.attempts.in_flight)


# -- prefetch ----------------------------------------------------------------------------------
async def test_prefetch_leases_more_than_it_runs_and_starts_the_next_as_a_slot_frees() -> None:
    lo = loops(concurrency=2, prefetch=2)
    assert lo.attempts.lease_room() == 4  # request slots + prefetch
    await lo.attempts.start([make_job(i) for i in range(1, 5)], leased_at=_now())
    await settle()
    assert lo.sender.sent == [1, 2]  # two slots: two requests
    assert (lo.attempts.slots.running, lo.attempts.slots.ready) == (2, 2)
    assert lo.attempts.lease_room() == 0
    lo.signals.slot.clear()
    lo.sender.finish(1)
    await settle(lambda: lo.sender.sent == [1, 2, 3])
    assert lo.sender.sent == [1, 2, 3]  # the prefetched job took the freed slot at once
    assert [j.id for j, _ in lo.outcomes] == [1]
    assert lo.signals.slot.is_set()
    assert lo.store.calls == []  # no statement was needed for it
    await finish_all(lo)


async def test_without_prefetch_a_relay_leases_only_what_it_can_start() -> None:
    lo = loops(concurrency=3, prefetch=0)
    assert lo.attempts.lease_room() == 3
    await lo.attempts.start([make_job(1)], leased_at=_now())
    assert lo.attempts.lease_room() == 2
    with lo.attempts.reserving(2):  # a statement in progress holds the rest
        assert lo.attempts.lease_room() == 0
    assert lo.attempts.lease_room() == 2
    await finish_all(lo)


# -- graceful stop -----------------------------------------------------------------------------
async def test_a_stop_waits_for_each_request_s_own_timeout_then_releases_an_overrun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay.daemon.attempts, "DRAIN_MARGIN_SECONDS", 0.05)
    lo = loops(concurrency=2, prefetch=0, drain_timeout=0.01)
    # Job 1 may run 300 ms and answers at 100 ms; job 2 (50 ms) never answers: an overrun
    # (the real sender's own timeout makes that impossible; the drain still bounds it).
    await lo.attempts.start([make_job(1, timeout_ms=300), make_job(2, timeout_ms=50)], _now())
    await settle(lambda: len(lo.sender.sent) == 2)
    lo.signals.stop()
    asyncio.get_running_loop().call_later(0.1, lo.sender.finish, 1)
    await asyncio.wait_for(lo.attempts.drain(), 2.0)
    assert [j.id for j, _ in lo.outcomes] == [1]  # finished past the drain timeout: recorded
    assert lo.store.called("release") == [([2],)]  # overran its timeout + margin: released
    assert not lo.attempts.in_flight


# -- saturation --------------------------------------------------------------------------------
async def test_jobs_over_a_subscription_s_hold_limit_are_released_and_signalled() -> None:
    lo = loops(concurrency=4, subscription_concurrency=1, prefetch=4)
    assert lo.attempts.slots.subscription_hold_limit == 2  # its cap + as much prefetch
    lo.signals.take_due()
    await lo.attempts.start([make_job(i, sub=5) for i in (1, 2, 3)], leased_at=_now())
    assert lo.store.called("release") == [([3],)]
    assert lo.signals.take_due() == (True, [])  # released rows: due for a whole-room claim
    assert lo.attempts.slots.saturated() == [5]
    await finish_all(lo)


async def test_a_claim_skips_saturated_subscriptions_and_is_bounded_by_the_others() -> None:
    lo = loops(concurrency=4, subscription_concurrency=1, prefetch=4)
    await lo.attempts.start([make_job(1, sub=5), make_job(2, sub=5)], leased_at=_now())
    lo.store.script("claim", [])
    await lo.deliverer.step()
    # free slots 6, but any one subscription may hold only 2: a claim takes 2, skipping 5
    assert lo.store.called("claim") == [(2, LEASE, [5])]
    assert lo.deliverer.fruitless == frozenset({5})
    # the claim found nothing else due: when a slot of 5 frees, the deliverer looks again
    lo.signals.deliveries.clear()
    lo.sender.finish(1)
    await settle(lambda: lo.signals.deliveries.is_set())
    assert lo.signals.deliveries.is_set()
    await finish_all(lo)


async def test_dispatch_fans_out_unleased_when_only_a_saturated_subscription_lacks_room() -> None:
    lo = loops(concurrency=4, subscription_concurrency=1, prefetch=0)
    lo.attempts.subscriptions_changed(2)
    await lo.attempts.start([make_job(1, sub=5)], leased_at=_now())
    assert lo.attempts.lease_room() == 0  # the next events may all be for 5
    lo.store.script("dispatch", (3, 3, []))
    lo.signals.take_due()
    await lo.dispatcher.step()
    # a full batch, nothing leased: the deliverer claims around subscription 5
    assert lo.store.called("dispatch") == [(lo.config.dispatch_batch, 0, LEASE)]
    assert lo.signals.take_due() == (True, [])
    await finish_all(lo)


async def test_dispatch_waits_for_a_slot_when_every_subscription_is_saturated() -> None:
    lo = loops(concurrency=4, subscription_concurrency=1, prefetch=0)
    lo.attempts.subscriptions_changed(1)
    await lo.attempts.start([make_job(1, sub=5)], leased_at=_now())
    await lo.dispatcher.step()
    assert lo.store.called("dispatch") == []
    await finish_all(lo)


# -- dispatch and claim sizing -----------------------------------------------------------------
async def test_dispatch_batches_are_sized_by_room_and_recent_fan_out() -> None:
    lo = loops(concurrency=8, prefetch=0)
    lo.store.script("dispatch", (2, 8, [make_job(i, sub=i % 4) for i in range(8)]))
    await lo.dispatcher.step()
    assert lo.store.called("dispatch") == [(8, 8, LEASE)]  # no fan-out known yet: 1 per event
    assert lo.dispatcher.fanout_estimate == pytest.approx(1 + 0.3 * (4 - 1))
    await finish_all(lo)
    lo.store.script("dispatch", (0, 0, []))
    await lo.dispatcher.step()
    # 8 slots, ~1.9 deliveries per event: 4 events, whose ~7.6 deliveries all fit the slots
    # (5 would create ~9.5: some left unleased, for an extra claim statement)
    assert lo.store.called("dispatch")[1] == (4, 8, LEASE)


async def test_claims_are_sized_by_the_retries_due_after_a_short_claim() -> None:
    lo = loops(concurrency=16, prefetch=16)
    lo.store.script("claim", [], [])
    await lo.deliverer.step()
    assert lo.store.called("claim") == [(32, LEASE, [])]  # unknown work at start: the room
    lo.signals.retries_scheduled([0.0, 0.0, 0.0], now=0.0)  # 3 of our retries are due
    await lo.deliverer.step()
    # what is known due, at least a quarter of a batch (a claim of 1 costs as much as of 8)
    assert lo.store.called("claim")[1] == (8, LEASE, [])


async def test_a_wake_up_of_unknown_size_claims_the_whole_room_again() -> None:
    lo = loops(concurrency=16, prefetch=16)
    lo.store.script("claim", [], [])
    await lo.deliverer.step()
    lo.signals.deliveries_due()
    await lo.deliverer.step()
    assert [c[0] for c in lo.store.called("claim")] == [32, 32]


async def test_the_deliverer_sleeps_until_the_next_retry_is_due() -> None:
    lo = loops(concurrency=4, prefetch=0, poll_interval=30.0)
    lo.store.script("claim", [])
    lo.store.script("seconds_until_due", 0.0)  # due already: no sleep at all
    await asyncio.wait_for(lo.deliverer.step(), 5.0)
    assert lo.store.called("seconds_until_due") == [([],)]
    assert lo.signals.deliverer_sleeps_until is None


# -- ack batching ------------------------------------------------------------------------------
def _ack(job: Job, outcome: str = "delivered", delay: float = 0.0) -> Ack:
    return Ack(job.id, job.token, outcome, delay, 204, None, datetime.now(UTC), 1.0, None)


@pytest.fixture
async def acker() -> AsyncIterator[tuple[ScriptedStore, Acker, Signals]]:
    store, signals = ScriptedStore(), Signals()
    acker = Acker(store, Metrics(CollectorRegistry()), signals)
    task = asyncio.create_task(acker.run())
    yield store, acker, signals
    await acker.close(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_lone_outcome_is_written_at_once(
    acker: tuple[ScriptedStore, Acker, Signals], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ack, _ = acker
    monkeypatch.setattr(relay.daemon.acker, "ACK_GATHER_SECONDS", 30.0)  # would hang the test
    job = make_job(1)
    ack.put(job, _ack(job))
    await settle(lambda: bool(store.calls))
    assert [len(args[0]) for args in store.called("ack")] == [1]


async def test_outcomes_arriving_together_share_one_statement_up_to_the_batch_limit(
    acker: tuple[ScriptedStore, Acker, Signals], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ack, _ = acker
    monkeypatch.setattr(relay.daemon.acker, "ACK_BATCH_MAX", 2)
    for i in range(5):
        job = make_job(i)
        ack.put(job, _ack(job))
    await ack.close(5.0)
    assert [len(args[0]) for args in store.called("ack")] == [2, 2, 1]


async def test_a_failed_ack_is_retried_with_backoff_and_keeps_its_outcomes(
    acker: tuple[ScriptedStore, Acker, Signals], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, ack, _ = acker
    monkeypatch.setattr(relay.daemon.backoff, "ERROR_BACKOFF_MIN", 0.001)
    store.script("ack", DatabaseError("connection lost"))
    job = make_job(1)
    ack.put(job, _ack(job))
    await ack.close(5.0)
    calls = store.called("ack")
    assert len(calls) == 2 and calls[0] == calls[1]


async def test_accepted_retries_are_signalled_to_the_deliverer(
    acker: tuple[ScriptedStore, Acker, Signals],
) -> None:
    store, ack, signals = acker
    signals.take_due()
    ours, lost = make_job(1), make_job(2)
    store.script("ack", {1})  # job 2's lease went to another relay
    ack.put(ours, _ack(ours, "retry", 5.0))
    ack.put(lost, _ack(lost, "retry", 1.0))
    await ack.close(5.0)
    unknown, due = signals.take_due()
    assert not unknown and len(due) == 1  # only the accepted retry is counted


# -- backoff -----------------------------------------------------------------------------------
def test_backoff_doubles_up_to_its_bound_and_resets() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.failed() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.failed() == 0.1


def test_backoff_defaults_are_tunables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay.daemon.backoff, "ERROR_BACKOFF_MAX", 0.15)
    b = Backoff()
    assert [b.failed() for _ in range(3)] == [0.1, 0.15, 0.15]


def _now() -> float:
    return asyncio.get_running_loop().time()
