"""Receipt schemes: signatures made by the providers' own SDKs or published vectors, and
every status mapping."""

from __future__ import annotations

from datetime import UTC, datetime

from app.receipts.events import Inbound

URL = "https://herald.example/webhooks/providers/0190a1b2-0000-7000-8000-000000000001"


def inbound(
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    at: float | datetime,
    url: str = URL,
) -> Inbound:
    received_at = at if isinstance(at, datetime) else datetime.fromtimestamp(at, UTC)
    return Inbound(
        url=url,
        headers={name.lower(): value for name, value in (headers or {}).items()},
        body=body,
        received_at=received_at,
    )
