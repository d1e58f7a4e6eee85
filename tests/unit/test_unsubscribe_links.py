"""Unsubscribe tokens (what they carry, what they refuse, rotation) and what delivery puts
on an e-mail: the List-Unsubscribe headers and `{{ unsubscribe_url }}` in place."""

from __future__ import annotations

import base64
import os
import uuid

import pytest

from app.crypto import Keyring
from app.templates.content import UNSUBSCRIBE_URL_PLACEHOLDER, EmailContent, SmsContent
from app.templates.rendering import render
from app.unsubscribe.links import Unsubscribable, UnsubscribeLinks
from app.unsubscribe.tokens import MAX_TOKEN_LENGTH, TokenClaims, UnsubscribeTokens
from tests.unit.test_rendering import version

OLD, NEW = os.urandom(32), os.urandom(32)
CLAIMS = TokenClaims(uuid.uuid4(), "live", uuid.uuid4(), "marketing")


def test_a_token_carries_its_claims_and_no_address() -> None:
    tokens = UnsubscribeTokens(Keyring([("k1", NEW)]))
    token = tokens.make(CLAIMS)
    assert tokens.verify(token) == CLAIMS
    assert len(token) <= 100  # compact: fits a header line with room to spare
    longest = tokens.make(TokenClaims(uuid.uuid4(), "test", uuid.uuid4(), "c" * 64))
    assert len(longest) == MAX_TOKEN_LENGTH
    assert tokens.verify(longest) is not None
    # Key tag, mode, two ids, the category, the MAC: room for nothing else, no address.
    raw = base64.urlsafe_b64decode(token + "==")
    assert len(raw) == 4 + 1 + 16 + 16 + len("marketing") + 16
    assert raw[5:21] == CLAIMS.tenant_id.bytes and raw[21:37] == CLAIMS.recipient_id.bytes


def test_every_changed_byte_is_refused() -> None:
    tokens = UnsubscribeTokens(Keyring([("k1", NEW)]))
    raw = bytearray(base64.urlsafe_b64decode(tokens.make(CLAIMS) + "=="))
    for index in range(len(raw)):
        forged = bytearray(raw)
        forged[index] ^= 0x01
        token = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
        assert tokens.verify(token) is None, index


def test_a_token_has_one_spelling() -> None:
    """Its last character has spare bits a lax decoder ignores: another spelling of the
    same bytes is refused, so that a token is one string, as a key is."""
    tokens = UnsubscribeTokens(Keyring([("k1", NEW)]))
    token = tokens.make(CLAIMS)
    assert len(token) % 4 != 0  # its bytes do not fill the last character
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    same_bytes = [
        token[:-1] + c
        for c in alphabet
        if c != token[-1]
        and base64.urlsafe_b64decode(token[:-1] + c + "==")
        == base64.urlsafe_b64decode(token + "==")
    ]
    assert same_bytes
    assert [tokens.verify(t) for t in same_bytes] == [None] * len(same_bytes)


def test_claims_cannot_be_swapped_into_another_token() -> None:
    """Another recipient or tenant spliced in, keeping the MAC, does not verify."""
    tokens = UnsubscribeTokens(Keyring([("k1", NEW)]))
    raw = base64.urlsafe_b64decode(tokens.make(CLAIMS) + "==")
    other = uuid.uuid4().bytes
    for start in (5, 21):  # the tenant id, then the recipient id
        spliced = raw[:start] + other + raw[start + 16 :]
        token = base64.urlsafe_b64encode(spliced).rstrip(b"=").decode()
        assert tokens.verify(token) is None


@pytest.mark.parametrize(
    "token",
    ["", "a", "!!!!", "é" * 10, "A" * (MAX_TOKEN_LENGTH + 1), "AAAA" * 20, "a.b.c", "AAA="],
)
def test_anything_else_is_refused(token: str) -> None:
    assert UnsubscribeTokens(Keyring([("k1", NEW)])).verify(token) is None


def test_keys_rotate_and_other_keys_are_refused() -> None:
    old_token = UnsubscribeTokens(Keyring([("old", OLD)])).make(CLAIMS)
    rotated = UnsubscribeTokens(Keyring([("new", NEW), ("old", OLD)]))
    assert rotated.verify(old_token) == CLAIMS  # old links work while the old key stays
    new_token = rotated.make(CLAIMS)
    assert new_token != old_token
    assert UnsubscribeTokens(Keyring([("old", OLD)])).verify(new_token) is None
    assert UnsubscribeTokens(Keyring([("new", NEW)])).verify(old_token) is None


def links(mailto: str | None = None) -> UnsubscribeLinks:
    return UnsubscribeLinks(UnsubscribeTokens(Keyring([("k1", NEW)])), "https://h.test/", mailto)


def message(critical: bool = False) -> Unsubscribable:
    return Unsubscribable(CLAIMS.tenant_id, "live", CLAIMS.recipient_id, "marketing", critical)


MAIL = EmailContent(
    subject=f"Hi {UNSUBSCRIBE_URL_PLACEHOLDER}",
    html=f'<a href="{UNSUBSCRIBE_URL_PLACEHOLDER}">Unsubscribe</a>',
    text=f"Unsubscribe: {UNSUBSCRIBE_URL_PLACEHOLDER}",
)


def test_non_critical_mail_gets_one_click_headers_and_its_own_link() -> None:
    content, headers = links().for_email(message(), MAIL)
    token = links().tokens.make(CLAIMS)
    url = f"https://h.test/u/{token}"
    assert headers == {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert content == EmailContent(
        subject=f"Hi {url}", html=f'<a href="{url}">Unsubscribe</a>', text=f"Unsubscribe: {url}"
    )


def test_the_mailto_is_added_only_when_configured() -> None:
    _, headers = links("unsubscribe@h.test").for_email(message(), MAIL)
    token = links().tokens.make(CLAIMS)
    assert headers["List-Unsubscribe"] == (
        f"<https://h.test/u/{token}>, <mailto:unsubscribe@h.test?subject=unsubscribe-{token}>"
    )


def test_critical_mail_gets_no_headers_and_an_empty_link() -> None:
    content, headers = links().for_email(message(critical=True), MAIL)
    assert headers == {}
    assert content == EmailContent(
        subject="Hi ", html='<a href="">Unsubscribe</a>', text="Unsubscribe: "
    )


def test_other_content_is_left_alone() -> None:
    sms = SmsContent(text=UNSUBSCRIBE_URL_PLACEHOLDER)
    content, _ = links().for_email(message(), sms)
    assert content == sms


def test_unsubscribe_url_renders_as_the_placeholder_whatever_data_says() -> None:
    """Rendering is shared by every recipient: data cannot put a link of its own (or
    someone else's) in place of the placeholder each message's own link replaces."""
    template = version(
        {
            "email": {
                "subject": "News",
                "text": "Stop: {{ unsubscribe_url }}",
                "html": '<a href="{{ unsubscribe_url }}">stop</a>',
            },
            "sms": {"text": "{{ unsubscribe_url | default('none') }}"},
        }
    )
    forged = {"unsubscribe_url": "https://evil.test/u/someone-elses-token"}
    content = render(template, "email", locale=None, data=forged, recipient=None)
    assert content == EmailContent(
        subject="News",
        text=f"Stop: {UNSUBSCRIBE_URL_PLACEHOLDER}",
        html=f'<a href="{UNSUBSCRIBE_URL_PLACEHOLDER}">stop</a>',
    )
    # Other channels have no such link: their data is theirs.
    sms = render(template, "sms", locale=None, data=forged, recipient=None)
    assert sms == SmsContent(text="https://evil.test/u/someone-elses-token")
