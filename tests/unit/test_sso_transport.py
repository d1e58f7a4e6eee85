"""The guard in front of every request to a tenant's OpenID provider, and the bounded cache
of what discovery found."""

from __future__ import annotations

import time

import httpx
import pytest
from joserfc.jwk import KeySet

from app.auth.sso import oidc
from app.auth.sso.transport import GuardedTransport, ProviderUnreachable, check_url


@pytest.mark.parametrize(
    ("url", "allow_private"),
    [
        ("http://127.0.0.1:9/x", False),  # loopback
        ("https://10.0.0.1/x", False),  # private
        ("https://169.254.169.254/latest", False),  # cloud metadata
        ("https://[::ffff:127.0.0.1]/x", False),  # loopback inside IPv6
        ("http://93.184.216.34/x", False),  # public, but plain http
        ("http://10.0.0.1/x", True),  # plain http only to loopback, even when allowed
        ("ftp://127.0.0.1/x", True),
    ],
)
async def test_refused_destinations(url: str, allow_private: bool) -> None:
    with pytest.raises(ProviderUnreachable):
        await check_url(url, allow_private=allow_private)
    async with httpx.AsyncClient(transport=GuardedTransport(allow_private=allow_private)) as http:
        with pytest.raises(ProviderUnreachable):
            await http.get(url)


async def test_loopback_over_http_when_the_operator_allows_it() -> None:
    pinned = await check_url("http://127.0.0.1:9/x", allow_private=True)
    assert pinned.addresses == ("127.0.0.1",)


def _provider(issuer: str) -> oidc.ProviderInfo:
    return oidc.ProviderInfo(
        issuer=issuer,
        authorization_endpoint=f"{issuer}/a",
        token_endpoint=f"{issuer}/t",
        jwks_uri=f"{issuer}/k",
        algorithms=("RS256",),
        token_auth_method="client_secret_basic",
        keys=KeySet([]),
        fetched_at=time.monotonic(),
    )


def test_the_cache_keeps_at_most_its_size_dropping_the_least_recent() -> None:
    cache = oidc.ProviderCache(entries=2)
    for name in ("a", "b", "c"):
        cache.put(_provider(f"https://{name}.example"), allow_private=False)
    kept = [issuer for issuer, _ in cache._providers]
    assert kept == ["https://b.example", "https://c.example"]


def test_pending_sign_ins_expire_and_check_their_state() -> None:
    _, pending = oidc.authorization_request(
        _provider("https://id.example"),
        tenant_id="t",
        client_id="c",
        redirect_uri="https://herald.example/sso/callback",
        login_hint="ann@acme.example",
    )
    again = oidc.PendingSignIn.from_session(pending.to_session())
    assert again == pending
    assert again.matches(pending.state) and not again.matches(pending.state + "x")
    assert not again.expired() and again.expired(now=time.time() + oidc.PENDING_SECONDS + 1)
    assert oidc.PendingSignIn.from_session({"tenant": "t", "state": 1}) is None
    assert len(pending.verifier) >= 43 and pending.state != pending.nonce
