"""Postmark webhooks: one JSON record per POST, authenticated by HTTP basic auth.

Postmark signs nothing: the tenant puts a username and password in the webhook URL
(`https://user:pass@…`), Postmark sends them as `Authorization: Basic …`, and they are
compared here in constant time. There is no timestamp either; replays are absorbed by the
dedup key: the bounce `ID` for bounce records (spam complaints are bounce records too), else
`MessageID:RecordType:<the record's own time>`.

Herald's id comes back in `Metadata.herald_message_id`; Postmark's own is `MessageID`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from datetime import timedelta
from typing import Any

from app.receipts.events import (
    HERALD_ID_FIELD,
    Inbound,
    Kind,
    NotJson,
    Parsed,
    ReceiptEvent,
    SuppressReason,
    detail,
    dig,
    event_id,
    from_iso,
    herald_id,
    json_value,
    refused,
    text,
    verified,
)

MAX_AUTHORIZATION_CHARS = 1024

# RecordType → the field holding the record's own time.
TIME_FIELDS = {
    "Delivery": "DeliveredAt",
    "Bounce": "BouncedAt",
    "SpamComplaint": "BouncedAt",
    "Open": "ReceivedAt",
    "Click": "ReceivedAt",
    "SubscriptionChange": "ChangedAt",
}
# Bounce `Type` → kind and suppression; other bounce types bounce without suppressing.
BOUNCE_TYPES: dict[str, tuple[Kind, SuppressReason | None]] = {
    "HardBounce": ("bounced", "hard_bounce"),
    "SpamComplaint": ("complained", "complaint"),
    # Filtered as spam on the way in: the recipient did not complain.
    "SpamNotification": ("complained", None),
}
SUPPRESSION_REASONS: dict[str, SuppressReason] = {
    "HardBounce": "hard_bounce",
    "SpamComplaint": "complaint",
    "ManualSuppression": "unsubscribed",
}


def receive_postmark(
    inbound: Inbound, username: str, password: str, *, tolerance: timedelta | None = None
) -> Parsed:
    """Check the basic-auth credentials of one webhook POST, then read it.

    `tolerance` is accepted for symmetry with the other schemes and unused: Postmark's
    records carry no signed timestamp."""
    if not _authorized(inbound.headers.get("authorization", ""), username, password):
        return refused("bad_signature", "basic-auth credentials missing or wrong")
    try:
        record = json_value(inbound.body)
    except NotJson as error:
        return refused("unparseable", str(error))
    if not isinstance(record, dict):
        return refused("unparseable", "the body is not a JSON object")
    record_type, message_id = record.get("RecordType"), record.get("MessageID")
    if not isinstance(record_type, str) or not isinstance(message_id, str) or not message_id:
        return refused("unparseable", "RecordType or MessageID missing")
    if record_type not in TIME_FIELDS:
        return verified([])  # a record type Herald has no use for (e.g. inbound mail)
    kind, suppress = _kind(record_type, record)
    if kind is None:
        return verified([])
    moment = record.get(TIME_FIELDS[record_type])
    bounce_id = record.get("ID")
    if record_type in {"Bounce", "SpamComplaint"} and isinstance(bounce_id, int | str):
        provider_event_id = str(bounce_id)
    else:
        provider_event_id = (
            f"{message_id}:{record_type}:{moment if isinstance(moment, str) else ''}"
        )
    event = ReceiptEvent(
        provider_event_id=event_id(provider_event_id),
        message_id=herald_id(dig(record, "Metadata", HERALD_ID_FIELD)),
        provider_message_id=text(message_id),
        kind=kind,
        occurred_at=from_iso(moment, inbound.received_at),
        detail=detail(
            record_type=record_type,
            type=record.get("Type"),
            type_code=record.get("TypeCode"),
            description=record.get("Description"),
            details=record.get("Details"),
            url=record.get("OriginalLink"),
            suppression_reason=record.get("SuppressionReason"),
        ),
        suppress=suppress,
    )
    return verified([event])


def _authorized(header: str, username: str, password: str) -> bool:
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or len(credentials) > MAX_AUTHORIZATION_CHARS:
        return False
    try:
        given = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, f"{username}:{password}".encode())


def _kind(record_type: str, record: dict[str, Any]) -> tuple[Kind | None, SuppressReason | None]:
    if record_type == "Bounce":
        return BOUNCE_TYPES.get(str(record.get("Type")), ("bounced", None))
    if record_type == "SubscriptionChange":
        # SuppressSending false is the address being reactivated. Postmark also reports
        # its own suppressions after a hard bounce or complaint here: keep their reason.
        if record.get("SuppressSending") is True:
            return "unsubscribed", SUPPRESSION_REASONS.get(
                str(record.get("SuppressionReason")), "unsubscribed"
            )
        if record.get("SuppressSending") is False:
            return "resubscribed", None
        return None, None
    simple: dict[str, tuple[Kind, SuppressReason | None]] = {
        "Delivery": ("delivered", None),
        "SpamComplaint": ("complained", "complaint"),
        "Open": ("opened", None),
        "Click": ("clicked", None),
    }
    return simple[record_type]
