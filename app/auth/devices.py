"""Device cookies (OWASP's "Slow down online guessing attacks with device cookies").

A browser that signs in to an account gets a signed cookie naming that account (as a keyed
digest of its e-mail) and the time it was issued. It proves nothing by itself, the password
is still needed, but it tells the owner's browser apart from an attacker's: a sign-in from a
device trusted for the account is not held back by that account's e-mail rate limit, nor by
the delay of the network it shares with an attacker. One cookie per browser: the account it
last signed in to.
"""

from __future__ import annotations

import hashlib
import hmac
import time

COOKIE = "herald_device"
LIFETIME_SECONDS = 180 * 24 * 3600


class DeviceTokens:
    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"herald device cookie", hashlib.sha256).digest()

    def issue(self, email: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        return f"{issued}.{self._mac(email, issued)}"

    def trusts(self, token: str | None, email: str, now: float | None = None) -> bool:
        """Whether `token` was issued to this browser at a sign-in to `email`, and is current."""
        issued_text, _, mac = (token or "").partition(".")
        if not issued_text.isdigit() or len(issued_text) > 12:
            return False
        issued = int(issued_text)
        age = (time.time() if now is None else now) - issued
        return 0 <= age <= LIFETIME_SECONDS and hmac.compare_digest(mac, self._mac(email, issued))

    def _mac(self, email: str, issued: int) -> str:
        message = f"{email.strip().lower()}|{issued}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]
