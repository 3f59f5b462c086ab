"""A real Prometheus scrapes a real ``relay run``: the dashboard's queries return data and
the alert rules load and evaluate.

Needs the ``prometheus`` binary (Debian: ``apt-get install prometheus``). Without it the test
is skipped, except in CI (``CI`` set) where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from psycopg.conninfo import conninfo_to_dict

from tests.observability.conftest import REPO, RelayProc, free_port, http_get, wait_for
from tests.procs import terminate
from tests.proxy import TcpProxy
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription, emit

Conn = psycopg.Connection[Any]

DASHBOARD = REPO / "deploy" / "grafana" / "relay.json"
ALERTS = REPO / "deploy" / "prometheus" / "relay-alerts.yml"

# (panel title, panel type): the dashboard's main panels, each must show data.
MAIN_PANELS = [
    ("Deliveries by outcome", "timeseries"),  # throughput
    ("Attempts by result", "timeseries"),
    ("Outbox backlog and pending deliveries", "timeseries"),
    ("Relay instances", "timeseries"),  # instances up
    ("Relays up", "stat"),
]


class Prometheus:
    """A Prometheus server on 127.0.0.1 with its own config and TSDB under ``tmp``."""

    def __init__(self, binary: str, tmp: Path, target: str) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "relay",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        config_path = tmp / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            return http_get(self.url + "/-/ready")[0] == 200

        wait_for(ready, 30, "prometheus /-/ready")

    def api(self, path: str, **params: str) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        status, body = http_get(self.url + path + query, timeout=10)
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (path, params, body)
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "the prometheus binary is not installed: apt-get install prometheus"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def start_prometheus(
    prometheus_binary: str, tmp_path: Path
) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        directory = tmp_path / f"prometheus-{len(started)}"
        directory.mkdir()
        p = Prometheus(prometheus_binary, directory, target)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def dashboard_exprs(instance: str) -> dict[tuple[str, str], list[str]]:
    """Every panel's PromQL with Grafana's variables filled in as for one picked instance."""
    board = json.loads(DASHBOARD.read_text())
    out: dict[tuple[str, str], list[str]] = {}
    for panel in board["panels"]:
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        if not exprs:
            continue
        # Grafana puts a picked value into a regex matcher escaped, inside a PromQL string.
        picked = re.escape(instance).replace("\\", "\\\\")
        filled = []
        for expr in exprs:
            expr = expr.replace("$__rate_interval", "30s").replace("$__range", "5m")
            expr = expr.replace("$__interval", "15s")
            expr = expr.replace("$job", "relay").replace("$instance", picked)
            expr = expr.replace("${job}", "relay").replace("${instance}", picked)
            assert "$" not in expr, f"unhandled Grafana variable in {panel['title']!r}: {expr}"
            filled.append(expr)
        out.setdefault((panel["title"], panel["type"]), []).extend(filled)
    return out


def test_prometheus_scrapes_relay_dashboard_queries_and_alert_rules(
    conn: Conn,
    database_url: str,
    obs_relay: Callable[..., RelayProc],
    start_prometheus: Callable[[str], Prometheus],
    tmp_path: Path,
) -> None:
    """Prometheus (1 s scrapes, job ``relay``) scrapes a relay that delivered events (some
    going dead): every panel query of deploy/grafana/relay.json evaluates, the main panels
    (throughput, attempt results, backlog, instances up) return data, the dashboard's
    job/instance variables find the relay, and deploy/prometheus/relay-alerts.yml loads with
    every rule healthy — RelayDown quiet while the relay is up, RelayDeadDeliveriesRising
    firing for the event type whose deliveries died, RelayDatabaseDisconnected pending while
    the database is cut off, RelayDown/RelayInstanceDown pending once the relay stopped."""
    params = conninfo_to_dict(database_url)
    target = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    with start_receiver_process(tmp_path, fail_every=4) as rx, TcpProxy(*target) as proxy:
        add_subscription(conn, rx.url, max_retries=0)
        # Through a TCP proxy, so the test can cut the database off later.
        relay = obs_relay(proxy.rewrite(database_url), gauge_interval=1)
        instance = f"127.0.0.1:{relay.metrics_port}"
        relay.wait_ready()
        prom = start_prometheus(instance)
        prom.wait_ready()

        def deliver_wave(first: int, n: int) -> None:
            for i in range(first, first + n):
                emit(conn, "order.created" if i % 2 else "test.processed", {"n": i})
            rx.wait_for(first + n, timeout=30)
            wait_for(
                lambda: (
                    not conn.execute(
                        "SELECT 1 FROM relay.deliveries WHERE status = 'pending'"
                    ).fetchone()
                ),
                30,
                "every delivery final",
            )

        # Two waves: rate() needs a series to exist before it grows, so the first wave
        # creates the series and Prometheus sees the second one as throughput.
        deliver_wave(0, 4)
        wait_for(
            lambda: prom.query('relay_deliveries_total{job="relay", outcome="delivered"}'),
            30,
            "the first wave scraped",
        )
        deliver_wave(4, 8)
        dead_types = {
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT event_type FROM relay.deliveries WHERE status = 'dead'"
            )
        }
        assert dead_types, "fail_every=4 with max_retries=0 should kill some deliveries"

        # The dashboard's variables: label_values(relay_build_info, job) / (…, instance).
        wait_for(
            lambda: prom.api("/api/v1/series", **{"match[]": 'relay_build_info{job=~"relay"}'}),
            30,
            "relay_build_info scraped",
        )
        series = prom.api("/api/v1/series", **{"match[]": 'relay_build_info{job=~"relay"}'})
        assert {s["instance"] for s in series} == {instance}

        panels = dashboard_exprs(instance)
        for key in MAIN_PANELS:
            assert key in panels, f"panel {key} not in the dashboard"
            for expr in panels[key]:

                def has_data(e: str = expr) -> list[dict[str, Any]]:
                    return prom.query(e)

                result = wait_for(has_data, 60, f"data for {key}: {expr}")
                print(f"{key[0]}: {expr}\n  -> {result}")
        # Every other panel's query is valid PromQL over relay's series (may be empty).
        for exprs in panels.values():
            for expr in exprs:
                prom.query(expr)

        # Throughput reflects what happened: a delivered and a dead outcome series.
        throughput = panels[("Deliveries by outcome", "timeseries")][0]

        def delivering() -> dict[str, float] | None:
            rates = {r["metric"]["outcome"]: float(r["value"][1]) for r in prom.query(throughput)}
            return rates if rates.get("delivered", 0) > 0 else None

        rates = wait_for(delivering, 30, f"a delivered rate above 0: {throughput}")
        assert {"delivered", "dead"} <= set(rates), rates
        results = {
            r["metric"].get("result")
            for r in prom.query(next(iter(panels[("Attempts by result", "timeseries")])))
        }
        assert {"2xx", "5xx"} <= results, results

        # The alert rules: all loaded, all evaluating without error.
        expected_alerts = {
            rule["alert"]
            for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]
            if "alert" in rule
        }

        def rules_healthy() -> dict[str, dict[str, Any]] | None:
            rules = {r["name"]: r for g in prom.api("/api/v1/rules")["groups"] for r in g["rules"]}
            if set(rules) != expected_alerts:
                return None
            if any(r["health"] != "ok" for r in rules.values()):
                bad = {n: (r["health"], r.get("lastError")) for n, r in rules.items()}
                assert all(r["health"] != "err" for r in rules.values()), bad
                return None
            return rules

        rules = wait_for(rules_healthy, 30, "every alert rule loaded and evaluated (health ok)")
        assert rules["RelayDown"]["state"] == "inactive", rules["RelayDown"]
        assert rules["RelayDatabaseDisconnected"]["state"] == "inactive"

        def dead_alert() -> set[str]:
            alerts = prom.api("/api/v1/alerts")["alerts"]
            return {
                a["labels"].get("event_type", "")
                for a in alerts
                if a["labels"]["alertname"] == "RelayDeadDeliveriesRising"
                and a["state"] == "firing"
            }

        firing = wait_for(dead_alert, 30, "RelayDeadDeliveriesRising to fire")
        assert firing == dead_types, (firing, dead_types)

        def alert_state(name: str, state: str) -> list[dict[str, Any]]:
            return [
                a
                for a in prom.api("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name and a["state"] == state
            ]

        # The database goes away: RelayDatabaseDisconnected starts counting (for: 2m).
        proxy.stop()
        alerts = wait_for(
            lambda: alert_state("RelayDatabaseDisconnected", "pending"),
            30,
            "RelayDatabaseDisconnected pending",
        )
        assert {a["labels"]["instance"] for a in alerts} == {instance}
        assert "pool" in {a["labels"]["connection"] for a in alerts}, alerts
        proxy.start()
        wait_for(
            lambda: not alert_state("RelayDatabaseDisconnected", "pending"),
            60,
            "RelayDatabaseDisconnected to clear once the database is back",
        )

        # The relay stops: RelayDown and RelayInstanceDown start counting.
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        wait_for(lambda: alert_state("RelayDown", "pending"), 30, "RelayDown pending")
        (down,) = wait_for(
            lambda: alert_state("RelayInstanceDown", "pending"), 30, "RelayInstanceDown pending"
        )
        assert down["labels"]["instance"] == instance
