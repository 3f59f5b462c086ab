"""What ``relay demo`` prints: progress lines, the deliveries and attempts tables, metrics.

Every line goes to stdout through :func:`say`, flushed at once, so the receiver's lines, the
app's lines and the section headers stay in order even through a pipe. Lines that happen during
the run carry :func:`stamp`, the seconds since the demo started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psycopg

from relay import admin
from relay.admin import format as fmt

Conn = psycopg.Connection[Any]

# Output -------------------------------------------------------------------------------------------

_T0 = time.monotonic()


def start_clock() -> None:
    """Start counting :func:`stamp` seconds from now (once per demo run)."""
    global _T0
    _T0 = time.monotonic()


def say(text: str = "") -> None:
    """One line of progress on stdout, flushed at once (so pipes keep the order)."""
    print(text, flush=True)


def step(n: int, title: str) -> None:
    """A numbered section header."""
    say()
    say(f"[{n}/7] {title}")


def stamp() -> str:
    """Seconds since the demo started, as a line prefix."""
    return f"+{time.monotonic() - _T0:5.2f}s"


# Summary tables ----------------------------------------------------------------------------------

DELIVERY_COLUMNS: list[fmt.Column] = [
    ("ID", lambda r: r["id"]),
    ("SUBSCRIPTION", lambda r: f"#{r['subscription_id']} {r['method']} {urlsplit(r['url']).path}"),
    ("EVENT TYPE", lambda r: r["event_type"]),
    ("STATUS", lambda r: r["status"]),
    ("ATTEMPTS", lambda r: r["attempts"]),
    ("LAST RESULT", lambda r: r["last_error"] or r["last_status_code"]),
]


def attempt_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Attempt history with the wait before each retry (time after the previous one ended)."""
    out: list[dict[str, Any]] = []
    prev_end: float | None = None
    for a in history:
        start = a["started_at"].timestamp()
        waited = "-" if prev_end is None else f"{start - prev_end:.2f} s"
        prev_end = start + a["duration_ms"] / 1000.0
        result = a["status_code"] if a["status_code"] is not None else a["error"]
        out.append(
            {
                "attempt": a["attempt"],
                "started": a["started_at"].astimezone().strftime("%H:%M:%S.%f")[:-3],
                "waited": waited,
                "result": result,
                "ms": f"{a['duration_ms']:.1f}",
                "response": a["response_body"],
            }
        )
    return out


ATTEMPT_COLUMNS: list[fmt.Column] = [
    ("ATTEMPT", lambda r: r["attempt"]),
    ("STARTED", lambda r: r["started"]),
    ("WAITED", lambda r: r["waited"]),
    ("RESULT", lambda r: r["result"]),
    ("MS", lambda r: r["ms"]),
    ("RESPONSE", lambda r: r["response"]),
]


def summary(conn: Conn, rows: list[dict[str, Any]]) -> None:
    """Deliveries table and the retried delivery's attempts."""
    say(fmt.table(rows, DELIVERY_COLUMNS))
    retried = [r for r in rows if r["attempts"] > 1]
    for r in retried:
        history = admin.get_delivery(conn, int(r["id"]))["attempt_history"]
        say()
        say(
            f"delivery #{r['id']} ({r['event_type']}) was retried: attempts, as "
            f"`relay delivery show {r['id']}` lists them"
        )
        say(fmt.table(attempt_rows(history), ATTEMPT_COLUMNS))


# Metrics -----------------------------------------------------------------------------------------

METRIC_PREFIXES = ("relay_deliveries_total{", "relay_delivery_attempts_total{")


async def scrape_metrics(url: str, expected_delivered: int) -> list[str]:
    """The relay's delivery counters from its /metrics (waits for the last ack to count)."""
    lines: list[str] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.get(url) as resp:
                text = await resp.text()
            lines = [ln for ln in text.splitlines() if ln.startswith(METRIC_PREFIXES)]
            delivered = sum(
                float(ln.rpartition(" ")[2])
                for ln in lines
                if ln.startswith("relay_deliveries_total{") and 'outcome="delivered"' in ln
            )
            if delivered >= expected_delivered:
                break
            await asyncio.sleep(0.1)
    return lines
