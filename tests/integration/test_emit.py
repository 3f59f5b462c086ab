"""Every way an app emits an event: SQL function, plain INSERT, Python sync and async.

Each one joins the app's transaction: the event exists exactly when the app's own write
commits, and a bad event fails inside that transaction with nothing half-written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import relay
from relay.errors import EmitError

Conn = psycopg.Connection[Any]

_COLUMNS = "event_type, payload, aggregate_id, tenant_id, version, dispatched_at IS NULL"


def outbox_rows(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {_COLUMNS} FROM relay.outbox ORDER BY id").fetchall()


def tx_status(c: psycopg.AsyncConnection[Any]) -> psycopg.pq.TransactionStatus:
    # A function, so mypy does not narrow the status across awaits.
    return c.info.transaction_status


def outbox_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM relay.outbox").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def app(database_url: str, conn: Conn) -> Iterator[Conn]:
    """A non-autocommit connection, as an app holds it, with an app table of its own."""
    conn.execute("CREATE TABLE app_orders (id int PRIMARY KEY)")
    c = psycopg.connect(database_url)
    yield c
    c.close()


# SQL ------------------------------------------------------------------------------------------


def test_sql_emit_defaults(conn: Conn) -> None:
    row = conn.execute("SELECT relay.emit('order.created', '{\"orderId\": 7}')").fetchone()
    assert row is not None and isinstance(row[0], int)
    assert outbox_rows(conn) == [("order.created", {"orderId": 7}, None, None, "v1", True)]
    event_id = conn.execute("SELECT event_id FROM relay.outbox WHERE id = %s", (row[0],)).fetchone()
    assert event_id is not None and event_id[0] is not None


def test_sql_emit_all_arguments(conn: Conn) -> None:
    conn.execute("SELECT relay.emit('test.processed', '{\"a\": 1}'::jsonb, 'agg-1', 'acme', 'v2')")
    conn.execute(
        "SELECT relay.emit(event_type => 'order.received', payload => '{}', "
        "tenant_id => 'beta', version => 'v3')"
    )
    assert outbox_rows(conn) == [
        ("test.processed", {"a": 1}, "agg-1", "acme", "v2", True),
        ("order.received", {}, None, "beta", "v3", True),
    ]


def test_plain_insert(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', '{\"x\": 1}')"
    )
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, aggregate_id, tenant_id, version) "
        "VALUES ('order.dispatched', '{}', 'o-9', 'acme', 'v2')"
    )
    assert outbox_rows(conn) == [
        ("order.created", {"x": 1}, None, None, "v1", True),
        ("order.dispatched", {}, "o-9", "acme", "v2", True),
    ]


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("SELECT relay.emit('order.nope', '{}')", psycopg.errors.ForeignKeyViolation),
        ("SELECT relay.emit('order.created', '[1, 2]')", psycopg.errors.CheckViolation),
        ("SELECT relay.emit('order.created', '\"text\"')", psycopg.errors.CheckViolation),
        ("SELECT relay.emit('order.created', NULL)", psycopg.errors.CheckViolation),
        ("INSERT INTO relay.outbox (event_type, payload) VALUES ('order.nope', '{}')",
         psycopg.errors.ForeignKeyViolation),
        ("INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', '[1]')",
         psycopg.errors.CheckViolation),
        ("INSERT INTO relay.outbox (event_type, payload, version) "
         "VALUES ('order.created', '{}', '')", psycopg.errors.CheckViolation),
    ],
)  # fmt: skip
def test_sql_errors_fail_the_app_transaction(
    app: Conn, conn: Conn, sql: str, error: type[Exception]
) -> None:
    app.execute("INSERT INTO app_orders VALUES (1)")
    with pytest.raises(error):
        app.execute(sql)
    assert app.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    app.rollback()
    assert outbox_count(conn) == 0
    assert conn.execute("SELECT count(*) FROM app_orders").fetchone() == (0,)


def test_sql_unknown_type_message_is_clear(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as exc:
        conn.execute("SELECT relay.emit('order.nope', '{}')")
    assert 'unknown event type "order.nope"' in str(exc.value)
    with pytest.raises(psycopg.errors.CheckViolation) as exc2:
        conn.execute("SELECT relay.emit('order.created', '[1]')")
    assert "payload must be a JSON object" in str(exc2.value)


def test_payload_rules_name_their_constraint_on_insert_and_update(conn: Conn) -> None:
    """A plain INSERT or an UPDATE of the payload is held to the same rules as relay.emit, and
    the error names the rule (constraint name and the reason in its detail); an UPDATE that
    leaves the payload alone (the dispatcher's) does not re-check it."""
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', '[1]')"
        )
    assert exc.value.diag.constraint_name == "outbox_payload_is_object"
    assert exc.value.diag.message_detail == "payload must be a JSON object, got array"
    row = conn.execute(
        "INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', '{}') RETURNING id"
    ).fetchone()
    assert row is not None
    big = Jsonb({"p": "x" * 262_144})
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute("UPDATE relay.outbox SET payload = %s WHERE id = %s", (big, row[0]))
    assert exc.value.diag.constraint_name == "outbox_payload_size"
    assert exc.value.diag.message_detail == (
        "payload is 262153 bytes of JSON, the limit is 262144 (256 KiB)"
    )
    conn.execute("UPDATE relay.outbox SET dispatched_at = now() WHERE id = %s", (row[0],))
    assert outbox_rows(conn) == [("order.created", {}, None, None, "v1", False)]


