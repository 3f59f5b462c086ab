"""``relay demo``: the whole flow end to end, in one process, in a few seconds.

1. picks a database (``--database-url`` / ``RELAY_DATABASE_URL``, else the embedded Postgres
   under the state directory) and migrates it;
2. starts a local receiver (:mod:`relay.demo_receiver`: aiohttp, loopback, ephemeral port;
   ``POST /orders`` fails its first request with 503);
3. adds two subscriptions through :mod:`relay.admin` (what ``relay subscription add`` runs);
4. runs a :class:`~relay.daemon.Relay` in the same asyncio loop;
5. emits all nine catalog event types from app-like transactions (:mod:`relay.demo_db`);
6. waits until every delivery is ``delivered`` (the 503 one after its retry);
7. prints the deliveries, the retried one's attempts, lines of the relay's own ``/metrics``
   (:mod:`relay.demo_output`), then stops the relay cleanly.

This module holds the entry point :func:`main`, option parsing and the orchestration of the
seven steps. The database side (demo tables, story, subscriptions, run bookkeeping) is in
:mod:`relay.demo_db`, the receiver in :mod:`relay.demo_receiver`, and the progress lines and
summary tables in :mod:`relay.demo_output`.

Exit codes: 0 when all nine deliveries were delivered, 1 otherwise (with the reason on stderr),
2 for a bad option. Re-runnable: the subscriptions of earlier demo runs (recorded in
``relay_demo.runs``) are removed first and only this run's deliveries are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from relay import admin
from relay.admin import format as fmt
from relay.config import Config, default_relay_id, load
from relay.daemon.service import Relay
from relay.demo.db import (
    EXPECTED_DELIVERIES,
    Run,
    add_subscriptions,
    app_transaction,
    disable_subscriptions,
    prepare_database,
    record_outbox_ids,
    record_run,
    record_subscriptions,
    record_success,
    retire_previous_runs,
    run_deliveries,
    story,
)
from relay.demo.output import (
    DELIVERY_COLUMNS,
    say,
    scrape_metrics,
    stamp,
    start_clock,
    step,
    summary,
)
from relay.demo.receiver import DemoReceiver
from relay.embedded import connect, default_state_dir, is_embedded, resolve_database_url
from relay.errors import ConfigError, RelayError
from relay.logs import RedactingFilter, TextFormatter
from relay.masking import mask_url

DEFAULT_METRICS_ADDR: str = Config().metrics_addr
ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"  # the receiver is on loopback, refused by default
BACKOFF_MS = 1000  # the orders subscription's backoff (read at run time: tests patch it)
# What the orders receiver must apply, in this order (its subscription is ordered).
ORDER_LIFECYCLE = ("ORDER.CREATED", "ORDER.DISPATCHED", "ORDER.OUT_FOR_DELIVERY", "ORDER.RECEIVED")
PACE_SECONDS = 0.2  # between app transactions, so the output reads as a story
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


# Options -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The demo's command-line options."""

    database_url: str | None = None
    state_dir: str | None = None
    metrics_addr: str | None = None
    timeout: float = 30.0
    verbose: bool = False


def parse_args(argv: Sequence[str]) -> Options:
    """Parse ``relay demo`` options; raises :class:`ConfigError` for a bad value."""
    p = argparse.ArgumentParser(
        prog="relay demo",
        description="The whole flow end to end: database, receiver, subscriptions, relay, "
        "events, a retry and metrics.",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="Postgres URL (default: $RELAY_DATABASE_URL, else an embedded Postgres)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the embedded Postgres lives (default: $RELAY_STATE_DIR or "
        "~/.local/state/relay)",
    )
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help=f"the relay's /metrics (default {DEFAULT_METRICS_ADDR}, or a free port if taken)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="how long to wait for the deliveries (default 30)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show the relay's own logs")
    ns = p.parse_args(list(argv))
    if ns.metrics_addr is not None:
        load({"metrics_addr": ns.metrics_addr}, environ={})  # validates HOST:PORT
    if not ns.timeout > 0:
        raise ConfigError(f"--timeout: must be a positive number of seconds (got {ns.timeout})")
    return Options(ns.database_url, ns.state_dir, ns.metrics_addr, ns.timeout, ns.verbose)


def pick_metrics_addr(requested: str | None) -> str:
    """``requested``, else 127.0.0.1:9465 when free, else an ephemeral port."""
    if requested:
        return requested
    host, _, port = DEFAULT_METRICS_ADDR.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            say(f"  {DEFAULT_METRICS_ADDR} is taken (a relay running?): using a free port")
            return f"{host}:0"
    return DEFAULT_METRICS_ADDR


