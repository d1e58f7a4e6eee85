"""HTTP plumbing shared by the HTTP providers: the client, Retry-After, status → error class."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from app.providers.base import ErrorClass, SendResult, failed

USER_AGENT = "Herald/1.0 (+https://herald.dev)"
# Every provider call is bounded: a provider that hangs costs a retry, never a stuck worker.
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
MAX_RETRY_AFTER = 24 * 3600.0


def new_client() -> httpx.AsyncClient:
    """The client adapters expect: HTTP/2 where the server offers it (APNs requires it)."""
    return httpx.AsyncClient(
        http2=True,
        timeout=TIMEOUT,
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
    )


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
