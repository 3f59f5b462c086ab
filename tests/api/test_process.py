"""``relay api`` as its own process: settings, JSON logs, metrics on their own port, and
SIGTERM finishing the request in flight before exiting 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import psycopg

from relay import admin
from relay.api.config import load_api
from relay.cli import main as cli
from relay.errors import ConfigError
from tests.api.data import make_subscription
from tests.api.process import relay_api


def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    database_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        key, _ = admin.create_api_key(conn)
        sub = make_subscription(conn, None)
    with relay_api(database_url, tmp_path / "api.log") as api:
        answer: list[httpx.Response] = []
        # Hold the subscription's row lock so the PATCH waits inside the API.
        with psycopg.connect(database_url) as blocker:
            blocker.execute("SELECT 1 FROM relay.subscriptions WHERE id = %s FOR UPDATE", (sub,))

            def patch() -> None:
                answer.append(
                    httpx.patch(
                        f"{api.url}/v1/subscriptions/{sub}",
                        json={"max_retries": 7},
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=30,
                    )
                )

            client = threading.Thread(target=patch)
            client.start()
            deadline = time.monotonic() + 10
            while "max_retries" not in _waiting_queries(database_url):
                assert time.monotonic() < deadline, "the PATCH never reached the database"
                time.sleep(0.05)
            api.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert api.proc.poll() is None  # still draining
            blocker.rollback()  # release: the PATCH completes
        client.join(15)
        assert answer and answer[0].status_code == 200, answer
        assert answer[0].json()["max_retries"] == 7
        assert api.proc.wait(15) == 0

        lines = [json.loads(line) for line in api.log().splitlines() if line.strip()]
        assert any(line["msg"] == "relay api listening" for line in lines)
        assert key not in api.log()


def _waiting_queries(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchall()
    return " ".join(r[0] for r in rows)


def test_metrics_are_served_on_their_own_port(database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        key, _ = admin.create_api_key(conn)
    with relay_api(database_url, tmp_path / "api.log") as api:
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{api.url}/v1/subscriptions/42", headers=headers).status_code == 404
        text = httpx.get(api.metrics_url + "/metrics").text
        assert (
            'relay_api_requests_total{route="/v1/subscriptions/{subscription_id}",status="404"}'
            in text
        )
        assert "relay_api_request_duration_seconds_bucket" in text
        assert httpx.get(api.url + "/metrics").status_code == 404  # not on the API's address


def test_settings_flags_environment_and_print_config(capsys: object) -> None:
    config = load_api({"api_addr": "0.0.0.0:9000"}, {"RELAY_API_POOL_SIZE": "3"})
    assert (config.api_addr, config.api_pool_size) == ("0.0.0.0:9000", 3)
    assert load_api({}, {"RELAY_API_METRICS_ADDR": "off"}).api_metrics_addr == ""
    for flags, env in (({"api_addr": "nowhere"}, {}), ({}, {"RELAY_API_MAX_BODY_BYTES": "-1"})):
        try:
            load_api(flags, env)
        except ConfigError as exc:
            assert "api_" in str(exc)
        else:
            raise AssertionError("accepted a bad setting")
    assert cli(["api", "--print-config", "--database-url", "postgresql://u:pw@h/db"]) == 0
    shown = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert shown["database_url"] == "postgresql://u:***@h/db"
    assert shown["api_addr"] == "127.0.0.1:8480"
    assert cli(["api", "--api-addr", "bad"]) == 2
