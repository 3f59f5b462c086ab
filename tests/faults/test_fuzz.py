"""Input fuzzing: the app-facing emit API and the subscription CLI refuse bad input cleanly.

- ``relay.emit(conn, ...)``: a non-dict payload is a :class:`relay.EmitError`; a dict is written
  and reads back equal; the call never commits (a rollback leaves no row) and never raises any
  other exception type.
- ``relay subscription add`` (in-process ``relay.cli.main``): random headers (CR/LF, NUL,
  non-ASCII, reserved names), body maps and methods give exit 0 (one row more) or exit 2 with
  exactly one ``relay: error: <field>: ...`` line naming an invalid field, no traceback, and
  the subscriptions table unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from typing import Any, Literal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relay
from relay.cli import main as cli_main
from tests.faults._util import Conn, report, scalar, scaled

FUZZ = settings(
    max_examples=scaled(100, 1000),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ---------------------------------------------------------------------------------- emit

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
json_text = st.text(st.characters(exclude_categories=SURROGATES, exclude_characters="\x00"))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_text, children, max_size=5)
    ),
    max_leaves=30,
)
payloads = json_values | st.dictionaries(json_text, json_values, max_size=8)

EMIT_STATS = {"examples": 0, "written": 0, "refused": 0}


def _same(a: Any, b: Any) -> bool:
    """JSON equality after a jsonb round trip (numbers compare by value: 1.0 == 1)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(b, int | float) and not isinstance(b, bool) and math.isclose(a, b)
    return type(a) is type(b) and a == b


@pytest.fixture
def tx_conn(database_url: str) -> Any:
    """A connection in transaction mode (like an app's)."""
    with psycopg.connect(database_url) as c:
        yield c


@FUZZ
@given(payload=payloads)
def test_emit_accepts_objects_refuses_the_rest_and_never_commits(
    tx_conn: psycopg.Connection[Any], payload: Any
) -> None:
    """Any JSON value: a dict is written (and reads back equal) inside the caller's
    transaction, anything else is an EmitError; a rollback always leaves zero rows."""
    EMIT_STATS["examples"] += 1
    try:
        outbox_id = relay.emit(tx_conn, "order.created", payload)
    except relay.EmitError as exc:
        assert not isinstance(payload, dict), exc
        assert str(exc).startswith("payload:")
        EMIT_STATS["refused"] += 1
    else:
        assert isinstance(payload, dict)
        stored = scalar(tx_conn, "SELECT payload FROM relay.outbox WHERE id = %s", (outbox_id,))
        assert _same(payload, stored), (payload, stored)
        EMIT_STATS["written"] += 1
    tx_conn.rollback()
    assert scalar(tx_conn, "SELECT count(*) FROM relay.outbox") == 0
    tx_conn.rollback()


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"x": float("nan")}, id="nan"),
        pytest.param({"x": [1, {"y": float("-inf")}]}, id="infinity"),
        pytest.param({"x": "a\x00b"}, id="nul-in-value"),
        pytest.param({"\x00": 1}, id="nul-in-key"),
        pytest.param({"x": "\ud800"}, id="lone-surrogate"),
        pytest.param({"x": _deep(5000)}, id="nested-5000"),
        pytest.param({"x": b"bytes"}, id="bytes"),
    ],
)
def test_emit_refuses_dicts_jsonb_cannot_hold_with_emit_error(
    tx_conn: psycopg.Connection[Any], payload: dict[str, Any]
) -> None:
    """A dict that is not JSON jsonb can store (NaN, infinities, NUL characters, lone
    surrogates, absurd nesting, bytes) is refused with EmitError naming the payload, like
    any other bad payload, and nothing is written."""
    with pytest.raises(relay.EmitError, match="payload"):
        relay.emit(tx_conn, "order.created", payload)
    tx_conn.rollback()
    assert scalar(tx_conn, "SELECT count(*) FROM relay.outbox") == 0


# ---------------------------------------------------------------------------------- CLI

RESERVED = {"content-length", "content-type", "host", "transfer-encoding", "connection"}
RESERVED |= {"user-agent"}
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
VALID_PATHS = ["$.eventType", "$.userId", "$.items[*].code", "$..id", "$.a.`len`", "$"]
INVALID_PATHS: list[Any] = ["$.[", "$$x", "", "@@", "$.a[", 5, None, ["$.a"]]
# A NUL in an output name is left out here: it is a known bug, pinned by
# test_body_map_output_name_with_nul_is_a_validation_error below.
NAMES = ["a", "b", "a.b", "c.d.e", "", "x..y", ".z", "é", "🙂.v"]


def _header_ok(raw: str) -> bool:
    """The documented rules for one ``--header 'Name: value'``."""
    name, sep, value = raw.partition(":")
    if not sep or not TOKEN.fullmatch(name) or len(name) > 256:
        return False
    if name.lower() in RESERVED or name.lower().startswith("webhook-"):
        return False
    if any(c in value for c in "\r\n\x00"):
        return False
    value = value.strip(" \t")
    return all(" " <= c <= "~" for c in value) and len(value) <= 8192


