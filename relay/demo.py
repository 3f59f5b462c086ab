"""``relay demo``: the whole flow end to end, in one process, in a few seconds.

1. picks a database (``--database-url`` / ``RELAY_DATABASE_URL``, else the embedded Postgres
   under the state directory) and migrates it;
2. starts a local receiver (aiohttp, loopback, ephemeral port): ``POST /orders`` verifies the
   Standard Webhooks signature and fails its first request with 503; ``GET /tests`` answers 204;
3. adds two subscriptions through :mod:`relay.admin` (what ``relay subscription add`` runs);
4. runs a :class:`~relay.daemon.Relay` in the same asyncio loop;
5. emits all nine catalog event types from app-like transactions (a row in a demo table and
   ``relay.emit`` in one commit);
6. waits until every delivery is ``delivered`` (the 503 one after its retry);
7. prints the deliveries, the retried one's attempts, lines of the relay's own ``/metrics``,
   then stops the relay cleanly.

Exit codes: 0 when all nine deliveries were delivered, 1 otherwise (with the reason on stderr),
2 for a bad option. Re-runnable: the subscriptions of earlier demo runs (recorded in
``relay_demo.runs``) are removed first and only this run's deliveries are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psycopg
from aiohttp import web
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from standardwebhooks import Webhook, WebhookVerificationError

import relay
from relay import admin
from relay import admin_format as fmt
from relay import validation as v
from relay.config import Config, default_relay_id, load, mask_url
from relay.daemon import Relay
from relay.embedded import default_state_dir, is_embedded, resolve_database_url
from relay.errors import ConfigError, NotFound, RelayError
from relay.logs import RedactingFilter, TextFormatter
from relay.migrate import migrate

Conn = psycopg.Connection[Any]

DEFAULT_METRICS_ADDR = "127.0.0.1:9465"
ALLOWED_NETWORKS = "127.0.0.0/8,::1/128"  # the receiver is on loopback, refused by default
DEMO_TOKEN = "demo-token"
BACKOFF_MS = 1000
ORDERS_BODY_MAP = {
    "type": "$.eventType",
    "customer.id": "$.userId",
    "sku": "$.productCode",
    "version": "$.version",
}
TEST_EVENT_NAME = "test.processed=TEST.RESULTED"
PACE_SECONDS = 0.2  # between app transactions, so the output reads as a story
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0

_SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS relay_demo;
CREATE TABLE IF NOT EXISTS relay_demo.demo_orders (
    order_id     text PRIMARY KEY,
    user_id      text NOT NULL,
    product_code text NOT NULL,
    status       text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS relay_demo.demo_tests (
    test_id    text PRIMARY KEY,
    order_id   text NOT NULL,
    status     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS relay_demo.runs (
    run_id           text PRIMARY KEY,
    started_at       timestamptz NOT NULL DEFAULT now(),
    subscription_ids bigint[] NOT NULL DEFAULT '{}',
    outbox_ids       bigint[] NOT NULL DEFAULT '{}',
    finished_at      timestamptz,
    ok               boolean
);
"""

_ORDER_UPSERT = """
INSERT INTO relay_demo.demo_orders (order_id, user_id, product_code, status)
VALUES (%(orderId)s, %(userId)s, %(productCode)s, %(status)s)
ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = now()
"""

_TEST_UPSERT = """
INSERT INTO relay_demo.demo_tests (test_id, order_id, status)
VALUES (%(testId)s, %(orderId)s, %(status)s)
ON CONFLICT (test_id) DO UPDATE SET status = excluded.status, updated_at = now()
"""

_RUN_DELIVERIES = """
SELECT d.id, d.subscription_id, d.event_type, d.status, d.attempts, d.last_status_code,
       d.last_error, s.method, s.url
FROM relay.deliveries d
JOIN relay.subscriptions s ON s.id = d.subscription_id
WHERE d.subscription_id = ANY(%(subs)s) AND d.outbox_id = ANY(%(outbox)s)
ORDER BY d.id
"""


# Output -------------------------------------------------------------------------------------------

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


# The story: what the "app" does -------------------------------------------------------------------


