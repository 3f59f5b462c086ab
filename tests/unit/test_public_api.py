"""The app-facing API: ``import relay`` gives exactly emit, emit_async, the errors and
``__version__``, and pulls in nothing of the daemon."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import relay
import relay.errors

API = {
    "emit",
    "emit_async",
    "__version__",
    "RelayError",
    "ConfigError",
    "DatabaseError",
    "EmitError",
    "MappingError",
    "NotFound",
    "ValidationError",
}


def test_all_is_exactly_the_app_facing_api() -> None:
    assert set(relay.__all__) == API
    assert len(relay.__all__) == len(API)


def test_each_name_imports_and_is_what_it_says() -> None:
    module = importlib.import_module("relay")
    for name in relay.__all__:
        assert getattr(module, name) is not None, name
    assert relay.emit.__module__ == "relay.outbox"
    assert relay.emit_async.__module__ == "relay.outbox"
    for name in API - {"emit", "emit_async", "__version__"}:
        error = getattr(relay, name)
        assert error is getattr(relay.errors, name)
        assert issubclass(error, relay.RelayError)
    assert isinstance(relay.__version__, str) and relay.__version__


def test_import_relay_loads_no_daemon_http_or_cli() -> None:
    code = (
        "import json, sys, relay; "
        "roots = ('aiohttp', 'relay'); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in roots)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert not [m for m in loaded if m.startswith(("aiohttp", "relay.daemon", "relay.cli"))]
