"""What a receiver gets: the body-map preview and a delivery's request, secrets masked.

Both reuse the deliverer's own code (:func:`relay.webhook.sender.prepare`, which maps with
:mod:`relay.webhook.body`), so the portal can never show a body relay would not send.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.admin import validation as v
from relay.daemon.store import Job
from relay.errors import MappingError, ValidationError
from relay.webhook.sender import prepare

MASK = "***"
SIGNATURE_MASK = "v1,***"
# A stand-in event id for previews: fixed, so the preview does not change on every keystroke.
_PREVIEW_EVENT_ID = uuid.UUID(int=0)
_PREVIEW_URL = "https://receiver.example/webhook"

# Sample payloads per event-type area: the catalog has no schemas, so these show the shape.
_SAMPLES: dict[str, dict[str, Any]] = {
    "order": {
        "orderId": "ord_1001",
        "userId": "usr_42",
        "productCode": "SKU-123",
        "quantity": 2,
        "shipping": {"method": "courier", "country": "GB"},
    },
    "test": {
        "testId": "tst_2001",
        "userId": "usr_42",
        "productCode": "KIT-9",
        "lab": {"id": "lab_7", "name": "Central Lab"},
    },
}
_GENERIC_SAMPLE: dict[str, Any] = {"id": "obj_1", "userId": "usr_42"}


def sample_payload(event_type: str) -> dict[str, Any]:
    """An example payload for ``event_type`` (by its area: ``order.*``, ``test.*``)."""
    area = event_type.partition(".")[0]
    return dict(_SAMPLES.get(area, _GENERIC_SAMPLE))


def _job(
    *,
    event_id: uuid.UUID,
    event_type: str,
    version: str,
    payload: Mapping[str, Any],
    url: str,
    method: str,
    headers: Mapping[str, str],
    event_names: Mapping[str, str],
    body_map: Mapping[str, Any] | None,
) -> Job:
    return Job(
        id=0,
        token=uuid.UUID(int=0),
        attempts=0,
        failures=0,
        outbox_id=0,
        event_id=event_id,
        event_type=event_type,
        payload=dict(payload),
        version=version,
        tenant_id=None,
        created_at=datetime.now().astimezone(),
        subscription_id=0,
        url=url,
        method=method,
        headers=dict(headers),
        event_names=dict(event_names),
        body_map=None if body_map is None else json.dumps(body_map),
        # Never a real secret: the signature is masked anyway, and secrets stay in the DB.
        secret=None,
        previous_secret=None,
        max_retries=0,
        backoff_ms=0,
        timeout_ms=1,
    )


def render_request(job: Job, timestamp: int, signed: bool) -> dict[str, Any]:
    """The request :func:`prepare` builds for ``job``: method, URL, headers, body text."""
    prepared = prepare(job, timestamp)
    headers = dict(prepared.headers)
    if signed:
        headers["webhook-signature"] = SIGNATURE_MASK
    body = None
    if prepared.body is not None:
        body = json.dumps(json.loads(prepared.body), indent=2, ensure_ascii=False)
    return {"method": prepared.method, "url": str(prepared.url), "headers": headers, "body": body}


def preview(method: str, event_type: str, body_map_text: str) -> dict[str, Any]:
    """The request a receiver would get for a sample ``event_type`` event.

    Raises :class:`ValidationError` naming the field (``method``, ``event``, ``body_map``).
    """
    method = v.validate_method(method or "POST")
    v.validate_event_type_name(event_type, field="event")
    body_map = v.parse_body_map(body_map_text) if body_map_text.strip() else None
    job = _job(
        event_id=_PREVIEW_EVENT_ID,
        event_type=event_type,
        version="v1",
        payload=sample_payload(event_type),
        url=_PREVIEW_URL,
        method=method,
        headers={},
        event_names={},
        body_map=body_map,
    )
    try:
        out = render_request(job, int(datetime.now().timestamp()), signed=False)
    except MappingError as exc:
        raise ValidationError("body_map", str(exc)) from None
    out["payload"] = json.dumps(job.payload, indent=2, ensure_ascii=False)
    return out


def request_as_sent(delivery: Mapping[str, Any], started_at: datetime | None) -> dict[str, Any]:
    """A delivery's request as relay builds it from the event and the subscription's current
    settings; header values, URL credentials and the signature masked."""
    sub = delivery["subscription"]
    job = _job(
        event_id=delivery["event_id"],
        event_type=delivery["event_type"],
        version=delivery["version"],
        payload=delivery["payload"],
        url=sub["url"],  # credentials already masked by relay.admin
        method=sub["method"],
        headers={name: MASK for name in sub["headers"]},
        event_names=sub["event_names"],
        body_map=sub["body_map"],
    )
    when = started_at or datetime.now().astimezone()
    try:
        return render_request(job, int(when.timestamp()), signed=sub["secret"] is not None)
    except (MappingError, ValueError) as exc:
        return {"error": f"the body cannot be built: {exc}"}