@dataclass(frozen=True)
class AppEvent:
    """One app transaction: a row change in a demo table plus the matching ``relay.emit``."""

    event_type: str
    table: str  # "orders" or "tests"
    payload: dict[str, Any]

    @property
    def aggregate_id(self) -> str:
        key = "orderId" if self.table == "orders" else "testId"
        return str(self.payload[key])


def story(run_id: str) -> list[AppEvent]:
    """An order's lifecycle, then its two test kits: all nine catalog event types."""
    order = {"orderId": f"ord-{run_id}", "userId": "cust-1042", "productCode": "KIT-VITD-01"}
    kit1 = {"testId": f"tst-{run_id}-1", "orderId": order["orderId"], "userId": "cust-1042"}
    kit2 = {"testId": f"tst-{run_id}-2", "orderId": order["orderId"], "userId": "cust-1042"}
    events = [
        AppEvent("order.created", "orders", {**order, "status": "created"}),
        AppEvent("order.dispatched", "orders", {**order, "status": "dispatched"}),
        AppEvent("order.out_for_delivery", "orders", {**order, "status": "out_for_delivery"}),
        AppEvent("order.received", "orders", {**order, "status": "received"}),
        AppEvent("test.registered", "tests", {**kit1, "status": "registered"}),
        AppEvent("test.lab_accessioned", "tests", {**kit1, "status": "lab_accessioned"}),
        AppEvent("test.processed", "tests", {**kit1, "status": "processed", "result": "28 ng/mL"}),
        AppEvent("test.validation_success", "tests", {**kit1, "status": "validation_success"}),
        AppEvent(
            "test.validation_fail",
            "tests",
            {**kit2, "status": "validation_fail", "reason": "sample haemolysed"},
        ),
    ]
    return events


EXPECTED_DELIVERIES = len(story("x"))


def app_transaction(conn: Conn, event: AppEvent) -> int:
    """What an application does: change its own row and emit the event, in ONE transaction."""
    with conn.transaction():
        conn.execute(_ORDER_UPSERT if event.table == "orders" else _TEST_UPSERT, event.payload)
        return relay.emit(conn, event.event_type, event.payload, aggregate_id=event.aggregate_id)


# The receiver ------------------------------------------------------------------------------------


@dataclass
class Received:
    """One request the receiver saw."""

    method: str
    path: str
    event_name: str | None
    webhook_id: str
    signature_ok: bool | None  # None: not signed (GET subscription without a secret)
    status: int


