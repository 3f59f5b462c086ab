"""deploy/grafana and deploy/prometheus: every query parses and names only metrics relay exports.

PromQL is checked by the real parser (``promtool check rules``): the alert file as is, the
dashboard's queries as recording rules in a temporary file. The alerts are also exercised
with ``promtool test rules`` on synthetic series, so a rule that parses but never (or always)
fires is caught too. Metric names are compared with the sample names that
:class:`relay.metrics.Metrics` really exposes, so a renamed metric breaks this test rather
than an operator's dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from relay.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "relay.json"
ALERTS = ROOT / "deploy" / "prometheus" / "relay-alerts.yml"
OPERATING = ROOT / "docs" / "operating.md"

REQUIRED_ALERTS = {
    "RelayBacklogGrowing",
    "RelayOldestPendingTooOld",
    "RelayDeadDeliveriesRising",
    "RelayDown",
    "RelayHighFailureRatio",
    "RelayDatabaseDisconnected",
    "RelayCredentialsNotEncrypted",
}

# The metrics the Observability contract promises, each of which the dashboard must show.
DASHBOARD_MUST_SHOW = {
    "relay_deliveries_total",
    "relay_delivery_attempts_total",
    "relay_delivery_latency_seconds_bucket",
    "relay_delivery_attempt_duration_seconds_bucket",
    "relay_outbox_backlog",
    "relay_deliveries_pending",
    "relay_deliveries_dead",
    "relay_oldest_pending_age_seconds",
    "relay_subscription_attempts_total",
    "relay_build_info",
    "relay_deliveries_in_flight",
    "relay_db_connected",
}

# Sample names each metric type exposes, relative to the family name (OpenMetrics; this is
# what prometheus_client's text exposition writes). Checked against real samples below.
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}

_METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])relay_[a-z0-9_]+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
# Grafana's built-in interval variables, replaced by a plausible duration for promtool.
_GRAFANA_DURATIONS = re.compile(r"\$\{?__(?:rate_interval|interval|range)\}?")
_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),)?\s*(?P<label>\w+)\s*\)\s*$")


# -- loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


@pytest.fixture(scope="module")
def alerts() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, promql)`` for every panel target and every query variable's selector."""
    out: list[tuple[str, str]] = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel['id']} {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        assert match, f"variable {var['name']}: unsupported query {text!r}"
        if match["selector"]:
            out.append((f"variable {var['name']}", match["selector"]))
    return out


def alert_rules(alerts: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in alerts["groups"] for rule in group["rules"]]


def metric_names(promql: str) -> set[str]:
    """``relay_*`` metric names referenced by a query (string literals ignored)."""
    return set(_METRIC_NAME.findall(_STRING.sub('""', promql)))


def exported_sample_names() -> set[str]:
    """Every sample name relay's metrics can expose, from a fresh registry.

    Labelled metrics expose no samples until a label set is used, so the names are derived
    from each family's type; the samples that do exist confirm the derivation.
    """
    registry = CollectorRegistry()
    Metrics(registry)
    derived: set[str] = set()
    actual: set[str] = set()
    for family in registry.collect():
        derived.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
        actual.update(sample.name for sample in family.samples)
    assert actual <= derived, f"sample names not derived: {sorted(actual - derived)}"
    return derived


def _for_promtool(promql: str) -> str:
    """A dashboard query with Grafana variables replaced, so plain PromQL remains."""
    text = _GRAFANA_DURATIONS.sub("5m", promql)

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in {"job", "instance"}, f"unknown dashboard variable ${name} in {promql!r}"
        return ".+"  # only ever used inside =~"..." matchers

    return _GRAFANA_VARIABLE.sub(variable, text)


# -- promtool --------------------------------------------------------------------------------


def _promtool() -> str:
    """promtool's path; skipped locally without it, a failure in CI (never a silent skip)."""
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but promtool is missing: apt-get install prometheus")
        pytest.skip("promtool not found: apt-get install prometheus to check PromQL")
    return tool


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)


