"""Which network a dashboard request counts for: its peer, unless trusted proxies say more."""

from __future__ import annotations

import pytest

from app.auth.client_ip import UNKNOWN, client_address, client_network


@pytest.mark.parametrize(
    ("peer", "forwarded", "hops", "expected"),
    [
        # No proxy trusted: whatever the client wrote in X-Forwarded-For is ignored.
        ("203.0.113.9", ["198.51.100.1"], 0, "203.0.113.9"),
        ("203.0.113.9", [], 1, "203.0.113.9"),
        # One proxy: the address it appended, not the client's own claims left of it.
        ("10.0.0.2", ["198.51.100.1, 192.0.2.44"], 1, "192.0.2.44"),
        ("10.0.0.2", ["198.51.100.1", "192.0.2.44"], 1, "192.0.2.44"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1, 192.0.2.44"], 2, "198.51.100.1"),
        # Fewer entries than proxies: the request did not come through them.
        ("10.0.0.2", ["192.0.2.44"], 2, "10.0.0.2"),
        # Ports and brackets are dropped; garbage falls back to the peer.
        ("10.0.0.2", ["192.0.2.44:5123"], 1, "192.0.2.44"),
        ("10.0.0.2", ["[2001:db8::1]:443"], 1, "2001:db8::1"),
        ("10.0.0.2", ["not-an-address"], 1, "10.0.0.2"),
        (None, [], 0, UNKNOWN),
    ],
)
def test_client_address(peer: str | None, forwarded: list[str], hops: int, expected: str) -> None:
    assert client_address(peer, forwarded, hops) == expected


def test_networks_group_ipv6_by_64_and_unmap_ipv4() -> None:
    assert client_network("192.0.2.44") == "192.0.2.44"
    assert client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:2:bbbb::9") == client_network("2001:db8:1:2::1")
    assert client_network("2001:db8:1:3::1") != client_network("2001:db8:1:2::1")
    assert client_network("::ffff:192.0.2.44") == "192.0.2.44"
    assert client_network(UNKNOWN) == UNKNOWN
