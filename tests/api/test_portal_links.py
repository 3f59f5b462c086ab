"""The portal served by ``relay api``: POST /v1/portal-links (operator keys) and the link it
returns opening that tenant's portal on the API's own address."""

from __future__ import annotations

import subprocess
import sys

import httpx
import psycopg

from relay import admin
from tests.api.conftest import Api


def _subscribe(api: Api, tenant: str, url: str) -> None:
    with api.client(api.keys[tenant]) as c:
        r = c.post("/v1/subscriptions", json={"url": url})
        assert r.status_code == 201, r.text


def test_operator_key_gets_a_link_that_opens_only_that_tenants_portal(api: Api) -> None:
    _subscribe(api, "acme", "https://acme.example/hooks")
    _subscribe(api, "globex", "https://globex.example/hooks")
    with api.client(api.operator_key) as c:
        r = c.post("/v1/portal-links", json={"tenant": "acme", "ttl": "10m"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["tenant_id"] == "acme" and body["url"].startswith(api.url + "/portal/")
    assert r.headers["cache-control"] == "no-store"
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        entered = browser.get(body["url"])
        assert entered.status_code == 200, entered.text
        home = browser.get(api.url + "/portal/")
        assert home.status_code == 200
        assert "acme.example" in home.text
        assert "globex.example" not in home.text


def test_tenant_keys_cannot_hand_out_links_and_bad_input_names_the_field(api: Api) -> None:
    with api.client(api.keys["acme"]) as c:
        r = c.post("/v1/portal-links", json={"tenant": "acme"})
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    with api.client(api.operator_key) as c:
        r = c.post("/v1/portal-links", json={"tenant": "acme", "ttl": "forever"})
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == ["ttl"]
        r = c.post("/v1/portal-links", json={})
        assert r.status_code == 422
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM relay.portal_links").fetchone()
    assert n == (0,), "a refused request records no link"


def test_cli_link_with_the_api_base_opens_the_portal(api: Api) -> None:
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        admin.add_subscription(
            conn, admin.SubscriptionChanges(url="https://acme.example/x"), tenant="acme"
        )
    out = subprocess.run(
        [sys.executable, "-m", "relay", "portal-link", "--database-url", api.database_url,
         "--tenant", "acme", "--ttl", "5m", "--base-url", api.url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    with httpx.Client(follow_redirects=True, timeout=30) as browser:
        assert browser.get(url).status_code == 200
        assert "acme.example" in browser.get(api.url + "/portal/").text
