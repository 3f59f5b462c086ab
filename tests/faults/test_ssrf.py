"""SSRF guard at delivery time: private, loopback, link-local, metadata and unspecified
targets are refused with the address in the error, unless ``allowed_networks`` lists them.

Safety: these tests never send a packet to a non-loopback address. The guard refuses IP
literals before any connection; in case it regressed, ``_send`` is wrapped so that a request
to anything but loopback is turned into a recorded test failure instead of a connection.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime

import pytest

from relay.webhook.sender import HttpSender, Prepared, Result
from tests.faults._util import Conn, report, settled
from tests.receiver import Receiver
from tests.relayctx import add_subscription, attempts, deliveries, emit, running_relay, wait_until


def _loopback_or_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        # Legacy numeric spellings (2130706433, 127.1) of loopback are the only names used.
        return host in {"2130706433", "127.1"}
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback or addr.is_unspecified


@pytest.fixture
def outside_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts relay tried to send to that are not loopback (must stay empty)."""
    reached: list[str] = []
    original = HttpSender._send

    async def guarded(
        self: HttpSender, p: Prepared, timeout: float, started: datetime, t0: float
    ) -> Result:
        host = p.url.host or ""
        if not _loopback_or_local(host):
            reached.append(host)
            return Result(started, 0.0, error=f"TEST GUARD: would have connected to {host}")
        return await original(self, p, timeout, started, t0)

    monkeypatch.setattr(HttpSender, "_send", guarded)
    return reached


def _targets(port: int) -> dict[str, tuple[str, ...]]:
    """URL → the spellings of the address its refusal must name (any one of them)."""
    return {
        f"http://127.0.0.1:{port}/hook": ("127.0.0.1",),
        "http://10.0.0.1/hook": ("10.0.0.1",),
        "http://169.254.169.254/latest/meta-data/": ("169.254.169.254",),
        f"http://[::ffff:127.0.0.1]:{port}/hook": ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        f"http://0.0.0.0:{port}/hook": ("0.0.0.0",),
        f"http://localhost:{port}/hook": ("127.0.0.1", "::1"),
        f"http://[::1]:{port}/hook": ("::1",),
        f"http://2130706433:{port}/hook": ("127.0.0.1",),
        f"http://127.1:{port}/hook": ("127.0.0.1",),
    }


async def test_private_targets_are_refused_without_any_connection(
    conn: Conn, database_url: str, receiver: Receiver, outside_attempts: list[str]
) -> None:
    """With no allowed networks every target is refused at once (no retries: max_retries=0):
    each delivery is dead within seconds, its error names the address and the category, the
    attempt took no network time, and the loopback receiver saw no request at all."""
    targets = _targets(receiver.port)
    subs = {add_subscription(conn, url, max_retries=0): url for url in targets}
    emit(conn, "order.created", {})
    async with running_relay(database_url, allowed_networks=""):
        await wait_until(
            lambda: [d["status"] for d in deliveries(conn)] == ["dead"] * len(targets),
            timeout=10,
        )
    assert outside_attempts == []
    assert receiver.requests == []
    durations: dict[str, float] = {}
    for d in deliveries(conn):
        url = subs[d["subscription_id"]]
        error = d["last_error"]
        assert error.startswith("refused target address"), (url, error)
        assert any(spelling in error for spelling in targets[url]), (url, error)
        assert "RELAY_ALLOWED_NETWORKS" in error
        (a,) = attempts(conn, d["id"])
        durations[url] = a["duration_ms"]
        assert a["duration_ms"] < 1000, (url, a["duration_ms"])
    report(
        "ssrf_refused",
        targets=len(targets),
        refused=len(targets),
        connections=0,
        max_attempt_ms=round(max(durations.values()), 1),
    )


async def test_metadata_error_names_the_category(
    conn: Conn, database_url: str, outside_attempts: list[str]
) -> None:
    """The refusal says why: the cloud metadata address is called ``metadata``, 10/8
    ``private``."""
    meta = add_subscription(conn, "http://169.254.169.254/", max_retries=0)
    add_subscription(conn, "http://10.0.0.1/", max_retries=0)
    emit(conn, "order.created", {})
    async with running_relay(database_url, allowed_networks=""):
        await wait_until(lambda: [d["status"] for d in deliveries(conn)] == ["dead", "dead"])
    assert outside_attempts == []
    errors = {d["subscription_id"]: d["last_error"] for d in deliveries(conn)}
    for sub, error in errors.items():
        assert ("(metadata)" if sub == meta else "(private)") in error, error


async def test_allowed_networks_reopen_loopback(
    conn: Conn, database_url: str, receiver: Receiver, outside_attempts: list[str]
) -> None:
    """``allowed_networks=127.0.0.0/8`` lets every spelling of a 127/8 target through
    (including the IPv4-mapped IPv6 form and a name resolving there), and nothing else:
    ``[::1]`` (not listed) and 10.0.0.1 stay refused."""
    port = receiver.port
    allowed = {
        f"http://127.0.0.1:{port}/a": "/a",
        f"http://[::ffff:127.0.0.1]:{port}/b": "/b",
        f"http://localhost:{port}/c": "/c",
    }
    refused = [f"http://[::1]:{port}/e", "http://10.0.0.1/f"]
    for url in [*allowed, *refused]:
        add_subscription(conn, url, max_retries=0)
    emit(conn, "order.created", {})
    async with running_relay(database_url, allowed_networks="127.0.0.0/8"):
        await wait_until(
            lambda: settled(conn, len(allowed) + len(refused)),
            timeout=10,
        )
    assert outside_attempts == []
    outcome = {d["subscription_id"]: (d["status"], d["last_error"]) for d in deliveries(conn)}
    assert sorted(r.path for r in receiver.requests) == sorted(allowed.values()), outcome
    assert sorted(s for s, _ in outcome.values()) == ["dead", "dead"] + ["delivered"] * 3
