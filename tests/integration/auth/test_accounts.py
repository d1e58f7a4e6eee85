"""Dashboard accounts at the service level: sign-up races and limits."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import accounts
from app.auth.passwords import Passwords
from app.db import session_factory

PASSWORDS = Passwords(concurrency=2)


async def test_concurrent_sign_ups_with_one_email_make_one_account(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)

    async def sign_up() -> str:
        async with sessions() as session:
            try:
                await accounts.create_account(
                    session,
                    PASSWORDS,
                    email="race@example.com",
                    name="Racer",
                    password="long enough password",
                    company="Race Co",
                    verified=False,
                )
                await session.commit()
            except accounts.AccountError as error:
                assert error.field == "email"
                return "refused"
            return "created"

    outcomes = await asyncio.gather(*(sign_up() for _ in range(5)))
    assert sorted(outcomes) == ["created", "refused", "refused", "refused", "refused"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"password": "short"}, "password"),
        ({"company": ""}, "company"),
        ({"company": "c" * 201}, "company"),
        ({"name": "n" * 201}, "name"),
        ({"password": "p" * 1025}, "password"),
    ],
)
async def test_sign_up_names_the_bad_field(
    engine: AsyncEngine, overrides: dict[str, str], field: str
) -> None:
    form = {
        "email": "fields@example.com",
        "name": "Someone",
        "password": "long enough password",
        "company": "Fields Co",
        **overrides,
    }
    async with session_factory(engine)() as session:
        with pytest.raises(accounts.AccountError) as raised:
            await accounts.create_account(session, PASSWORDS, **form, verified=False)
    assert raised.value.field == field
