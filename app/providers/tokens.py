"""Short-lived provider tokens (FCM's OAuth2 access token, APNs' provider JWT), per process.

A worker keeps an adapter per provider config and credentials, builds a new one when they
change, and several configs may share one key; so the tokens are kept here, by the
credential that signs them: a worker asks Google for an access token about once an hour per
service account, and signs an APNs token at most every 50 minutes per key, as Apple asks (it
refuses tokens refreshed more often than every 20 minutes, and older than an hour).
"""

from __future__ import annotations

import hashlib
import time


class TokenCache:
    """Tokens by key until `margin` seconds before they expire."""

    def __init__(self, margin: float = 60.0) -> None:
        self.margin = margin
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        hit = self._tokens.get(key)
        if hit is None or hit[1] <= time.monotonic():
            return None
        return hit[0]

    def put(self, key: str, token: str, lifetime: float) -> None:
        self._tokens[key] = (token, time.monotonic() + max(lifetime - self.margin, 0.0))

    def drop(self, key: str) -> None:
        """Forget a token the provider refused (revoked or expired early)."""
        self._tokens.pop(key, None)

    def clear(self) -> None:
        self._tokens.clear()


def cache_key(*parts: str) -> str:
    """A key naming the credential without keeping it in memory twice."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()
