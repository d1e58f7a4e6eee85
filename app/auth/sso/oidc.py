"""OpenID Connect, the relying party's half: discovery, the authorization request, the code
exchange and the ID token's checks.

The flow is the authorization code flow with PKCE (S256) and a nonce, through Authlib's
OAuth 2 client; the ID token is checked with joserfc against the provider's published keys
(JWKS): its signature (asymmetric algorithms only, those the provider announces: `none` and
HMAC never), `iss` (exactly the configured issuer), `aud` (our client id; `azp` too when
there are several audiences), `exp`/`iat` (a minute of clock skew), and the `nonce` that this
browser's sign-in put in the request. Only then are its claims read.

What discovery finds (the metadata and the keys) is cached per issuer for CACHE_SECONDS in a
cache of at most CACHE_ENTRIES issuers. A token signed by a key the cached set lacks makes
one fresh fetch of the keys (the provider may have rotated), at most once a minute an issuer.
"""

from __future__ import annotations

import hmac
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.deprecate import AuthlibDeprecationWarning
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import KeySet

from app.auth.sso.transport import TIMEOUT, GuardedTransport, ProviderUnreachable, client

with warnings.catch_warnings():
    # Authlib 1.9 prefers the `httpx2` fork and warns on import that plain httpx (the
    # project's HTTP client, which its integration still supports) is deprecated there.
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

SCOPE = "openid email profile"
# Signature algorithms an ID token may use: asymmetric ones only, so the provider's published
# keys are what verify it (never the client secret, never `none`).
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
CLOCK_SKEW_SECONDS = 60
CACHE_SECONDS = 600
CACHE_ENTRIES = 256
KEY_REFRESH_SECONDS = 60
# How long a browser may spend at its provider between "Sign in with SSO" and the callback.
PENDING_SECONDS = 600
MAX_ID_TOKEN_LENGTH = 16 * 1024


class SignInFailed(Exception):
    """The sign-in cannot go on; the message is for the person signing in."""


@dataclass(frozen=True)
class ProviderInfo:
    """What the provider's discovery document and key set say, as far as Herald uses it."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    token_auth_method: str  # client_secret_basic or client_secret_post
    keys: KeySet
    fetched_at: float


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in, from a checked ID token."""

    subject: str
    email: str
    email_verified: bool
    name: str


@dataclass(frozen=True)
class PendingSignIn:
    """What the browser's (encrypted, signed) session keeps between the redirect to the
    provider and the callback: which tenant, and the one-time state, nonce and PKCE verifier."""

    tenant_id: str
    state: str
    nonce: str
    verifier: str
    started_at: int

    def to_session(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant_id,
            "state": self.state,
            "nonce": self.nonce,
            "verifier": self.verifier,
            "at": self.started_at,
        }

    @classmethod
    def from_session(cls, value: object) -> PendingSignIn | None:
        if not isinstance(value, dict):
            return None
        fields = (value.get(name) for name in ("tenant", "state", "nonce", "verifier"))
        tenant_id, state, nonce, verifier = fields
        started_at = value.get("at")
        if not all(isinstance(v, str) and v for v in (tenant_id, state, nonce, verifier)):
            return None
        if not isinstance(started_at, int):
            return None
        return cls(str(tenant_id), str(state), str(nonce), str(verifier), started_at)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.started_at > PENDING_SECONDS

    def matches(self, state: str) -> bool:
        return hmac.compare_digest(self.state.encode(), state.encode())


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


async def _get_json(http: httpx.AsyncClient, url: str, what: str) -> dict[str, Any]:
    try:
        response = await http.get(url, headers={"accept": "application/json"})
    except ProviderUnreachable as error:
        raise SignInFailed(f"Cannot reach the provider's {what}: {error}.") from None
    except httpx.HTTPError as error:
        raise SignInFailed(
            f"Cannot reach the provider's {what} ({type(error).__name__})."
        ) from None
    if response.status_code != 200:
        raise SignInFailed(f"The provider's {what} answered HTTP {response.status_code}.")
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SignInFailed(f"The provider's {what} is not a JSON object.")
    return document


