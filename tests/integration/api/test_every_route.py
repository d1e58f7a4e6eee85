"""Every method on every route of the app answers 2xx, 3xx or 4xx, never 5xx: walked from
Litestar's own route table, so a route added later is walked too, with and without a key.
An error of the API (/v1) is RFC 9457 problem+json; outside it, the dashboard answers its
own errors with pages for people (admin_ui/errors.py) and what the router refuses before
a page is chosen (a method a path lacks) as problem+json."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from litestar import Litestar
from litestar.routes import HTTPRoute

from tests.support import TenantKey

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
PROBLEM = "application/problem+json"


def _value_for(kind: type) -> str:
    """A path parameter's value of its declared type, naming nothing that exists."""
    if kind is uuid.UUID:
        return str(uuid.uuid4())
    if kind is int:
        return "7"
    if kind is Path:
        return "missing.css"
    return f"missing-{uuid.uuid4().hex[:8]}"


def concrete_paths(app: Litestar) -> Iterator[str]:
    """One request path per HTTP route, its parameters filled in."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = route.path
        for parameter in route.path_parameters.values():
            path = path.replace("{" + parameter.full + "}", _value_for(parameter.type))
        yield path


def test_the_walk_covers_the_api() -> None:
    """The walk reads the route table, not a list of its own: it sees every /v1 route."""
    from app.main import create_app
    from app.settings import load_settings

    settings = load_settings({"HERALD_ENV": "test", "HERALD_SECRET_KEY": "A" * 43})
    paths = list(concrete_paths(create_app(settings)))
    assert sum(path.startswith("/v1/") for path in paths) >= 25
    assert any(path.endswith("/breaker/reset") for path in paths)


def test_only_the_framework_answers_options() -> None:
    """The guards let OPTIONS through (app/auth/middleware.py) because no handler of ours
    answers it: one that did would run unguarded."""
    from app.main import create_app
    from app.settings import load_settings

    settings = load_settings({"HERALD_ENV": "test", "HERALD_SECRET_KEY": "A" * 43})
    for route in create_app(settings).routes:
        if isinstance(route, HTTPRoute):
            handler, _ = route.route_handler_map["OPTIONS"]
            assert handler.handler_name == "options_handler", route.path


async def test_no_route_answers_a_server_error(
    app: Litestar, client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    failures: list[str] = []
    paths = list(concrete_paths(app))
    for headers in ({}, tenant.headers):
        for path in paths:
            for method in METHODS:
                response = await client.request(method, path, headers=headers)
                what = f"{method} {path} {'with' if headers else 'without'} a key"
                status = response.status_code
                if status >= 500:
                    failures.append(f"{what}: {status} {response.text[:200]}")
                elif status >= 400 and method != "HEAD":  # HEAD answers carry no body
                    kind = response.headers.get("content-type", "")
                    shapes = (PROBLEM,) if path.startswith("/v1/") else (PROBLEM, "text/html")
                    if not kind.startswith(shapes):
                        failures.append(f"{what}: {status} as {kind!r}, not {shapes}")
                    elif kind.startswith(PROBLEM) and response.json().get("status") != status:
                        failures.append(f"{what}: the problem's status is not {status}")
    assert not failures, "\n".join(failures)