# Python ---------------------------------------------------------------------------------------


def test_python_emit_joins_the_caller_transaction(app: Conn, conn: Conn) -> None:
    app.execute("INSERT INTO app_orders VALUES (1)")
    outbox_id = relay.emit(app, "order.created", {"orderId": 1}, aggregate_id="o-1",
                           tenant_id="acme", version="v2")  # fmt: skip
    assert isinstance(outbox_id, int)
    # never commits: still inside the app's transaction, invisible to others
    assert app.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert outbox_count(conn) == 0
    app.commit()
    assert outbox_rows(conn) == [("order.created", {"orderId": 1}, "o-1", "acme", "v2", True)]


def test_python_emit_rollback_leaves_nothing(app: Conn, conn: Conn) -> None:
    app.execute("INSERT INTO app_orders VALUES (1)")
    relay.emit(app, "order.created", {"orderId": 1})
    app.rollback()
    assert outbox_count(conn) == 0
    with app.transaction():
        relay.emit(app, "test.registered", {"testId": 2})
    assert outbox_rows(conn) == [("test.registered", {"testId": 2}, None, None, "v1", True)]


def test_python_emit_unknown_type_fails_the_transaction(app: Conn, conn: Conn) -> None:
    app.execute("INSERT INTO app_orders VALUES (1)")
    relay.emit(app, "order.created", {"orderId": 1})
    with pytest.raises(EmitError, match="unknown event type"):
        relay.emit(app, "order.nope", {"orderId": 1})
    # the app cannot commit its write without the event: the transaction is failed
    assert app.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    app.rollback()
    assert outbox_count(conn) == 0
    assert conn.execute("SELECT count(*) FROM app_orders").fetchone() == (0,)


@pytest.mark.parametrize("payload", [[1, 2], "text", None, 5])
def test_python_emit_refuses_non_object_payload(app: Conn, conn: Conn, payload: Any) -> None:
    with pytest.raises(EmitError, match="payload"):
        relay.emit(app, "order.created", payload)
    app.rollback()
    assert outbox_count(conn) == 0


def test_emit_wakes_relays_only_on_commit(app: Conn, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN relay_outbox")
        relay.emit(app, "order.created", {})
        relay.emit(app, "order.created", {})
        app.rollback()
        assert list(listener.notifies(timeout=0.5)) == []
        relay.emit(app, "order.created", {})
        app.commit()
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in got] == ["relay_outbox"]


async def test_emit_async_joins_the_caller_transaction(database_url: str, conn: Conn) -> None:
    aconn = await psycopg.AsyncConnection.connect(database_url)
    try:
        outbox_id = await relay.emit_async(aconn, "order.created", {"n": 1}, tenant_id="acme")
        assert isinstance(outbox_id, int)
        assert tx_status(aconn) == psycopg.pq.TransactionStatus.INTRANS
        assert outbox_count(conn) == 0
        await aconn.rollback()
        assert outbox_count(conn) == 0
        await relay.emit_async(aconn, "order.created", {"n": 2}, aggregate_id="a", version="v9")
        await aconn.commit()
        assert outbox_rows(conn) == [("order.created", {"n": 2}, "a", None, "v9", True)]

        with pytest.raises(EmitError, match="unknown event type"):
            await relay.emit_async(aconn, "order.nope", {})
        assert tx_status(aconn) == psycopg.pq.TransactionStatus.INERROR
        await aconn.rollback()
        with pytest.raises(EmitError, match="payload"):
            await relay.emit_async(aconn, "order.created", [1])  # type: ignore[arg-type]
        await aconn.rollback()
    finally:
        await aconn.close()
    assert outbox_count(conn) == 1


def test_payload_passed_as_jsonb_object_round_trips(conn: Conn) -> None:
    payload = {"nested": {"list": [1, "two", None], "flag": True}, "unicode": "café"}
    conn.execute("SELECT relay.emit('order.created', %s)", (Jsonb(payload),))
    assert outbox_rows(conn)[0][1] == payload
