"""schemathesis against a live ``relay api`` process: every operation of the served OpenAPI
document, with an operator key and with a tenant key. No answer may be a 5xx, and every answer
(status, content type, headers, body) must match the document.

Examples are few per operation (the suite's time budget), and both valid and schema-violating
requests are generated; objects exist (subscriptions and deliveries of two tenants, and of an
internal subscription) so ids hit real rows as well as missing ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay import admin
from tests.api.data import make_delivery, make_subscription
from tests.api.process import relay_api

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 12


@pytest.mark.parametrize("tenant", [None, "acme"], ids=["operator-key", "tenant-key"])
def test_every_operation_conforms_and_never_5xx(
    database_url: str, tmp_path: Path, tenant: str | None
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        key, _ = admin.create_api_key(conn, tenant=tenant)
        for owner in ("acme", "globex", None):
            sub = make_subscription(conn, owner)
            for status in ("dead", "delivered", "pending"):
                make_delivery(conn, sub, tenant=owner or "acme", status=status, attempts=1)
    headers = {"Authorization": f"Bearer {key}"}

    with relay_api(database_url, tmp_path / "api.log") as api:
        schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
        results = list(schema.get_all_operations())
        bad = [r for r in results if not isinstance(r, Ok)]
        assert not bad, bad  # the served document must load whole
        operations = [r.ok() for r in results if isinstance(r, Ok)]
        labels = {f"{op.method.upper()} {op.path}" for op in operations}
        assert len(labels) == 11, labels  # 10 /v1 operations and /healthz: none skipped
        for operation in operations:
            raw = operation.definition.raw
            # Nothing to negate in an operation without parameters or a body.
            has_inputs = bool(raw.get("parameters") or raw.get("requestBody"))
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_inputs else [])
            for mode in modes:

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def run(case: Any) -> None:
                    case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS)

                run()
        assert '"level": "error"' not in api.log()