def _text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value or len(value) > 2000:
        raise SignInFailed(f"The provider's discovery document has no usable {name}.")
    return value


async def _fetch_keys(http: httpx.AsyncClient, jwks_uri: str) -> KeySet:
    document = await _get_json(http, jwks_uri, "key set (JWKS)")
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise SignInFailed("The provider's key set (JWKS) has no keys.")
    # Keys for encryption, and private or symmetric keys, have no business here.
    usable = [
        key
        for key in keys
        if isinstance(key, dict)
        and key.get("use", "sig") == "sig"
        and key.get("kty") in ("RSA", "EC", "OKP")
        and "d" not in key
    ]
    try:
        return KeySet.import_key_set({"keys": usable})
    except (JoseError, ValueError, TypeError):
        raise SignInFailed("The provider's key set (JWKS) cannot be read.") from None


async def discover(issuer: str, *, allow_private: bool) -> ProviderInfo:
    """Fetch and check the provider's discovery document and key set (no cache)."""
    async with client(allow_private=allow_private) as http:
        document = await _get_json(http, discovery_url(issuer), "discovery document")
        if document.get("issuer") != issuer:
            raise SignInFailed(
                "The provider's discovery document names another issuer "
                f"({str(document.get('issuer'))[:200]!r}): the issuer must match exactly."
            )
        announced = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        if not isinstance(announced, list):
            announced = ["RS256"]
        algorithms = tuple(alg for alg in ALGORITHMS if alg in announced)
        if not algorithms:
            raise SignInFailed("The provider signs ID tokens with no algorithm Herald accepts.")
        methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:
            auth_method = "client_secret_basic"
        elif "client_secret_post" in methods:
            auth_method = "client_secret_post"
        else:
            raise SignInFailed("The provider takes no client secret at its token endpoint.")
        jwks_uri = _text(document, "jwks_uri")
        return ProviderInfo(
            issuer=issuer,
            authorization_endpoint=_text(document, "authorization_endpoint"),
            token_endpoint=_text(document, "token_endpoint"),
            jwks_uri=jwks_uri,
            algorithms=algorithms,
            token_auth_method=auth_method,
            keys=await _fetch_keys(http, jwks_uri),
            fetched_at=time.monotonic(),
        )


class ProviderCache:
    """Discovered providers by issuer: bounded in size and age (see the module doc)."""

    def __init__(self, entries: int = CACHE_ENTRIES, seconds: float = CACHE_SECONDS) -> None:
        self.entries = entries
        self.seconds = seconds
        self._providers: OrderedDict[tuple[str, bool], ProviderInfo] = OrderedDict()

    async def get(self, issuer: str, *, allow_private: bool) -> ProviderInfo:
        key = (issuer, allow_private)
        found = self._providers.get(key)
        if found is not None and time.monotonic() - found.fetched_at < self.seconds:
            self._providers.move_to_end(key)
            return found
        return self._keep(key, await discover(issuer, allow_private=allow_private))

    async def refresh_keys(self, provider: ProviderInfo, *, allow_private: bool) -> ProviderInfo:
        """The provider with its key set fetched again, unless that was done under a minute ago."""
        if time.monotonic() - provider.fetched_at < KEY_REFRESH_SECONDS:
            return provider
        return self._keep(
            (provider.issuer, allow_private),
            await discover(provider.issuer, allow_private=allow_private),
        )

    def put(self, provider: ProviderInfo, *, allow_private: bool) -> None:
        """Keep what a fresh discovery found (the settings page's connection test)."""
        self._keep((provider.issuer, allow_private), provider)

    def clear(self) -> None:
        self._providers.clear()

    def _keep(self, key: tuple[str, bool], provider: ProviderInfo) -> ProviderInfo:
        self._providers[key] = provider
        self._providers.move_to_end(key)
        while len(self._providers) > self.entries:
            self._providers.popitem(last=False)
        return provider


providers = ProviderCache()