def _body_map_ok(raw: Any) -> bool:
    if not isinstance(raw, dict):
        return False
    for name, path in raw.items():
        if name == "" or "" in name.split(".") or "\x00" in name:
            return False
        if path not in VALID_PATHS:
            return False
    names = {tuple(n.split(".")) for n in raw}
    return not any(n[:i] in names for n in names for i in range(1, len(n)))


HEADER_NAMES = ["Authorization", "X-Api-Key", "X-Ok", "x-tenant", "webhook-id", "Webhook-Signature"]
HEADER_NAMES += ["Content-Length", "Host", "user-agent", "X-Ü", "X Bad", "", "X:Y"]
header_names = st.sampled_from(HEADER_NAMES) | st.text(
    st.characters(max_codepoint=0x2FF), min_size=1, max_size=8
)
header_values = st.sampled_from(
    ["Bearer t0k", "a\r\nX-Injected: 1", "line\n", "nul\x00", "  padded\t", "naïve", ""]
) | st.text(st.characters(max_codepoint=0x24F), max_size=12)
headers_st = st.lists(
    st.tuples(header_names, header_values).map(lambda t: f"{t[0]}:{t[1]}"), max_size=3
)
body_maps = (
    st.none()
    | st.dictionaries(
        st.sampled_from(NAMES), st.sampled_from(VALID_PATHS + INVALID_PATHS), max_size=4
    ).map(lambda d: json.dumps(d))
    | st.sampled_from(["[]", '"x"', "{", "null", "{}"])
)
methods = st.none() | st.sampled_from(["GET", "post", " Post ", "PUT", "", "G\nET", "DELETE"])

CLI_STATS: dict[str, int] = {"examples": 0, "accepted": 0, "refused": 0}


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


@FUZZ
@given(headers=headers_st, body_map=body_maps, method=methods)
def test_subscription_add_refuses_bad_fields_cleanly(
    conn: Conn,
    database_url: str,
    headers: list[str],
    body_map: str | None,
    method: str | None,
) -> None:
    """Exit 0 and one row more exactly when every field is valid; otherwise exit 2, one
    ``relay: error: <field>: ...`` line naming an invalid field, no traceback, no row."""
    CLI_STATS["examples"] += 1
    argv = ["subscription", "add", "http://127.0.0.1:9/hook", "--database-url", database_url]
    argv += [f"--header={h}" for h in headers]
    invalid: set[str] = set()
    if not all(_header_ok(h) for h in headers):
        invalid.add("header")
    if body_map is not None:
        argv.append(f"--body-map={body_map}")
        try:
            parsed = json.loads(body_map)
        except ValueError:
            parsed = None
        if not _body_map_ok(parsed):
            invalid.add("body_map")
    if method is not None:
        argv.append(f"--method={method}")
        if method.strip().upper() not in ("GET", "POST"):
            invalid.add("method")
    before = scalar(conn, "SELECT count(*) FROM relay.subscriptions")
    code, out, err = _run(argv)
    after = scalar(conn, "SELECT count(*) FROM relay.subscriptions")
    assert "Traceback" not in err
    if invalid:
        assert code == 2, (argv, code, out, err)
        assert after == before
        assert err.endswith("\n") and err.count("\n") == 1, err
        match = re.match(r"relay: error: (\w+): ", err)
        assert match and match.group(1) in invalid, (invalid, err)
        CLI_STATS["refused"] += 1
    else:
        assert code == 0, (argv, err)
        assert after == before + 1
        assert out.strip() == str(scalar(conn, "SELECT max(id) FROM relay.subscriptions"))
        CLI_STATS["accepted"] += 1


@pytest.mark.parametrize(
    "header",
    [
        "webhook-id: x",
        "Webhook-Signature: v1,abc",
        "webhook-timestamp: 1",
        "Content-Length: 5",
        "content-type: text/plain",
        "Host: evil.example",
        "User-Agent: x",
        "Transfer-Encoding: chunked",
    ],
)
def test_reserved_headers_are_refused(conn: Conn, database_url: str, header: str) -> None:
    """Headers relay sets itself cannot be set by a subscription (signature forgery, framing)."""
    code, _, err = _run(
        [
            *("subscription", "add", "http://127.0.0.1:9/", f"--header={header}"),
            *("--database-url", database_url),
        ]
    )
    assert code == 2
    assert err.startswith("relay: error: header: ") and "set by relay" in err, err
    assert scalar(conn, "SELECT count(*) FROM relay.subscriptions") == 0


def test_body_map_output_name_with_nul_is_a_validation_error(conn: Conn, database_url: str) -> None:
    """Found by the fuzz test above: ``--body-map '{"k\\u0000": "$.eventType"}'`` must be
    refused as invalid input naming ``body_map`` (exit 2), not fail in the database."""
    code, _, err = _run(
        [
            *("subscription", "add", "http://127.0.0.1:9/"),
            '--body-map={"k\\u0000": "$.eventType"}',
            *("--database-url", database_url),
        ]
    )
    assert scalar(conn, "SELECT count(*) FROM relay.subscriptions") == 0
    assert (code, err.split(":")[:3]) == (2, ["relay", " error", " body_map"]), (code, err)


def test_zz_report_fuzz_figures() -> None:
    """Prints how many inputs the fuzz tests above tried (for docs/reliability.md)."""
    report("fuzz_emit", **EMIT_STATS)
    report("fuzz_cli", **CLI_STATS)
