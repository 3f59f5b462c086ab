"""The test webhook receiver: each behaviour, seen by a plain aiohttp client."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from tests.receiver import (
    Receiver,
    ReceiverProcess,
    hang,
    huge,
    redirect,
    reset,
    respond,
    start_receiver_process,
)

# Registered by conftest too; naming it here keeps this module runnable on its own.
pytest_plugins = ["tests.fixtures_receiver"]


async def test_records_requests_and_answers_204_by_default(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            receiver.url("/hook") + "?a=1&b=2&a=3",
            json={"eventType": "ORDER.CREATED"},
            headers={"webhook-id": "msg_1", "X-Token": "t"},
        ) as resp:
            assert resp.status == 204
        async with http.get(receiver.url("other")) as resp:
            assert resp.status == 204

    first, second = await receiver.wait_for(2)
    assert first.method == "POST"
    assert first.path == "/hook"
    assert first.query_pairs == [("a", "1"), ("b", "2"), ("a", "3")]
    assert first.query == {"a": "1", "b": "2"}
    assert first.headers["webhook-id"] == "msg_1"
    assert first.headers["x-token"] == "t"
    assert first.headers["content-type"] == "application/json"
    assert first.json == {"eventType": "ORDER.CREATED"}
    assert json.loads(first.body) == first.json
    assert abs(first.received_at - time.time()) < 5
    assert second.method == "GET" and second.path == "/other" and second.json is None
    assert receiver.requests_to("/hook") == [first]


async def test_respond_status_body_headers_and_delay(receiver: Receiver) -> None:
    receiver.script("/hook", [respond(503, body="busy", headers={"Retry-After": "1"}, delay=0.3)])
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(receiver.url(), data=b"not json") as resp:
            assert resp.status == 503
            assert await resp.text() == "busy"
            assert resp.headers["Retry-After"] == "1"
        assert time.monotonic() - started >= 0.3
    (got,) = await receiver.wait_for(1)
    assert got.body == b"not json" and got.json is None


async def test_script_consumes_behaviours_and_repeats_the_last(receiver: Receiver) -> None:
    receiver.script("/hook", [respond(500), respond(429), respond(200)])
    receiver.script("/down", [respond(502)])
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(receiver.url("/hook")) as resp:
                statuses.append(resp.status)
        async with http.post(receiver.url("/down")) as resp:
            assert resp.status == 502
        async with http.post(receiver.url("/unscripted")) as resp:
            assert resp.status == 204
    assert statuses == [500, 429, 200, 200, 200]
    await receiver.wait_for(5, path="/hook")


async def test_hang_outlasts_the_client_timeout(receiver: Receiver) -> None:
    receiver.script("/hook", [hang(30), respond(204)])
    timeout = aiohttp.ClientTimeout(total=0.5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with http.post(receiver.url(), json={}):
                pass
        assert time.monotonic() - started < 5
        # The hung request was still recorded, and the next one gets the next behaviour.
        async with http.post(receiver.url(), json={}) as resp:
            assert resp.status == 204
    assert len(await receiver.wait_for(2)) == 2


async def test_close_does_not_wait_for_hanging_handlers() -> None:
    started = time.monotonic()
    async with Receiver(default=hang(60)) as rx, aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(http.post(rx.url(), json={}))
        await rx.wait_for(1)
    assert time.monotonic() - started < 5
    with pytest.raises(aiohttp.ClientError):
        await task


@pytest.mark.parametrize("partial", [False, True])
async def test_reset_is_a_client_error(receiver: Receiver, partial: bool) -> None:
    receiver.script("/hook", [reset(partial=partial), respond(204)])
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.post(receiver.url(), json={"n": 1}) as resp:
                # With a partial response the status line arrives; reading the body fails.
                await resp.read()
        async with http.post(receiver.url(), json={"n": 2}) as resp:
            assert resp.status == 204
    assert [r.json for r in await receiver.wait_for(2)] == [{"n": 1}, {"n": 2}]


async def test_redirect_is_not_followed_without_allow_redirects(receiver: Receiver) -> None:
    receiver.script("/hook", [redirect(receiver.url("/elsewhere"), status=307)])
    async with (
        aiohttp.ClientSession() as http,
        http.post(receiver.url(), json={}, allow_redirects=False) as resp,
    ):
        assert resp.status == 307
        assert resp.headers["Location"] == receiver.url("/elsewhere")
    await asyncio.sleep(0.1)
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_redirect_default_status_is_302(receiver: Receiver) -> None:
    receiver.script("/hook", [redirect("http://127.0.0.1:9/x")])
    async with (
        aiohttp.ClientSession() as http,
        http.get(receiver.url(), allow_redirects=False) as resp,
    ):
        assert resp.status == 302


async def test_huge_streams_the_whole_body(receiver: Receiver) -> None:
    size = 5 * 1024 * 1024 + 17
    receiver.script("/hook", [huge(size)])
    async with aiohttp.ClientSession() as http:
        async with http.post(receiver.url(), json={}) as resp:
            assert resp.status == 200
            assert resp.content_length == size
            assert len(await resp.read()) == size
        # A client that reads only a prefix and hangs up must not break the receiver.
        async with http.post(receiver.url(), json={}) as resp:
            assert len(await resp.content.read(1024)) == 1024
            resp.close()
        async with http.post(receiver.url("/ok"), json={}) as resp:
            assert resp.status == 204


async def test_wait_for_timeout_names_what_arrived(receiver: Receiver) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(receiver.url("/hook"), json={}) as resp,
    ):
        assert resp.status == 204
    with pytest.raises(AssertionError) as excinfo:
        await receiver.wait_for(3, timeout=0.2)
    message = str(excinfo.value)
    assert "expected 3 request(s) within 0.2s, got 1" in message
    assert "POST /hook" in message
    with pytest.raises(AssertionError, match="on /nothing"):
        await receiver.wait_for(1, timeout=0.1, path="/nothing")


async def test_wait_for_wakes_when_requests_arrive(receiver: Receiver) -> None:
    async def send_later() -> None:
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http:
            for i in range(3):
                async with http.post(receiver.url(), json={"i": i}):
                    pass

    sender = asyncio.ensure_future(send_later())
    got = await receiver.wait_for(3, timeout=5)
    await sender
    assert [r.json["i"] for r in got] == [0, 1, 2]


def test_script_needs_a_behaviour() -> None:
    with pytest.raises(ValueError):
        Receiver().script("/hook", [])


# --------------------------------------------------------------------------- process mode


def _post(url: str, body: dict[str, object], webhook_id: str) -> int:
    async def go() -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json=body, headers={"webhook-id": webhook_id}) as resp,
        ):
            return resp.status

    return asyncio.run(go())


def test_process_records_requests(tmp_path: Path) -> None:
    with start_receiver_process(tmp_path) as rp:
        assert rp.url == f"http://127.0.0.1:{rp.port}/hook"
        assert _post(rp.url, {"eventType": "ORDER.CREATED"}, "msg_a") == 204
        assert _post(rp.url_for("/b"), {"x": 1}, "msg_b") == 204
        first, second = rp.wait_for(2)
        assert first["method"] == "POST" and first["path"] == "/hook"
        assert first["webhook_id"] == "msg_a"
        assert json.loads(first["body"]) == {"eventType": "ORDER.CREATED"}
        assert first["headers"]["content-type"] == "application/json"
        assert first["status"] == 204
        assert first["received_at"] <= second["received_at"] <= time.time()
        assert second["path"] == "/b" and second["webhook_id"] == "msg_b"
        proc = rp.proc
    assert proc.returncode == 0, "SIGTERM should end the receiver cleanly"


def test_process_status_and_fail_every(tmp_path: Path) -> None:
    with start_receiver_process(tmp_path, status=202, fail_every=3, fail_status=503) as rp:
        statuses = [_post(rp.url, {"i": i}, f"msg_{i}") for i in range(7)]
        assert statuses == [202, 202, 503, 202, 202, 503, 202]
        assert [r["status"] for r in rp.records()] == statuses


def test_process_fixture_and_startup_failure(
    receiver_process: ReceiverProcess, tmp_path: Path
) -> None:
    assert _post(receiver_process.url, {}, "msg_f") == 204
    assert receiver_process.wait_for(1)[0]["webhook_id"] == "msg_f"
    with pytest.raises(AssertionError, match="expected 5"):
        receiver_process.wait_for(5, timeout=0.2)
    # Binding a port already taken fails fast, quoting the child's stderr.
    with pytest.raises(RuntimeError, match="failed to start"):
        start_receiver_process(tmp_path, port=receiver_process.port)