@dataclass
class DemoReceiver:
    """A webhook receiver on loopback: ``POST /orders`` (signed; first request 503) and
    ``GET /tests``."""

    secret: str | None = None
    requests: list[Received] = field(default_factory=list)
    _failed_once: bool = False
    _seen_ids: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> str:
        """Listen on 127.0.0.1 with an ephemeral port; return the base URL."""
        app = web.Application()
        app.router.add_post("/orders", self._orders)
        app.router.add_get("/tests", self._tests)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        """Close the listener."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _retry_note(self, webhook_id: str) -> str:
        if webhook_id in self._seen_ids:
            return "  (a retry: same webhook-id as before)"
        self._seen_ids.add(webhook_id)
        return ""

    async def _orders(self, request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "-")
        try:
            Webhook(self.secret or "").verify(body, dict(request.headers))
            signature_ok = True
        except (WebhookVerificationError, ValueError):
            signature_ok = False
        auth_ok = request.headers.get("Authorization") == f"Bearer {DEMO_TOKEN}"
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        name = doc.get("type") if isinstance(doc, dict) else None
        if not (signature_ok and auth_ok):
            status, text = 401, "bad signature or token"
        elif not self._failed_once:
            self._failed_once = True
            status, text = 503, f"simulated outage (relay retries in {BACKOFF_MS / 1000:g} s)"
        else:
            status, text = 204, ""
        note = self._retry_note(webhook_id)
        self.requests.append(Received("POST", "/orders", name, webhook_id, signature_ok, status))
        say(
            f"  {stamp()} receiver <- POST /orders  {name}  webhook-id={webhook_id}  "
            f"signature {'ok' if signature_ok else 'BAD'}  auth {'ok' if auth_ok else 'BAD'}"
            f"  -> {status}{' ' + text if text else ''}{note}"
        )
        say(f"           body {body.decode(errors='replace')}")
        return web.Response(status=status, text=text or None)

    async def _tests(self, request: web.Request) -> web.Response:
        webhook_id = request.headers.get("webhook-id", "-")
        name = request.query.get("eventType")
        note = self._retry_note(webhook_id)
        self.requests.append(Received("GET", "/tests", name, webhook_id, None, 204))
        say(
            f"  {stamp()} receiver <- GET /tests  {name}  webhook-id={webhook_id}  "
            f"unsigned (no secret)  -> 204{note}"
        )
        say(f"           query {request.query_string}")
        return web.Response(status=204)


# Database ----------------------------------------------------------------------------------------


def connect(url: str) -> Conn:
    """An autocommit connection that fails fast on an unreachable host."""
    kwargs: dict[str, Any] = {}
    with contextlib.suppress(psycopg.ProgrammingError):
        if "connect_timeout" not in conninfo_to_dict(url):
            kwargs["connect_timeout"] = 10
    try:
        return psycopg.connect(url, autocommit=True, **kwargs)
    except psycopg.Error as exc:
        where = f" at {mask_url(url)}" if "://" in url else ""
        raise RelayError(f"cannot connect to the database{where}: {exc}") from None


def prepare_database(conn: Conn) -> None:
    """Migrate relay's schema and create the demo app's tables."""
    applied = migrate(conn)
    if applied:
        say("  migrations applied: " + ", ".join(f"{n:04d}" for n in applied))
    else:
        say("  relay schema up to date")
    conn.execute(_SCHEMA_SQL.encode())


def retire_previous_runs(conn: Conn) -> None:
    """Remove the subscriptions of earlier demo runs (their receivers are gone)."""
    rows = conn.execute(
        """SELECT DISTINCT s.id FROM relay_demo.runs r
           CROSS JOIN LATERAL unnest(r.subscription_ids) AS u(id)
           JOIN relay.subscriptions s ON s.id = u.id
           WHERE s.removed_at IS NULL ORDER BY s.id"""
    ).fetchall()
    removed = 0
    for (sub_id,) in rows:
        with contextlib.suppress(NotFound):
            admin.remove_subscription(conn, int(sub_id))
            removed += 1
    if removed:
        say(f"  removed {removed} subscription(s) left by an earlier demo run")


def run_deliveries(conn: Conn, subs: Sequence[int], outbox: Sequence[int]) -> list[dict[str, Any]]:
    """This run's deliveries (its subscriptions x its events), oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_RUN_DELIVERIES, {"subs": list(subs), "outbox": list(outbox)})
        return cur.fetchall()


# Subscriptions ----------------------------------------------------------------------------------


@dataclass
class DemoSubscriptions:
    """The two subscriptions of one run."""

    orders_id: int
    tests_id: int
    secret: str

    @property
    def ids(self) -> list[int]:
        return [self.orders_id, self.tests_id]


def add_subscriptions(conn: Conn, base_url: str) -> DemoSubscriptions:
    """Create both subscriptions exactly as ``relay subscription add`` would (relay.admin)."""
    orders_url = f"{base_url}/orders"
    body_map = json.dumps(ORDERS_BODY_MAP)
    header = f"Authorization: Bearer {DEMO_TOKEN}"
    name, value = v.parse_header(header)
    orders = admin.add_subscription(
        conn,
        admin.SubscriptionChanges(
            url=orders_url,
            method="POST",
            headers={name: value},
            events=["order.*"],
            body_map=body_map,
            secret=admin.GENERATE,
            backoff_ms=BACKOFF_MS,
        ),
    )
    assert orders.generated_secret is not None
    say(f"  #{orders.id}  POST {orders_url}  events order.*")
    say(f"        body map {body_map}")
    say(f"        signed with a generated secret; header '{name}: Bearer ***'")
    say(
        f"        backoff {BACKOFF_MS} ms: retry n waits {BACKOFF_MS / 1000:g} s x n "
        "(default 5 s x n; shortened so the demo's retry is quick)"
    )
    say(
        f"        = relay subscription add {orders_url} --method POST --event 'order.*' "
        f"--body-map '{body_map}' --secret generate --header '{name}: Bearer ...' "
        f"--backoff-ms {BACKOFF_MS}"
    )

    tests_url = f"{base_url}/tests"
    event_type, event_name = v.parse_event_name(TEST_EVENT_NAME)
    tests = admin.add_subscription(
        conn,
        admin.SubscriptionChanges(
            url=tests_url, method="GET", events=["test.*"], event_names={event_type: event_name}
        ),
    )
    say(f"  #{tests.id}  GET  {tests_url}  events test.*  ({event_type} is sent as {event_name})")
    say(
        f"        = relay subscription add {tests_url} --method GET --event 'test.*' "
        f"--event-name {TEST_EVENT_NAME}"
    )
    return DemoSubscriptions(orders.id, tests.id, orders.generated_secret)


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


