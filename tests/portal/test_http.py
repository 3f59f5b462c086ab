"""The portal over real HTTP (uvicorn + httpx): sessions, CSRF, headers, tenant isolation,
validation. The browser flows are in test_browser.py."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import psycopg
import pytest

from relay.portal.web import CSP
from tests.portal.conftest import PortalServer
from tests.relayctx import add_subscription, emit

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _delivery(conn: psycopg.Connection[Any], sub_id: int, tenant: str, status: str) -> int:
    outbox_id = emit(conn, "order.created", {"orderId": "o1"}, tenant)
    row = conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type, tenant_id, status,"
        " dead_at) VALUES (%s, %s, 'order.created', %s, %s,"
        " CASE WHEN %s = 'dead' THEN now() END) RETURNING id",
        (outbox_id, sub_id, tenant, status, status),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _client(portal: PortalServer, tenant: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=portal.base_url, timeout=20)
    entered = client.get(portal.link(tenant))
    assert entered.status_code == 200, entered.text
    home = client.get("/portal/")
    assert home.status_code == 200
    match = _CSRF.search(home.text)
    assert match
    return client, match.group(1)


@pytest.fixture
def world(portal: PortalServer, conn: psycopg.Connection[Any]) -> dict[str, Any]:
    acme = add_subscription(conn, "http://127.0.0.1:9/acme", tenant_id="acme")
    globex = add_subscription(conn, "http://127.0.0.1:9/globex", tenant_id="globex")
    internal = add_subscription(conn, "http://127.0.0.1:9/internal")
    return {
        "acme_sub": acme,
        "globex_sub": globex,
        "internal_sub": internal,
        "acme_dead": _delivery(conn, acme, "acme", "dead"),
        "globex_dead": _delivery(conn, globex, "globex", "dead"),
    }


def test_entering_sets_a_strict_httponly_session_and_leaves_the_token(
    portal: PortalServer,
) -> None:
    with httpx.Client(base_url=portal.base_url) as client:
        response = client.get(portal.link("acme", "10m"))
        assert response.status_code == 200
        cookie = response.headers["set-cookie"].lower()
        for part in ("httponly", "samesite=strict", "path=/portal", "max-age=6"):
            assert part in cookie
        assert "secure" not in cookie  # plain http on loopback; Secure only over https
        # The page moves on to the home page (same-site navigation, token out of the URL).
        assert 'http-equiv="refresh" content="0;url=/portal/"' in response.text
        assert client.get("/portal/").status_code == 200


def test_every_page_carries_the_security_headers(portal: PortalServer, world: Any) -> None:
    client, _ = _client(portal, "acme")
    paths = [
        "/portal/",
        "/portal/subscriptions/new",
        f"/portal/subscriptions/{world['acme_sub']}",
        f"/portal/subscriptions/{world['acme_sub']}/edit",
        "/portal/deliveries",
        f"/portal/deliveries/{world['acme_dead']}",
        f"/portal/deliveries/{world['globex_dead']}",  # a 404 page
        "/portal/enter?token=nope",  # a 403 page
    ]
    for path in paths:
        response = client.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        assert response.headers["cache-control"] == "no-store", path
        assert "style=" not in response.text and "<script>" not in response.text, path


@pytest.mark.parametrize("token_change", ["missing", "altered", "expired", "revoked"])
def test_bad_links_are_refused_with_403(
    portal: PortalServer, conn: psycopg.Connection[Any], token_change: str
) -> None:
    link = portal.link("acme")
    if token_change == "missing":
        link = link.split("?")[0]
    elif token_change == "altered":
        link = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    elif token_change == "expired":
        conn.execute("UPDATE relay.portal_links SET expires_at = now() - interval '1 s'")
    else:
        conn.execute("UPDATE relay.portal_links SET revoked_at = now()")
    with httpx.Client() as client:
        response = client.get(link)
        assert response.status_code == 403
        assert "set-cookie" not in response.headers
        assert "cannot be used" in response.text
        assert client.get(portal.base_url + "/portal/").status_code == 403


def test_revoking_ends_an_open_session(portal: PortalServer, conn: psycopg.Connection[Any]) -> None:
    client, _ = _client(portal, "acme")
    conn.execute("UPDATE relay.portal_links SET revoked_at = now()")
    response = client.get("/portal/")
    assert response.status_code == 403
    assert "revoked" in response.text


def test_every_post_without_the_csrf_token_is_refused(
    portal: PortalServer, world: Any, conn: psycopg.Connection[Any]
) -> None:
    client, csrf = _client(portal, "acme")
    sub, dead = world["acme_sub"], world["acme_dead"]
    posts = [
        "/portal/logout",
        "/portal/subscriptions",
        "/portal/preview",
        f"/portal/subscriptions/{sub}",
        *(f"/portal/subscriptions/{sub}/{a}" for a in ("disable", "rotate", "replay-dead")),
        f"/portal/subscriptions/{sub}/remove",
        f"/portal/deliveries/{dead}/replay",
    ]
    before = conn.execute("SELECT * FROM relay.subscriptions ORDER BY id").fetchall()
    for path in posts:
        for form in ({"url": "http://127.0.0.1:9/x"}, {"csrf": csrf[:-1] + "x"}):
            response = client.post(path, data=form)
            assert response.status_code == 403, path
            assert "CSRF" in response.text
    assert conn.execute("SELECT * FROM relay.subscriptions ORDER BY id").fetchall() == before
    assert conn.execute(
        "SELECT status FROM relay.deliveries WHERE id = %s", (dead,)
    ).fetchone() == ("dead",)


def test_another_tenants_ids_are_not_found(portal: PortalServer, world: Any) -> None:
    client, csrf = _client(portal, "acme")
    for sub in (world["globex_sub"], world["internal_sub"], 999_999):
        assert client.get(f"/portal/subscriptions/{sub}").status_code == 404
        assert client.get(f"/portal/subscriptions/{sub}/edit").status_code == 404
        for action in ("disable", "remove", "rotate", "replay-dead"):
            response = client.post(f"/portal/subscriptions/{sub}/{action}", data={"csrf": csrf})
            assert response.status_code == 404
    for delivery in (world["globex_dead"], 999_999):
        assert client.get(f"/portal/deliveries/{delivery}").status_code == 404
        response = client.post(f"/portal/deliveries/{delivery}/replay", data={"csrf": csrf})
        assert response.status_code == 404
    assert client.get("/portal/subscriptions/abc").status_code == 404
    home = client.get("/portal/").text
    assert "/acme" in home and "/globex" not in home and "/internal" not in home
    listing = client.get("/portal/deliveries").text
    assert f"#{world['acme_dead']}" in listing and f"#{world['globex_dead']}<" not in listing


def test_a_delivery_whose_event_was_deleted_by_hand_is_not_found_not_an_error(
    portal: PortalServer, world: Any, conn: psycopg.Connection[Any]
) -> None:
    """Since 0011 an outbox row can be deleted under its deliveries: the list still shows
    the delivery, its page is a 404 (not a 500)."""
    conn.execute(
        "DELETE FROM relay.outbox o USING relay.deliveries d"
        " WHERE d.id = %s AND o.id = d.outbox_id",
        (world["acme_dead"],),
    )
    client, _ = _client(portal, "acme")
    listing = client.get("/portal/deliveries")
    assert listing.status_code == 200 and f"#{world['acme_dead']}" in listing.text
    assert client.get(f"/portal/deliveries/{world['acme_dead']}").status_code == 404


def test_validation_names_the_field_and_changes_nothing(
    portal: PortalServer, conn: psycopg.Connection[Any]
) -> None:
    client, csrf = _client(portal, "acme")
    cases = [
        ({"url": "ftp://x.example/"}, "url"),
        ({"url": "http://x.example/", "method": "PUT"}, "method"),
        ({"url": "http://x.example/", "headers": "X-Token abc"}, "header"),
        ({"url": "http://x.example/", "headers": "Host: evil"}, "header"),
        ({"url": "http://x.example/", "body_map": '{"a": "$[bad"}'}, "body_map"),
        ({"url": "http://x.example/", "events": "nope.nothing"}, "event"),
        ({"url": "http://x.example/", "max_retries": "-1"}, "max_retries"),
    ]
    for form, field in cases:
        response = client.post("/portal/subscriptions", data={"csrf": csrf, **form})
        assert response.status_code == 400, form
        assert f"<strong>{field}</strong>:" in response.text, (form, response.text[-800:])
        assert "abc" not in response.text.split('id="error"')[1].split("</p>")[0]
    assert conn.execute("SELECT count(*) FROM relay.subscriptions").fetchone() == (0,)


def test_create_edit_rotate_disable_remove(
    portal: PortalServer, conn: psycopg.Connection[Any]
) -> None:
    client, csrf = _client(portal, "acme")
    created = client.post(
        "/portal/subscriptions",
        data={
            "csrf": csrf,
            "url": "http://127.0.0.1:9/hook",
            "events": ["order.created", "order.dispatched"],
            "headers": "Authorization: Bearer s3cr3t-value",
            "body_map": '{"type": "$.eventType"}',
            "signed": "1",
        },
    )
    assert created.status_code == 200
    secret = re.search(r'value="(whsec_[^"]+)"', created.text)
    assert secret
    row = conn.execute(
        "SELECT id, tenant_id, secret, headers, events FROM relay.subscriptions"
    ).fetchone()
    assert row is not None
    sub_id, tenant, stored, headers, events = row
    assert (tenant, stored, events) == (
        "acme",
        secret.group(1),
        ["order.created", "order.dispatched"],
    )
    assert headers == {"Authorization": "Bearer s3cr3t-value"}
    page = client.get(f"/portal/subscriptions/{sub_id}").text
    assert "s3cr3t" not in page and secret.group(1) not in page and "Authorization: ***" in page
    assert "s3cr3t" not in client.get(f"/portal/subscriptions/{sub_id}/edit").text

    saved = client.post(
        f"/portal/subscriptions/{sub_id}",
        data={
            "csrf": csrf,
            "url": "http://127.0.0.1:9/v2",
            "method": "GET",
            "clear_headers": "Authorization",
            "max_retries": "5",
        },
    )
    assert saved.status_code == 303
    row = conn.execute(
        "SELECT url, method, headers, events, body_map, max_retries, tenant_id"
        " FROM relay.subscriptions WHERE id = %s",
        (sub_id,),
    ).fetchone()
    assert row == ("http://127.0.0.1:9/v2", "GET", {}, [], None, 5, "acme")

    rotated = client.post(f"/portal/subscriptions/{sub_id}/rotate", data={"csrf": csrf})
    new_secret = re.search(r'value="(whsec_[^"]+)"', rotated.text)
    assert new_secret and new_secret.group(1) != secret.group(1)
    assert rotated.headers["cache-control"] == "no-store"
    assert conn.execute(
        "SELECT secret, previous_secret FROM relay.subscriptions WHERE id = %s", (sub_id,)
    ).fetchone() == (new_secret.group(1), secret.group(1))

    for action, enabled in (("disable", False), ("enable", True)):
        client.post(f"/portal/subscriptions/{sub_id}/{action}", data={"csrf": csrf})
        assert conn.execute(
            "SELECT enabled FROM relay.subscriptions WHERE id = %s", (sub_id,)
        ).fetchone() == (enabled,)
    removed = client.post(f"/portal/subscriptions/{sub_id}/remove", data={"csrf": csrf})
    assert removed.status_code == 303
    assert client.get(f"/portal/subscriptions/{sub_id}").status_code == 404


def test_ordered_checkbox_and_a_parked_delivery(
    portal: PortalServer, conn: psycopg.Connection[Any]
) -> None:
    """The form's "Ordered" box sets `ordered`; unticked on an edit, it clears it. A delivery
    parked behind an earlier one of its aggregate (no due time) shows why it waits."""
    client, csrf = _client(portal, "acme")
    created = client.post(
        "/portal/subscriptions",
        data={"csrf": csrf, "url": "http://127.0.0.1:9/hook", "ordered": "1"},
    )
    assert created.status_code in (200, 303), created.text
    row = conn.execute("SELECT id, ordered FROM relay.subscriptions").fetchone()
    assert row is not None and row[1] is True
    sub_id = row[0]
    page = client.get(f"/portal/subscriptions/{sub_id}").text
    assert "ordered: one event of an aggregate at a time" in page
    assert re.search(r'id="ordered"[^>]* checked', client.get(
        f"/portal/subscriptions/{sub_id}/edit").text)  # fmt: skip

    for seq in (1, 2):
        conn.execute(
            "SELECT relay.emit('order.created', %s::jsonb, 'A', 'acme')",
            (json.dumps({"orderId": "o1", "seq": seq}),),
        )
    conn.execute("SELECT * FROM relay.dispatch_outbox(10, 0, 'test', gen_random_uuid(), 60)")
    parked = conn.execute(
        "SELECT id FROM relay.deliveries WHERE next_attempt_at = 'infinity'"
    ).fetchone()
    assert parked is not None
    shown = client.get(f"/portal/deliveries/{parked[0]}")
    assert shown.status_code == 200, shown.text
    assert "after the earlier event of its aggregate" in shown.text

    saved = client.post(
        f"/portal/subscriptions/{sub_id}",
        data={"csrf": csrf, "url": "http://127.0.0.1:9/hook"},
    )
    assert saved.status_code == 303
    assert conn.execute(
        "SELECT ordered FROM relay.subscriptions WHERE id = %s", (sub_id,)
    ).fetchone() == (False,)
    # unordered now: the parked delivery is due
    assert conn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE next_attempt_at = 'infinity'"
    ).fetchone() == (0,)


def test_preview_shows_the_mapped_body(portal: PortalServer) -> None:
    client, csrf = _client(portal, "acme")
    body_map = json.dumps({"kind": "$.eventType", "customer.id": "$.userId"})
    response = client.post(
        "/portal/preview",
        data={
            "csrf": csrf,
            "method": "POST",
            "sample_event": "order.created",
            "body_map": body_map,
        },
    )
    assert response.status_code == 200
    assert "&#34;kind&#34;: &#34;ORDER.CREATED&#34;" in response.text
    assert "&#34;customer&#34;: {" in response.text
    bad = client.post(
        "/portal/preview", data={"csrf": csrf, "sample_event": "order.created", "body_map": "[1]"}
    )
    assert "<strong>body_map</strong>" in bad.text


def test_deliveries_filter_and_page_newest_first(
    portal: PortalServer, world: Any, conn: psycopg.Connection[Any]
) -> None:
    sub = world["acme_sub"]
    ids = [_delivery(conn, sub, "acme", "delivered") for _ in range(5)]
    client, _ = _client(portal, "acme")

    def listed(query: str) -> list[int]:
        page = client.get("/portal/deliveries?" + query)
        assert page.status_code == 200, page.text
        return [int(x) for x in re.findall(r'href="/portal/deliveries/(\d+)"', page.text)]

    assert listed("") == sorted([*ids, world["acme_dead"]], reverse=True)
    assert listed("status=dead") == [world["acme_dead"]]
    assert listed("status=delivered&limit=2") == ids[:-3:-1]
    assert listed(f"status=delivered&limit=2&before={ids[-2]}") == [ids[-3], ids[-4]]
    assert listed("event_type=order.dispatched") == []
    assert listed("since=1h") != [] and listed("since=2999-01-01") == []
    bad = client.get("/portal/deliveries?since=yesterday-ish")
    assert bad.status_code == 400 and "<strong>since</strong>" in bad.text
