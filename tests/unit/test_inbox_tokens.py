"""Inbox tokens: scoped to one recipient, unforgeable, expiring."""

from __future__ import annotations

import time
import uuid

import pytest

from app.inbox.tokens import InboxTokenSigner, TokenRejected


def test_a_token_names_its_tenant_and_recipient() -> None:
    signer = InboxTokenSigner(b"k" * 32)
    tenant, recipient = uuid.uuid4(), uuid.uuid4()
    token, expires_at = signer.issue(tenant_id=tenant, recipient_id=recipient, mode="test", ttl=60)
    principal = signer.verify(token)
    assert (principal.tenant_id, principal.recipient_id) == (tenant, recipient)
    assert principal.scopes == frozenset({"inbox"})
    assert abs(expires_at - time.time() - 60) < 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: t.replace("hit_", "hit_e", 1),  # payload changed
        lambda t: t.split(".")[0],  # no signature
        lambda t: "hk_" + t,  # not an inbox token
        lambda t: t[:-1] + "\xff",  # not ASCII, as a Latin-1 header may be
        lambda t: "hit_\xff.\xfe",
    ],
)
def test_forged_tokens_are_rejected(mangle: object) -> None:
    signer = InboxTokenSigner(b"k" * 32)
    token, _ = signer.issue(tenant_id=uuid.uuid4(), recipient_id=uuid.uuid4(), mode="live")
    with pytest.raises(TokenRejected):
        signer.verify(mangle(token))  # type: ignore[operator]


def test_another_secret_does_not_verify() -> None:
    token, _ = InboxTokenSigner(b"a" * 32).issue(
        tenant_id=uuid.uuid4(), recipient_id=uuid.uuid4(), mode="live"
    )
    with pytest.raises(TokenRejected, match="signature"):
        InboxTokenSigner(b"b" * 32).verify(token)


def test_expired_tokens_are_rejected() -> None:
    signer = InboxTokenSigner(b"k" * 32)
    token, _ = signer.issue(tenant_id=uuid.uuid4(), recipient_id=uuid.uuid4(), mode="live", ttl=-1)
    with pytest.raises(TokenRejected, match="expired"):
        signer.verify(token)
