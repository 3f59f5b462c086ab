"""The OpenAPI document: 3.1, served as checked in (docs/openapi.json), describing the bearer
scheme, the problem schema and every error answer as problem+json."""

from __future__ import annotations

import json
from pathlib import Path

from relay.api.openapi import render
from tests.api.conftest import Api

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_served_document_is_the_checked_in_one(api: Api) -> None:
    with api.client(None) as c:
        served = c.get("/openapi.json").json()
    assert served == json.loads(DOC.read_text()), "run `make openapi` and commit docs/openapi.json"
    assert DOC.read_text() == render()


def test_document_describes_auth_errors_and_every_operation() -> None:
    doc = json.loads(DOC.read_text())
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert set(doc["components"]["schemas"]["Problem"]["required"]) >= {
        "type", "title", "status", "detail"
    }  # fmt: skip
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    operations = {
        f"{method.upper()} {path}": op
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert set(operations) == {
        "GET /healthz",
        "GET /v1/event-types",
        "GET /v1/subscriptions",
        "POST /v1/subscriptions",
        "POST /v1/portal-links",
        "GET /v1/subscriptions/{subscription_id}",
        "PATCH /v1/subscriptions/{subscription_id}",
        "DELETE /v1/subscriptions/{subscription_id}",
        "GET /v1/deliveries",
        "GET /v1/deliveries/{delivery_id}",
        "POST /v1/deliveries/{delivery_id}/replay",
    }
    for name, op in operations.items():
        if name != "GET /healthz":
            assert op["security"] == [{"HTTPBearer": []}], name
            assert {"401", "422"} <= set(op["responses"]), name
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (name, status)
    assert "409" in operations["POST /v1/deliveries/{delivery_id}/replay"]["responses"]
    assert operations["POST /v1/subscriptions"]["responses"]["201"]
    assert operations["DELETE /v1/subscriptions/{subscription_id}"]["responses"]["204"]
