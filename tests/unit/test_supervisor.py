"""The supervisor's pure parts: each child's environment, metrics port and restart pauses."""

from __future__ import annotations

import pytest

from relay import config as cfg
from relay.daemon import supervisor as sup
from relay.errors import ConfigError


def test_processes_auto_is_this_process_cores_and_numbers_must_be_positive() -> None:
    assert cfg.load({"processes": "auto"}, environ={}).processes == cfg.cpu_count()
    assert cfg.load({"processes": "3"}, environ={}).processes == 3
    assert cfg.load({}, environ={"RELAY_PROCESSES": "2"}).processes == 2
    assert cfg.load({}, environ={}).processes == 1
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="processes"):
            cfg.load({"processes": bad}, environ={})


def test_child_metrics_port_is_base_plus_index_and_port_zero_stays_any() -> None:
    assert sup.child_metrics_addr("127.0.0.1:9465", 0) == "127.0.0.1:9465"
    assert sup.child_metrics_addr("127.0.0.1:9465", 2) == "127.0.0.1:9467"
    assert sup.child_metrics_addr("[::1]:9465", 1) == "[::1]:9466"
    assert sup.child_metrics_addr("127.0.0.1:0", 3) == "127.0.0.1:0"


def test_child_environ_spells_out_the_parent_config_for_one_process() -> None:
    config = cfg.load(
        {"processes": "2", "concurrency": "16", "listen": "false", "relay_id": "edge"},
        environ={"RELAY_PREFETCH": "7"},
    )
    parent_env = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "RELAY_STATE_DIR": "",  # None in the config: must not reach the child at all
    }
    env = sup.child_environ(config, "postgresql://u:pw@db/x", 1, parent_env)
    assert env["PATH"] == "/usr/bin"
    assert env["RELAY_PROCESSES"] == "1", "a child must never supervise in turn"
    assert env["RELAY_DATABASE_URL"] == "postgresql://u:pw@db/x"
    assert env["RELAY_CONCURRENCY"] == "16"
    assert env["RELAY_PREFETCH"] == "7"
    assert env["RELAY_LISTEN"] == "false"
    assert env["RELAY_METRICS_ADDR"] == "127.0.0.1:9466"
    assert env["RELAY_RELAY_ID"] == "edge-1"
    assert "RELAY_STATE_DIR" not in env
    # systemd hears only the supervisor (NotifyAccess=main)
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(env)
    # what the child reads back is the parent's config, for one process on its own port
    child = cfg.load({}, environ=env)
    assert child.concurrency == 16 and child.prefetch == 7 and child.listen is False
    assert child.processes == 1


def test_restart_pause_doubles_in_a_crash_loop_and_resets_after_a_healthy_run() -> None:
    pause = sup.restart_pause(0.0, ran_for=0.5)
    assert pause == sup.RESTART_PAUSE_MIN
    seen = [pause]
    for _ in range(10):
        pause = sup.restart_pause(pause, ran_for=0.5)
        seen.append(pause)
    assert seen[:3] == [1.0, 2.0, 4.0]
    assert seen[-1] == sup.RESTART_PAUSE_MAX
    assert sup.restart_pause(pause, ran_for=sup.HEALTHY_RUN_SECONDS) == sup.RESTART_PAUSE_MIN
