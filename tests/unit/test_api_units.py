"""Pure logic of the API: cursors, problem mapping, the systemd unit beside relay.service."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from relay.api import cursor
from relay.api.config import API_SETTINGS
from relay.errors import ValidationError
from tests.unit.test_deploy_systemd import _stub, _verify, _with_runnable_commands, parse_unit

ROOT = Path(__file__).resolve().parents[2]
API_UNIT = ROOT / "deploy" / "systemd" / "relay-api.service"
API_ENV = ROOT / "deploy" / "systemd" / "relay-api.env.example"


@pytest.mark.parametrize("last_id", [1, 42, 2**63 - 1])
def test_cursor_round_trip(last_id: int) -> None:
    assert cursor.decode("d", cursor.encode("d", last_id)) == last_id
    assert cursor.decode("d", None) is None


@pytest.mark.parametrize("bad", ["", "=", "ZDo=x", cursor.encode("s", 5), "ZDowCg", "a" * 101])
def test_cursor_refuses_anything_else(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        cursor.decode("d", bad)
    assert info.value.field == "cursor"


def test_api_unit_runs_relay_api_with_the_shared_env_file() -> None:
    unit = parse_unit(API_UNIT.read_text())
    service = unit["Service"]
    assert service["ExecStart"] == ["/usr/local/bin/relay api"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert "/etc/relay/relay.env" in service["EnvironmentFile"]
    assert "relay.service" in unit["Unit"]["After"][0]
    # The stop timeout leaves room for the default drain.
    assert int(service["TimeoutStopSec"][0]) > 10


def test_api_env_example_lists_the_api_settings() -> None:
    text = API_ENV.read_text()
    for s in API_SETTINGS:
        if s.name.startswith("api_"):
            assert f"#{s.env}={s.default}" in text


def test_api_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not found")
    stub = _stub(tmp_path)
    probe = tmp_path / "relay-probe.service"
    probe.write_text(f"[Service]\nType=oneshot\nExecStart={stub}\n")
    if _verify(tool, probe)[0] != 0:
        pytest.skip("`systemd-analyze verify` does not work here")
    unit_file = tmp_path / "relay-api.service"
    unit_file.write_text(_with_runnable_commands(API_UNIT.read_text(), stub))
    rc, diagnostics = _verify(tool, unit_file)
    assert rc == 0 and not diagnostics, "\n".join(diagnostics) or f"exit {rc}"