@contextlib.contextmanager
def relay_logging(verbose: bool) -> Iterator[None]:
    """The relay's own logs on stderr (warnings only unless ``verbose``); restored after."""
    logger = logging.getLogger("relay")
    saved = (logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# The run -----------------------------------------------------------------------------------------


class DemoFailed(RelayError):
    """The flow did not complete; the message says what was missing."""


def choose_database(opts: Options) -> tuple[str, bool]:
    """Resolve the database URL and say which one is used; return ``(url, embedded)``."""
    embedded = is_embedded(opts.database_url)
    if embedded:
        state = Path(opts.state_dir) if opts.state_dir else default_state_dir()
        say(f"  embedded Postgres (pgserver) at {state / 'pgdata'}")
        say("  (set RELAY_DATABASE_URL or pass --database-url to use your own)")
        url = resolve_database_url(None, state)
    else:
        source = "--database-url" if opts.database_url else "RELAY_DATABASE_URL"
        url = resolve_database_url(opts.database_url)
        say(f"  {mask_url(url)} (from {source})")
        say(
            "  note: the demo adds rows to this database: 2 subscriptions, 9 events, and tables "
            "in schema relay_demo"
        )
    return url, embedded


async def wait_ready(relay_obj: Relay, task: asyncio.Task[int]) -> None:
    """Until the relay has checked the schema and is claiming work."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not relay_obj.schema_ok:
        if task.done():
            task.result()  # raises what made it stop
            raise DemoFailed("the relay stopped before it was ready")
        if time.monotonic() > deadline:
            raise DemoFailed(f"the relay was not ready within {READY_TIMEOUT:g} s")
        await asyncio.sleep(0.02)


async def wait_delivered(run: Run, task: asyncio.Task[int], timeout: float) -> float:
    """Until all of this run's deliveries are delivered; return when (monotonic)."""
    assert run.subs is not None
    deadline = time.monotonic() + timeout
    while True:
        rows = await asyncio.to_thread(run_deliveries, run.conn, run.subs.ids, run.outbox_ids)
        delivered = [r for r in rows if r["status"] == "delivered"]
        if len(rows) == EXPECTED_DELIVERIES and len(delivered) == EXPECTED_DELIVERIES:
            return time.monotonic()
        dead = [r for r in rows if r["status"] == "dead"]
        problem = None
        if dead:
            problem = (
                "delivery "
                + ", ".join(
                    f"#{r['id']} ({r['event_type']}: {r['last_error'] or r['last_status_code']})"
                    for r in dead
                )
                + " ended dead"
            )
        elif task.done():
            problem = "the relay stopped unexpectedly"
        elif time.monotonic() > deadline:
            problem = (
                f"only {len(delivered)} of {EXPECTED_DELIVERIES} deliveries were delivered "
                f"within {timeout:g} s"
            )
        if problem:
            say()
            say(fmt.table(rows, DELIVERY_COLUMNS) if rows else "  (no deliveries created)")
            raise DemoFailed(
                f"{problem}; see `relay delivery list` and `relay delivery show ID` for details"
            )
        await asyncio.sleep(0.1)


async def demo(opts: Options) -> int:
    """The seven steps; raises :class:`RelayError` (or :class:`DemoFailed`) on failure."""
    say("relay demo: Postgres outbox -> webhooks, end to end")
    step(1, "database")
    url, embedded = await asyncio.to_thread(choose_database, opts)
    run_id = uuid.uuid4().hex[:8]
    conn = await asyncio.to_thread(connect, url)
    app_conn = await asyncio.to_thread(connect, url)
    run = Run(run_id, conn, app_conn)
    receiver = DemoReceiver(BACKOFF_MS)
    relay_obj: Relay | None = None
    task: asyncio.Task[int] | None = None
    try:
        await asyncio.to_thread(prepare_database, conn)
        await asyncio.to_thread(retire_previous_runs, conn)
        record_run(conn, run_id)
        # Relays of earlier demo runs linger in the "seen" list for a minute: not competitors.
        relays = [r for r in admin.status(conn)["relays"] if not r["relay_id"].startswith("demo-")]
        if relays:
            say(
                f"  note: {len(relays)} other relay(s) seen on this database in the last minute; "
                "they may claim demo deliveries (and refuse the loopback receiver)"
            )

        step(2, "receiver")
        base = await receiver.start()
        say(f"  listening on {base} (in this process)")
        say(
            "  POST /orders verifies signatures and fails its FIRST request with 503 (to show a "
            "retry); GET /tests answers 204"
        )

        step(3, "subscriptions (through relay.admin, as `relay subscription add` does)")
        subs = await asyncio.to_thread(add_subscriptions, conn, base, BACKOFF_MS)
        run.subs = subs
        receiver.secret = subs.secret
        record_subscriptions(conn, run_id, subs)

        step(4, "relay (in this process)")
        metrics_addr = pick_metrics_addr(opts.metrics_addr)
        config = Config(
            metrics_addr=metrics_addr,
            allowed_networks=ALLOWED_NETWORKS,
            poll_interval=1.0,
            gauge_interval=1.0,
            drain_timeout=5.0,
            concurrency=16,
            pool_size=4,
            relay_id=f"demo-{default_relay_id()}",
        )
        relay_obj = Relay(config, url)
        task = asyncio.create_task(relay_obj.run(install_signals=False), name="relay")
        await wait_ready(relay_obj, task)
        bound = relay_obj.health.bound
        host = config.metrics_host_port[0]
        metrics_url = f"http://{host}:{bound[1] if bound else config.metrics_host_port[1]}/metrics"
        say(f"  relay {config.relay_id} running; poll interval 1 s, LISTEN/NOTIFY wake-ups")
        say(
            f"  allowed networks {ALLOWED_NETWORKS}: the receiver is on loopback, which the "
            "SSRF guard refuses by default"
        )
        say(f"  metrics: {metrics_url}")

        step(5, "the app emits events (a demo-table write + relay.emit, one transaction each)")
        started = time.monotonic()
        for event in story(run_id):
            outbox_id = await asyncio.to_thread(app_transaction, app_conn, event)
            run.outbox_ids.append(outbox_id)
            say(
                f"  {stamp()} app      -> {event.event_type:<24} {event.aggregate_id:<16} "
                f"committed (outbox #{outbox_id})"
            )
            await asyncio.sleep(PACE_SECONDS)
        record_outbox_ids(conn, run_id, run.outbox_ids)

        step(6, f"waiting for {EXPECTED_DELIVERIES} deliveries (timeout {opts.timeout:g} s)")
        finished = await wait_delivered(run, task, opts.timeout)
        elapsed = finished - started
        rows = await asyncio.to_thread(run_deliveries, conn, subs.ids, run.outbox_ids)
        retried = sum(1 for r in rows if r["attempts"] > 1)
        say(f"  all {len(rows)} delivered ({retried} after a retry)")
        orders = receiver.first_successes("/orders")
        in_order = orders == list(ORDER_LIFECYCLE)
        say(
            f"  ordered subscription: /orders applied {', '.join(map(str, orders))}: "
            + (
                "in the order they happened (the retried ORDER.CREATED first)"
                if in_order
                else "OUT OF ORDER"
            )
        )

        step(7, "summary")
        await asyncio.to_thread(summary, conn, rows)
        say()
        say(f"from {metrics_url}:")
        for line in await scrape_metrics(metrics_url, EXPECTED_DELIVERIES):
            say(f"  {line}")
        say()
        say(
            f"throughput: {len(rows)} deliveries in {elapsed:.2f} s "
            f"({len(rows) / elapsed:.1f}/s, including the {BACKOFF_MS / 1000:g} s retry backoff "
            f"and {PACE_SECONDS:g} s between app transactions)"
        )
        record_success(conn, run_id)
    finally:
        code = await stop(relay_obj, task)
        await receiver.stop()
        with contextlib.suppress(RelayError, psycopg.Error):
            await asyncio.to_thread(disable_subscriptions, conn, run)
        conn.close()
        app_conn.close()
    if code != 0:
        raise DemoFailed(f"the relay exited with {code}")
    say("relay stopped cleanly")
    hint = "" if embedded else " (with --database-url or RELAY_DATABASE_URL as here)"
    say(f"look around: relay delivery list, relay delivery show ID, relay status{hint}")
    return 0


async def stop(relay_obj: Relay | None, task: asyncio.Task[int] | None) -> int:
    """Stop the relay (drain) and return its exit code; 0 when it never started."""
    if relay_obj is None or task is None:
        return 0
    relay_obj.stop()
    try:
        return int(await asyncio.wait_for(task, STOP_TIMEOUT))
    except TimeoutError:
        return 1
    except Exception as exc:
        print(f"relay: error: the relay failed: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relay demo``; returns the exit code (0 ok, 1 failed, 2 bad option)."""
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help, or argparse refusing an option
        return exc.code if isinstance(exc.code, int) else 2
    except ConfigError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 2
    start_clock()
    try:
        with relay_logging(opts.verbose):
            return asyncio.run(demo(opts))
    except RelayError as exc:
        print(f"relay: error: demo failed: {exc}", file=sys.stderr)
        return 1
    except (OSError, psycopg.Error) as exc:  # e.g. the metrics address is taken
        print(f"relay: error: demo failed: {exc}", file=sys.stderr)
        return 1


__all__ = ["main"]
