"""What accepting a notification means: the rules a request must meet and the row it becomes.

The one path that writes notifications is the intake writer (writer.py), which applies
these rules to each request of a batch, with the template and category rules of their own
modules (app/templates/service.py, app/recipients/preferences.py). The caller gets its 202
once the row is committed; nothing here talks to a provider. The same Idempotency-Key with
the same body returns the original notification; with a different body it is refused.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from msgspec import UNSET

from app.audiences import service as audiences
from app.audiences.schemas import Audience
from app.auth.keys import Principal
from app.categories.rules import high_priority_refusal, rules_for
from app.db import utcnow
from app.ids import uuid7
from app.notifications.schemas import MAX_DATA_BYTES, NotificationCreate
from app.recipients.schemas import RecipientInput
from app.recipients.service import normalise_input
from app.recipients.validation import RecipientInvalid, normalise_external_id, normalise_locale
from app.templates.service import TemplateSummary

MAX_SCHEDULE_AHEAD = timedelta(days=90)
DEFAULT_CATEGORY = "transactional"


class InvalidNotification(ValueError):
    """The request cannot be accepted; `field` names the offending part of the body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, original_id: uuid.UUID) -> None:
        super().__init__(str(original_id))
        self.original_id = original_id


@dataclass(frozen=True)
class AcceptedNotification:
    """What the 202 answer and the enqueue need."""

    id: uuid.UUID
    status: str
    priority: str
    created_at: datetime
    send_at: datetime | None


@dataclass(frozen=True)
class Accepted:
    notification: AcceptedNotification
    replayed: bool


_CANONICAL = msgspec.json.Encoder(order="sorted")


def request_hash(body: NotificationCreate) -> str:
    # Sorted keys: the same body sent with its members in another order is the same request.
    return hashlib.sha256(_CANONICAL.encode(body)).hexdigest()


def category_of(body: NotificationCreate, template: TemplateSummary | None) -> str:
    return body.category or (template.category if template else None) or DEFAULT_CATEGORY


def notification_row(
    principal: Principal,
    body: NotificationCreate,
    template: TemplateSummary | None,
    *,
    category_critical: bool | None,
) -> dict[str, Any]:
    """The notifications row for a request, once its template and category were looked up
    (`category_critical` is None when the category does not exist).

    The audience holds the ids as given; inline recipients are the writer's to upsert.
    `high` priority is for critical categories only: the high queue is shared by every
    tenant, and what rides it must be what cannot wait (codes, resets, alerts).
    """
    if template is None:
        raise InvalidNotification(
            "template", f"no template {body.template!r} in {principal.mode} mode"
        )
    channels = _channels(body, template.channels)
    category_key = category_of(body, template)
    if category_critical is None:
        raise InvalidNotification(
            "category", f"no category {category_key!r} in {principal.mode} mode"
        )
    if body.priority == "high" and not rules_for(category_critical).may_be_high_priority:
        raise InvalidNotification("priority", high_priority_refusal(category_key))
    if len(msgspec.json.encode(body.data)) > MAX_DATA_BYTES:
        raise InvalidNotification("data", f"data is larger than {MAX_DATA_BYTES // 1024} KiB")
    return {
        "id": uuid7(),
        "tenant_id": principal.tenant_id,
        "api_key_id": principal.key_id,
        "mode": principal.mode,
        "template_key": template.key,
        "template_version": template.version,
        "category": category_key,
        "channels": channels,
        "audience": _audience(body.to),
        "data": body.data,
        "locale": _locale(body.locale),
        "priority": body.priority,
        "send_at": _send_at(body.send_at),
        "status": "accepted",
        "created_at": utcnow(),
        "on_quota_exceeded": _on_quota_exceeded(body),
    }


def _on_quota_exceeded(body: NotificationCreate) -> str | None:
    """The request's choice for a broadcast larger than the quota left (None: the tenant's).

    A list of recipients has no such choice: its size is known at intake, where a list over
    quota is refused whole (429), so a `send_partial` there could only mislead."""
    if body.on_quota_exceeded is UNSET:
        return None
    if not isinstance(body.to, Audience):
        raise InvalidNotification(
            "on_quota_exceeded",
            "only for an audience (a topic, all or a filter); a list of recipients over "
            "quota is refused whole when it is sent",
        )
    return body.on_quota_exceeded


def _audience(to: list[str | RecipientInput] | Audience) -> dict[str, Any]:
    """What the notifications row keeps of `to`: `{"recipients": [ids…]}` for a list, else
    the audience as given (`{"topic": key}`, `{"all": true}`, `{"filter": …}`)."""
    if not isinstance(to, Audience):
        return {"recipients": list(dict.fromkeys(_audience_ids(to)))}
    try:
        audiences.check(to)
    except audiences.AudienceInvalid as invalid:
        raise InvalidNotification(
            "to" + invalid.field.removeprefix("audience"), invalid.message
        ) from None
    if to.topic is not None:
        return {"topic": to.topic}
    if to.filter is not None:
        return {"filter": msgspec.to_builtins(to.filter)}
    return {"all": True}


def topic_of(body: NotificationCreate) -> str | None:
    """The topic a notification is sent to, if it is sent to one."""
    return body.to.topic if isinstance(body.to, Audience) else None


def _audience_ids(to: list[str | RecipientInput]) -> list[str]:
    """The ids as given; a bare id must be one a recipient could have (`to[3]` names it).

    Inline recipients' ids are checked with their other fields (inline_recipients).
    """
    ids = []
    for index, item in enumerate(to):
        if isinstance(item, RecipientInput):
            ids.append(item.external_id)
            continue
        try:
            ids.append(normalise_external_id(item))
        except RecipientInvalid as invalid:
            raise InvalidNotification(f"to[{index}]", invalid.message) from None
    return ids


def _locale(locale: str | None) -> str | None:
    """Checked and stored as a recipient's locale is (`fr_ca` → `fr-CA`)."""
    if locale is None:
        return None
    try:
        return normalise_locale(locale)
    except RecipientInvalid as invalid:
        raise InvalidNotification("locale", invalid.message) from None


def _channels(body: NotificationCreate, available: list[str]) -> list[str]:
    if body.channels is None:
        return list(available)
    for index, channel in enumerate(body.channels):
        if channel not in available:
            raise InvalidNotification(
                f"channels[{index}]",
                f"template {body.template!r} has no {channel} content "
                f"(it has: {', '.join(available)})",
            )
    return list(dict.fromkeys(body.channels))


def inline_recipients(body: NotificationCreate) -> list[RecipientInput]:
    """The recipients given inline, checked as an upsert checks them (`to[2].email` names
    a refused field); the writer upserts them in the notification's transaction."""
    inline: list[RecipientInput] = []
    if isinstance(body.to, Audience):
        return inline
    for index, item in enumerate(body.to):
        if not isinstance(item, RecipientInput):
            continue
        try:
            normalise_input(item)
        except RecipientInvalid as invalid:
            raise InvalidNotification(f"to[{index}].{invalid.field}", invalid.message) from None
        inline.append(item)
    return inline


def _send_at(send_at: datetime | None) -> datetime | None:
    if send_at is None:
        return None
    if send_at.tzinfo is None:
        raise InvalidNotification(
            "send_at", "send_at needs a time zone offset, e.g. 2026-01-01T09:00:00Z"
        )
    now = datetime.now(UTC)
    if send_at > now + MAX_SCHEDULE_AHEAD:
        raise InvalidNotification("send_at", "send_at is more than 90 days ahead")
    return send_at if send_at > now else None
