"""deploy/systemd: the unit's promises (notify, watchdog, sandbox) and the env file's coverage.

The unit is also run through ``systemd-analyze verify`` when that works on this machine: it
catches misspelt keys and bad values, which systemd itself only logs and ignores at boot.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from relay import crypto
from relay.config import SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "relay.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "relay.env.example"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A systemd unit as ``{section: {key: [values...]}}``.

    configparser cannot be used as is: systemd keys repeat (``Environment=`` twice is two
    settings, not an override) and an empty assignment is meaningful (it resets a list).
    """
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _render_default(setting: Setting) -> str:
    """How a default is written in the env file: what the setting's parser reads back."""
    value = setting.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def _one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "2"),
        ("EnvironmentFile", "/etc/relay/relay.env"),
        ("User", "relay"),
        ("Group", "relay"),
        ("StateDirectory", "relay"),
        ("ExecStartPre", "/usr/local/bin/relay migrate"),
        ("ExecStart", "/usr/local/bin/relay run"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "30"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LockPersonality", "yes"),
        ("CapabilityBoundingSet", ""),
    ],
)
def test_service_settings(unit: Unit, key: str, expected: str) -> None:
    assert _one(unit, "Service", key) == expected


def test_syscall_filter_allows_system_service_set(unit: Unit) -> None:
    assert "@system-service" in unit["Service"]["SystemCallFilter"]


def test_install_section(unit: Unit) -> None:
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_orders_after_network(unit: Unit) -> None:
    assert "network-online.target" in _one(unit, "Unit", "After").split()
    assert "network-online.target" in _one(unit, "Unit", "Wants").split()


def _environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for assignment in unit["Service"].get("Environment", []):
        for item in assignment.split():
            key, _, value = item.partition("=")
            env[key] = value
    return env


def test_unit_environment_uses_real_settings(unit: Unit) -> None:
    known = {s.env for s in SETTINGS}
    for key in _environment(unit):
        assert key in known or not key.startswith("RELAY_"), f"unknown setting {key}"


def test_state_dir_is_the_writable_state_directory(unit: Unit) -> None:
    # ProtectSystem=strict makes everything read-only except StateDirectory=: the embedded
    # Postgres must live exactly there.
    state = "/var/lib/" + _one(unit, "Service", "StateDirectory")
    assert _environment(unit)["RELAY_STATE_DIR"] == state


def test_stop_timeout_leaves_room_for_the_drain(unit: Unit) -> None:
    # A stop waits for each request in flight up to its own timeout (the default 10 s) plus
    # the margin, then up to the drain timeout to record the outcomes.
    from relay.daemon.attempts import DRAIN_MARGIN_SECONDS

    drain = next(s for s in SETTINGS if s.name == "drain_timeout").default
    assert isinstance(drain, float)
    default_request = 10.0  # relay.subscriptions.timeout_ms DEFAULT 10000
    bound = max(drain, default_request + DRAIN_MARGIN_SECONDS) + drain
    assert float(_one(unit, "Service", "TimeoutStopSec")) > bound


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = ENV_EXAMPLE.read_text()
    lines = {line.strip() for line in text.splitlines()}
    for setting in SETTINGS:
        line = f"#{setting.env}={_render_default(setting)}"
        assert line in lines, f"{ENV_EXAMPLE.name}: expected the line {line!r}"


def test_env_example_mentions_no_unknown_setting() -> None:
    # RELAY_ENCRYPTION_KEY is read from the environment only (never a flag: ps would show it).
    known = {s.env for s in SETTINGS} | {crypto.ENV}
    mentioned = set(re.findall(r"\bRELAY_[A-Z0-9_]+", ENV_EXAMPLE.read_text()))
    assert mentioned - known == set()


def test_env_example_is_valid_environment_file_syntax() -> None:
    # Everything is commented out, so the example works as is; any live line must be KEY=VALUE.
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped and stripped[0] not in "#;":
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", stripped), line


# -- systemd-analyze verify ------------------------------------------------------------------

_MISSING_TOOL = (
    "systemd-analyze not found; install it with `apt-get install systemd` to verify the unit"
)


def _need_tool(reason: str) -> None:
    """Skip locally, but fail in CI: a verification that silently never runs proves nothing."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}")
    pytest.skip(reason)


def _stub(tmp_path: Path) -> Path:
    stub = tmp_path / "bin" / "stub"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return stub


def _verify(tool: str, unit_file: Path) -> tuple[int, list[str]]:
    """Exit code and the diagnostics that concern ``unit_file`` (other units' noise dropped)."""
    proc = subprocess.run(
        [tool, "verify", "--man=no", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [ln for ln in lines if unit_file.name in ln]


def _with_runnable_commands(text: str, stub: Path) -> str:
    """The unit text with every Exec*= program that is absent here replaced by ``stub``.

    verify insists the programs exist; /usr/local/bin/relay does not on a build machine.
    """

    def swap(match: re.Match[str]) -> str:
        prefix, program = match.group(1), match.group(2)
        return prefix + (program if os.access(program, os.X_OK) else str(stub))

    return re.sub(r"(?m)^(Exec\w+=[-@:+!|]*)(/\S+)", swap, text)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        _need_tool(_MISSING_TOOL)
        return
    stub = _stub(tmp_path)

    # First prove verify works at all here (containers without systemd can break it).
    probe = tmp_path / "relay-probe.service"
    probe.write_text(f"[Service]\nType=oneshot\nExecStart={stub}\n")
    rc, _ = _verify(tool, probe)
    if rc != 0:
        _need_tool(f"`systemd-analyze verify` does not work here (exit {rc} on a trivial unit)")
        return

    unit_file = tmp_path / "relay.service"
    unit_file.write_text(_with_runnable_commands(UNIT.read_text(), stub))
    rc, diagnostics = _verify(tool, unit_file)
    # verify exits 0 on unknown keys or unparsable values (it only warns): any line about our
    # unit is a failure.
    assert rc == 0 and not diagnostics, "\n".join(diagnostics) or f"exit {rc}"


def test_stub_substitution_keeps_present_programs(tmp_path: Path) -> None:
    stub = _stub(tmp_path)
    text = "ExecStart=/usr/local/bin/relay-does-not-exist run\nExecReload=-/bin/sh -c true\n"
    out = _with_runnable_commands(text, stub)
    assert f"ExecStart={stub} run" in out
    assert "ExecReload=-/bin/sh -c true" in out


def test_env_example_documents_the_encryption_key_commented_out() -> None:
    text = ENV_EXAMPLE.read_text()
    assert f"#{crypto.ENV}=\n" in text
    assert "relay encryption-key generate" in text and "relay rotate-key" in text
