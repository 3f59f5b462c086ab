"""Poison events and subscriptions: one bad event or endpoint ends ``dead`` with a reason (or
is refused at emit time) and never blocks the rest of the work."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

import relay
from tests.faults._util import Conn, report, scalar
from tests.receiver import Receiver
from tests.relayctx import add_subscription, attempts, deliveries, emit, running_relay, wait_until

LIMIT = 262_144  # 256 KiB of jsonb text


def _by_sub(conn: Conn) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for d in deliveries(conn):
        out.setdefault(d["subscription_id"], []).append(d)
    return out


async def test_body_map_failing_at_apply_time_is_dead_for_that_subscription_only(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """A body map that compiles but cannot be applied to one event (``sorted`` over a list
    mixing numbers and strings raises in jsonpath-ng) ends that delivery ``dead`` after one
    attempt, with the reason; the same event reaches the other subscription, and the same map
    still works for events it can be applied to."""
    mapped = add_subscription(
        conn, receiver.url("/mapped"), body_map={"items": "$.items.`sorted`"}, max_retries=3
    )
    plain = add_subscription(conn, receiver.url("/plain"))
    emit(conn, "order.created", {"items": [3, "a", 1]})  # poison for /mapped
    emit(conn, "order.created", {"items": [3, 2, 1]})  # fine for both
    async with running_relay(database_url):
        await wait_until(
            lambda: (
                sorted(d["status"] for d in deliveries(conn))
                == ["dead", "delivered", "delivered", "delivered"]
            ),
            timeout=10,
        )
    subs = _by_sub(conn)
    dead = next(d for d in subs[mapped] if d["status"] == "dead")
    assert dead["attempts"] == 1 and dead["last_status_code"] is None
    assert dead["last_error"].startswith("body map failed:"), dead["last_error"]
    assert "sorted" in dead["last_error"]
    (a,) = attempts(conn, dead["id"])
    assert a["error"] == dead["last_error"]
    assert all(d["status"] == "delivered" for d in subs[plain])
    assert [r.json for r in receiver.requests_to("/mapped")] == [{"items": [1, 2, 3]}]
    assert len(receiver.requests_to("/plain")) == 2


async def test_deeply_nested_payload_never_blocks_other_events(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """An app writes (plain INSERT) a payload nested 3000 levels deep, which Postgres accepts
    but Python's json decoder cannot load. Either the outbox refuses it, or relay must end it
    ``dead`` with a reason; in no case may it hold back the events around it."""
    depth = 3000
    deep = '{"a": ' + "[" * depth + "]" * depth + "}"
    add_subscription(conn, receiver.url(), max_retries=0, timeout_ms=1000)
    emit(conn, "order.created", {"before": 1})
    try:
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', %s::jsonb)",
            (deep,),
        )
        refused = False
    except psycopg.Error:
        refused = True
        assert scalar(conn, "SELECT count(*) FROM relay.outbox") == 1
    for i in range(10):
        emit(conn, "order.created", {"after": i})
    total = 11 + (0 if refused else 1)
    async with running_relay(database_url, lease_seconds=1):
        await wait_until(
            lambda: sum(d["status"] in ("delivered", "dead") for d in deliveries(conn)) == total,
            timeout=12,
        )
    assert len(receiver.requests) >= 11
    for d in deliveries(conn):
        if d["status"] == "dead":
            assert d["last_error"], d


@pytest.mark.parametrize("path", ["sql_emit", "plain_insert", "python_emit"])
@pytest.mark.parametrize("char", ["x", "é"])
def test_payload_over_256_kib_is_refused_at_emit(conn: Conn, path: str, char: str) -> None:
    """A payload whose JSON text is over 262144 bytes (multi-byte characters counted in bytes)
    is refused when the app emits it, by every path, with a clear error; nothing is written.
    Exactly 262144 bytes is accepted."""
    width = len(char.encode())
    fits = {"p": char * ((LIMIT - 9) // width)}  # {"p": "..."} adds 9 bytes
    assert len(json.dumps(fits, ensure_ascii=False).encode()) <= LIMIT
    over = {"p": char * ((LIMIT - 9) // width + 1)}
    assert len(json.dumps(over, ensure_ascii=False).encode()) > LIMIT

    def write(payload: dict[str, Any]) -> None:
        if path == "sql_emit":
            conn.execute(
                "SELECT relay.emit('order.created', %s)", (psycopg.types.json.Jsonb(payload),)
            )
        elif path == "plain_insert":
            conn.execute(
                "INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', %s)",
                (psycopg.types.json.Jsonb(payload),),
            )
        else:
            relay.emit(conn, "order.created", payload)

    expected: type[Exception] = relay.EmitError if path == "python_emit" else psycopg.Error
    with pytest.raises(expected) as info:
        write(over)
    message = str(info.value)
    if path == "plain_insert":
        assert "outbox_payload_size" in message
    else:
        assert "262144" in message and "256 KiB" in message, message
    assert scalar(conn, "SELECT count(*) FROM relay.outbox") == 0
    write(fits)
    assert scalar(conn, "SELECT count(*) FROM relay.outbox") == 1


def test_oversized_payload_rolls_back_the_apps_transaction(database_url: str) -> None:
    """Inside an app transaction, the refused emit leaves the transaction failed: the app's own
    write cannot commit without its event (nothing half-written)."""
    with psycopg.connect(database_url) as app:
        app.execute("CREATE TABLE public.orders (id int)")
        app.commit()
        app.execute("INSERT INTO public.orders VALUES (1)")
        with pytest.raises(relay.EmitError):
            relay.emit(app, "order.created", {"p": "x" * LIMIT})
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            app.execute("INSERT INTO public.orders VALUES (2)")
        app.rollback()
        assert scalar(app, "SELECT count(*) FROM public.orders") == 0
        assert scalar(app, "SELECT count(*) FROM relay.outbox") == 0


async def test_unresolvable_host_ends_dead_and_blocks_nothing(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """A subscription whose host no longer resolves (``.invalid`` never does) fails every
    attempt with a connect error naming the host, ends dead, and the healthy subscription gets
    every event meanwhile."""
    bad = add_subscription(
        conn, "http://does-not-exist.invalid/hook", max_retries=1, backoff_ms=100
    )
    add_subscription(conn, receiver.url())
    n = 20
    for i in range(n):
        emit(conn, "order.created", {"i": i})
    async with running_relay(database_url):
        reqs = await receiver.wait_for(n, timeout=10)
        await wait_until(
            lambda: [d["status"] for d in _by_sub(conn).get(bad, [])] == ["dead"] * n, timeout=15
        )
    assert sorted(r.json["i"] for r in reqs) == list(range(n))
    dead = _by_sub(conn)[bad]
    assert len(dead) == n
    for d in dead:
        assert d["attempts"] == 2 and d["last_status_code"] is None
        assert "does-not-exist.invalid" in d["last_error"], d["last_error"]
    report("unresolvable_host", events=n, dead=len(dead), healthy_delivered=len(reqs))


async def test_payload_with_a_number_python_cannot_decode_blocks_nothing(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """jsonb accepts ``{"n": 1e5000}`` and prints it as a 5,001-digit integer, over Python's
    int-string limit. Before: the decoding error failed the claim after it committed, so the
    whole batch stayed leased and was stranded again at every lease expiry. Now only that
    delivery ends ``dead`` with the reason; the events around it are delivered."""
    add_subscription(conn, receiver.url(), max_retries=0)
    emit(conn, "order.created", {"before": 1})
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', %s::jsonb)",
        ('{"n": 1e5000}',),
    )
    for i in range(5):
        emit(conn, "order.created", {"after": i})
    async with running_relay(database_url, lease_seconds=1):
        await wait_until(
            lambda: (
                len(deliveries(conn)) == 7
                and all(d["status"] != "pending" for d in deliveries(conn))
            ),
            timeout=12,
        )
    by_status = sorted((d["status"], d["last_error"] or "") for d in deliveries(conn))
    assert [s for s, _ in by_status] == ["dead"] + ["delivered"] * 6
    assert "digits" in by_status[0][1], by_status[0]
    assert len(receiver.requests) == 6
