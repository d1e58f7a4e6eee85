"""Outbound connections to hosts a tenant chose: refuse private destinations, pin the check.

A tenant names webhook URLs (and SMTP hosts); without a guard, Herald could be made to call
its own network (cloud metadata at 169.254.169.254, Redis on 10.x, admin ports on
localhost). So every such host is resolved here, and the request is refused when ANY
resolved address is private, loopback, link-local, multicast, reserved, unspecified or
otherwise not globally routable (IPv4 inside IPv6 — mapped, NAT64, 6to4, Teredo — is
unwrapped and checked too), unless the operator allows private URLs. The refusal says only
that the address is not allowed; which address a name resolved to goes to the log, never
to the tenant.

Checking is not enough: a hostile DNS server can answer the check with a public address
and the connection a moment later with 127.0.0.1 (DNS rebinding). So the connection goes
to the very address that was checked: the URL's host is replaced by that IP literal, while
the Host header and TLS SNI (and so certificate verification) keep the original name.
Redirects are never followed (a 3xx would lead to an unchecked host).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_TIMEOUT = 5.0
MAX_ADDRESSES = 3  # tried in turn when connecting fails; bounds a dead host's cost
# An answer's body is read up to this much, for this long, so that its connection can be
# reused; a longer or slower body closes the connection instead.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 1.0
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """The URL is not one Herald will call: bad scheme, no host, or a private destination."""


class UnresolvableHost(OSError):
    """DNS gave no address for the host (possibly for now only)."""


def is_public(address: IPAddress) -> bool:
    """Whether `address` (and any IPv4 address embedded in it) is globally routable."""
    for candidate in (address, *_embedded_ipv4(address)):
        if (
            candidate.is_private
            or candidate.is_loopback
            or candidate.is_link_local
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
            or not candidate.is_global
        ):
            return False
    return True


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    embedded = [address.ipv4_mapped, address.sixtofour, address.teredo and address.teredo[1]]
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ip for ip in embedded if ip is not None]


async def resolve(host: str, port: int, *, allow_private: bool) -> tuple[str, ...]:
    """The addresses to connect to for host:port, all of them checked; at most MAX_ADDRESSES."""
    addresses = await _lookup(host, port)
    if not allow_private:
        for address in addresses:
            if not is_public(ipaddress.ip_address(address)):
                # The tenant reads this error (a message's last_error): naming the address
                # a name resolved to would let tenants map our internal DNS. Operators get it
                # in the log.
                # (A logger of the current configuration: refusals are rare, and tests
                # capture what is logged.)
                structlog.get_logger(__name__).warning(
                    "outbound address refused", host=host, port=port, address=address
                )
                raise UnsafeURL(
                    f"{host}: the address is not allowed; Herald only calls public addresses"
                )
    return addresses[:MAX_ADDRESSES]


async def _lookup(host: str, port: int) -> tuple[str, ...]:
    literal = host.strip("[]")
    try:
        return (str(ipaddress.ip_address(literal)),)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), DNS_TIMEOUT
        )
    except (TimeoutError, OSError) as error:
        raise UnresolvableHost(f"cannot resolve {host}: {error}") from None
    # Scope ids (fe80::1%eth0) are dropped: such addresses are link-local and refused anyway.
    found = dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos)
    if not found:
        raise UnresolvableHost(f"{host} has no address")
    return tuple(found)


@dataclass(frozen=True)
class PinnedURL:
    """A URL whose host was resolved and checked; connect only to `addresses`."""

    url: httpx.URL
    hostname: str  # ASCII (IDNA) host, for Host and SNI
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        port = self.url.port
        return self.hostname if port in (None, default) else f"{self.hostname}:{port}"

    def url_for(self, address: str) -> httpx.URL:
        return self.url.copy_with(host=address)


async def pin_url(url: str, *, allow_private: bool) -> PinnedURL:
    """Check an http(s) URL and resolve its host; raise UnsafeURL or UnresolvableHost."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise UnsafeURL(f"not a valid URL: {error}") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL("only http and https URLs are allowed")
    hostname = parsed.raw_host.decode("ascii")
    if not hostname:
        raise UnsafeURL("the URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve(hostname, port, allow_private=allow_private)
    return PinnedURL(url=parsed, hostname=hostname.strip("[]"), addresses=addresses)


async def send_pinned(
    client: httpx.AsyncClient,
    method: str,
    target: PinnedURL,
    *,
    headers: dict[str, str],
    content: bytes,
    request_timeout: float,
) -> httpx.Response:
    """Send to the checked addresses in turn until one accepts the connection.

    Returns the response with its status and headers only. The body is read and dropped
    only while it is short and quick (a tenant's endpoint could answer with gigabytes, or
    a byte a minute): then the connection goes back to the pool for the next message to
    that host, instead of a new TCP and TLS handshake each time.
    """
    last_error: httpx.HTTPError | None = None
    for address in target.addresses:
        request = client.build_request(
            method,
            target.url_for(address),
            headers={**headers, "host": target.host_header},
            content=content,
            timeout=request_timeout,
            extensions=_sni(target),
        )
        try:
            response = await client.send(request, follow_redirects=False, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            last_error = error
            continue
        await _drain(response)
        return response
    assert last_error is not None  # addresses is never empty
    raise last_error


async def _drain(response: httpx.Response) -> None:
    """Read up to DRAIN_BYTES of the body within DRAIN_SECONDS, then release the response."""
    read = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > DRAIN_BYTES:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass  # the status is the answer; an unread body only costs the connection
    finally:
        await response.aclose()


def _sni(target: PinnedURL) -> dict[str, Any]:
    # httpcore reads "sni_hostname" for the TLS server name, which also drives certificate
    # hostname verification: the certificate must match the name, not the pinned IP.
    return {"sni_hostname": target.hostname} if target.url.scheme == "https" else {}
