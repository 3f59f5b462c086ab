"""Helpers for the observability tests: real ``relay run`` processes and in-process relays.

``obs_relay(database_url, **settings)`` starts ``python -m relay run`` configured only through
``RELAY_*`` variables (as systemd's ``EnvironmentFile=`` would), on a metrics port chosen
here so tests (and Prometheus) know where to scrape. ``serving_relay`` runs the daemon's own
:class:`~relay.daemon.Relay` in the test's event loop and yields once its HTTP endpoint
listens, whether or not the database is usable yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.daemon.service import Relay
from tests.procs import terminate
from tests.relayctx import test_config as _test_config

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (OSError, ValueError):
            value = None  # not listening yet, half-written file, ...
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> tuple[Samples, dict[str, str]]:
    """``({sample name: [(labels, value)]}, {family name: type})`` of a /metrics body."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())
    )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without RELAY_* / systemd variables, plus ``extra``."""
    drop = ("RELAY_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_FDS", "LISTEN_PID")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra or {})
    return env


class RelayProc:
    """``python -m relay run`` configured by ``RELAY_*`` variables; output in ``log_path``."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.metrics_port = free_port()
        full = clean_env(
            {
                "RELAY_DATABASE_URL": database_url,
                "RELAY_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
                "RELAY_ALLOWED_NETWORKS": "127.0.0.0/8",
                "RELAY_POLL_INTERVAL": "0.5",
                "RELAY_GAUGE_INTERVAL": "0.5",
                "RELAY_LOG_FORMAT": "json",
            }
        )
        for key, raw in settings.items():
            full["RELAY_" + key.upper()] = str(raw)
        full.update(env or {})
        if "RELAY_METRICS_ADDR" in full:
            self.metrics_port = int(full["RELAY_METRICS_ADDR"].rpartition(":")[2])
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"],
            env=full,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.base_url + path)

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = self.get(path)
        return status, json.loads(body)

    def metrics(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200, body
        return parse_metrics(body)[0]

    def listening(self) -> bool:
        """True once /healthz answers (the process must still be running)."""
        assert self.running, f"relay exited with {self.proc.returncode}:\n{self.log()}"
        try:
            return self.get("/healthz")[0] in (200, 503)
        except OSError:
            return False

    def wait_listening(self, timeout: float = 30.0) -> None:
        wait_for(self.listening, timeout, f"relay to listen on {self.base_url}\n{self.log()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.running, f"relay exited with {self.proc.returncode}:\n{self.log()}"
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout, f"/readyz 200 on {self.base_url}\n{self.log()}")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Every complete log line parsed as JSON; a line that is not JSON fails the test."""
        records = []
        for line in self.log().splitlines(keepends=True):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"log line is not JSON: {line!r}") from None
        return records

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


@pytest.fixture
def obs_relay(tmp_path: Path) -> Iterator[Callable[..., RelayProc]]:
    """Factory of :class:`RelayProc`; every process started is stopped after the test."""
    started: list[RelayProc] = []

    def start(
        database_url: str, env: Mapping[str, str] | None = None, **settings: Any
    ) -> RelayProc:
        p = RelayProc(database_url, tmp_path / f"relay-{len(started)}.log", env, **settings)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@dataclass
class Served:
    """A relay running in the test's loop: the daemon object, its task and its base URL."""

    relay: Relay
    task: asyncio.Task[int]

    @property
    def url(self) -> str:
        assert self.relay.health.bound is not None
        host, port = self.relay.health.bound
        return f"http://{host}:{port}"

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=10)) as resp,
        ):
            return resp.status, await resp.text()

    async def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = await self.get(path)
        return status, json.loads(body)

    async def metrics(self) -> Samples:
        status, body = await self.get("/metrics")
        assert status == 200, body
        return parse_metrics(body)[0]


@contextlib.asynccontextmanager
async def serving_relay(url: str, **overrides: Any) -> AsyncIterator[Served]:
    """A :class:`Relay` in this loop, yielded once /metrics listens (ready or not)."""
    relay = Relay(_test_config(**overrides), url)
    task = asyncio.create_task(relay.run(install_signals=False))
    try:
        for _ in range(500):
            if relay.health.bound is not None or task.done():
                break
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        assert relay.health.bound is not None, "the relay's HTTP endpoint never listened"
        yield Served(relay, task)
    finally:
        relay.stop()
        assert await asyncio.wait_for(task, 30) == 0


async def async_wait_for(predicate: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Await ``predicate()`` until truthy (returned); AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