@dataclass
class Run:
    """State of one demo run."""

    run_id: str
    conn: Conn
    app_conn: Conn
    subs: DemoSubscriptions | None = None
    outbox_ids: list[int] = field(default_factory=list)


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


def summary(run: Run, rows: list[dict[str, Any]]) -> None:
    """Deliveries table and the retried delivery's attempts."""
    say(fmt.table(rows, DELIVERY_COLUMNS))
    retried = [r for r in rows if r["attempts"] > 1]
    for r in retried:
        history = admin.get_delivery(run.conn, int(r["id"]))["attempt_history"]
        say()
        say(
            f"delivery #{r['id']} ({r['event_type']}) was retried: attempts, as "
            f"`relay delivery show {r['id']}` lists them"
        )
        say(fmt.table(attempt_rows(history), ATTEMPT_COLUMNS))


async def demo(opts: Options) -> int:
    """The seven steps; raises :class:`RelayError` (or :class:`DemoFailed`) on failure."""
    say("relay demo: Postgres outbox -> webhooks, end to end")
    step(1, "database")
    url, embedded = await asyncio.to_thread(choose_database, opts)
    run_id = uuid.uuid4().hex[:8]
    conn = await asyncio.to_thread(connect, url)
    app_conn = await asyncio.to_thread(connect, url)
    run = Run(run_id, conn, app_conn)
    receiver = DemoReceiver()
    relay_obj: Relay | None = None
    task: asyncio.Task[int] | None = None
    try:
        await asyncio.to_thread(prepare_database, conn)
        await asyncio.to_thread(retire_previous_runs, conn)
        conn.execute("INSERT INTO relay_demo.runs (run_id) VALUES (%s)", (run_id,))
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
        subs = await asyncio.to_thread(add_subscriptions, conn, base)
        run.subs = subs
        receiver.secret = subs.secret
        conn.execute(
            "UPDATE relay_demo.runs SET subscription_ids = %s WHERE run_id = %s",
            (subs.ids, run_id),
        )

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
        conn.execute(
            "UPDATE relay_demo.runs SET outbox_ids = %s WHERE run_id = %s",
            (run.outbox_ids, run_id),
        )

        step(6, f"waiting for {EXPECTED_DELIVERIES} deliveries (timeout {opts.timeout:g} s)")
        finished = await wait_delivered(run, task, opts.timeout)
        elapsed = finished - started
        rows = await asyncio.to_thread(run_deliveries, conn, subs.ids, run.outbox_ids)
        retried = sum(1 for r in rows if r["attempts"] > 1)
        say(f"  all {len(rows)} delivered ({retried} after a retry)")

        step(7, "summary")
        await asyncio.to_thread(summary, run, rows)
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
        conn.execute(
            "UPDATE relay_demo.runs SET finished_at = now(), ok = true WHERE run_id = %s",
            (run_id,),
        )
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


def disable_subscriptions(conn: Conn, run: Run) -> None:
    """Disable this run's subscriptions: their receiver is gone (the next run removes them)."""
    if run.subs is None or conn.closed:
        return
    for sub_id in run.subs.ids:
        admin.set_enabled(conn, sub_id, False)
    ids = ", ".join(f"#{i}" for i in run.subs.ids)
    say(f"subscriptions {ids} disabled: their receiver is gone (the next demo run removes them)")


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
    global _T0
    _T0 = time.monotonic()
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
