"""Tenant isolation and event filters, as a property of the real dispatcher.

Random subscriptions (tenant or none, globs from the catalog, enabled or not) and random
events (tenant or none) go through ``PgStore.dispatch`` — the daemon's own fan-out statement on
a real Postgres — and the deliveries created must be exactly the model's:
``enabled and (sub.tenant is None or sub.tenant == event.tenant) and (no globs or a glob
matches the type)``. An untenanted event never reaches a tenanted subscription.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.daemon.store import PgStore
from tests.faults._util import Conn, report, scaled
from tests.relayctx import SEEDED_EVENT_TYPES, add_subscription

# Extra types whose names differ from catalog ones only where LIKE would be fooled:
# '_' is a LIKE wildcard, so 'test.lab_accessioned' must not match 'test.labxaccessioned'.
EXTRA_TYPES = ("test.labxaccessioned", "order.created_late", "order.created.v2")
CATALOG = (
    *SEEDED_EVENT_TYPES,
    *EXTRA_TYPES,
)
TENANTS = (None, "acme", "globex", "ac%", "a_me", "ACME", "")
SUB_TENANTS = (None, "acme", "globex", "ac%", "a_me")
# Globs where a LIKE-based implementation could go wrong ('_' and '%' are LIKE wildcards).
TRICKY = (
    "test.lab_accessioned",
    "order.created",
    "order.created_*",
    "order.created*",
    "order.created.*",
    "order.*",
    "test.*",
    "*_*",
    "*.created",
    "test.lab?accessioned",
    "order.%",
)


@st.composite
def globs(draw: st.DrawFn) -> str:
    """A glob built from a catalog name: exact, a prefix + '*', '?' for a character, etc."""
    name = draw(st.sampled_from(CATALOG))
    kind = draw(st.sampled_from(["exact", "prefix", "qmark", "suffix", "star", "tricky", "tricky"]))
    if kind == "exact":
        return name
    if kind == "prefix":
        return name[: draw(st.integers(0, len(name)))] + "*"
    if kind == "qmark":
        i = draw(st.integers(0, len(name) - 1))
        return name[:i] + "?" + name[i + 1 :]
    if kind == "suffix":
        return "*" + name[draw(st.integers(0, len(name))) :]
    if kind == "star":
        return "*"
    return draw(st.sampled_from(TRICKY))


@dataclass(frozen=True)
class Sub:
    tenant: str | None
    globs: tuple[str, ...]
    enabled: bool


@dataclass(frozen=True)
class Event:
    type: str
    tenant: str | None


subs_st = st.lists(
    st.builds(
        Sub,
        tenant=st.sampled_from(SUB_TENANTS),
        globs=st.lists(globs(), max_size=3).map(tuple),
        enabled=st.sampled_from([True, True, True, False]),
    ),
    min_size=1,
    max_size=6,
)
events_st = st.lists(
    st.builds(Event, type=st.sampled_from(CATALOG + EXTRA_TYPES), tenant=st.sampled_from(TENANTS)),
    min_size=1,
    max_size=15,
)


def glob_model(pattern: str, name: str) -> bool:
    """'*' any run, '?' one character, everything else literal (independent of relay's code)."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.fullmatch("".join(parts), name, flags=re.DOTALL) is not None


def matches(sub: Sub, event: Event) -> bool:
    tenant_ok = sub.tenant is None or sub.tenant == event.tenant
    type_ok = not sub.globs or any(glob_model(g, event.type) for g in sub.globs)
    return sub.enabled and tenant_ok and type_ok


@pytest.fixture
def store_loop(database_url: str) -> Iterator[tuple[PgStore, asyncio.AbstractEventLoop]]:
    """One open PgStore (the daemon's port) and a private loop to drive it from sync code."""
    loop = asyncio.new_event_loop()
    store = PgStore(database_url, pool_size=2, relay_id="t")
    loop.run_until_complete(store.open())
    yield store, loop
    loop.run_until_complete(store.close())
    loop.close()


STATS = {"examples": 0, "subscriptions": 0, "events": 0, "deliveries": 0}


@settings(
    max_examples=scaled(50, 500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(subs=subs_st, events=events_st)
# Pinned edge cases (LIKE metacharacters, untenanted events, near-miss names):
@example(
    subs=[
        Sub(None, ("test.lab_accessioned",), True),
        Sub("ac%", (), True),
        Sub("a_me", ("order.created",), True),
        Sub("acme", ("order.*",), True),
        Sub(None, ("order.created_*",), False),
    ],
    events=[
        Event("test.labxaccessioned", None),
        Event("test.lab_accessioned", "acme"),
        Event("order.created_late", "acme"),
        Event("order.created", None),
        Event("order.created", "a_me"),
        Event("order.created", "axme"),
        Event("order.created.v2", "ac%"),
    ],
)
def test_fanout_matches_the_tenant_and_filter_model(
    conn: Conn,
    store_loop: tuple[PgStore, asyncio.AbstractEventLoop],
    subs: list[Sub],
    events: list[Event],
) -> None:
    """Deliveries created by one dispatch equal the model exactly, for any mix of tenants,
    globs and enabled flags (examples reset the tables)."""
    store, loop = store_loop
    for name in EXTRA_TYPES:
        conn.execute(
            "INSERT INTO relay.event_types (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,)
        )
    conn.execute("DELETE FROM relay.deliveries")
    conn.execute("DELETE FROM relay.outbox")
    conn.execute("DELETE FROM relay.subscriptions")
    sub_ids = [
        add_subscription(
            conn,
            "http://127.0.0.1:9/hook",
            tenant_id=s.tenant,
            events=list(s.globs),
            enabled=s.enabled,
        )
        for s in subs
    ]
    event_ids = []
    for e in events:
        row = conn.execute(
            "SELECT relay.emit(%s, '{}'::jsonb, NULL, %s)", (e.type, e.tenant)
        ).fetchone()
        assert row is not None
        event_ids.append(int(row[0]))
    # (rows dispatched, deliveries created, ...): later items, if any, are leased jobs.
    result = loop.run_until_complete(store.dispatch(1000))
    dispatched, created = result[0], result[1]
    expected = {
        (oid, sid)
        for oid, e in zip(event_ids, events, strict=True)
        for sid, s in zip(sub_ids, subs, strict=True)
        if matches(s, e)
    }
    got = {
        (int(r[0]), int(r[1]))
        for r in conn.execute("SELECT outbox_id, subscription_id FROM relay.deliveries")
    }
    assert dispatched == len(events)
    assert got == expected
    assert created == len(expected)
    # The deliveries carry the event's tenant (what admin listings filter on).
    for tenant, oid in conn.execute(
        "SELECT d.tenant_id IS NOT DISTINCT FROM o.tenant_id, o.id FROM relay.deliveries d"
        " JOIN relay.outbox o ON o.id = d.outbox_id"
    ):
        assert tenant, oid
    STATS["examples"] += 1
    STATS["subscriptions"] += len(subs)
    STATS["events"] += len(events)
    STATS["deliveries"] += len(expected)


def test_zz_report_tenant_property_figures() -> None:
    """Prints how much the property test above exercised (for docs/reliability.md)."""
    report("tenant_property", **STATS)
