"""The portal's pure parts: link TTLs and the request preview (the deliverer's own code)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from relay.errors import ValidationError
from relay.portal import preview
from relay.portal.links import parse_ttl


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [
        ("1h", 3600),
        ("90m", 5400),
        ("7d", 604800),
        (60, 60),
        ("60", 60),
        (timedelta(minutes=2), 120),
    ],
)
def test_ttl(ttl: str | int | timedelta, seconds: int) -> None:
    assert parse_ttl(ttl) == seconds


@pytest.mark.parametrize("ttl", ["0", "31d", "1y", "", -5])
def test_bad_ttl_names_the_field(ttl: str | int) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_ttl(ttl)
    assert caught.value.field == "ttl"


def test_preview_maps_the_sample_like_the_deliverer() -> None:
    out = preview.preview("POST", "order.created", '{"t": "$.eventType", "c.id": "$.userId"}')
    assert json.loads(out["body"]) == {"t": "ORDER.CREATED", "c": {"id": "usr_42"}}
    assert out["headers"]["Content-Type"] == "application/json"
    get = preview.preview("get", "test.processed", "")
    assert get["body"] is None and "eventType=TEST.PROCESSED" in get["url"]


@pytest.mark.parametrize(
    ("method", "event", "body_map", "field"),
    [
        ("PUT", "order.created", "", "method"),
        ("POST", "Nope", "", "event"),
        ("POST", "order.created", "[]", "body_map"),
        ("POST", "order.created", '{"a": "$[x"}', "body_map"),
    ],
)
def test_preview_errors_name_the_field(method: str, event: str, body_map: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        preview.preview(method, event, body_map)
    assert caught.value.field == field


def test_request_as_sent_masks_every_secret() -> None:
    delivery = {
        "event_id": uuid.uuid4(),
        "event_type": "order.created",
        "version": "v1",
        "payload": {"orderId": "o1"},
        "subscription": {
            "url": "https://user:***@hooks.example/x",
            "method": "POST",
            "headers": {"Authorization": "***"},
            "event_names": {},
            "body_map": None,
            "secret": "whsec_****",
        },
    }
    sent = preview.request_as_sent(delivery, datetime(2030, 1, 1, tzinfo=UTC))
    assert sent["headers"]["Authorization"] == "***"
    assert sent["headers"]["webhook-signature"] == "v1,***"
    assert sent["headers"]["webhook-timestamp"] == str(
        int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    )
    assert sent["url"].startswith("https://user:***@hooks.example")
    assert json.loads(sent["body"]) == {
        "eventType": "ORDER.CREATED",
        "version": "v1",
        "orderId": "o1",
    }
