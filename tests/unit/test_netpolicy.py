"""SSRF guard: address classification, allow-lists, the guarded aiohttp resolver."""

from __future__ import annotations

import ipaddress
import pickle
import re
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from relay.webhook.netpolicy import (
    ForbiddenAddress,
    GuardedResolver,
    check_address,
    check_url_host,
    parse_allowed_networks,
)

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.3.4", "private"),
    ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("192.0.2.10", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::ffff:127.0.0.1", "loopback, IPv4-mapped"),
    ("::ffff:169.254.169.254", "metadata, IPv4-mapped"),
    ("::ffff:10.1.2.3", "private, IPv4-mapped"),
    ("64:ff9b::7f00:1", "loopback, NAT64"),
    ("64:ff9b::a9fe:a9fe", "metadata, NAT64"),
    ("2002:a00:1::1", "private, 6to4"),
    ("::7f00:1", "reserved"),
    ("2001::1", "special-purpose"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.128.0.1",
    "172.32.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:81c::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("ip", "reason"), REFUSED)
def test_refused_addresses_name_address_and_reason(ip: str, reason: str) -> None:
    with pytest.raises(ForbiddenAddress) as info:
        check_address(ip, ())
    exc = info.value
    assert exc.address == ip
    assert exc.reason == reason
    assert str(exc) == (
        f"refused target address {ip} ({reason}); allow it with RELAY_ALLOWED_NETWORKS"
    )


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip: str) -> None:
    check_address(ip, ())


def test_allowed_networks_reopen_ranges() -> None:
    allowed = parse_allowed_networks("127.0.0.0/8, 10.0.0.0/8,::1/128")
    check_address("127.0.0.1", allowed)
    check_address("10.200.0.1", allowed)
    check_address("::1", allowed)
    # The mapped form of an allowed IPv4 address is the same target.
    check_address("::ffff:127.0.0.1", allowed)
    with pytest.raises(ForbiddenAddress):
        check_address("192.168.0.1", allowed)
    with pytest.raises(ForbiddenAddress):
        check_address("169.254.169.254", allowed)


def test_check_address_accepts_address_objects() -> None:
    with pytest.raises(ForbiddenAddress):
        check_address(ipaddress.ip_address("10.0.0.1"))
    check_address(ipaddress.ip_address("8.8.8.8"))


def test_check_address_rejects_non_addresses() -> None:
    with pytest.raises(ValueError):
        check_address("example.com")


def test_forbidden_address_is_an_oserror_with_strerror() -> None:
    exc = ForbiddenAddress("10.0.0.5", "private")
    assert isinstance(exc, OSError)
    assert exc.strerror == str(exc)
    assert str(exc) == (
        "refused target address 10.0.0.5 (private); allow it with RELAY_ALLOWED_NETWORKS"
    )
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.address, copy.reason, str(copy)) == (exc.address, exc.reason, str(exc))


# --- parse_allowed_networks ------------------------------------------------------------------


def test_parse_allowed_networks() -> None:
    assert parse_allowed_networks("") == ()
    assert parse_allowed_networks(" , ") == ()
    assert parse_allowed_networks("127.0.0.0/8,::1/128,10.1.2.3/8, 192.168.1.7") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
    )


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "localhost", "10.0.0/8x", "::1/129"])
def test_parse_allowed_networks_names_bad_item(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_allowed_networks(f"127.0.0.0/8,{bad}")


# --- check_url_host --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::1]", "::1", "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.5."],
)
def test_url_host_literals_are_checked(host: str) -> None:
    with pytest.raises(ForbiddenAddress):
        check_url_host(host, ())


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1"])
def test_legacy_numeric_ipv4_forms_are_checked(host: str) -> None:
    with pytest.raises(ForbiddenAddress, match=r"127\.0\.0\.1"):
        check_url_host(host, ())


@pytest.mark.parametrize(
    "host", ["localhost", "example.com", "cafe.face", "deadbeef", "8.8.8.8", "[2606:4700::1]"]
)
def test_url_host_names_and_public_literals_pass(host: str) -> None:
    check_url_host(host, ())


def test_url_host_respects_allowed() -> None:
    check_url_host("[::1]", parse_allowed_networks("::1/128"))
    check_url_host("127.0.0.1", parse_allowed_networks("127.0.0.0/8"))


@given(st.ip_addresses())
def test_check_address_only_raises_forbidden(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    try:
        check_address(str(addr), ())
    except ForbiddenAddress as exc:
        assert exc.address == str(addr)
        assert exc.reason
    else:
        # Everything let through is globally routable unicast.
        assert not addr.is_private and not addr.is_loopback and not addr.is_multicast


@given(st.ip_addresses())
def test_allowing_everything_allows_everything(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    check_address(str(addr), parse_allowed_networks("0.0.0.0/0,::/0"))


# --- GuardedResolver -------------------------------------------------------------------------


def _result(host: str, family: int = socket.AF_INET) -> ResolveResult:
    return {"hostname": "h", "host": host, "port": 443, "family": family, "proto": 6, "flags": 0}


class FakeResolver(AbstractResolver):
    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [_result(h) for h in self.hosts]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_refuses_localhost() -> None:
    resolver = GuardedResolver(())
    try:
        with pytest.raises(ForbiddenAddress, match="loopback") as info:
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        assert info.value.address in ("127.0.0.1", "::1")
    finally:
        await resolver.close()


async def test_resolver_allows_localhost_when_listed() -> None:
    resolver = GuardedResolver(parse_allowed_networks("127.0.0.0/8,::1/128"))
    try:
        results = await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()
    assert results
    assert {ipaddress.ip_address(r["host"]).is_loopback for r in results} == {True}


async def test_resolver_drops_forbidden_and_keeps_public() -> None:
    inner = FakeResolver("10.0.0.1", "93.184.215.14", "169.254.169.254", "2606:4700::1")
    resolver = GuardedResolver((), inner=inner)
    results = await resolver.resolve("mixed.example", 443)
    assert [r["host"] for r in results] == ["93.184.215.14", "2606:4700::1"]
    await resolver.close()
    assert inner.closed


async def test_resolver_raises_first_refusal_when_nothing_is_left() -> None:
    resolver = GuardedResolver((), inner=FakeResolver("169.254.169.254", "10.0.0.1"))
    with pytest.raises(ForbiddenAddress, match=r"169\.254\.169\.254 \(metadata\)"):
        await resolver.resolve("rebind.example", 80)


async def test_resolver_fails_closed_on_garbage() -> None:
    resolver = GuardedResolver((), inner=FakeResolver("not-an-ip"))
    with pytest.raises(ForbiddenAddress, match="not an IP address"):
        await resolver.resolve("weird.example", 80)


async def test_resolver_passes_empty_answers_through() -> None:
    assert await GuardedResolver((), inner=FakeResolver()).resolve("none.example") == []


async def test_aiohttp_surfaces_refusal_as_connector_error() -> None:
    # The resolver refuses before any connection is attempted: no socket is opened.
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(()), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get("http://localhost:9/hook")
    assert "refused target address" in str(info.value)
    assert "RELAY_ALLOWED_NETWORKS" in str(info.value)
    assert isinstance(info.value.os_error, ForbiddenAddress)
