"""What a provider's receipt request becomes: a verdict on its authenticity and its events.

Every scheme module (sendgrid.py, twilio.py, …) turns one `Inbound` request into one
`Parsed`. The helpers below are what they share to stay bounded on hostile input: a body
holds at most `MAX_EVENTS` events (a bigger one is refused whole rather than cut, so that
nothing is dropped in silence), strings kept in `detail` are cut to `MAX_DETAIL_CHARS`, an
event id longer than `MAX_EVENT_ID_CHARS` is replaced by its SHA-256 (still unique, still a
dedup key), and a timestamp that cannot be read falls back to the request's arrival.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

Verdict = Literal["verified", "bad_signature", "stale", "unparseable"]
Kind = Literal[
    "sent",
    "deferred",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "undelivered",
    "failed",
    "unsubscribed",
    "resubscribed",
]
SuppressReason = Literal["hard_bounce", "complaint", "unsubscribed"]

MAX_EVENTS = 10_000  # SendGrid batches run to thousands; one request never costs more
MAX_EVENT_ID_CHARS = 200
MAX_DETAIL_CHARS = 500
MAX_TIMESTAMP_CHARS = 64
HERALD_ID_FIELD = "herald_message_id"  # what every adapter hands the provider to echo back


@dataclass(frozen=True)
class Inbound:
    """One request as it arrived."""

    url: str  # the full URL as the provider called it (scheme, host, path, query)
    headers: Mapping[str, str]  # lower-cased names
    body: bytes  # raw, already bounded by the route
    received_at: datetime  # aware UTC


@dataclass(frozen=True)
class ReceiptEvent:
    provider_event_id: str  # the provider's id of this event: dedup key per config
    message_id: uuid.UUID | None  # Herald's message id as passed to the provider
    provider_message_id: str | None
    kind: Kind
    occurred_at: datetime  # aware UTC, from the event (else received_at)
    detail: dict[str, Any]  # small, JSON-safe: raw status, bounce type, smtp reply, url, code
    suppress: SuppressReason | None  # the address must not be sent to again, and why


@dataclass(frozen=True)
class Parsed:
    verdict: Verdict
    events: list[ReceiptEvent]  # empty unless verified
    subscribe_url: str | None = None  # SNS SubscriptionConfirmation to confirm (verified only)
    reason: str | None = None  # short human text for a failed verdict


def verified(events: list[ReceiptEvent], *, subscribe_url: str | None = None) -> Parsed:
    return Parsed("verified", events, subscribe_url=subscribe_url)


def refused(verdict: Verdict, reason: str) -> Parsed:
    return Parsed(verdict, [], reason=reason)


def too_many(count: int) -> Parsed:
    return refused("unparseable", f"{count} events, more than the {MAX_EVENTS} accepted at once")


def stale(at: datetime | int, inbound: Inbound, tolerance: timedelta) -> Parsed | None:
    """A `stale` verdict when `at` (a time, or Unix seconds) is further than `tolerance` from
    the arrival, either way: a timestamp from the future is as much a replay prepared in
    advance as an old one is a replay."""
    seconds = at.timestamp() if isinstance(at, datetime) else at
    skew = seconds - inbound.received_at.timestamp()
    if abs(skew) <= tolerance.total_seconds():
        return None
    direction = "ahead of" if skew > 0 else "behind"
    return refused("stale", f"timestamp {int(abs(skew))} s {direction} arrival")


def event_id(value: str) -> str:
    if len(value) <= MAX_EVENT_ID_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def herald_id(value: object) -> uuid.UUID | None:
    """Herald's message id when `value` is one (providers echo what we gave them, but a
    forged or mangled one must not become a lookup error)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def text(value: object) -> str | None:
    """A provider's string field, cut to size; None when absent or not a string."""
    if isinstance(value, str):
        return value[:MAX_DETAIL_CHARS]
    return None


def detail(**fields: object) -> dict[str, Any]:
    """The JSON-safe, bounded subset of `fields`: strings cut, numbers finite, rest dropped."""
    kept: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, str):
            kept[name] = value[:MAX_DETAIL_CHARS]
        elif _json_number(value):
            kept[name] = value
    return kept


def _json_number(value: object) -> bool:
    # Integers beyond 2**53 lose digits in JSON readers; NaN and infinities are not JSON.
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 2**53
    return isinstance(value, float) and math.isfinite(value)


def from_unix(value: object, fallback: datetime) -> datetime:
    """A Unix time in seconds (number or digit string) as aware UTC, else `fallback`."""
    if isinstance(value, str) and len(value) <= MAX_TIMESTAMP_CHARS:
        try:
            value = float(value)
        except ValueError:
            return fallback
    if isinstance(value, bool) or not isinstance(value, int | float):
        return fallback
    if not (math.isfinite(value) and 0 <= value < 1e11):  # before the year 5138
        return fallback
    return datetime.fromtimestamp(value, UTC)


def parse_iso(value: object) -> datetime | None:
    """An ISO 8601 time as aware UTC (no offset means UTC), else None."""
    if not isinstance(value, str) or len(value) > MAX_TIMESTAMP_CHARS:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def from_iso(value: object, fallback: datetime) -> datetime:
    moment = parse_iso(value)
    return fallback if moment is None else moment


class NotJson(ValueError):
    """The body is not JSON (or nests deeper than the decoder allows)."""


def json_value(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise NotJson("the body is not JSON") from None


def dig(value: object, *path: str) -> object:
    """`value[path[0]][path[1]]…`, or None where a step is missing or not an object."""
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value
