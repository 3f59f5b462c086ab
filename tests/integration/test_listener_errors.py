"""No unexpected error ends the listener silently (issue 14: on psycopg 3.1 its 3.2 API call
raised TypeError, the task died, and relay fell back to polling with nothing said)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.daemon import listener as listener_mod
from relay.daemon.listener import Listener
from tests.relayctx import wait_until


async def test_unexpected_error_is_logged_and_the_listener_restarts(
    database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_mod, "RECONNECT_MIN", 0.05)
    calls: list[str] = []

    def on_notify(channel: str) -> None:
        calls.append(channel)
        if len(calls) == 1:
            raise TypeError("a bug in a wake-up callback")

    caplog.set_level(logging.ERROR, logger="relay.listener")
    lst = Listener(database_url, on_notify)
    stopping = asyncio.Event()
    task = asyncio.create_task(lst.run(stopping))
    try:
        await wait_until(lambda: lst.reconnects >= 2 and lst.connected, 10)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)
    assert any("listener failed unexpectedly" in r.getMessage() for r in caplog.records)
