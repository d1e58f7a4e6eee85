"""The dashboard's doors under attack: rate limits per network and per e-mail, the delay after
failed sign-ins (per e-mail and network), and answers that do not tell accounts apart.

Each client comes from an address of its own (the ASGI scope's client), so each stands for
a network; the limits are the real ones of app/auth/throttle.py, in the real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import httpx
from litestar import Litestar
from sqlalchemy import event

from app.auth.devices import COOKIE as DEVICE_COOKIE
from app.auth.throttle import (
    SIGN_IN_PER_EMAIL,
    SIGN_IN_PER_NETWORK,
    SIGN_UP_PER_EMAIL,
    SIGN_UP_PER_NETWORK,
    AccountThrottle,
)
from app.settings import Settings
from tests.dashboard import (
    PASSWORD,
    alert,
    browser,
    csrf_token,
    post_form,
    sign_in,
    sign_up,
    unique_email,
)


async def an_account(app: Litestar) -> str:
    """A signed-up account (from a network of its own), signed out again: its e-mail."""
    email = unique_email("owner")
    async with browser(app) as owner:
        assert (await sign_up(owner, email)).status_code == 303
    return email


def assert_slowed(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert "Too many attempts" in alert(response)
    seconds = int(response.headers["retry-after"])
    assert seconds >= 1
    return seconds


async def test_a_network_over_its_sign_in_limit_gets_429_before_any_password_check(
    app: Litestar,
) -> None:
    passwords = app.state.account_guards.passwords
    limit = SIGN_IN_PER_NETWORK
    accepted = 0
    started = time.monotonic()
    async with browser(app) as flooder:
        for n in range(2 * limit.burst):
            hashed = passwords.computed
            answer = await sign_in(flooder, unique_email(f"x{n}"), "wrong password")
            if answer.status_code != 400:
                assert_slowed(answer)
                assert passwords.computed == hashed, "refused before argon2 ran"
                break
            accepted += 1
    # The bucket refills one token every 60/20 s: a slow run may earn one or two more.
    refilled = (time.monotonic() - started) * limit.rate
    assert limit.burst <= accepted <= limit.burst + refilled + 1
    async with browser(app) as elsewhere:
        assert (await sign_in(elsewhere, unique_email(), "wrong password")).status_code == 400


async def test_an_email_over_its_limit_gets_429_from_any_network_but_its_owners_browser(
    app: Litestar,
) -> None:
    email = await an_account(app)
    async with browser(app) as owner:
        assert (await sign_in(owner, email, PASSWORD)).status_code == 303
        assert DEVICE_COOKIE in owner.cookies, "the owner's browser is now known"
        await post_form(owner, "/signout", {})

        # The owner's sign-in took one token; attackers, each from a network of its own,
        # come all at once for the rest and one more.
        async with contextlib.AsyncExitStack() as stack:
            attackers = [
                await stack.enter_async_context(browser(app))
                for _ in range(SIGN_IN_PER_EMAIL.burst)
            ]
            tokens = [await csrf_token(attacker) for attacker in attackers]
            answers = await asyncio.gather(
                *(
                    attacker.post(
                        "/signin",
                        data={"email": email, "password": f"guess {n}", "_csrf_token": token},
                    )
                    for n, (attacker, token) in enumerate(zip(attackers, tokens, strict=True))
                )
            )
            statuses = sorted(answer.status_code for answer in answers)
            assert statuses == [400] * (SIGN_IN_PER_EMAIL.burst - 1) + [429]
            late = attackers[[a.status_code for a in answers].index(429)]
            assert_slowed(await sign_in(late, email, PASSWORD))

        back = await sign_in(owner, email, PASSWORD)
        assert back.status_code == 303, "the owner's browser is not held back by the flood"


async def test_failures_delay_one_network_and_never_the_right_password_from_another(
    app: Litestar, settings: Settings
) -> None:
    email = await an_account(app)
    async with browser(app) as attacker:
        for n in range(settings.signin_max_failures):
            answer = await sign_in(attacker, email, f"guess {n}")
            assert answer.status_code == 400
            assert alert(answer) == "The e-mail or password is wrong."
        first = assert_slowed(await sign_in(attacker, email, "guess again"))
        assert first == 1
        # The password was checked, and still the answer is "slow down": from here, even
        # the right one is not told apart while the delay runs.
        assert_slowed(await sign_in(attacker, email, PASSWORD))
        await asyncio.sleep(first + 0.1)
        assert (await sign_in(attacker, email, "guess once more")).status_code == 400
        assert assert_slowed(await sign_in(attacker, email, "and again")) == 2, "it doubles"

        async with browser(app) as owner:
            for _ in range(3):
                assert (await sign_in(owner, email, PASSWORD)).status_code == 303
                assert (await owner.get("/keys")).status_code == 200
                await post_form(owner, "/signout", {})

        assert_slowed(await sign_in(attacker, email, PASSWORD))


async def test_a_known_browser_on_a_delayed_network_gets_in_with_the_right_password(
    app: Litestar, settings: Settings
) -> None:
    """An office whose network is delayed by a colleague's (or an intruder's) failures."""
    email = await an_account(app)
    office = f"10.{uuid.uuid4().int % 250}.7.7"
    async with browser(app, office) as owner, browser(app, office) as intruder:
        assert (await sign_in(owner, email, PASSWORD)).status_code == 303
        await post_form(owner, "/signout", {})
        for n in range(settings.signin_max_failures):
            await sign_in(intruder, email, f"guess {n}")
        assert_slowed(await sign_in(intruder, email, PASSWORD))
        assert assert_slowed(await sign_in(owner, email, "a typo")) >= 1, "not counted"
        assert (await sign_in(owner, email, PASSWORD)).status_code == 303


async def test_unknown_and_known_emails_get_the_same_answers_for_the_same_work(
    app: Litestar, settings: Settings
) -> None:
    """Same statuses, texts and headers; and the same work behind them: the same SQL
    statements and one argon2 verification per attempt, whether the account exists."""
    known = await an_account(app)
    unknown = unique_email("nobody")
    engine = app.state.engine.sync_engine
    passwords = app.state.account_guards.passwords

    async def attempts(email: str) -> list[tuple[object, ...]]:
        seen: list[tuple[object, ...]] = []
        async with browser(app) as client:
            for n in range(settings.signin_max_failures + 2):
                statements: list[str] = []

                def record(
                    conn: object,
                    cursor: object,
                    statement: str,
                    *args: object,
                    into: list[str] = statements,
                ) -> None:
                    into.append(statement)

                before = passwords.computed
                event.listen(engine, "before_cursor_execute", record)
                try:
                    answer = await sign_in(client, email, f"wrong {n}")
                finally:
                    event.remove(engine, "before_cursor_execute", record)
                seen.append(
                    (
                        answer.status_code,
                        alert(answer),
                        answer.headers.get("retry-after"),
                        passwords.computed - before,
                        tuple(statements),
                    )
                )
        return seen

    for_known, for_unknown = await attempts(known), await attempts(unknown)
    assert for_known == for_unknown
    assert [status for status, *_ in for_known][-2:] == [429, 429]
    assert all(hashes == 1 for *_, hashes, _ in for_known)


async def test_sign_up_is_limited_per_network_and_per_email(app: Litestar) -> None:
    async with browser(app) as spammer:
        for n in range(SIGN_UP_PER_NETWORK.burst):
            assert (await sign_up(spammer, unique_email(f"s{n}"))).status_code == 303
            await post_form(spammer, "/signout", {})
        refused = await sign_up(spammer, unique_email("one-more"))
        assert_slowed(refused)
        assert "Create your Herald account" in refused.text, "the form comes back"

    email = unique_email("target")
    outcomes = []
    for _ in range(SIGN_UP_PER_EMAIL.burst + 1):
        async with browser(app) as somebody:
            outcomes.append((await sign_up(somebody, email)).status_code)
    assert outcomes == [303] + [422] * (SIGN_UP_PER_EMAIL.burst - 1) + [429]


async def test_a_sign_up_form_with_errors_costs_no_password_work(app: Litestar) -> None:
    passwords = app.state.account_guards.passwords
    async with browser(app) as client:
        before = passwords.computed
        fields = {"email": "not an e-mail", "password": "short", "company": "Co", "name": ""}
        assert (await post_form(client, "/signup", fields)).status_code == 422
        assert passwords.computed == before


async def test_delays_double_up_to_the_longest_and_a_success_clears_them(app: Litestar) -> None:
    throttle = AccountThrottle(
        app.state.token_buckets, app.state.redis, b"s" * 32, max_failures=2, longest_delay=3
    )
    email, network = throttle.email_key(unique_email()), "192.0.2.1"
    assert await throttle.delay(email, network) == 0
    assert [await throttle.failed(email, network) for _ in range(5)] == [0, 1, 2, 3, 3]
    assert 2 < await throttle.delay(email, network) <= 3
    assert await throttle.delay(email, "192.0.2.2") == 0, "another network is not delayed"
    assert await throttle.delay(throttle.email_key(unique_email()), network) == 0
    await throttle.succeeded(email, network)
    assert await throttle.delay(email, network) == 0
    assert await throttle.failed(email, network) == 0, "counting starts again"
