"""The /v1 resources against a live API and a real database: objects as the CLI shows them,
lists with stable cursors, merge-patch updates, remove, replay."""

from __future__ import annotations

import json

import psycopg

from relay.admin import format as fmt
from relay.cli import main as cli
from tests.api.conftest import Api, problem
from tests.api.data import make_delivery, make_subscription


def test_subscription_lifecycle_as_operator(api: Api, capsys: object) -> None:
    with api.client(api.operator_key) as c:
        r = c.post(
            "/v1/subscriptions",
            json={
                "url": "https://example.com/hook",
                "events": ["order.*"],
                "headers": {"Authorization": "Bearer token-123"},
                "secret": "generate",
                "event_names": {"order.created": "OrderCreated"},
                "body_map": {"type": "$.eventType"},
            },
        )
        assert r.status_code == 201, r.text
        created = r.json()
        sub_id = created["id"]
        assert r.headers["location"] == f"/v1/subscriptions/{sub_id}"
        assert created["secret"].startswith("whsec_") and created["secret"] != "whsec_****"
        assert created["headers"] == {"Authorization": "***"}
        assert created["ordered"] is False

        shown = c.get(f"/v1/subscriptions/{sub_id}").json()
        assert shown["secret"] == "whsec_****"  # the generated secret is shown once only
        assert "token-123" not in json.dumps(shown)

        # Same fields and values as `relay subscription show --json`.
        assert cli(["subscription", "show", str(sub_id), "--json", "--database-url",
                    api.database_url]) == 0  # fmt: skip
        out = capsys.readouterr().out  # type: ignore[attr-defined]
        cli_row = json.loads(out)
        assert set(cli_row) == set(shown)
        for key, value in cli_row.items():
            if not key.endswith("_at"):
                assert shown[key] == value, key

        r = c.patch(
            f"/v1/subscriptions/{sub_id}",
            json={"headers": {"X-Extra": "1", "Authorization": None}, "body_map": None,
                  "max_retries": 5, "enabled": False},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        patched = r.json()
        assert patched["headers"] == {"X-Extra": "***"}
        assert patched["body_map"] is None and patched["max_retries"] == 5
        assert patched["enabled"] is False and patched["events"] == ["order.*"]

        assert c.delete(f"/v1/subscriptions/{sub_id}").status_code == 204
        assert c.get("/v1/subscriptions").json() == {"data": [], "next_cursor": None}
        removed = c.get("/v1/subscriptions", params={"include_removed": True}).json()["data"]
        assert [s["id"] for s in removed] == [sub_id] and removed[0]["removed_at"]
        problem(c.patch(f"/v1/subscriptions/{sub_id}", json={"max_retries": 1}), 404)
        problem(c.delete(f"/v1/subscriptions/{sub_id}"), 404)


def test_ordered_round_trips(api: Api, capsys: object) -> None:
    """`ordered` (DESIGN.md "Ordered subscriptions") is honoured on create and on patch, and
    reads back as the CLI shows it; null is refused like the CLI's other flags."""
    with api.client(api.operator_key) as c:
        r = c.post("/v1/subscriptions", json={"url": "https://example.com/o", "ordered": True})
        assert r.status_code == 201, r.text
        sub_id = r.json()["id"]
        assert r.json()["ordered"] is True
        assert c.get(f"/v1/subscriptions/{sub_id}").json()["ordered"] is True
        assert cli(["subscription", "show", str(sub_id), "--json", "--database-url",
                    api.database_url]) == 0  # fmt: skip
        out = capsys.readouterr().out  # type: ignore[attr-defined]
        assert json.loads(out)["ordered"] is True

        r = c.patch(f"/v1/subscriptions/{sub_id}", json={"ordered": False})
        assert r.status_code == 200, r.text
        assert r.json()["ordered"] is False
        # with another change in the same patch, and an enable/disable
        r = c.patch(
            f"/v1/subscriptions/{sub_id}",
            json={"ordered": True, "max_retries": 2, "enabled": False},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["ordered"], r.json()["max_retries"], r.json()["enabled"]) == (
            True, 2, False,
        )  # fmt: skip
        # absent keeps it
        assert (
            c.patch(f"/v1/subscriptions/{sub_id}", json={"timeout_ms": 5000}).json()["ordered"]
            is True
        )
        body = problem(c.patch(f"/v1/subscriptions/{sub_id}", json={"ordered": None}), 422)
        assert body["errors"][0]["field"] == "ordered"
        listed = {s["id"]: s["ordered"] for s in c.get("/v1/subscriptions").json()["data"]}
        assert listed[sub_id] is True
        # the default
        plain = c.post("/v1/subscriptions", json={"url": "https://example.com/p"}).json()
        assert plain["ordered"] is False


def test_tenant_key_creates_in_its_tenant_only(api: Api) -> None:
    with api.client(api.keys["acme"]) as c:
        r = c.post("/v1/subscriptions", json={"url": "https://example.com/a"})
        assert r.status_code == 201 and r.json()["tenant_id"] == "acme"
        same = c.post("/v1/subscriptions", json={"url": "https://e.com/", "tenant_id": "acme"})
        assert same.status_code == 201
        body = problem(
            c.post("/v1/subscriptions", json={"url": "https://e.com/", "tenant_id": "globex"}),
            422,
        )
        assert body["errors"][0]["field"] == "tenant_id"
        sub_id = r.json()["id"]
        for patch in ({"tenant_id": "globex"}, {"tenant_id": None}):
            body = problem(c.patch(f"/v1/subscriptions/{sub_id}", json=patch), 422)
            assert body["errors"][0]["field"] == "tenant_id"
        assert c.get(f"/v1/subscriptions/{sub_id}").json()["tenant_id"] == "acme"


def test_subscription_pages_follow_the_cursor(api: Api) -> None:
    with api.client(api.operator_key) as c:
        ids = [
            c.post("/v1/subscriptions", json={"url": f"https://e.com/{n}"}).json()["id"]
            for n in range(5)
        ]
        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/v1/subscriptions", params=params).json()
            seen += [s["id"] for s in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            # A row added between pages does not shift the ones still to come (keyset).
            if len(seen) == 2:
                ids.append(
                    c.post("/v1/subscriptions", json={"url": "https://e.com/x"}).json()["id"]
                )
        assert seen == ids


def test_deliveries_list_show_filter_and_page(api: Api) -> None:
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        sub = make_subscription(conn, "acme")
        other = make_subscription(conn, "acme")
        dead = make_delivery(conn, sub, tenant="acme", status="dead", attempts=2)
        ok = make_delivery(
            conn, sub, tenant="acme", status="delivered", event_type="test.processed"
        )
        pend = make_delivery(conn, other, tenant="acme", status="pending", attempts=0)
    with api.client(api.keys["acme"]) as c:
        page = c.get("/v1/deliveries").json()
        assert [d["id"] for d in page["data"]] == [pend, ok, dead]
        assert page["next_cursor"] is None
        assert set(page["data"][0]) == {k for k in fmt.DELIVERY_FIELDS if k in page["data"][0]}
        only = c.get("/v1/deliveries", params={"status": "dead"}).json()["data"]
        assert [d["id"] for d in only] == [dead]
        by_sub = c.get("/v1/deliveries", params={"subscription_id": sub}).json()["data"]
        assert [d["id"] for d in by_sub] == [ok, dead]
        by_type = c.get("/v1/deliveries", params={"event_type": "test.processed"}).json()["data"]
        assert [d["id"] for d in by_type] == [ok]
        first = c.get("/v1/deliveries", params={"limit": 2}).json()
        assert [d["id"] for d in first["data"]] == [pend, ok]
        rest = c.get("/v1/deliveries", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [d["id"] for d in rest["data"]] == [dead] and rest["next_cursor"] is None

        shown = c.get(f"/v1/deliveries/{dead}").json()
        assert shown["status"] == "dead" and shown["payload"] == {"orderId": "o-1"}
        assert [a["attempt"] for a in shown["attempt_history"]] == [1, 2]
        assert shown["attempt_history"][0]["status_code"] == 500

        body = problem(c.get("/v1/deliveries", params={"status": "lost"}), 422)
        assert body["errors"] == [{"field": "status", "message": body["errors"][0]["message"]}]


def test_a_delivery_whose_event_was_deleted_by_hand_is_listed_and_shown_as_gone(
    api: Api,
) -> None:
    """No foreign key holds an outbox row since 0011: an application may delete one that
    has deliveries. The list still shows the delivery; showing it is a clear 404 naming the
    deleted event, never a 500."""
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        sub = make_subscription(conn, "acme")
        dead = make_delivery(conn, sub, tenant="acme", status="dead", attempts=2)
        row = conn.execute(
            "DELETE FROM relay.outbox o USING relay.deliveries d"
            " WHERE d.id = %s AND o.id = d.outbox_id RETURNING o.id",
            (dead,),
        ).fetchone()
        assert row is not None
    for key in (api.keys["acme"], api.operator_key):
        with api.client(key) as c:
            assert [d["id"] for d in c.get("/v1/deliveries").json()["data"]] == [dead]
            body = problem(c.get(f"/v1/deliveries/{dead}"), 404)
            assert f"outbox row {row[0]}) was deleted" in body["detail"], body


def test_replay_gives_a_fresh_budget_and_refuses_one_in_flight(api: Api) -> None:
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        sub = make_subscription(conn, None)
        dead = make_delivery(conn, sub, tenant=None, status="dead", attempts=4)
        flying = make_delivery(conn, sub, tenant=None, status="pending", attempts=0, leased=True)
    with api.client(api.operator_key) as c:
        r = c.post(f"/v1/deliveries/{dead}/replay")
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "pending" and body["failures"] == 0
        assert len(body["attempt_history"]) == 4  # history kept

        conflict = problem(c.post(f"/v1/deliveries/{flying}/replay"), 409)
        assert "in flight" in conflict["detail"]
    with psycopg.connect(api.database_url) as conn:
        row = conn.execute(
            "SELECT lease_token IS NOT NULL FROM relay.deliveries WHERE id = %s", (flying,)
        ).fetchone()
        assert row == (True,)  # the lease was left alone: no second send


def test_event_types_and_healthz(api: Api) -> None:
    with api.client(api.keys["globex"]) as c:
        page = c.get("/v1/event-types").json()
        assert "order.created" in [e["name"] for e in page["data"]]
        assert page["next_cursor"] is None
    with api.client(None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}


def test_metrics_count_route_templates_not_raw_paths(api: Api) -> None:
    with api.client(api.operator_key) as c:
        for n in (1, 2, 3):
            c.get(f"/v1/deliveries/{n}")
        c.get("/nowhere/at/all")
    text = "\n".join(
        f"{s.name}{s.labels} {s.value}"
        for metric in api.metrics.registry.collect()
        for s in metric.samples
    )
    assert "'route': '/v1/deliveries/{delivery_id}', 'status': '404'} 3.0" in text
    assert "'route': 'unmatched', 'status': '404'} 1.0" in text
    assert "/v1/deliveries/1'" not in text
    assert "relay_api_request_duration_seconds_bucket" in text


def test_delivery_pages_are_what_their_model_serializes(api: Api) -> None:
    # GET /v1/deliveries is serialized from the rows without building a Delivery of each
    # (the dashboard's hot path): each answer must be byte for byte what DeliveryPage gives,
    # every field in its order and format, nothing more.
    from pydantic import TypeAdapter

    from relay.api.models import DeliveryPage

    model = TypeAdapter(DeliveryPage)
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        sub = make_subscription(conn, "acme")
        for status in ("dead", "delivered", "pending"):
            make_delivery(conn, sub, tenant="acme", status=status, attempts=2)
        make_delivery(conn, sub, tenant="acme", status="pending", attempts=0, leased=True)
        internal = make_subscription(conn, None)
        make_delivery(conn, internal, tenant=None, status="delivered")
    for key in (api.operator_key, api.keys["acme"]):
        with api.client(key) as c:
            for params in ({}, {"limit": 2}, {"status": "pending"}, {"subscription_id": sub}):
                r = c.get("/v1/deliveries", params=params)
                assert r.status_code == 200 and r.headers["content-type"] == "application/json"
                assert r.content == model.dump_json(model.validate_json(r.content))
                assert r.json()["data"]
                if r.json()["next_cursor"]:
                    more = c.get(
                        "/v1/deliveries", params={**params, "cursor": r.json()["next_cursor"]}
                    )
                    assert more.content == model.dump_json(model.validate_json(more.content))
