"""Every request Herald makes to a tenant's OpenID provider goes through `GuardedTransport`.

A tenant names the issuer, and the provider's discovery document names the other endpoints
(authorization, token, JWKS): all of them are the tenant's choice, so each request is checked
as outbound webhooks are (app/providers/ssrf.py): the host is resolved, refused when any
address is private, loopback or link-local, and the connection goes to the very address that
was checked (no DNS rebinding), with the Host header and TLS SNI keeping the name.

Plain http is refused, except to this machine's loopback when the operator allows private
URLs (HERALD_ALLOW_PRIVATE_URLS: tests, on-premise trials); redirects are never followed;
an answer is read up to MAX_RESPONSE_BYTES within the client's timeout, never more.
"""

from __future__ import annotations

import ipaddress

import httpx

from app.providers import ssrf

MAX_RESPONSE_BYTES = 256 * 1024  # discovery documents and key sets are a few KiB
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class ProviderUnreachable(Exception):
    """A provider URL Herald will not call, or that did not answer as it must."""


class HostNotFound(ProviderUnreachable):
    """DNS has no address for the provider's host (perhaps not yet)."""


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


async def check_url(url: str, *, allow_private: bool) -> ssrf.PinnedURL:
    """The URL resolved and checked; ProviderUnreachable when Herald will not call it."""
    try:
        pinned = await ssrf.pin_url(url, allow_private=allow_private)
    except ssrf.UnsafeURL as error:
        raise ProviderUnreachable(str(error)) from None
    except ssrf.UnresolvableHost:
        raise HostNotFound(f"{httpx.URL(url).host}: no such host") from None
    if pinned.url.scheme != "https" and not (
        allow_private and all(_loopback(address) for address in pinned.addresses)
    ):
        raise ProviderUnreachable("the provider must be reached over https")
    return pinned


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks and pins every request's host (see the module doc)."""

    def __init__(self, *, allow_private: bool, inner: httpx.AsyncBaseTransport | None = None):
        self.allow_private = allow_private
        self._inner = inner or httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pinned = await check_url(str(request.url), allow_private=self.allow_private)
        last_error: Exception | None = None
        for address in pinned.addresses:
            request.url = pinned.url_for(address)
            request.headers["host"] = pinned.host_header
            # Compressed answers would slip past the size bound.
            request.headers["accept-encoding"] = "identity"
            if pinned.url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": pinned.hostname}
            try:
                response = await self._inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                last_error = error
                continue
            return await _bounded(response)
        raise ProviderUnreachable(f"{pinned.hostname}: cannot connect ({last_error})")

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _bounded(response: httpx.Response) -> httpx.Response:
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                raise ProviderUnreachable("the provider's answer is too large")
    finally:
        await response.aclose()
    headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"transfer-encoding"]
    return httpx.Response(response.status_code, headers=headers, content=bytes(body))


def client(*, allow_private: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private=allow_private),
        timeout=TIMEOUT,
        follow_redirects=False,
    )
