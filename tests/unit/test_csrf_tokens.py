"""Dashboard CSRF tokens are bound to one session's binding id and expire."""

from __future__ import annotations

import time

from admin_ui.csrf import TOKEN_SECONDS, CsrfTokens
from app.auth.devices import LIFETIME_SECONDS, DeviceTokens

SECRET = b"k" * 32


def test_a_token_works_for_its_session_only() -> None:
    tokens = CsrfTokens(SECRET)
    token = tokens.issue("session-a")
    assert tokens.valid(token, "session-a")
    assert not tokens.valid(token, "session-b")
    assert not tokens.valid(token, "")
    assert not CsrfTokens(b"x" * 32).valid(token, "session-a"), "another secret"


def test_a_token_expires() -> None:
    tokens = CsrfTokens(SECRET)
    now = time.time()
    token = tokens.issue("session-a", now=now - TOKEN_SECONDS - 1)
    assert not tokens.valid(token, "session-a", now=now)
    assert tokens.valid(tokens.issue("session-a", now=now - TOKEN_SECONDS + 60), "session-a")
    assert not tokens.valid(tokens.issue("session-a", now=now + 60), "session-a", now=now)


def test_forged_and_malformed_tokens_are_refused() -> None:
    tokens = CsrfTokens(SECRET)
    issued, _, mac = tokens.issue("session-a").partition(".")
    assert not tokens.valid(f"{int(issued) + 1}.{mac}", "session-a"), "a moved timestamp"
    for junk in ("", ".", "abc.def", "0" * 128, f"{issued}.", "9" * 40 + ".x"):
        assert not tokens.valid(junk, "session-a")


def test_device_tokens_name_one_account_for_a_while() -> None:
    devices = DeviceTokens(SECRET)
    now = time.time()
    token = devices.issue("Ann@Example.com", now=now)
    assert devices.trusts(token, " ann@example.com ", now=now)
    assert not devices.trusts(token, "bob@example.com", now=now)
    assert not devices.trusts(token, "ann@example.com", now=now + LIFETIME_SECONDS + 1)
    assert not devices.trusts(None, "ann@example.com")
    assert not devices.trusts("12.34", "ann@example.com")
