"""Keys: no key, another scheme, a wrong key and a revoked key all get the same 401; keys are
shown once and stored hashed; the unauthenticated endpoints are only /healthz and
/openapi.json."""

from __future__ import annotations

import json

import psycopg
import pytest

from relay.cli import main as cli
from tests.api.conftest import Api, problem
from tests.api.data import make_subscription

PROTECTED = [
    ("GET", "/v1/event-types"),
    ("GET", "/v1/subscriptions"),
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/1"),
    ("PATCH", "/v1/subscriptions/1"),
    ("DELETE", "/v1/subscriptions/1"),
    ("GET", "/v1/deliveries"),
    ("GET", "/v1/deliveries/1"),
    ("POST", "/v1/deliveries/1/replay"),
]


def _bodies(api: Api, headers: dict[str, str]) -> set[str]:
    with api.client(None) as c:
        out = set()
        for method, path in PROTECTED:
            r = c.request(method, path, headers=headers, json={"url": "https://e.com/"})
            problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
            out.add(r.text)
        return out


def test_no_key_wrong_key_and_revoked_key_get_401(api: Api) -> None:
    revoked = api.key("acme", name="old")
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        make_subscription(conn, "acme")
        key_id = conn.execute("SELECT max(id) FROM relay.api_keys").fetchone()
    assert key_id is not None
    assert cli(["api-key", "revoke", str(key_id[0]), "--database-url", api.database_url]) == 0

    missing = _bodies(api, {})
    other_scheme = _bodies(api, {"Authorization": f"Basic {revoked}"})
    wrong = _bodies(api, {"Authorization": "Bearer rk_" + "A" * 43})
    garbage = _bodies(api, {"Authorization": "Bearer " + "x" * 5000})
    revoked_bodies = _bodies(api, {"Authorization": f"Bearer {revoked}"})
    # A wrong and a revoked key are indistinguishable; nothing echoes the key.
    assert wrong == revoked_bodies == garbage
    assert missing == other_scheme
    for text in missing | wrong:
        assert revoked not in text and "rk_A" not in text and "acme" not in text


def test_open_endpoints_need_no_key(api: Api) -> None:
    with api.client(None) as c:
        assert c.get("/healthz").status_code == 200
        doc = c.get("/openapi.json")
        assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.1")


def test_key_of_a_tenant_whose_subscriptions_were_all_removed(api: Api) -> None:
    # A tenant is not an object of its own: its key stays valid until revoked, and sees its
    # removed subscriptions as removed (history kept), cannot change them, and lists nothing.
    with api.client(api.keys["acme"]) as c:
        sub_id = c.post("/v1/subscriptions", json={"url": "https://e.com/"}).json()["id"]
        assert c.delete(f"/v1/subscriptions/{sub_id}").status_code == 204
        assert c.get("/v1/subscriptions").json()["data"] == []
        assert c.get(f"/v1/subscriptions/{sub_id}").json()["removed_at"] is not None
        problem(c.patch(f"/v1/subscriptions/{sub_id}", json={"max_retries": 1}), 404)
        problem(c.delete(f"/v1/subscriptions/{sub_id}"), 404)
    with api.client(api.keys["globex"]) as c:
        body = problem(c.get(f"/v1/subscriptions/{sub_id}"), 404)
        assert body["detail"] == f"subscription {sub_id} not found"


def test_api_key_cli_shows_the_key_once_and_stores_a_hash(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["api-key", "create", "--tenant", "acme", "--name", "ci",
                "--database-url", database_url]) == 0  # fmt: skip
    out = capsys.readouterr().out
    key = out.strip()
    assert out == key + "\n" and key.startswith("rk_") and len(key) >= 40

    assert cli(["api-key", "list", "--json", "--database-url", database_url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["name"], k["tenant_id"], k["revoked_at"]) for k in listed] == [("ci", "acme", None)]
    assert set(listed[0]) == {"id", "name", "tenant_id", "created_at", "last_used_at",
                              "revoked_at"}  # fmt: skip
    with psycopg.connect(database_url) as conn:
        dump = conn.execute("SELECT row_to_json(k)::text FROM relay.api_keys k").fetchone()
    assert dump is not None and key not in dump[0] and key[3:] not in dump[0]

    assert cli(["api-key", "revoke", "999", "--database-url", database_url]) == 1
    assert "not found" in capsys.readouterr().err
    assert cli(["api-key", "create", "--tenant", "", "--database-url", database_url]) == 2
    assert "tenant" in capsys.readouterr().err


# Each request with input the API refuses (bad parameter, bad cursor, unknown body field, id
# out of range): with a good key a 422, without one the same 401 as any other request. The
# key is checked first, so a caller without a good key learns nothing about what the API
# accepts.
BAD_INPUT = [
    ("GET", "/v1/deliveries?limit=0", None),
    ("GET", "/v1/deliveries?cursor=bm90LWEtY3Vyc29y", None),
    ("GET", "/v1/deliveries?subscription_id=0", None),
    ("GET", "/v1/subscriptions?limit=abc", None),
    ("GET", "/v1/deliveries/0", None),
    ("GET", "/v1/subscriptions/99999999999999999999", None),
    ("POST", "/v1/subscriptions", {"url": "https://e.com/", "colour": "red"}),
    ("PATCH", "/v1/subscriptions/1", {"max_retries": "many"}),
    ("POST", "/v1/portal-links", {"tenant": "acme", "ttl": "forever"}),
]


def test_the_key_is_checked_before_the_input(api: Api) -> None:
    revoked = api.key("acme", name="gone")
    with psycopg.connect(api.database_url, autocommit=True) as conn:
        key_id = conn.execute("SELECT max(id) FROM relay.api_keys").fetchone()
    assert key_id is not None
    assert cli(["api-key", "revoke", str(key_id[0]), "--database-url", api.database_url]) == 0
    with api.client(api.operator_key) as good:
        for method, path, body in BAD_INPUT:
            problem(good.request(method, path, json=body), 422)
    for key in ("rk_" + "A" * 43, revoked, None):
        with api.client(key) as c:
            for method, path, body in BAD_INPUT:
                r = c.request(method, path, json=body)
                problem(r, 401)
                assert r.headers["www-authenticate"].startswith("Bearer")
