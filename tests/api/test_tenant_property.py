"""Property: no request with one tenant's key reads, changes or replays another tenant's
object (or an internal subscription's), and each of its 404s is byte-identical to the 404 of
the same request on an id that does not exist (yet).

Each example predicts the ids the next objects will get, asks for them while they are still
missing, creates them for other owners, asks again, and compares the answers byte for byte;
the rows must be unchanged. The same SQL statement answers both cases (the scope is a
condition of the statement), so timing does not tell them apart either.
"""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Api
from tests.api.data import make_delivery, make_subscription

TENANTS = ["acme", "globex", "initech", "umbrella"]


def _next_id(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(
        f"SELECT pg_sequence_last_value(pg_get_serial_sequence('relay.{table}', 'id'))"
    ).fetchone()
    assert row is not None
    return 1 if row[0] is None else int(row[0]) + 1


def _probe(c: httpx.Client, sub_id: int, delivery_id: int) -> list[tuple[int, str, bytes]]:
    answers = [
        c.get(f"/v1/subscriptions/{sub_id}"),
        c.patch(f"/v1/subscriptions/{sub_id}", json={"max_retries": 0, "enabled": False}),
        c.delete(f"/v1/subscriptions/{sub_id}"),
        c.get(f"/v1/deliveries/{delivery_id}"),
        c.post(f"/v1/deliveries/{delivery_id}/replay"),
    ]
    return [(r.status_code, r.headers["content-type"], r.content) for r in answers]


def _snapshot(conn: psycopg.Connection[Any]) -> list[Any]:
    return conn.execute(
        "SELECT s.id, s.max_retries, s.enabled, s.removed_at, d.id, d.status, d.failures "
        "FROM relay.subscriptions s JOIN relay.deliveries d ON d.subscription_id = s.id "
        "ORDER BY d.id"
    ).fetchall()


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_tenant_key_never_reaches_another_tenants_objects(api: Api, data: st.DataObject) -> None:
    me = data.draw(st.sampled_from(TENANTS), label="key tenant")
    others = data.draw(
        st.lists(st.sampled_from([*(t for t in TENANTS if t != me), None]), min_size=1, max_size=3),
        label="owners (None = internal subscription)",
    )
    status = data.draw(st.sampled_from(["dead", "delivered", "pending"]), label="status")
    key = api.keys.get(me) or api.keys.setdefault(me, api.key(me))

    with psycopg.connect(api.database_url, autocommit=True) as conn, api.client(key) as c:
        first_sub, first_delivery = _next_id(conn, "subscriptions"), _next_id(conn, "deliveries")
        ids = [(first_sub + n, first_delivery + n) for n in range(len(others))]
        missing = [_probe(c, s, d) for s, d in ids]

        for n, owner in enumerate(others):
            sub = make_subscription(conn, owner)
            # An internal subscription receives every tenant's events, this key's too: the
            # delivery carries the key's tenant and must still be out of its reach.
            d = make_delivery(conn, sub, tenant=owner or me, status=status)
            assert (sub, d) == ids[n]
        before = _snapshot(conn)

        foreign = [_probe(c, s, d) for s, d in ids]
        assert foreign == missing
        assert all(code == 404 for answers in foreign for code, _, _ in answers)

        listed = c.get("/v1/subscriptions", params={"include_removed": True}).json()["data"]
        assert not {s for s, _ in ids} & {row["id"] for row in listed}
        assert all(row["tenant_id"] == me for row in listed)
        deliveries = c.get("/v1/deliveries", params={"limit": 1000}).json()["data"]
        assert not {d for _, d in ids} & {row["id"] for row in deliveries}
        for s, _ in ids:
            assert c.get("/v1/deliveries", params={"subscription_id": s}).json()["data"] == []
        assert _snapshot(conn) == before
