"""Every setting's default is written once, in relay.config.SETTINGS: Config and the flags'
help read it from there (the README's table is checked in tests/observability/test_config.py)."""

from __future__ import annotations

import argparse
import dataclasses

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
