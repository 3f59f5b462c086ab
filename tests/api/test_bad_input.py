"""Bad input as attackers and careless clients send it: each a 4xx problem+json with a clear
message naming the field, and nothing changed."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import psycopg
import pytest

from tests.api.conftest import Api, problem


def _subscription_count(api: Api) -> int:
    with psycopg.connect(api.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM relay.subscriptions").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": "https://e.com/", "method": "PUT"}, "method"),
        ({"url": "https://e.com/", "headers": {"X-A": "1\r\nX-Injected: 1"}}, "headers"),
        ({"url": "https://e.com/", "headers": {"Bad Name": "1"}}, "headers"),
        ({"url": "https://e.com/", "headers": {"Host": "evil"}}, "headers"),
        ({"url": "https://e.com/", "events": ["nope.unknown"]}, "events"),
        ({"url": "https://e.com/", "body_map": {"x": "$[[["}}, "body_map"),
        ({"url": "https://e.com/", "secret": "not-a-secret"}, "secret"),
        ({"url": "https://e.com/", "max_retries": 101}, "max_retries"),
        ({"url": "https://e.com/", "timeout_ms": 0}, "timeout_ms"),
        ({"url": "https://e.com/", "max_retries": "3"}, "max_retries"),  # wrong type
        ({"url": "https://e.com/", "enabled": "yes"}, "enabled"),
        ({"url": "https://e.com/", "events": "order.*"}, "events"),
        ({"url": "https://e.com/", "surprise": 1}, "surprise"),  # unknown field
        ({}, "url"),
        ({"url": "https://e.com/", "max_retries": 2**70}, "max_retries"),
    ],
)
def test_invalid_subscription_is_a_422_naming_the_field(api: Api, body: object, field: str) -> None:
    before = _subscription_count(api)
    with api.client(api.operator_key) as c:
        answer = problem(c.post("/v1/subscriptions", json=body), 422)
    assert field in [e["field"] for e in answer["errors"]], answer
    assert field in answer["detail"]
    assert _subscription_count(api) == before


def test_every_bad_field_is_listed_at_once(api: Api) -> None:
    with api.client(api.operator_key) as c:
        answer = problem(
            c.post(
                "/v1/subscriptions",
                json={"url": "gopher://x", "method": "DELETE", "max_retries": -1},
            ),
            422,
        )
    assert [e["field"] for e in answer["errors"]] == ["url", "method", "max_retries"]


def test_ssrf_looking_urls_are_accepted_as_the_cli_does(api: Api) -> None:
    # The CLI accepts them too: the SSRF guard refuses the resolved address at delivery time
    # (tests/faults/test_ssrf.py), which DNS cannot get around at subscribe time anyway.
    with api.client(api.operator_key) as c:
        for url in ("http://169.254.169.254/latest/meta-data", "http://127.0.0.1:22/"):
            assert c.post("/v1/subscriptions", json={"url": url}).status_code == 201


def test_malformed_json_and_non_json_bodies(api: Api) -> None:
    headers = {"Content-Type": "application/json"}
    with api.client(api.operator_key) as c:
        answer = problem(c.post("/v1/subscriptions", content=b'{"url": ', headers=headers), 400)
        assert "malformed JSON" in answer["detail"]
        problem(c.post("/v1/subscriptions", content=b"[1, 2]", headers=headers), 422)
        problem(c.post("/v1/subscriptions", content=b"url=x"), 422)
    assert _subscription_count(api) == 0


def test_huge_bodies_are_refused_with_413(api: Api) -> None:
    big = b'{"url": "https://e.com/", "body_map": {"x": "' + b"a" * 200_000 + b'"}}'
    with api.client(api.operator_key) as c:
        answer = problem(
            c.post("/v1/subscriptions", content=big, headers={"Content-Type": "application/json"}),
            413,
        )
        assert "bytes" in answer["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield big[:1000]
            for n in range(1000, len(big), 16_384):
                yield big[n : n + 16_384]

        problem(
            c.post(
                "/v1/subscriptions", content=chunks(), headers={"Content-Type": "application/json"}
            ),
            413,
        )
    assert _subscription_count(api) == 0


@pytest.mark.parametrize("raw", ["0", "-1", "9223372036854775808", "1" * 30])
def test_ids_out_of_range_are_422_not_500(api: Api, raw: str) -> None:
    with api.client(api.operator_key) as c:
        for method, path in (
            ("GET", f"/v1/subscriptions/{raw}"),
            ("PATCH", f"/v1/subscriptions/{raw}"),
            ("DELETE", f"/v1/subscriptions/{raw}"),
            ("GET", f"/v1/deliveries/{raw}"),
            ("POST", f"/v1/deliveries/{raw}/replay"),
        ):
            r = c.request(method, path, json={"max_retries": 1} if method == "PATCH" else None)
            body = problem(r, 422)
            assert body["errors"][0]["field"] in ("subscription_id", "delivery_id")
        problem(c.get("/v1/deliveries", params={"subscription_id": raw}), 422)
        problem(c.get("/v1/subscriptions/abc"), 422)


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",
        "!!!",
        base64.urlsafe_b64encode(b"s:5").decode(),  # a subscription cursor on deliveries
        base64.urlsafe_b64encode(b"d:-5").decode(),
        base64.urlsafe_b64encode(b"d:99999999999999999999").decode(),
        base64.urlsafe_b64encode(b"d:1' OR 1=1").decode(),
        "x" * 500,
        "",
    ],
)
def test_tampered_cursors_are_refused(api: Api, cursor: str) -> None:
    with api.client(api.operator_key) as c:
        body = problem(c.get("/v1/deliveries", params={"cursor": cursor}), 422)
    assert body["errors"][0]["field"] == "cursor"


def test_bad_limits(api: Api) -> None:
    with api.client(api.operator_key) as c:
        for limit in ("0", "1001", "x", "-5"):
            body = problem(c.get("/v1/deliveries", params={"limit": limit}), 422)
            assert body["errors"][0]["field"] == "limit"


def test_unknown_routes_and_methods_are_problems_too(api: Api) -> None:
    with api.client(api.operator_key) as c:
        problem(c.get("/v1/nothing"), 404)
        problem(c.put("/v1/subscriptions"), 405)
