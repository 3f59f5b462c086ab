"""Standard Webhooks signing, checked against the reference ``standardwebhooks`` verifier."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from relay.errors import ValidationError
from relay.webhook.signing import (
    generate_secret,
    mask_secret,
    signature_header,
    validate_secret,
    webhook_headers,
)

BODY = '{"eventType":"ORDER.CREATED","version":"v1","orderId":"o-1"}'
MSG_ID = "evt_0b5f1d1e-3c2a-4f7e-9d55-6c1f2b8a9e10"


def _secret(n: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(n))).decode()


def test_generated_secret_is_valid_and_random() -> None:
    a, b = generate_secret(), generate_secret()
    assert validate_secret(a) == a
    assert a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32


@pytest.mark.parametrize("n", [24, 32, 64])
def test_valid_secret_lengths(n: int) -> None:
    assert validate_secret(_secret(n)) == _secret(n)


def test_unpadded_base64_is_accepted() -> None:
    padded = _secret(32)
    assert padded.endswith("=")
    assert validate_secret(padded.rstrip("=")) == padded.rstrip("=")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hunter2-token",
        "whsec_",
        _secret(32).removeprefix("whsec_"),  # prefix missing
        "WHSEC_" + _secret(32).removeprefix("whsec_"),
        _secret(23),
        _secret(65),
        "whsec_not*base64!!",
        "whsec_ " + _secret(32).removeprefix("whsec_"),
        "whsec_abc",  # impossible base64 length
    ],
)
def test_invalid_secrets_are_refused_without_echoing(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_secret(bad)
    assert info.value.field == "secret"
    body = bad.removeprefix("whsec_").strip()
    if len(body) >= 3:
        assert body not in str(info.value)


def test_headers_verify_with_reference_library() -> None:
    secret = generate_secret()
    ts = int(time.time())
    headers = webhook_headers(MSG_ID, ts, BODY, [secret])
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == str(ts)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == {
        "eventType": "ORDER.CREATED",
        "version": "v1",
        "orderId": "o-1",
    }


def test_rotation_header_verifies_with_either_secret() -> None:
    old, new = generate_secret(), generate_secret()
    ts = int(time.time())
    headers = webhook_headers(MSG_ID, ts, BODY, [old, new])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_tampering_is_detected() -> None:
    secret = generate_secret()
    ts = int(time.time())
    headers = webhook_headers(MSG_ID, ts, BODY, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("o-1", "o-2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "evt_other"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-timestamp": str(ts + 1)})


def test_no_secret_means_no_signature_header() -> None:
    headers = webhook_headers(MSG_ID, 1_700_000_000, BODY, [])
    assert headers == {"webhook-id": MSG_ID, "webhook-timestamp": "1700000000"}


def test_signature_header_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        signature_header([], MSG_ID, 1_700_000_000, BODY)


def test_signature_is_deterministic_and_matches_spec() -> None:
    # The Standard Webhooks spec's own example secret, id, timestamp and body.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    body = '{"test": 2432232314}'
    sig = signature_header([secret], msg_id, 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature_header([secret], msg_id, 1614265330, body) == sig


@given(st.text(max_size=200), st.text(min_size=1, max_size=40).filter(lambda s: " " not in s))
def test_any_body_verifies(body: str, msg_id: str) -> None:
    secret = _secret(32)
    headers = webhook_headers(msg_id, int(time.time()), body, [secret])
    Webhook(secret).verify(body, headers, json_parse=False)


@pytest.mark.parametrize("secret", [_secret(32), "whsec_x", "plain", ""])
def test_mask_reveals_nothing_beyond_the_prefix(secret: str) -> None:
    assert mask_secret(secret) == "whsec_****"


def test_mask_none() -> None:
    assert mask_secret(None) is None
