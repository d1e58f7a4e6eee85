"""Twilio SMS status callbacks: HMAC-SHA1 signed form posts, one status change each.

`X-Twilio-Signature` is base64 HMAC-SHA1, keyed with the account's auth token, over the full
URL Twilio called followed by every POST parameter's name and value, sorted by name. A JSON
body is signed by its hex SHA-256 in the URL's `bodySHA256` query parameter instead, with no
parameters appended. Twilio's own validator accepts the URL both with and without its port
(Twilio's signing has not always agreed with itself about default ports); so does this one.

There is no timestamp, so no tolerance: replays are absorbed by the dedup key
`MessageSid:MessageStatus`. Herald's message id rides on the callback URL
(`?herald_message_id=`, see app/providers/adapters/twilio.py). Error 21610 means the
recipient replied STOP: the number is suppressed as unsubscribed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import defaultdict
from datetime import timedelta
from urllib.parse import SplitResult, parse_qs, parse_qsl, urlsplit, urlunsplit

from app.receipts.events import (
    HERALD_ID_FIELD,
    Inbound,
    Kind,
    NotJson,
    Parsed,
    ReceiptEvent,
    SuppressReason,
    detail,
    event_id,
    herald_id,
    json_value,
    refused,
    text,
    verified,
)

SIGNATURE_HEADER = "x-twilio-signature"
MAX_FIELDS = 200  # a status callback has about twenty
UNSUBSCRIBED_CODE = "21610"  # the recipient replied STOP

STATUSES: dict[str, Kind] = {
    # Not yet at the carrier: still on its way, the raw status says where.
    "queued": "deferred",
    "accepted": "deferred",
    "scheduled": "deferred",
    "sending": "deferred",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "read": "opened",
    "canceled": "failed",
}


def receive_twilio(
    inbound: Inbound, auth_token: str, *, tolerance: timedelta | None = None
) -> Parsed:
    """Verify one status callback with the account's auth token, then read it.

    `tolerance` is accepted for symmetry with the other schemes and unused: Twilio's
    callbacks carry no timestamp."""
    signature = inbound.headers.get(SIGNATURE_HEADER, "")
    if not signature:
        return refused("bad_signature", "X-Twilio-Signature missing")
    try:
        url = urlsplit(inbound.url)
        query = parse_qs(url.query, max_num_fields=MAX_FIELDS)
    except ValueError:
        return refused("bad_signature", "the callback URL cannot be read")

    body_hash = query.get("bodySHA256")
    params: list[tuple[str, str]] = []
    if body_hash:
        digest = hashlib.sha256(inbound.body).hexdigest()
        if not hmac.compare_digest(digest.encode(), body_hash[0].encode()):
            return refused("bad_signature", "bodySHA256 does not match the body")
    else:
        try:
            params = parse_qsl(
                inbound.body.decode(),
                keep_blank_values=True,
                max_num_fields=MAX_FIELDS,
            )
        except (UnicodeDecodeError, ValueError):
            return refused("bad_signature", "the body is not a form")

    if not any(
        hmac.compare_digest(_signature(auth_token, candidate, params).encode(), signature.encode())
        for candidate in _url_forms(inbound.url, url)
    ):
        return refused("bad_signature", "the signature does not match")

    fields = _fields(inbound.body) if body_hash else dict(params)
    if fields is None:
        return refused("unparseable", "the body is not a JSON object")
    sid, status = fields.get("MessageSid"), fields.get("MessageStatus")
    if not sid or not status:
        return refused("unparseable", "MessageSid or MessageStatus missing")
    kind = STATUSES.get(status)
    if kind is None:
        return verified([])  # an inbound or a future status: nothing to record
    error_code = fields.get("ErrorCode") or None
    suppress: SuppressReason | None = "unsubscribed" if error_code == UNSUBSCRIBED_CODE else None
    herald = query.get(HERALD_ID_FIELD)
    event = ReceiptEvent(
        provider_event_id=event_id(f"{sid}:{status}"),
        message_id=herald_id(herald[0]) if herald else None,
        provider_message_id=text(sid),
        kind=kind,
        occurred_at=inbound.received_at,  # Twilio says when it called, not when it happened
        detail=detail(status=status, error_code=error_code),
        suppress=suppress,
    )
    return verified([event])


def _signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    # As Twilio's RequestValidator: names sorted, each name's distinct values sorted.
    values: defaultdict[str, set[str]] = defaultdict(set)
    for name, value in params:
        values[name].add(value)
    signed = url + "".join(
        name + value for name in sorted(values) for value in sorted(values[name])
    )
    mac = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _url_forms(raw: str, url: SplitResult) -> list[str]:
    """The URL as called, then without its port and with the scheme's default port."""
    try:
        port = url.port
    except ValueError:
        return [raw]
    userinfo, at, host = url.netloc.rpartition("@")
    prefix = userinfo + at
    bare = host.rsplit(":", 1)[0] if port is not None else host
    default = 443 if url.scheme == "https" else 80
    forms = [
        raw,
        urlunsplit(url._replace(netloc=prefix + bare)),
        urlunsplit(url._replace(netloc=f"{prefix}{bare}:{port or default}")),
    ]
    return list(dict.fromkeys(forms))


def _fields(body: bytes) -> dict[str, str] | None:
    """A JSON body's top-level string fields (numbers as Twilio would write them)."""
    try:
        value = json_value(body)
    except NotJson:
        return None
    if not isinstance(value, dict):
        return None
    return {
        name: str(item) if not isinstance(item, str) else item
        for name, item in value.items()
        if isinstance(item, str | int) and not isinstance(item, bool)
    }