def authorization_request(
    provider: ProviderInfo, *, tenant_id: str, client_id: str, redirect_uri: str, login_hint: str
) -> tuple[str, PendingSignIn]:
    """The URL to send the browser to, and what its session must keep until the callback."""
    pending = PendingSignIn(
        tenant_id=tenant_id,
        state=generate_token(32),
        nonce=generate_token(32),
        verifier=generate_token(64),  # 43 to 128 characters (RFC 7636)
        started_at=int(time.time()),
    )
    oauth = AsyncOAuth2Client(
        client_id=client_id, scope=SCOPE, redirect_uri=redirect_uri, code_challenge_method="S256"
    )
    url, _ = oauth.create_authorization_url(
        provider.authorization_endpoint,
        state=pending.state,
        code_verifier=pending.verifier,
        nonce=pending.nonce,
        login_hint=login_hint,
    )
    return str(url), pending


async def exchange_code(
    provider: ProviderInfo,
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    verifier: str,
    allow_private: bool,
) -> str:
    """Trade the authorization code (and the PKCE verifier) for the ID token."""
    oauth = AsyncOAuth2Client(
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint_auth_method=provider.token_auth_method,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        transport=GuardedTransport(allow_private=allow_private),
        timeout=TIMEOUT,
        follow_redirects=False,
    )
    async with oauth:
        try:
            token = await oauth.fetch_token(
                provider.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
            )
        except OAuthError as error:
            raise SignInFailed(
                f"The provider refused to complete the sign-in ({str(error.error)[:100]})."
            ) from None
        except ProviderUnreachable as error:
            raise SignInFailed(f"Cannot reach the provider's token endpoint: {error}.") from None
        except (httpx.HTTPError, ValueError) as error:
            raise SignInFailed(
                f"The provider's token endpoint failed ({type(error).__name__})."
            ) from None
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_ID_TOKEN_LENGTH:
        raise SignInFailed("The provider answered without an ID token.")
    return id_token


def validate_id_token(
    id_token: str,
    provider: ProviderInfo,
    *,
    client_id: str,
    nonce: str,
    now: int | None = None,
) -> Identity:
    """The identity in a checked ID token; SignInFailed saying what is wrong otherwise."""
    try:
        token = jwt.decode(id_token, provider.keys, algorithms=list(provider.algorithms))
    except JoseError:
        raise SignInFailed(
            "The ID token's signature does not verify with the provider's keys."
        ) from None
    except ValueError:
        raise SignInFailed("The ID token cannot be read.") from None
    claims = token.claims
    registry = jwt.JWTClaimsRegistry(
        now=now,
        leeway=CLOCK_SKEW_SECONDS,
        iss={"essential": True, "value": provider.issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise SignInFailed("The ID token has expired. Please sign in again.") from None
    except (InvalidClaimError, MissingClaimError) as error:
        raise SignInFailed(f"The ID token is not valid for Herald ({error.description}).") from None
    except JoseError:
        raise SignInFailed("The ID token is not valid for Herald.") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise SignInFailed("The ID token was issued to another client (azp).")
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(
        token_nonce.encode(), nonce.encode()
    ):
        raise SignInFailed("The ID token was not issued for this sign-in (nonce).")
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        raise SignInFailed("The provider did not share your e-mail address (scope email).")
    name = claims.get("name")
    verified = claims.get("email_verified")
    return Identity(
        subject=str(claims["sub"]),
        email=email,
        # Some providers send the boolean as a string.
        email_verified=verified is True or verified == "true",
        name=name if isinstance(name, str) else "",
    )


def signing_key_known(id_token: str, provider: ProviderInfo) -> bool:
    """Whether the token names a key (kid) the cached key set has; False asks for a refresh."""
    try:
        header = jws.extract_compact(id_token.encode()).headers()
    except (JoseError, ValueError):
        return True  # unreadable either way: validate_id_token says so
    kid = header.get("kid")
    if not isinstance(kid, str):
        return True
    return any(key.kid == kid for key in provider.keys.keys)
