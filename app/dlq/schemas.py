"""Bodies of the dead-letter queue endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from app.channels import Channel
from app.notifications.schemas import MessageOut

MAX_IDS = 1_000

ErrorClass = Literal["transient", "rate_limited", "permanent", "config", "render"]
ProviderName = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class DlqFilter(msgspec.Struct, forbid_unknown_fields=True):
    error_class: ErrorClass | None = None
    provider: ProviderName | None = None
    channel: Channel | None = None
    notification: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


class DlqSelection(msgspec.Struct, forbid_unknown_fields=True):
    """Either `ids` or `filter` (an empty filter selects every failed message)."""

    ids: Annotated[list[uuid.UUID], msgspec.Meta(min_length=1, max_length=MAX_IDS)] | None = None
    filter: DlqFilter | None = None
    dry_run: bool = False


class DlqGroup(msgspec.Struct):
    error_class: str | None
    provider: str | None
    status_code: int | None
    count: int


class DlqList(msgspec.Struct):
    object: Literal["list"]
    data: list[MessageOut]
    has_more: bool
    next_cursor: str | None
    groups: list[DlqGroup]


class DryRunResult(msgspec.Struct):
    count: int
    not_replayable: int = 0


class ReplayResult(msgspec.Struct):
    replayed: int
    not_replayable: int


class DiscardResult(msgspec.Struct):
    discarded: int
