"""Helpers shared by the fault tests: scale, statistics, free ports, HTTP probes, TLS certs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

#: ``RELAY_FAULTS_SCALE=full`` runs the big numbers quoted in docs/reliability.md.
FULL = os.environ.get("RELAY_FAULTS_SCALE", "").strip().lower() == "full"

Conn = psycopg.Connection[Any]


def scaled(default: int, full: int) -> int:
    """``full`` under ``RELAY_FAULTS_SCALE=full``, else the CI-sized ``default``."""
    return full if FULL else default


def seed_from_env(name: str = "RELAY_FAULTS_SEED") -> int:
    """A random seed, or the one given in ``RELAY_FAULTS_SEED`` (to replay a failing run)."""
    raw = os.environ.get(name)
    return int(raw) if raw else int.from_bytes(os.urandom(4), "big")


def report(title: str, **figures: Any) -> None:
    """Print one figures line (visible with ``pytest -s``), greppable by its ``FIGURES`` tag."""
    print(f"\nFIGURES {title}: " + json.dumps(figures, default=str, sort_keys=False), flush=True)


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (0..100) of ``values`` (nearest-rank, no interpolation)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50 / p95 / max of ``values`` (seconds) in milliseconds, rounded."""
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p95_ms": round(percentile(values, 95) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1),
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def scalar(conn: Conn, sql: str, params: Any = None) -> Any:
    """The first column of the first row of ``sql``."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def settled(conn: Conn, expected: int) -> bool:
    """Exactly ``expected`` deliveries exist and none is pending (one query: no race between
    counting them and reading their statuses)."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM relay.deliveries"
    ).fetchone()
    assert row is not None
    return bool(row[0] == expected and row[1] == 0)


def wait_sync(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` (blocking) until true; return the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


async def wait_async(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` (in the event loop) until true; return the seconds it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not predicate():
        if loop.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return loop.time() - t0


async def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url``; (status, body text)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp,
    ):
        return resp.status, await resp.text()


async def readyz(bound: tuple[str, int] | None) -> tuple[int, dict[str, Any]]:
    """GET /readyz of an in-process relay's health server: (status, parsed JSON)."""
    assert bound is not None, "health server not bound"
    status, text = await http_get(f"http://{bound[0]}:{bound[1]}/readyz", timeout=10.0)
    return status, json.loads(text)


@contextlib.contextmanager
def self_signed_cert(directory: Path) -> Iterator[ssl.SSLContext]:
    """A server SSL context with a fresh self-signed certificate for 127.0.0.1 (openssl CLI)."""
    key = directory / "key.pem"
    cert = directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    yield ctx
