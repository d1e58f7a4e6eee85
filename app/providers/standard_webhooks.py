"""Standard Webhooks signing (https://www.standardwebhooks.com), for everything Herald POSTs
and for the receipts that tenants' own systems sign the same way (app/receipts/standard.py).

Signed content is `{id}.{timestamp}.{body}`, HMAC-SHA256 under the decoded part of a
`whsec_…` secret, sent as `webhook-signature: v1,<base64>`. The reference `standardwebhooks`
package does the HMAC, so receivers using any Standard Webhooks library verify what we send.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
SECRET_BYTES = 32  # the spec allows 24 to 64
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
MAX_SIGNATURES = 16  # listed in one header: several only while keys rotate


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_problem(secret: str) -> str | None:
    """Why `secret` is not a usable `whsec_` secret, or None when it is."""
    if not secret.startswith(SECRET_PREFIX):
        return f"must start with {SECRET_PREFIX}"
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return f"must be {SECRET_PREFIX} followed by standard base64"
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        return f"must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
    return None


def signature_headers(
    secret: str, *, message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of one delivery attempt; the timestamp is new on each attempt."""
    moment = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    signature = Webhook(secret).sign(message_id, moment, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
    }


def signature_matches(
    secret: str, *, message_id: str, timestamp: int, body: bytes, header: str
) -> bool:
    """Whether any signature listed in `header` (space-separated `v1,<base64>`) is `secret`'s
    over this content. The timestamp's tolerance is the caller's to judge: the reference
    `Webhook.verify` fixes it at 5 minutes against the clock, a receiver may need another."""
    if secret_problem(secret) is not None:
        return False
    moment = datetime.fromtimestamp(timestamp, UTC)
    expected = Webhook(secret).sign(message_id, moment, body).encode()
    return any(
        hmac.compare_digest(expected, listed.encode())
        for listed in header.split(" ")[:MAX_SIGNATURES]
        if listed
    )
