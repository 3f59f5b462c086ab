"""Randomised payloads the database accepts, through a running relay: each delivery ends
``delivered``, or ``dead`` with a reason, never ``pending`` forever (issue 14).

Payloads are generated as JSON *text*, so they reach what Python's ``json`` never writes:
numbers jsonb keeps exactly but Python cannot read back (``1e5000`` prints 5,001 digits, over
Python's int-string limit; ``10**400`` is no float), nesting up to thousands of levels, long
strings, odd Unicode (astral characters, escaped lone surrogates like ``"\\ud800"``), and
``"\\u0000"``, which jsonb refuses: a payload the database refuses is simply not emitted (only
what an app could commit matters). Three subscriptions see every event: a POST, a GET (query
parameters) and a body map.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults._util import Conn, report
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription, running_relay

# Hand-picked pieces jsonb accepts but a naive decoder may not, mixed with random ones.
ODD_NUMBERS = ["1e5000", "-1e5000", str(10**400), "1e-400", "0.000000000000000000001", "-0"]
ODD_STRINGS = [
    r'"\ud800"',  # lone high surrogate, escaped: jsonb stores it as the escape text
    r'"\udfff x"',
    r'"\u0000"',  # jsonb refuses: never emitted
    '"\U0001f600 \u202e rtl \ufeff bom"',
    r'"\\\"\/\b\f\n\r\t"',
]


SURROGATES: tuple[Literal["Cs"]] = ("Cs",)


def _string() -> st.SearchStrategy[str]:
    plain = st.text(
        st.characters(exclude_categories=SURROGATES, exclude_characters="\x00"), max_size=40
    ).map(lambda s: json.dumps(s, ensure_ascii=False))
    long = st.integers(1_000, 100_000).map(lambda n: json.dumps("x" * n))
    return plain | long | st.sampled_from(ODD_STRINGS)


def _scalar() -> st.SearchStrategy[str]:
    numbers = st.integers(-(10**40), 10**40).map(str) | st.sampled_from(ODD_NUMBERS)
    floats = st.floats(allow_nan=False, allow_infinity=False).map(repr)
    return st.sampled_from(["null", "true", "false"]) | numbers | floats | _string()


def _key() -> st.SearchStrategy[str]:
    return st.text(max_size=8).map(lambda s: json.dumps(s)) | st.sampled_from(ODD_STRINGS)


json_text = st.recursive(
    _scalar(),
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(st.tuples(_key(), inner), max_size=4).map(
            lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
        )
    ),
    max_leaves=12,
)
# Deep nesting: jsonb's parser stops at the server's stack depth; Python's at ~1,000 levels.
deep = st.tuples(st.integers(1, 5_000), st.sampled_from(["[", '{"a":'])).map(
    lambda t: (t[1] * t[0]) + "1" + ("]" if t[1] == "[" else "}") * t[0]
)
payload_text = st.tuples(_key(), json_text | deep).map(lambda kv: "{" + f"{kv[0]}:{kv[1]}" + "}")


def _insert_accepted(conn: Conn, payloads: list[str]) -> int:
    """Insert each payload the database accepts; how many went in."""
    n = 0
    for text in payloads:
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO relay.outbox (event_type, payload) VALUES ('order.created', %s)",
                    (text,),
                )
            n += 1
        except psycopg.Error:
            pass  # refused by jsonb (U+0000, too deep) or by relay's checks: nothing to deliver
    return n


def _open(conn: Conn) -> list[tuple[int, str, str | None]]:
    return [
        (int(r[0]), str(r[1]), r[2])
        for r in conn.execute(
            "SELECT id, status, last_error FROM relay.deliveries ORDER BY id"
        ).fetchall()
    ]


async def _drain(url: str, conn: Conn, expected: int) -> None:
    async with running_relay(url, lease_seconds=2, poll_interval=0.2):
        for _ in range(400):
            rows = _open(conn)
            if len(rows) == expected and all(s != "pending" for _, s, _ in rows):
                return
            await asyncio.sleep(0.05)
    rows = _open(conn)
    stuck = [r for r in rows if r[1] == "pending"]
    raise AssertionError(f"{len(rows)}/{expected} deliveries, still pending: {stuck[:5]}")


def test_random_payloads_end_delivered_or_dead_with_a_reason(
    conn: Conn, database_url: str, tmp_path: Any
) -> None:
    totals = {"payloads": 0, "accepted": 0, "delivered": 0, "dead": 0}
    with start_receiver_process(tmp_path) as rx:
        common = {"max_retries": 0, "backoff_ms": 100, "timeout_ms": 2000}
        add_subscription(conn, rx.url, **common)
        add_subscription(conn, rx.url, method="GET", **common)
        add_subscription(conn, rx.url, body_map={"k": "$.*", "t": "$.eventType"}, **common)

        @settings(
            max_examples=6,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(st.lists(payload_text, min_size=4, max_size=12))
        def example(payloads: list[str]) -> None:
            conn.execute("DELETE FROM relay.delivery_attempts")
            conn.execute("DELETE FROM relay.deliveries")
            conn.execute("DELETE FROM relay.outbox")
            accepted = _insert_accepted(conn, payloads)
            asyncio.run(_drain(database_url, conn, accepted * 3))
            rows = _open(conn)
            for delivery_id, status, error in rows:
                assert status in ("delivered", "dead"), (delivery_id, status)
                if status == "dead":
                    assert error, f"delivery {delivery_id} dead without a reason"
            totals["payloads"] += len(payloads)
            totals["accepted"] += accepted
            totals["delivered"] += sum(s == "delivered" for _, s, _ in rows)
            totals["dead"] += sum(s == "dead" for _, s, _ in rows)

        example()
    report("random payloads through a relay", **totals)
    assert totals["accepted"] > 0, "the database accepted no payload: nothing tested"
