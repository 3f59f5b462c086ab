"""SSRF guard: delivery may only reach public addresses, unless an operator allows more.

Subscription URLs are user input, so without a guard a subscriber could make relay call
``http://169.254.169.254/`` (cloud metadata), ``localhost`` admin ports or the private
network. The check runs at *delivery time on the resolved address*:
:class:`GuardedResolver` sits in aiohttp's connector, and aiohttp connects to exactly the
addresses a resolver returns, so a name that resolves to a public address for the check and
a private one for the connection (DNS rebinding) cannot slip through. aiohttp does not call
the resolver for IP-literal URLs, hence :func:`check_url_host` for those.

``RELAY_ALLOWED_NETWORKS`` (comma-separated CIDRs) re-opens chosen ranges, e.g. ``127.0.0.0/8``
for a local receiver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from relay.errors import RelayError

__all__ = [
    "ForbiddenAddress",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "check_address",
    "check_url_host",
    "forbidden_reason",
    "parse_allowed_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in rows)


# First match wins, so specific entries (metadata) come before the range that contains them.
# Written out rather than relying on ipaddress.is_private alone: its lists change between
# Python releases, and the reason names the category in the refusal message.
_V4_BLOCKED = _table(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.169.254/32", "metadata"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "special-purpose"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)
_V6_BLOCKED = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "private"),  # local-use NAT64 (inside ::/8, so listed before it)
    ("::/8", "reserved"),  # includes IPv4-compatible ::a.b.c.d (deprecated)
    ("100::/64", "discard"),
    ("2001::/23", "special-purpose"),  # includes Teredo 2001::/32
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fd00:ec2::254/128", "metadata"),  # AWS IMDS over IPv6
    ("fc00::/7", "private"),  # unique local
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_v4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 form reaches, with the form's name, if it embeds one."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, "IPv4-mapped"
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), "NAT64"
    if addr.sixtofour is not None:
        return addr.sixtofour, "6to4"
    return None


def _v4_reason(addr: ipaddress.IPv4Address) -> str | None:
    for network, reason in _V4_BLOCKED:
        if addr in network:
            return reason
    # Safety net for ranges the table does not name (e.g. added in a later Python).
    return "reserved" if not addr.is_global else None


def forbidden_reason(addr: IPAddress) -> str | None:
    """Why ``addr`` is refused (``"loopback"``, ``"private"``, …), or ``None`` if it is public.

    IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by that
    address, so ``::ffff:127.0.0.1`` is loopback too.
    """
    if isinstance(addr, ipaddress.IPv4Address):
        return _v4_reason(addr)
    embedded = _embedded_v4(addr)
    if embedded is not None:
        inner, form = embedded
        reason = _v4_reason(inner)
        return f"{reason}, {form}" if reason else None
    for network, reason in _V6_BLOCKED:
        if addr in network:
            return reason
    if addr.is_private or addr.is_reserved or addr.is_multicast or not addr.is_global:
        return "reserved"
    return None


class ForbiddenAddress(RelayError, OSError):
    """A delivery target resolved to an address relay refuses to call.

    An :class:`OSError` so that, raised from :class:`GuardedResolver`, aiohttp reports it as a
    ``ClientConnectorError`` whose text includes this message.
    """

    def __init__(self, address: str, reason: str) -> None:
        message = (
            f"refused target address {address} ({reason}); allow it with RELAY_ALLOWED_NETWORKS"
        )
        # (errno, strerror) form: aiohttp's ClientConnectorError shows `strerror`.
        OSError.__init__(self, None, message)
        self.address = address
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError's default pickling would call __init__(errno, strerror).
        return (type(self), (self.address, self.reason))


def parse_allowed_networks(text: str) -> tuple[IPNetwork, ...]:
    """Parse ``RELAY_ALLOWED_NETWORKS``: comma-separated CIDRs (or bare addresses).

    Empty items are ignored; host bits are tolerated (``10.1.2.3/8`` means ``10.0.0.0/8``).
    Raises ``ValueError`` naming the bad item.
    """
    networks: list[IPNetwork] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"invalid network {item!r} in allowed networks: {exc}") from None
    return tuple(networks)


def _is_allowed(addr: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_v4(addr)
        if embedded is not None:
            # Allowing 127.0.0.0/8 also allows ::ffff:127.0.0.1: it is the same target.
            candidates.append(embedded[0])
    # `in` across IP versions is simply False, so mixed lists need no special case.
    return any(candidate in network for network in allowed for candidate in candidates)


def check_address(ip: str | IPAddress, allowed: Iterable[IPNetwork] = ()) -> None:
    """Raise :class:`ForbiddenAddress` unless ``ip`` is public or inside ``allowed``.

    Refused: loopback, private, shared (100.64/10), link-local (incl. 169.254.169.254
    metadata), unspecified, multicast, reserved/documentation ranges, and IPv6 forms embedding
    any of those. ``ValueError`` if ``ip`` is not an IP address at all.
    """
    addr = ip if isinstance(ip, IPAddress) else ipaddress.ip_address(ip.strip())
    reason = forbidden_reason(addr)
    if reason is None or _is_allowed(addr, tuple(allowed)):
        return
    # Name the address as given (``::ffff:127.0.0.1``, not ``::ffff:7f00:1``).
    raise ForbiddenAddress(ip.strip() if isinstance(ip, str) else str(addr), reason)


# Legacy numeric IPv4 spellings (2130706433, 0x7f.1, 127.1) that socket functions accept.
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")


def check_url_host(host: str, allowed: Iterable[IPNetwork] = ()) -> None:
    """Check a URL's host when it is an IP literal (``10.0.0.5``, ``[::1]``); names pass.

    Call it before each request: aiohttp skips the resolver (and so :class:`GuardedResolver`)
    for IP literals. Names are checked after resolution, by the resolver.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr: IPAddress = ipaddress.ip_address(text)
    except ValueError:
        legacy = text.rstrip(".")
        if not _NUMERIC_HOST.fullmatch(legacy):
            return
        try:
            addr = ipaddress.IPv4Address(socket.inet_aton(legacy))
        except OSError:
            return  # a real name made of hex letters, e.g. "cafe.face"
    check_address(addr, allowed)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops forbidden addresses from every answer.

    Wraps ``aiohttp.resolver.DefaultResolver`` (or ``inner``). Results whose address is
    refused are removed; if none remain, the first refusal is raised as
    :class:`ForbiddenAddress`. Use it as ``aiohttp.TCPConnector(resolver=GuardedResolver(...))``
    and keep ``trust_env=False`` on the session: through a proxy, the resolver only sees the
    proxy's name.
    """

    def __init__(
        self, allowed: Iterable[IPNetwork] = (), inner: AbstractResolver | None = None
    ) -> None:
        self._allowed = tuple(allowed)
        # Created lazily: the default resolver wants a running event loop.
        self._inner = inner

    @property
    def allowed(self) -> tuple[IPNetwork, ...]:
        """The networks this resolver lets through although they are not public."""
        return self._allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and return only the addresses delivery may connect to."""
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refusal: ForbiddenAddress | None = None
        for result in results:
            try:
                check_address(result["host"], self._allowed)
            except ForbiddenAddress as exc:
                refusal = refusal or exc
                continue
            except ValueError:
                # Not an address we can judge: fail closed.
                refusal = refusal or ForbiddenAddress(str(result["host"]), "not an IP address")
                continue
            kept.append(result)
        if not kept and refusal is not None:
            raise refusal
        return kept

    async def close(self) -> None:
        """Close the wrapped resolver."""
        if self._inner is not None:
            await self._inner.close()
