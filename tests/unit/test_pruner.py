"""The pruner's loop against a scripted store: a pass that deleted many rows is followed by a
vacuum of the history tables (autovacuum lagged behind it in the soak), a small one is not,
and ``--no-vacuum`` turns it off."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

import relay.daemon.pruner as pruner_mod
from relay.config import Config
from relay.daemon.pruner import Pruner
from relay.metrics import Metrics
from tests.unit.scripted_store import ScriptedStore


async def _one_step(store: ScriptedStore, *, vacuum: bool = True) -> None:
    config = Config(retention="1h", gauge_interval=0.01, vacuum=vacuum)
    pruner = Pruner(config, store, Metrics(CollectorRegistry()), asyncio.Event())
    await pruner.step()


@pytest.fixture(autouse=True)
def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pruner_mod, "PRUNE_BATCH", 10)
    monkeypatch.setattr(pruner_mod, "PRUNE_PAUSE", 0.0)
    monkeypatch.setattr(pruner_mod, "PRUNE_VACUUM_ROWS", 30)


async def test_a_pass_that_deleted_many_rows_vacuums_what_needs_it() -> None:
    store = ScriptedStore()
    # 10 + 10 + 3 deliveries with as many attempts, then 9 outbox rows: 55 rows
    store.script("prune_deliveries", (True, 10, 10), (True, 10, 10), (True, 3, 3))
    store.script("prune_outbox", (True, 9, 9, True))
    store.script("vacuum_if_needed", ["deliveries"])
    await _one_step(store)
    assert store.called("vacuum_if_needed") == [(30, pruner_mod.PRUNE_INTERVAL)]


async def test_a_small_pass_leaves_vacuum_to_autovacuum() -> None:
    store = ScriptedStore()
    store.script("prune_deliveries", (True, 5, 5))
    store.script("prune_outbox", (True, 5, 5, True))
    await _one_step(store)
    assert store.called("vacuum_if_needed") == []


async def test_no_vacuum_turns_the_pass_vacuum_off() -> None:
    store = ScriptedStore()
    store.script("prune_deliveries", (True, 10, 10), (True, 10, 10), (True, 3, 3))
    await _one_step(store, vacuum=False)
    assert store.called("prune_deliveries") and store.called("vacuum_if_needed") == []


def test_rest_is_the_batch_time_idle_and_longer_while_delivering() -> None:
    assert pruner_mod.rest_seconds(0.05, busy=False) == pytest.approx(0.05)
    assert pruner_mod.rest_seconds(0.05, busy=True) == pytest.approx(
        0.05 * pruner_mod.PRUNE_REST_BUSY
    )
    # never less than the floor, however quick the batch
    assert pruner_mod.rest_seconds(0.0, busy=True) == pruner_mod.PRUNE_PAUSE


async def test_the_pass_asks_whether_the_relay_is_busy_between_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rests: list[float] = []

    async def record(event: asyncio.Event, timeout: float) -> bool:
        rests.append(timeout)
        return False

    monkeypatch.setattr(pruner_mod, "wait_for_event", record)
    monkeypatch.setattr(pruner_mod, "PRUNE_PAUSE", 0.5)
    store = ScriptedStore()
    store.script("prune_deliveries", (True, 10, 10), (True, 10, 10), (True, 3, 3))
    store.script("prune_outbox", (True, 9, 9, True))
    asked: list[bool] = []

    def busy() -> bool:
        asked.append(True)
        return True

    config = Config(retention="1h")
    pruner = Pruner(config, store, Metrics(CollectorRegistry()), asyncio.Event(), busy=busy)
    await pruner.prune_pass(3600.0)
    # two full delivery batches were each followed by a rest; busy was asked each time
    assert len(asked) == 2
    assert rests == [pytest.approx(0.5), pytest.approx(0.5)]
