"""ASGI middleware giving every request an id (X-Request-Id) and recording HTTP metrics."""

from __future__ import annotations

import re
import secrets
import time
from functools import lru_cache

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

REQUEST_ID_HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

HTTP_REQUESTS = Counter(
    "herald_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "herald_http_request_duration_seconds", "HTTP request latency", ["method", "route"]
)


# The series of a method, route template and status, looked up once: `labels()` costs a
# lock and a dict lookup of the joined labels on every call. Routes are templates (or
# "unmatched"), so the combinations are few; the cache bounds them anyway.
@lru_cache(maxsize=1024)
def _requests_series(method: str, route: str, status: int) -> Counter:
    return HTTP_REQUESTS.labels(method, route, str(status))


@lru_cache(maxsize=1024)
def _latency_series(method: str, route: str) -> Histogram:
    return HTTP_LATENCY.labels(method, route)


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        method = scope["method"]
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
        request_id = (
            incoming.decode() if _VALID_ID.match(incoming) else f"req_{secrets.token_hex(10)}"
        )
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            route = scope.get("path_template") or "unmatched"
            _requests_series(method, route, status).inc()
            _latency_series(method, route).observe(time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware
