"""Which network a dashboard request comes from, for its sign-in and sign-up limits.

By default the client is the direct peer of the connection: with nothing in front of Herald,
X-Forwarded-For is whatever the client chose to write, and trusting it would let anyone
pick a fresh address for every attempt. Behind reverse proxies that append the address
they were reached from (fly.io's proxy, a load balancer), HERALD_TRUSTED_PROXY_HOPS = n
takes the n-th address from the right of X-Forwarded-For: the one the outermost trusted
proxy saw. Entries left of it are the client's own claims and are ignored. A request that
carries fewer entries than that did not come through the proxies, and counts as its peer.

Limits apply per network rather than per address: IPv6 addresses by their /64 (one
subscriber's usual allocation, which they can walk freely), IPv4 addresses as they are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

UNKNOWN = "unknown"
IPV6_PREFIX = 64


def client_address(peer: str | None, forwarded_for: Iterable[str], hops: int) -> str:
    """The client's address, as described above; UNKNOWN when there is none to be had."""
    if hops > 0:
        entries = [part.strip() for header in forwarded_for for part in header.split(",")]
        entries = [entry for entry in entries if entry]
        if len(entries) >= hops and (address := _address(entries[-hops])) is not None:
            return address
    return _address(peer or "") or UNKNOWN


def client_network(address: str) -> str:
    """The network limits are kept for: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def _address(value: str) -> str | None:
    """A bare address from `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`; None otherwise."""
    value = value.strip()
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
