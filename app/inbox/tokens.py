"""Recipient-scoped inbox tokens: what a tenant's front-end holds to read one user's inbox.

A token is `hit_<payload>.<signature>`: the base64url JSON payload names the tenant, the
mode, the recipient, when it was issued and when it expires; the signature is HMAC-SHA256
under a key derived from the server secret. It grants the inbox of that one recipient and
nothing else. A recipient's tokens issued before a revocation
(`recipients.inbox_tokens_valid_after`) are refused where the inbox is read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass

PREFIX = "hit_"
DEFAULT_TTL = 24 * 3600
MAX_TTL = 30 * 24 * 3600


class TokenRejected(Exception):
    """The token is malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class RecipientPrincipal:
    """A front-end acting for one recipient; it may only use that recipient's inbox."""

    tenant_id: uuid.UUID
    recipient_id: uuid.UUID
    expires_at: int
    mode: str = "live"
    issued_at_ms: int = 0  # tokens of the first format carry none: any revocation ends them
    scopes: frozenset[str] = frozenset({"inbox"})

    @property
    def actor(self) -> str:
        return f"recipient:{self.recipient_id}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class InboxTokenSigner:
    def __init__(self, secret_key: bytes) -> None:
        # A key of its own, so an inbox token can never pass for another signed value.
        self._key = hmac.new(secret_key, b"herald inbox tokens v1", hashlib.sha256).digest()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(
        self,
        *,
        tenant_id: uuid.UUID,
        recipient_id: uuid.UUID,
        mode: str,
        ttl: int = DEFAULT_TTL,
    ) -> tuple[str, int]:
        now = time.time()
        expires_at = int(now) + ttl
        body = {
            "t": str(tenant_id),
            "m": mode,
            "r": str(recipient_id),
            "i": int(now * 1000),
            "e": expires_at,
        }
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{PREFIX}{payload}.{self._sign(payload)}", expires_at

    def verify(self, token: str) -> RecipientPrincipal:
        payload, _, signature = token.removeprefix(PREFIX).partition(".")
        # ASCII only: a header may carry any Latin-1 text, which compare_digest refuses.
        if not token.startswith(PREFIX) or not payload or not signature or not token.isascii():
            raise TokenRejected("The inbox token is malformed.")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenRejected("The inbox token's signature does not match.")
        try:
            body = json.loads(_unb64(payload))
            principal = RecipientPrincipal(
                tenant_id=uuid.UUID(body["t"]),
                recipient_id=uuid.UUID(body["r"]),
                expires_at=int(body["e"]),
                mode=body.get("m", "live"),
                issued_at_ms=int(body.get("i", 0)),
            )
            if principal.mode not in ("live", "test"):
                raise ValueError(principal.mode)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenRejected("The inbox token is malformed.") from None
        if principal.expires_at < time.time():
            raise TokenRejected("The inbox token has expired; ask your server for a new one.")
        return principal
