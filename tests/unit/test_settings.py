"""Every setting's default is written once, in relay.config.SETTINGS: Config and the flags'
help read it from there (the README's table is checked in tests/observability/test_config.py)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from relay.cli.parser import build_parser
from relay.config import SETTINGS, Config


def test_config_fields_are_the_settings_with_their_defaults() -> None:
    fields = {f.name for f in dataclasses.fields(Config)} - {"extra"}
    assert fields == {s.name for s in SETTINGS}
    config = Config()
    for s in SETTINGS:
        assert getattr(config, s.name) == s.default, s.name


def test_run_help_quotes_each_default_from_the_settings() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run = commands.choices["run"]
    helps = {a.dest: a.help or "" for a in run._actions}
    for s in SETTINGS:
        text = helps["setting_" + s.name]
        assert s.env in text
        if s.default is not None:
            assert f"default {s.default}" in text, s.name


def test_prepare_off_sets_no_prepare_threshold_on_every_kind_of_connection() -> None:
    from relay.daemon.store import connection_kwargs
    from relay.errors import ConfigError
    from relay.pgprepare import prepare_from_env, prepare_kwargs

    assert connection_kwargs("postgresql:///x", "on", prepare=False) == {
        "autocommit": True,
        "prepare_threshold": None,
    }
    assert "prepare_threshold" not in connection_kwargs("postgresql:///x", "on")
    assert prepare_from_env({}) is True
    assert prepare_from_env({"RELAY_PREPARE": "off"}) is False
    assert prepare_kwargs(False) == {"prepare_threshold": None}
    with pytest.raises(ConfigError, match="RELAY_PREPARE"):
        prepare_from_env({"RELAY_PREPARE": "sometimes"})
