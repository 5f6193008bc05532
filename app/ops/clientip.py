"""The client's IP address, with X-Forwarded-For believed only from trusted proxies.

Rule: start from the socket peer. While the current hop is a trusted proxy (TRUSTED_PROXIES),
step one entry left in X-Forwarded-For. The first untrusted address is the client. A client
that talks to us directly (untrusted peer) therefore cannot choose its own address by sending
X-Forwarded-For, and one behind nginx cannot either, because nginx appends the real peer on
the right and we stop at the first address nginx did not vouch for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def parse_ip(value: str) -> IPAddress | None:
    """An address from a header or socket: tolerates '[v6]:port', 'v4:port' and v4-mapped v6."""
    text = value.strip().strip('"')
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


UNIX_SOCKET_PEER = "unix-socket"
# The client behind a hop that is not an address: unknown, so never a trusted or allowed
# address (not the proxy itself, whose loopback address is on the metrics allow-list). All
# such requests share one rate-limit bucket.
INVALID_FORWARDED_CLIENT = "invalid-forwarded-for"


def resolve_client_ip(peer: str, forwarded_for: str | None,
                      trusted: Sequence[IPNetwork]) -> str:
    """The client address for a request from `peer` carrying `forwarded_for` (XFF)."""
    current = parse_ip(peer)
    # No IP peer means a UNIX socket: only local processes (the reverse proxy) can connect
    # to it, so it is trusted like a listed proxy.
    peer_trusted = current is None or is_trusted(current, trusted)
    if forwarded_for and peer_trusted:
        for hop in reversed([h for h in forwarded_for.split(",") if h.strip()]):
            address = parse_ip(hop)
            if address is None:
                # A trusted proxy passed on something that is not an address: the client
                # is unknown and untrusted.
                return INVALID_FORWARDED_CLIENT
            current = address
            if not is_trusted(address, trusted):
                break
    if current is None:
        return peer or UNIX_SOCKET_PEER
    return str(current)


def trusted_networks(app: Any) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES parsed once per app (settings are frozen)."""
    cached = getattr(app.ctx, "trusted_proxy_networks", None)
    if cached is None:
        cached = parse_networks(app.config.SETTINGS.trusted_proxies)
        app.ctx.trusted_proxy_networks = cached
    return cached


def client_ip(request: Any) -> str:
    """The client address of a Sanic request (cached on request.ctx)."""
    cached = getattr(request.ctx, "client_ip", None)
    if cached is not None:
        return str(cached)
    forwarded = ",".join(request.headers.getall("x-forwarded-for", []))
    ip = resolve_client_ip(request.ip, forwarded or None, trusted_networks(request.app))
    request.ctx.client_ip = ip
    return ip
