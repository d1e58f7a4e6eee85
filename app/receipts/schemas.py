"""Response bodies of /v1/receipts: what providers posted, and what Herald made of it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

from app.receipts.models import MessageEvent, Receipt

Verdict = Literal["verified", "bad_signature", "stale", "replayed", "unknown_config", "unparseable"]


class ReceiptOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["receipt"]
    provider_config_id: uuid.UUID
    provider: str | None
    received_at: datetime
    verdict: str
    reason: str | None  # why it was refused
    event_count: int  # events the request held
    new_events: int  # of them, not seen before (a replay: 0)
    body_size: int  # bytes received

    @classmethod
    def of(cls, receipt: Receipt) -> ReceiptOut:
        return cls(
            id=receipt.id,
            object="receipt",
            provider_config_id=receipt.provider_config_id,
            provider=receipt.provider,
            received_at=receipt.received_at,
            verdict=receipt.verdict,
            reason=receipt.reason,
            event_count=receipt.event_count,
            new_events=receipt.new_events,
            body_size=receipt.body_size,
        )


class ReceiptEventOut(msgspec.Struct):
    provider_event_id: str
    message_id: uuid.UUID | None  # None: it named no message of this tenant
    kind: str
    occurred_at: datetime
    applied: bool  # it moved its message's status
    detail: dict[str, Any]


class ReceiptDetail(ReceiptOut):
    # Headers as received, credentials redacted; the body's first 256 KB, as text.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: str | None = None
    body_truncated: bool = False
    events: list[ReceiptEventOut] = msgspec.field(default_factory=list)

    @classmethod
    def full(cls, receipt: Receipt, events: list[MessageEvent]) -> ReceiptDetail:
        body = receipt.body
        return cls(
            **msgspec.structs.asdict(ReceiptOut.of(receipt)),
            headers=receipt.headers,
            body=None if body is None else body.decode("utf-8", errors="replace"),
            body_truncated=body is not None and len(body) < receipt.body_size,
            events=[
                ReceiptEventOut(
                    provider_event_id=e.provider_event_id,
                    message_id=e.message_id,
                    kind=e.kind,
                    occurred_at=e.occurred_at,
                    applied=e.applied,
                    detail=e.detail,
                )
                for e in events
            ],
        )


class ReceiptList(msgspec.Struct):
    object: Literal["list"]
    data: list[ReceiptOut]
    has_more: bool
    next_cursor: str | None