# -- tests: structure ------------------------------------------------------------------------


def test_sample_names_follow_prometheus_client_naming() -> None:
    names = exported_sample_names()
    assert {
        "relay_build_info",
        "relay_deliveries_total",
        "relay_delivery_latency_seconds_bucket",
        "relay_delivery_attempt_duration_seconds_count",
        "relay_outbox_backlog",
    } <= names
    # Family names without their sample suffix are not series.
    assert "relay_deliveries" not in names
    assert "relay_delivery_latency_seconds" not in names
    assert "relay_build" not in names


def test_metric_name_extraction_ignores_strings() -> None:
    expr = 'sum(rate(relay_deliveries_total{connection="relay_pool"}[5m])) / relay_x_bucket'
    assert metric_names(expr) == {"relay_deliveries_total", "relay_x_bucket"}


def test_dashboard_datasource_and_variables(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    (ds_input,) = [i for i in dashboard["__inputs"] if i["name"] == "DS_PROMETHEUS"]
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds_var = variables["DS_PROMETHEUS"]
    assert (ds_var["type"], ds_var["query"]) == ("datasource", "prometheus")
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            # Every query follows the job/instance selection.
            for name in metric_names(target["expr"]):
                assert re.search(
                    name + r'\{[^}]*job=~"\$job", instance=~"\$instance"', target["expr"]
                ), f"{panel['title']}: {name} not filtered by $job/$instance"


def test_dashboard_shows_the_contract_metrics(dashboard: dict[str, Any]) -> None:
    shown: set[str] = set()
    for _, expr in dashboard_queries(dashboard):
        shown |= metric_names(expr)
    assert DASHBOARD_MUST_SHOW - shown == set()


def test_dashboard_uses_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    known = exported_sample_names()
    for where, expr in dashboard_queries(dashboard):
        unknown = metric_names(expr) - known
        assert not unknown, f"{where}: relay does not export {sorted(unknown)}: {expr}"


def test_alerts_use_only_exported_metrics(alerts: dict[str, Any]) -> None:
    known = exported_sample_names()
    for rule in alert_rules(alerts):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: relay does not export {sorted(unknown)}"


def test_alerts_are_complete(alerts: dict[str, Any]) -> None:
    rules = {r["alert"]: r for r in alert_rules(alerts)}
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{name}: annotation {key} missing"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_runbook_links_point_at_existing_sections(alerts: dict[str, Any]) -> None:
    anchors = {
        _slug(line.lstrip("#"))
        for line in OPERATING.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules(alerts):
        match = re.search(r"docs/operating\.md#([\w-]+)", rule["annotations"]["runbook"])
        assert match, f"{rule['alert']}: runbook does not link docs/operating.md"
        assert match[1] in anchors, f"{rule['alert']}: no section #{match[1]}"


# -- tests: the real PromQL parser -----------------------------------------------------------


def test_promtool_checks_alert_rules() -> None:
    proc = _run(_promtool(), "check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_parses_dashboard_queries(dashboard: dict[str, Any], tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard)
    rules = [
        {"record": f"relay_dashboard:query_{i}", "expr": _for_promtool(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = _run(_promtool(), "check", "rules", str(rules_file))
    where = "\n".join(f"relay_dashboard:query_{i} = {w}" for i, (w, _) in enumerate(queries))
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{where}"
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_grafana_variables_are_replaced_for_promtool() -> None:
    expr = 'rate(relay_x_total{job=~"$job", instance=~"${instance}"}[$__rate_interval])'
    assert _for_promtool(expr) == 'rate(relay_x_total{job=~".+", instance=~".+"}[5m])'


# Synthetic series and the alerts they must (and must not) raise. Times are minutes.
_JOB = 'job="relay"'
_A = f'{_JOB}, instance="relay-a:9465"'
_B = f'{_JOB}, instance="relay-b:9465"'
_DEAD = f'{_A}, outcome="dead"'
_DEAD_B = f'{_B}, outcome="dead"'
ALERT_SCENARIOS: dict[str, dict[str, Any]] = {
    "RelayDown": {
        "series": {
            f"up{{{_A}}}": "1 1 0x20",
            f'relay_build_info{{{_A}, version="0.1.0"}}': "1 1 stale",
        },
        "expect": {1: [], 10: [{"job": "relay", "severity": "critical"}]},
    },
    "RelayDown:scrapes-failing": {
        # The `up` arm on its own (relay_build_info kept present).
        "series": {
            f"up{{{_A}}}": "1 1 0x20",
            f'relay_build_info{{{_A}, version="0.1.0"}}': "1x22",
        },
        "expect": {1: [], 10: [{"job": "relay", "severity": "critical"}]},
    },
    "RelayInstanceDown": {
        "series": {f"up{{{_A}}}": "1x5 0x20", f"up{{{_B}}}": "1x25"},
        "expect": {
            8: [],
            15: [{"job": "relay", "instance": "relay-a:9465", "severity": "warning"}],
        },
    },
    "RelayBacklogGrowing": {
        # Two relays report the same database-wide values; the total grows 300/min.
        "series": {
            f"relay_outbox_backlog{{{_A}}}": "0+200x40",
            f"relay_outbox_backlog{{{_B}}}": "0+200x40",
            f"relay_deliveries_pending{{{_A}}}": "0+100x40",
            f"relay_deliveries_pending{{{_B}}}": "0+100x40",
        },
        "expect": {3: [], 30: [{"job": "relay", "severity": "warning"}]},
    },
    "RelayBacklogGrowing:flat": {
        # Large but not growing: no alert.
        "series": {
            f"relay_outbox_backlog{{{_A}}}": "5000x40",
            f"relay_deliveries_pending{{{_A}}}": "5000x40",
        },
        "expect": {30: []},
    },
    "RelayOldestPendingTooOld": {
        "series": {f"relay_oldest_pending_age_seconds{{{_A}}}": "100x2 400x20"},
        "expect": {5: [], 12: [{"job": "relay", "severity": "warning"}]},
    },
    "RelayDeadDeliveriesRising": {
        # _created values are Unix times; promtool's clock starts at 0, so minute m is 60*m.
        "series": {
            # Initialised at 0; one delivery goes dead at minute 31: increase() sees it.
            f'relay_deliveries_total{{{_DEAD}, event_type="order.created"}}': "0x30 1x30",
            f'relay_deliveries_created{{{_DEAD}, event_type="order.created"}}': "0x60",
            # The first dead test.processed delivery creates the series at minute 40.
            f'relay_deliveries_total{{{_DEAD}, event_type="test.processed"}}': "_x40 1x20",
            f'relay_deliveries_created{{{_DEAD}, event_type="test.processed"}}': ("_x40 2400x20"),
            # Relay B restarts at minute 21 (its series vanish: no alert), and its first
            # dead order.received after the restart appears at minute 51.
            f'relay_deliveries_total{{{_DEAD_B}, event_type="order.received"}}': ("3x20 _x30 1x10"),
            f'relay_deliveries_created{{{_DEAD_B}, event_type="order.received"}}': (
                "0x20 _x30 3060x10"
            ),
        },
        "expect": {
            20: [],
            35: [{"job": "relay", "event_type": "order.created", "severity": "warning"}],
            48: [{"job": "relay", "event_type": "test.processed", "severity": "warning"}],
            58: [{"job": "relay", "event_type": "order.received", "severity": "warning"}],
        },
    },
    "RelayHighFailureRatio": {
        "series": {
            # Subscription 7: 6 of 8 attempts a minute fail.
            f'relay_subscription_attempts_total{{{_A}, subscription_id="7", success="false"}}': (
                "0+6x40"
            ),
            f'relay_subscription_attempts_total{{{_A}, subscription_id="7", success="true"}}': (
                "0+2x40"
            ),
            # Subscription 8 always fails but is tried too rarely to alert on.
            f'relay_subscription_attempts_total{{{_A}, subscription_id="8", success="false"}}': (
                "0+0.5x40"
            ),
            # Subscription 9 is healthy.
            f'relay_subscription_attempts_total{{{_A}, subscription_id="9", success="true"}}': (
                "0+50x40"
            ),
        },
        "expect": {
            5: [],
            30: [{"job": "relay", "subscription_id": "7", "severity": "warning"}],
        },
    },
    "RelayDatabaseDisconnected": {
        "series": {
            f'relay_db_connected{{{_A}, connection="pool"}}': "1 1 0x10",
            f'relay_db_connected{{{_B}, connection="pool"}}': "1x12",
        },
        "expect": {
            2: [],
            6: [
                {
                    "job": "relay",
                    "instance": "relay-a:9465",
                    "connection": "pool",
                    "severity": "critical",
                }
            ],
        },
    },
    "RelayHistoryGrowing": {
        # 1 GiB a minute: projected far past 50 GiB once the 6h window has two points.
        "series": {
            f'relay_history_bytes{{{_A}, table="deliveries"}}': "0+1073741824x120",
            f'relay_history_bytes{{{_B}, table="deliveries"}}': "0+1073741824x120",
            f'relay_history_bytes{{{_A}, table="outbox"}}': "0x120",
        },
        "expect": {5: [], 90: [{"job": "relay", "severity": "warning"}]},
    },
    "RelayHistoryGrowing:flat": {
        # Retention working: 10 GiB, flat.
        "series": {f'relay_history_bytes{{{_A}, table="deliveries"}}': "10737418240x120"},
        "expect": {90: []},
    },
    "RelayLostLeases": {
        "series": {f"relay_lost_lease_acks_total{{{_A}}}": "0x10 2x20"},
        "expect": {
            5: [],
            15: [{"job": "relay", "instance": "relay-a:9465", "severity": "warning"}],
        },
    },
    "RelayCredentialsNotEncrypted": {
        # Relay A runs without a key (then gets one at minute 40); relay B always had one.
        "series": {
            f"relay_credentials_encrypted{{{_A}}}": "0x40 1x20",
            f"relay_credentials_encrypted{{{_B}}}": "1x60",
        },
        "expect": {
            10: [],
            30: [{"job": "relay", "instance": "relay-a:9465", "severity": "warning"}],
            55: [],
        },
    },
}


def test_every_alert_has_a_scenario(alerts: dict[str, Any]) -> None:
    tested = {name.split(":")[0] for name in ALERT_SCENARIOS}
    assert {r["alert"] for r in alert_rules(alerts)} == tested


def test_promtool_alert_scenarios(alerts: dict[str, Any], tmp_path: Path) -> None:
    # promtool compares annotations too; they are prose (checked by `check rules` above), so
    # the scenarios run against a copy without them and assert on labels only.
    stripped = {
        "groups": [
            {
                **group,
                "rules": [
                    {k: v for k, v in r.items() if k != "annotations"} for r in group["rules"]
                ],
            }
            for group in alerts["groups"]
        ]
    }
    rules_file = tmp_path / "relay-alerts.yml"
    rules_file.write_text(yaml.safe_dump(stripped, sort_keys=False))
    tests = []
    for name, scenario in ALERT_SCENARIOS.items():
        alertname = name.split(":")[0]
        tests.append(
            {
                "name": name,
                "interval": "1m",
                "input_series": [
                    {"series": series, "values": values}
                    for series, values in scenario["series"].items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": f"{minute}m",
                        "alertname": alertname,
                        "exp_alerts": [{"exp_labels": labels} for labels in expected],
                    }
                    for minute, expected in scenario["expect"].items()
                ],
            }
        )
    test_file = tmp_path / "relay-alerts.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    proc = _run(_promtool(), "test", "rules", str(test_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
