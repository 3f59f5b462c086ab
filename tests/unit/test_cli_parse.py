"""Argument parsing of the `relay` CLI (no database)."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator

import pytest

from relay import cli
from relay.cli.parser import UsageError, build_parser
from relay.config import SETTINGS


def parse(*argv: str) -> object:
    return build_parser().parse_args(list(argv))


def test_every_command_is_routed() -> None:
    commands = {
        ("migrate",): "migrate",
        ("run",): "run",
        ("subscription", "add", "http://x.io"): "subscription add",
        ("subscription", "list"): "subscription list",
        ("subscription", "show", "1"): "subscription show",
        ("subscription", "update", "1", "--method", "GET"): "subscription update",
        ("subscription", "enable", "1"): "subscription enable",
        ("subscription", "disable", "1"): "subscription disable",
        ("subscription", "remove", "1"): "subscription remove",
        ("delivery", "list"): "delivery list",
        ("delivery", "show", "1"): "delivery show",
        ("replay", "1", "2"): "replay",
        ("emit", "order.created", "{}"): "emit",
        ("status",): "status",
        ("event-type", "list"): "event-type list",
        ("event-type", "add", "a.b"): "event-type add",
    }
    for argv, command in commands.items():
        args = parse(*argv)
        assert args.command == command  # type: ignore[attr-defined]
        assert command in cli._HANDLERS


def test_database_url_after_command_name() -> None:
    for argv in (
        ["migrate"],
        ["subscription", "list"],
        ["delivery", "show", "3"],
        ["replay", "--dead"],
        ["emit", "a.b", "{}"],
        ["status"],
        ["event-type", "add", "a.b"],
        ["run"],
    ):
        args = parse(*argv, "--database-url", "postgresql://h/db")
        url = getattr(args, "database_url", None) or getattr(args, "setting_database_url", None)
        assert url == "postgresql://h/db"


def test_subscription_add_options() -> None:
    args = parse(
        "subscription", "add", "https://x.io/h",
        "--method", "get",
        "--header", "A: 1", "--header", "B: 2",
        "--event", "order.*", "--event", "test.processed",
        "--event-name", "order.created=OC",
        "--body-map", '{"t": "$.eventType"}',
        "--secret", "generate", "--tenant", "acme",
        "--max-retries", "5", "--backoff-ms", "100", "--timeout-ms", "2000", "--disabled",
    )  # fmt: skip
    changes = cli._changes(args, update=False)  # type: ignore[arg-type]
    assert changes.url == "https://x.io/h"
    assert changes.method == "get"
    assert changes.headers == {"A": "1", "B": "2"}
    assert changes.events == ["order.*", "test.processed"]
    assert changes.event_names == {"order.created": "OC"}
    assert changes.secret == "generate"
    assert changes.tenant_id == "acme"
    assert (changes.max_retries, changes.backoff_ms, changes.timeout_ms) == ("5", "100", "2000")
    assert changes.enabled is False


def test_subscription_update_clear_options() -> None:
    args = parse(
        "subscription", "update", "7", "--clear-header", "A", "--clear-header", "B",
        "--clear-body-map", "--clear-secret", "--clear-tenant", "--clear-events",
        "--clear-event-name", "order.created", "--url", "http://new.io",
    )  # fmt: skip
    changes = cli._changes(args, update=True)  # type: ignore[arg-type]
    assert changes.clear_headers == ["A", "B"]
    assert changes.clear_body_map and changes.clear_secret and changes.clear_tenant
    assert changes.clear_events
    assert changes.clear_event_names == ["order.created"]
    assert changes.url == "http://new.io"
    assert changes.headers is None and changes.events is None


def test_clear_options_only_on_update() -> None:
    with pytest.raises(UsageError):
        parse("subscription", "add", "http://x.io", "--clear-secret")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["subscription"],
        ["subscription", "add"],
        ["subscription", "show"],
        ["delivery", "list", "--status", "lost"],
        ["emit", "order.created"],
        ["nonsense"],
        ["status", "--bogus"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "relay: error: " in err


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["subscription", "add", "http://x.io", "--header", "Host: evil"], "header"),
        (["subscription", "add", "http://x.io", "--header", "nocolon"], "header"),
        (["subscription", "add", "http://x.io", "--event-name", "order.created"], "event_name"),
        (["subscription", "show", "abc"], "id"),
        (["delivery", "list", "--limit", "0"], "limit"),
        (["delivery", "list", "--subscription", "x"], "subscription"),
        (["replay", "x"], "id"),
    ],
)
def test_input_errors_before_connecting(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unroutable URL: these must fail on the input, never reach the connection.
    code = cli.main([*argv, "--database-url", "postgresql://nobody@127.0.0.1:1/none"])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"relay: error: {field}: ")


def test_replay_argument_combinations(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay"]) == 2
    assert cli.main(["replay", "1", "--dead"]) == 2
    assert cli.main(["replay", "1", "--since", "2h"]) == 2
    assert capsys.readouterr().err.count("relay: error:") == 3


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "subscription" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("relay ")


def test_run_flags_come_from_settings() -> None:
    argv = []
    for s in SETTINGS:
        argv += [s.flag, "x"]
    args = parse("run", *argv)
    for s in SETTINGS:
        assert getattr(args, "setting_" + s.name) == "x"


def test_run_print_config_masks_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_CONCURRENCY", raising=False)
    code = cli.main(
        ["run", "--print-config", "--database-url", "postgresql://u:hunter2@h/db",
         "--concurrency", "7"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    shown = json.loads(out)
    assert shown["concurrency"] == 7
    assert shown["database_url"] == "postgresql://u:***@h/db"


def test_run_bad_setting_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--concurrency", "zero"]) == 2
    assert "concurrency" in capsys.readouterr().err


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    seen: dict[str, object] = {}
    daemon = types.ModuleType("relay.daemon.service")
    daemon.main = lambda config: seen.setdefault("config", config) and 3  # type: ignore[attr-defined]
    demo = types.ModuleType("relay.demo")
    demo.main = lambda argv: seen.setdefault("argv", argv) and 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "relay.daemon.service", daemon)
    monkeypatch.setitem(sys.modules, "relay.demo", demo)
    yield seen


def test_run_calls_daemon_main_with_config(fake_module: dict[str, object]) -> None:
    assert cli.main(["run", "--concurrency", "5", "--database-url", "postgresql://h/db"]) == 3
    config = fake_module["config"]
    assert config.concurrency == 5  # type: ignore[attr-defined]
    assert config.database_url == "postgresql://h/db"  # type: ignore[attr-defined]


def test_demo_gets_the_rest_of_the_arguments(fake_module: dict[str, object]) -> None:
    assert cli.main(["demo", "--database-url", "postgresql://h/db", "--fast"]) == 0
    assert fake_module["argv"] == ["--database-url", "postgresql://h/db", "--fast"]
