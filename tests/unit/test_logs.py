"""relay.logs: formats, levels, and secret redaction on every record."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from relay import logs
from relay.logs import redact, set_level, setup_logging, toggle_debug


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """setup_logging changes process-wide state; put the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    if logs._handler is not None:
        root.removeHandler(logs._handler)
        logs._handler = None
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_base_and_extra_fields() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("relay.deliver").info(
        "delivered %s",
        "d-1",
        extra={
            "delivery_id": "d-1",
            "subscription_id": 7,
            "event_type": "order.created",
            "attempt": 2,
            "status": 200,
            "duration_ms": 12.5,
            "outcome": "delivered",
        },
    )
    (line,) = _json_lines(out)
    assert line["level"] == "info"
    assert line["logger"] == "relay.deliver"
    assert line["msg"] == "delivered d-1"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert {k: line[k] for k in ("delivery_id", "subscription_id", "event_type")} == {
        "delivery_id": "d-1",
        "subscription_id": 7,
        "event_type": "order.created",
    }
    assert (line["attempt"], line["status"], line["duration_ms"], line["outcome"]) == (
        2,
        200,
        12.5,
        "delivered",
    )


def test_json_keeps_colliding_extra_and_serialises_odd_values() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("relay").info("x", extra={"ts": "mine", "when": object})
    (line,) = _json_lines(out)
    assert line["ts"] != "mine"
    assert line["extra_ts"] == "mine"
    assert isinstance(line["when"], str)


def test_json_includes_traceback() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("relay").exception("failed")
    (line,) = _json_lines(out)
    assert line["level"] == "error"
    assert "RuntimeError: boom" in line["exc"]


def test_text_format_shows_extras() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    logging.getLogger("relay.deliver").warning(
        "attempt failed", extra={"delivery_id": "d-9", "error": "connection refused"}
    )
    text = out.getvalue()
    assert " WARNING relay.deliver: attempt failed" in text
    assert "delivery_id=d-9" in text
    assert 'error="connection refused"' in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_auto_is_text_on_a_tty_and_json_otherwise() -> None:
    tty = _TTY()
    setup_logging("info", "auto", stream=tty)
    logging.getLogger("relay").info("hello")
    assert "INFO relay: hello" in tty.getvalue()

    pipe = io.StringIO()
    setup_logging("info", "auto", stream=pipe)
    logging.getLogger("relay").info("hello")
    assert _json_lines(pipe)[0]["msg"] == "hello"


def test_setup_twice_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "json", stream=first)
    setup_logging("info", "json", stream=second)
    logging.getLogger("relay").info("once")
    assert first.getvalue() == ""
    assert len(_json_lines(second)) == 1


def test_levels_and_runtime_change() -> None:
    out = io.StringIO()
    setup_logging("warning", "json", stream=out)
    log = logging.getLogger("relay.x")
    log.info("hidden")
    log.warning("shown")
    set_level("debug")
    log.debug("now shown")
    set_level("ERROR")
    log.warning("hidden again")
    assert [line["msg"] for line in _json_lines(out)] == ["shown", "now shown"]


def test_toggle_debug_switches_back_and_forth() -> None:
    out = io.StringIO()
    setup_logging("warning", "json", stream=out)
    log = logging.getLogger("relay.x")
    assert toggle_debug("warning") == "debug"
    log.debug("debug on")
    assert toggle_debug("warning") == "warning"
    log.info("hidden")
    assert [line["msg"] for line in _json_lines(out)] == ["debug on"]
    # Configured at debug already: stays at debug.
    set_level("debug")
    assert toggle_debug("debug") == "debug"
    with pytest.raises(ValueError, match="log level"):
        toggle_debug("loud")


@pytest.mark.parametrize("bad", ["verbose", ""])
def test_unknown_level_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="log level"):
        setup_logging(bad, "json", stream=io.StringIO())
    with pytest.raises(ValueError, match="log level"):
        set_level(bad)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        setup_logging("info", "xml", stream=io.StringIO())


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw loaded", "MfKQ9r8G", "whsec_***"),
        ("Authorization: Bearer abc.def.ghi", "abc.def", "Authorization: ***"),
        ("authorization=Basic dXNlcjpwYXNz", "dXNlcjpw", "authorization=***"),
        ("{'Authorization': 'Token t0ps3cret', 'X-Other': 'v'}", "t0ps3cret", "'X-Other': 'v'"),
        ('{"authorization": "Basic Zm9vOmJhcg=="}', "Zm9vOmJhcg", '"authorization": "***"'),
        ("X-Api-Key: k3y-value", "k3y-value", "X-Api-Key: ***"),
        ("sent with bearer eyJhbGciOi.J9.x-y_z", "eyJhbGciOi", "bearer ***"),
        (
            "cannot connect to postgresql://relay:s3cr3t@db.internal:5432/relay",
            "s3cr3t",
            "postgresql://relay:***@db.internal:5432/relay",
        ),
        ("postgres://u:p@ss:w0rd@h/db", "w0rd", "postgres://u:***@h/db"),
        ("https://user:hunter2@hooks.example.com/x", "hunter2", "https://user:***@hooks"),
        ("host=db user=relay password=pa55 dbname=relay", "pa55", "password=*** dbname=relay"),
        ("host=db password='a b c' port=5432", "a b c", "password=*** port=5432"),
    ],
)
def test_redact_masks_secrets(text: str, secret: str, kept: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert kept in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "delivered order.created to https://hooks.example.com/a?b=c (200)",
        "postgresql://relay@db/relay",
        "attempt 2 of 4 failed: 503",
        "",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_filter_masks_message_args_extras_and_traceback() -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    log = logging.getLogger("relay.some.child")  # propagates to the root handler
    try:
        raise ValueError("bad url postgresql://relay:tracepw@db/relay")
    except ValueError:
        log.exception(
            "subscription %s uses %s",
            "s-1",
            "whsec_c2VjcmV0c2VjcmV0",
            extra={
                "headers": {"Authorization": "Bearer hdr-token", "X-Trace": "t"},
                "dsn": "postgresql://relay:extrapw@db/relay",
                "attempts": [{"error": "Authorization: Basic listpw"}],
                "api_key": "plain-key-value",
            },
        )
    raw = out.getvalue()
    for secret in ("c2VjcmV0", "hdr-token", "extrapw", "tracepw", "listpw", "plain-key-value"):
        assert secret not in raw, secret
    (line,) = _json_lines(out)
    assert line["msg"] == "subscription s-1 uses whsec_***"
    assert line["headers"] == {"Authorization": "***", "X-Trace": "t"}
    assert line["dsn"] == "postgresql://relay:***@db/relay"
    assert line["api_key"] == "***"
    assert line["attempts"] == [{"error": "Authorization: ***"}]
    assert "ValueError: bad url postgresql://relay:***@db/relay" in line["exc"]


def test_filter_masks_text_format_too() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    logging.getLogger("relay").info("header Authorization: Bearer zzz-secret")
    assert "zzz-secret" not in out.getvalue()
    assert "Authorization: ***" in out.getvalue()


def test_filter_lets_bad_format_args_through_to_the_handler() -> None:
    record = logging.LogRecord("relay", logging.INFO, __file__, 1, "%d", ("nope",), None)
    assert logs.RedactingFilter().filter(record) is True


def test_warnings_are_captured_and_formatted() -> None:
    import warnings

    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    warnings.warn("deprecated thing with whsec_d2FybmluZw", UserWarning, stacklevel=1)
    (line,) = _json_lines(out)
    assert line["logger"] == "py.warnings"
    assert "d2FybmluZw" not in line["msg"]
