"""HTTP plumbing shared by the HTTP providers: the client, Retry-After, status → error class.

The client keeps a connection pool of its own for each TLS server name that requests are
pinned to (app/providers/ssrf.py sends a tenant's URL to the checked IP literal, with the
hostname as SNI). httpx pools connections by the URL's scheme, host and port, which for a
pinned request is the IP: two tenants' hostnames on one address would share a connection
whose certificate was verified for the first name only. Per-name pools give every name its
own handshake and certificate check.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from app.providers.base import ErrorClass, SendResult, failed

USER_AGENT = "Herald/1.0 (+https://herald.dev)"
# Every provider call is bounded: a provider that hangs costs a retry, never a stuck worker.
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
MAX_RETRY_AFTER = 24 * 3600.0
LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50)
# Tenants choose the names: the pools kept at once are bounded (least recently used goes),
# and so are each one's connections.
MAX_PINNED_POOLS = 64
PINNED_LIMITS = httpx.Limits(max_connections=50, max_keepalive_connections=5)


def new_client(*, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """The client adapters expect: HTTP/2 where the server offers it (APNs requires it).

    `verify`: the certificate authorities to trust (default: the system's / certifi's)."""
    return httpx.AsyncClient(
        transport=ServerNamePools(verify=verify),
        timeout=TIMEOUT,
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
    )


class _Pool:
    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.in_use = 0  # responses not yet closed: the pool is closed only when none are
        self.evicted = False


class ServerNamePools(httpx.AsyncBaseTransport):
    """Requests carrying a TLS server name (the `sni_hostname` extension) go to that name's
    own connection pool; the others (provider APIs, addressed by name) share one pool."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True) -> None:
        # One SSL context for every pool: building one loads the whole CA bundle.
        self._ssl = (
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify)
        )
        self._shared = self._transport(LIMITS)
        self._pools: OrderedDict[str, _Pool] = OrderedDict()

    def _transport(self, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(verify=self._ssl, http2=True, limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = request.extensions.get("sni_hostname")
        if not name:
            return await self._shared.handle_async_request(request)
        pool = self._pools.get(name)
        if pool is None:
            pool = self._pools[name] = _Pool(self._transport(PINNED_LIMITS))
            while len(self._pools) > MAX_PINNED_POOLS:
                _, oldest = self._pools.popitem(last=False)
                oldest.evicted = True
                if oldest.in_use == 0:
                    await oldest.transport.aclose()
        self._pools.move_to_end(name)
        pool.in_use += 1
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            await self._release(pool)
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Releasing(response.stream, lambda: self._release(pool)),
            extensions=response.extensions,
        )

    async def _release(self, pool: _Pool) -> None:
        pool.in_use -= 1
        if pool.evicted and pool.in_use == 0:
            await pool.transport.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            await pool.transport.aclose()
        await self._shared.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response body that gives its pool back when closed (once)."""

    def __init__(self, stream: Any, release: Callable[[], Awaitable[None]]) -> None:
        self._stream = stream
        self._release: Callable[[], Awaitable[None]] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                await release()


def retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), if any."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def class_of_status(status: int) -> ErrorClass:
    """The default reading of an HTTP status; adapters refine it with the provider's codes."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "config"
    if status >= 500 or status == 408:
        return "transient"
    return "permanent"


def network_failure(error: httpx.HTTPError) -> SendResult:
    """A request that got no answer: always worth another try."""
    if isinstance(error, httpx.TimeoutException):
        return failed("transient", f"the provider did not answer in time ({type(error).__name__})")
    return failed("transient", f"could not reach the provider ({type(error).__name__})")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object, or {} when it is not one (an HTML error page, say)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
