"""Pytest fixtures for the test webhook receiver (see ``tests/receiver.py``).

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["tests.fixtures_receiver"]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.receiver import Receiver, ReceiverProcess, start_receiver_process


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An in-process receiver on 127.0.0.1 (every path answers 204 until scripted)."""
    async with Receiver() as rx:
        yield rx


@pytest.fixture
def receiver_process(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """A receiver in its own process answering 204, logging to a file under ``tmp_path``."""
    with start_receiver_process(tmp_path) as rp:
        yield rp
