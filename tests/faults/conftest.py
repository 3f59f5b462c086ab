"""Fixtures of the fault tier: real ``relay run`` processes (SIGKILL-able)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import RelayProcess

StartRelay = Callable[..., RelayProcess]


@pytest.fixture
def relay_procs(tmp_path: Path) -> Iterator[StartRelay]:
    """Start ``python -m relay run`` processes (``RELAY_*`` settings as keyword arguments).

    Every process still running at the end of the test is stopped (SIGTERM, then SIGKILL).
    """
    started: list[RelayProcess] = []

    def start(database_url: str, **settings: Any) -> RelayProcess:
        proc = RelayProcess(database_url, tmp_path / f"relay-{len(started)}.log", **settings)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
