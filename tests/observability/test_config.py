"""``relay run`` settings: ``--print-config`` with the password masked, bad values refused at
start naming the setting, and every setting documented in the README's configuration table."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from relay.config import SETTINGS, load
from tests.observability.conftest import REPO, clean_env

# Port 1 on loopback: nothing listens, so a relay that did try to connect would never be ready.
URL_WITH_PASSWORD = "postgresql://postgres:hunter2@127.0.0.1:1/x"


def relay_run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m relay run ARGS`` with only the given RELAY_* variables (killed after
    ``timeout`` seconds: TimeoutExpired)."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "run", *args],
        env=clean_env(env),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_print_config_masks_the_password_and_does_not_connect() -> None:
    """``relay run --print-config`` prints every setting as JSON, the database password
    masked, without connecting (the URL points at a closed port); flags beat variables."""
    done = relay_run(
        "--print-config",
        "--concurrency",
        "7",
        env={
            "RELAY_DATABASE_URL": URL_WITH_PASSWORD,
            "RELAY_CONCURRENCY": "9",
            "RELAY_POOL_SIZE": "3",
        },
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert set(config) == {s.name for s in SETTINGS}
    assert config["database_url"] == "postgresql://postgres:***@127.0.0.1:1/x"
    assert config["concurrency"] == 7, "a flag wins over the environment"
    assert config["pool_size"] == 3, "the environment wins over the default"
    assert config["metrics_addr"] == "127.0.0.1:9465", "defaults are shown too"
    assert "hunter2" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://relay:hunter2@db.internal:5432/app?sslmode=require",
        "postgresql://relay@db.internal/app?password=hunter2&sslmode=require",
        "host=db.internal user=relay password=hunter2 dbname=app",
        "host=db.internal password='hunter2 with spaces' dbname=app",
    ],
)
def test_masked_config_hides_every_password_form(url: str) -> None:
    """The config relay prints (``--print-config``) and logs at start masks the password in
    URL, query-parameter and key=value forms."""
    masked = load(environ={"RELAY_DATABASE_URL": url}).masked()
    assert "hunter2" not in json.dumps(masked), masked
    assert "db.internal" in masked["database_url"], "the rest stays readable"


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        ((), {"RELAY_CONCURRENCY": "0"}, ("RELAY_CONCURRENCY", "concurrency")),
        (("--metrics-addr", "nonsense"), {}, ("--metrics-addr", "metrics_addr")),
        ((), {"RELAY_ALLOWED_NETWORKS": "10.0.0.0/33"}, ("RELAY_ALLOWED_NETWORKS",)),
        ((), {"RELAY_LOG_LEVEL": "loud"}, ("RELAY_LOG_LEVEL", "log_level")),
        ((), {"RELAY_POLL_INTERVAL": "soon"}, ("RELAY_POLL_INTERVAL", "poll_interval")),
        ((), {"RELAY_LISTEN": "maybe"}, ("RELAY_LISTEN", "listen")),
        ((), {"RELAY_PREFETCH": "-1"}, ("RELAY_PREFETCH", "prefetch", "0 or more")),
        (("--prefetch", "lots"), {}, ("--prefetch", "prefetch", "a whole number")),
        ((), {"RELAY_CONCURRENCY": "many"}, ("RELAY_CONCURRENCY", "a positive integer")),
    ],
    ids=[
        "concurrency-0",
        "metrics-addr",
        "allowed-networks",
        "log-level",
        "poll",
        "listen",
        "prefetch-negative",
        "prefetch-word",
        "concurrency-word",
    ],
)
def test_bad_settings_fail_at_start_naming_the_setting(
    args: tuple[str, ...], env: dict[str, str], names: tuple[str, ...]
) -> None:
    """A bad value stops ``relay run`` before it starts anything: exit code 2, one
    ``relay: error:`` line naming the setting, no traceback, no password."""
    done = relay_run(*args, env={"RELAY_DATABASE_URL": URL_WITH_PASSWORD, **env})
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("relay: error:"), done.stderr
    for name in names:
        assert name in done.stderr, (name, done.stderr)
    assert "hunter2" not in done.stderr
    assert done.stdout == ""


def test_metrics_port_in_use_fails_at_start_naming_the_setting(database_url: str) -> None:
    """When RELAY_METRICS_ADDR cannot be bound (port taken), ``relay run`` exits at once with
    an error naming the setting — not a traceback, and not a process that hangs without its
    endpoint (systemd would only notice at TimeoutStartSec)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        try:
            done = relay_run(
                env={
                    # A working database (the password is ignored by its trust auth).
                    "RELAY_DATABASE_URL": f"{database_url} password=hunter2",
                    "RELAY_METRICS_ADDR": addr,
                },
                timeout=15,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"relay run with {addr} already taken neither listened nor exited within 15 s "
                f"(it was killed); stderr:\n{_text(exc.stderr)}"
            )
    assert done.returncode in (1, 2), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "RELAY_METRICS_ADDR" in done.stderr or "metrics_addr" in done.stderr, done.stderr
    assert "hunter2" not in done.stderr


def _text(raw: str | bytes | None) -> str:
    if raw is None:
        return ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    """README.md has a configuration table (markdown rows) with one row per setting of
    relay.config.SETTINGS naming its variable (RELAY_*), its flag and its default."""
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.lstrip().startswith("|")]
    assert rows, "README.md has no table: add the configuration table (every RELAY_* setting)"
    missing, incomplete = [], []
    for s in SETTINGS:
        found = [r for r in rows if re.search(rf"(?<![A-Z_]){s.env}(?![A-Z_])", r)]
        if not found:
            missing.append(s.env)
            continue
        row = found[0]
        cells = [c.strip().strip("`") for c in row.strip().strip("|").split("|")]
        if s.flag not in cells and f"`{s.flag}`" not in row:
            incomplete.append(f"{s.env}: flag {s.flag}")
        if s.default not in (None, "") and not any(
            c == str(s.default) or c == str(s.default).lower() for c in cells
        ):
            incomplete.append(f"{s.env}: default {s.default!r}")
    assert not missing, f"settings missing from README.md's configuration table: {missing}"
    assert not incomplete, f"README.md configuration rows lacking: {incomplete}"
