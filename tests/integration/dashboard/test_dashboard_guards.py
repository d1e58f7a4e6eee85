"""Every route of the dashboard, found by walking the app rather than listed by hand: each
form refuses a request without its CSRF token, each action refuses a viewer, and each page
answers a viewer (reading is open to every member) without an error.

A page added later is covered by these tests without being named here; only the routes any
member (or a visitor) may post to are listed, with why.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Membership, User
from tests.dashboard import browser, csrf_token, sign_in, sign_up, unique_email
from tests.integration.dashboard.test_dashboard import add_member

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes any member, or a visitor, may post to: their own account and session, the data
# switch, and the doors (sign-up, sign-in, e-mail verification, invitations, password
# reset, single sign-on); and the template editor's preview and form redraw, which post
# the draft being read but save nothing (reading is open to every member).
OPEN_TO_EVERY_MEMBER = (
    "/signin",
    "/signup",
    "/signout",
    "/verify-email",
    "/account",
    "/mode",
    "/tenants/switch",
    "/invite",
    "/password-reset",
    "/sso",
    "/templates/{key:str}/preview",
    "/templates/{key:str}/editor",
)
# Pages a viewer may not even read: settings of owners alone.
OWNERS_ONLY_PAGES = ("/settings/sso", "/billing")
PARAMETER = re.compile(r"{(\w+)(?::(\w+))?}")


@dataclass(frozen=True)
class Route:
    path: str  # with its parameters filled in
    template: str
    methods: frozenset[str]


def _filled(template: str) -> str:
    def value(match: re.Match[str]) -> str:
        kind = match.group(2) or "str"
        return {"uuid": str(uuid.uuid4()), "int": "1"}.get(kind, "x")

    return PARAMETER.sub(value, template)


def dashboard_routes(app: Litestar) -> Iterator[Route]:
    """The routes served by admin_ui controllers, but the recipients' unsubscribe pages
    (public by design: their token is the capability)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            module = handler.fn.__module__
            if not module.startswith("admin_ui.") or module == "admin_ui.unsubscribe":
                continue
            yield Route(_filled(route.path), route.path, frozenset(handler.http_methods))


def _open_to_every_member(template: str) -> bool:
    return any(template == p or template.startswith(p + "/") for p in OPEN_TO_EVERY_MEMBER)


async def _viewer_of_a_new_tenant(app: Litestar, session: AsyncSession) -> tuple[str, str]:
    """(owner e-mail, viewer e-mail) of a tenant just signed up."""
    owner = unique_email("owner")
    async with browser(app) as client:
        assert (await sign_up(client, owner)).status_code == 303
    viewer = unique_email("viewer")
    tenant_id = await session.scalar(
        select(Membership.tenant_id).join(User).where(User.email == owner)
    )
    assert tenant_id is not None
    await add_member(session, tenant_id, "viewer", viewer)
    return owner, viewer


async def test_every_form_refuses_a_request_without_its_csrf_token(
    app: Litestar, session: AsyncSession
) -> None:
    owner, _ = await _viewer_of_a_new_tenant(app, session)
    unsafe = [route for route in dashboard_routes(app) if route.methods & UNSAFE]
    assert len(unsafe) >= 5, [route.template for route in unsafe]
    async with browser(app) as client:
        assert (await sign_in(client, owner, "correct horse battery")).status_code == 303
        for route in unsafe:
            for method in sorted(route.methods & UNSAFE):
                answer = await client.request(method, route.path, data={"anything": "x"})
                assert answer.status_code == 403, (method, route.template, answer.status_code)
                forged = await client.request(method, route.path, data={"_csrf_token": "1.forged"})
                assert forged.status_code == 403, (method, route.template, forged.status_code)
        # The session is still good: the refusals were the missing tokens'.
        assert (await client.get("/account")).status_code == 200


async def test_every_action_refuses_a_viewer(app: Litestar, session: AsyncSession) -> None:
    """A viewer with a valid token is refused (403) on every route that changes something,
    whatever its parameters name: the role is checked before anything is looked up."""
    _, viewer = await _viewer_of_a_new_tenant(app, session)
    actions = [
        route
        for route in dashboard_routes(app)
        if route.methods & UNSAFE and not _open_to_every_member(route.template)
    ]
    assert len(actions) >= 2, [route.template for route in actions]
    async with browser(app) as client:
        assert (await sign_in(client, viewer, "correct horse battery")).status_code == 303
        token = await csrf_token(client, "/account")
        for route in actions:
            for method in sorted(route.methods & UNSAFE):
                for headers in ({}, {"HX-Request": "true"}):
                    answer = await client.request(
                        method,
                        route.path,
                        data={"_csrf_token": token, "confirm": "yes"},
                        headers=headers,
                    )
                    assert answer.status_code == 403, (
                        method,
                        route.template,
                        answer.status_code,
                        answer.text[:200],
                    )


async def test_every_page_answers_a_viewer(app: Litestar, session: AsyncSession) -> None:
    """Reading is open to every member: each page without parameters renders for a viewer
    (the pages with an id answer 404 for an id that is not theirs, never 500)."""
    _, viewer = await _viewer_of_a_new_tenant(app, session)
    pages = [route for route in dashboard_routes(app) if "GET" in route.methods]
    async with browser(app) as client:
        assert (await sign_in(client, viewer, "correct horse battery")).status_code == 303
        for route in pages:
            answer = await client.get(route.path)
            expected = {200, 303} if route.path == route.template else {200, 303, 400, 404, 422}
            if route.template.startswith(OWNERS_ONLY_PAGES):
                expected = {403}
            assert answer.status_code in expected, (route.template, answer.status_code)
            assert answer.status_code < 500
