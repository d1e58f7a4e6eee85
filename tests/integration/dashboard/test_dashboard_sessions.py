"""Dashboard sessions end server-side, and CSRF tokens belong to one session for a while.

Two browsers signed in as one person: signing out everywhere, or a password change, ends
the other's session at its next request, though its cookie is still a valid cookie. CSRF
tokens from another session (an old one, another browser's) are refused.
"""

from __future__ import annotations

import httpx
from litestar import Litestar

from admin_ui.csrf import csrf_middleware
from tests.dashboard import (
    PASSWORD,
    browser,
    create_key,
    csrf_token,
    htmx_headers,
    post_form,
    sign_in,
    sign_up,
    unique_email,
)

NEW_PASSWORD = "an entirely new password"


async def signed_in(client: httpx.AsyncClient) -> bool:
    return (await client.get("/keys")).status_code == 200


async def test_sign_out_everywhere_ends_every_session(app: Litestar) -> None:
    email = unique_email()
    async with browser(app) as laptop, browser(app) as phone:
        assert (await sign_up(laptop, email)).status_code == 303
        assert (await sign_in(phone, email, PASSWORD)).status_code == 303
        stolen = dict(phone.cookies)
        assert await signed_in(laptop) and await signed_in(phone)

        answer = await post_form(laptop, "/account/sign-out-everywhere", {})
        assert answer.status_code == 303 and answer.headers["location"] == "/signin"
        assert not await signed_in(laptop)
        assert not await signed_in(phone)

        async with browser(app) as thief:
            thief.cookies.update(stolen)
            assert not await signed_in(thief), "a copied cookie of an ended session is useless"

        assert (await sign_in(phone, email, PASSWORD)).status_code == 303
        assert await signed_in(phone), "signing in again works"


async def test_a_password_change_ends_the_other_sessions_and_keeps_this_one(
    app: Litestar,
) -> None:
    email = unique_email()
    async with browser(app) as laptop, browser(app) as phone:
        await sign_up(laptop, email)
        await sign_in(phone, email, PASSWORD)

        wrong = await post_form(
            laptop,
            "/account/password",
            {"current_password": "not it at all", "new_password": NEW_PASSWORD},
        )
        assert wrong.status_code == 422
        assert "This is not your current password." in wrong.text
        short = await post_form(
            laptop, "/account/password", {"current_password": PASSWORD, "new_password": "short"}
        )
        assert short.status_code == 422 and "at least 10 characters" in short.text
        assert await signed_in(phone), "failed changes end nothing"

        changed = await post_form(
            laptop,
            "/account/password",
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        )
        assert changed.status_code == 303
        page = await laptop.get(changed.headers["location"])
        assert "Your password was changed" in page.text
        assert await signed_in(laptop), "this browser stays signed in"
        assert not await signed_in(phone), "the other one is signed out"

        assert (await sign_in(phone, email, PASSWORD)).status_code == 400
        assert (await sign_in(phone, email, NEW_PASSWORD)).status_code == 303


async def test_a_csrf_token_from_an_earlier_session_is_refused(app: Litestar) -> None:
    email = unique_email()
    async with browser(app) as client:
        anonymous = await csrf_token(client)
        await sign_up(client, email)
        first = await csrf_token(client)
        assert first != anonymous

        stale = await client.post(
            "/signup", data={"_csrf_token": anonymous, "company": "X", "email": unique_email()}
        )
        assert stale.status_code == 403, "the pre-sign-up token died with that session"
        assert "This form has expired" in stale.text

        await post_form(client, "/signout", {})
        assert (await sign_in(client, email, PASSWORD)).status_code == 303
        replayed = await client.post(
            "/keys",
            data={"name": "replayed", "mode": "test", "scopes": "send"},
            headers=htmx_headers(first),
        )
        assert replayed.status_code == 403, "a token of the previous session"
        assert (await create_key(client, "fresh token")).response.status_code == 201


async def test_a_csrf_token_from_another_browser_is_refused(app: Litestar) -> None:
    async with browser(app) as victim, browser(app) as attacker:
        await sign_up(victim, unique_email("victim"))
        await sign_up(attacker, unique_email("attacker"))
        attackers_token = await csrf_token(attacker)
        forged = await victim.post(
            "/keys",
            data={"name": "planted", "mode": "test", "scopes": "manage"},
            headers=htmx_headers(attackers_token),
        )
        assert forged.status_code == 403
        signed_out = await victim.post("/signout", data={"_csrf_token": attackers_token})
        assert signed_out.status_code == 403
        assert await signed_in(victim)


def test_every_unsafe_route_outside_the_api_and_webhooks_checks_csrf(app: Litestar) -> None:
    """What Litestar's unanchored exclusions got wrong ("/x/v1/" matched "/v1/"): here the
    check is part of the dashboard's router, and no cookie-authenticated route is outside.

    The unsubscribe pages (/u/{token}) are outside on purpose: a mail provider's one-click
    POST carries no cookie (RFC 8058), and the token in the path is the capability. They
    read no session either, so no cookie can act there for anyone."""
    unchecked = []
    cookie_free = 0
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            methods = set(getattr(handler, "http_methods", ())) - {"GET", "HEAD", "OPTIONS"}
            if not methods or route.path.startswith(("/v1/", "/webhooks/")):
                continue
            middleware = handler.resolve_middleware()
            if route.path.startswith("/u/"):
                names = [getattr(m, "__qualname__", "") for m in middleware]
                assert not any(
                    n.startswith(("session_middleware", "csrf_middleware")) for n in names
                )
                cookie_free += 1
                continue
            if not any(
                getattr(m, "__qualname__", "").startswith(csrf_middleware.__name__)
                for m in middleware
            ):
                unchecked.append(f"{sorted(methods)} {route.path}")
    assert unchecked == []
    assert cookie_free == 2  # POST /u/{token} and POST /u/{token}/preferences
