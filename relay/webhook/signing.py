"""Standard Webhooks signing: secrets, signatures and the ``webhook-*`` headers.

A secret is ``whsec_`` + base64 of 24..64 random bytes (the format the ``standardwebhooks``
libraries read). The signature is ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``; during
a secret rotation the header carries one signature per secret, space-separated, and a
receiver accepts the message if any of them verifies.

Secrets never appear in error messages or logs: use :func:`mask_secret` to show one.
"""

from __future__ import annotations

import base64
import binascii
import functools
import secrets as _secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from relay.errors import ValidationError

__all__ = [
    "SECRET_PREFIX",
    "generate_secret",
    "mask_secret",
    "signature_header",
    "validate_secret",
    "webhook_headers",
]

SECRET_PREFIX = "whsec_"
_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64
_MASKED = SECRET_PREFIX + "****"


def _decode_key(encoded: str) -> bytes:
    # Accept unpadded base64 as the standardwebhooks libraries do, but reject anything that
    # is not base64 at all (validate=True), so a typo is caught at `subscription add`.
    padded = encoded + "=" * (-len(encoded) % 4)
    return base64.b64decode(padded, validate=True)


def validate_secret(secret: str) -> str:
    """Return ``secret`` if it is ``whsec_`` + base64 of 24..64 bytes.

    Otherwise raise :class:`ValidationError` (field ``secret``); the message describes the
    problem without repeating any part of the secret.
    """
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValidationError("secret", f"must start with {SECRET_PREFIX!r}")
    try:
        key = _decode_key(secret[len(SECRET_PREFIX) :])
    except (binascii.Error, ValueError):
        raise ValidationError("secret", f"must be {SECRET_PREFIX!r} followed by base64") from None
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise ValidationError(
            "secret",
            f"key must decode to {_MIN_KEY_BYTES}..{_MAX_KEY_BYTES} bytes, not {len(key)}",
        )
    return secret


def generate_secret() -> str:
    """A new random secret: ``whsec_`` + base64 of 32 bytes from :mod:`secrets`."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value: ``v1,<b64>`` per secret, space-separated.

    ``timestamp`` is Unix seconds (the ``webhook-timestamp`` value); ``body`` is exactly the
    text sent (for POST, the :func:`relay.webhook.body.dumps` output). Raises ``ValueError``
    when ``secrets`` is empty: an empty signature header would look signed but verify never.
    """
    if not secrets:
        raise ValueError("signature_header needs at least one secret")
    # standardwebhooks floors an aware datetime to whole seconds; build it from the int so
    # the signed timestamp is exactly the header's.
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(_signer(secret).sign(msg_id, when, body) for secret in secrets)


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    """The signer of one secret, built once: it base64-decodes the key (about a fifth of
    the cost of a signature). A subscription's secrets are few and live as long as it."""
    return Webhook(secret)


def webhook_headers(
    msg_id: str, timestamp: int, body: str, secrets: Sequence[str]
) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt.

    Always ``webhook-id`` and ``webhook-timestamp``; ``webhook-signature`` too when the
    subscription has at least one secret.
    """
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp))}
    if secrets:
        headers["webhook-signature"] = signature_header(secrets, msg_id, timestamp, body)
    return headers


def mask_secret(secret: str | None) -> str | None:
    """How a secret is shown (CLI output, logs): ``whsec_****``, or ``None`` for no secret.

    Nothing beyond the public prefix is revealed, not even a few trailing characters: the
    keys are short enough that every character shown is a real loss.
    """
    if secret is None:
        return None
    return _MASKED
