"""The database side of ``relay demo``: the demo app, its subscriptions and run bookkeeping.

* the demo app's own tables (schema ``relay_demo``) and its story: an order's lifecycle and two
  test kits, all nine catalog event types, each emitted from an app-like transaction (a row in
  a demo table and ``relay.emit`` in one commit);
* the two subscriptions, added through :mod:`relay.admin` (what ``relay subscription add``
  runs);
* re-runnability: every run is recorded in ``relay_demo.runs`` with its subscriptions and
  outbox ids; the subscriptions of earlier runs are removed first, this run's are disabled at
  the end, and only this run's deliveries are counted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

import relay
from relay import admin
from relay.admin import validation as v
from relay.demo.output import say
from relay.demo.receiver import DEMO_TOKEN
from relay.errors import NotFound
from relay.sql.migrate import migrate

Conn = psycopg.Connection[Any]

ORDERS_BODY_MAP = {
    "type": "$.eventType",
    "customer.id": "$.userId",
    "sku": "$.productCode",
    "version": "$.version",
}
TEST_EVENT_NAME = "test.processed=TEST.RESULTED"

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


# Database ----------------------------------------------------------------------------------------


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


def add_subscriptions(conn: Conn, base_url: str, backoff_ms: int) -> DemoSubscriptions:
    """Create both subscriptions exactly as ``relay subscription add`` would (relay.admin).

    ``backoff_ms`` is the orders subscription's (shortened so the demo's retry is quick).
    """
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
            backoff_ms=backoff_ms,
            ordered=True,
        ),
    )
    assert orders.generated_secret is not None
    say(f"  #{orders.id}  POST {orders_url}  events order.*")
    say(f"        body map {body_map}")
    say(f"        signed with a generated secret; header '{name}: Bearer ***'")
    say(
        "        ordered: an order's events arrive one at a time, in the order they happened "
        "(a retrying one holds back the later ones of the same order)"
    )
    say(
        f"        backoff {backoff_ms} ms: retry n waits {backoff_ms / 1000:g} s x n "
        "(default 5 s x n; shortened so the demo's retry is quick)"
    )
    say(
        f"        = relay subscription add {orders_url} --method POST --event 'order.*' "
        f"--body-map '{body_map}' --secret generate --header '{name}: Bearer ...' "
        f"--backoff-ms {backoff_ms} --ordered"
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


# Run bookkeeping ---------------------------------------------------------------------------------


@dataclass
class Run:
    """State of one demo run."""

    run_id: str
    conn: Conn
    app_conn: Conn
    subs: DemoSubscriptions | None = None
    outbox_ids: list[int] = field(default_factory=list)


def record_run(conn: Conn, run_id: str) -> None:
    """Record the start of a run in ``relay_demo.runs``."""
    conn.execute("INSERT INTO relay_demo.runs (run_id) VALUES (%s)", (run_id,))


def record_subscriptions(conn: Conn, run_id: str, subs: DemoSubscriptions) -> None:
    """Record the run's subscriptions (the next run removes them)."""
    conn.execute(
        "UPDATE relay_demo.runs SET subscription_ids = %s WHERE run_id = %s",
        (subs.ids, run_id),
    )


def record_outbox_ids(conn: Conn, run_id: str, outbox_ids: list[int]) -> None:
    """Record the run's events (its deliveries are its subscriptions x these)."""
    conn.execute(
        "UPDATE relay_demo.runs SET outbox_ids = %s WHERE run_id = %s",
        (outbox_ids, run_id),
    )


def record_success(conn: Conn, run_id: str) -> None:
    """Mark the run finished and ok."""
    conn.execute(
        "UPDATE relay_demo.runs SET finished_at = now(), ok = true WHERE run_id = %s",
        (run_id,),
    )


def disable_subscriptions(conn: Conn, run: Run) -> None:
    """Disable this run's subscriptions: their receiver is gone (the next run removes them)."""
    if run.subs is None or conn.closed:
        return
    for sub_id in run.subs.ids:
        admin.set_enabled(conn, sub_id, False)
    ids = ", ".join(f"#{i}" for i in run.subs.ids)
    say(f"subscriptions {ids} disabled: their receiver is gone (the next demo run removes them)")
