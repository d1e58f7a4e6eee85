"""GET /v1/usage: the tenant's live usage this month, per channel group, against its plan."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get

from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.channels import Channel
from app.dependencies import DbSession
from app.usage import service
from app.usage.meter import Meter


class ChannelUsageOut(msgspec.Struct):
    channel: Channel
    used: Annotated[int, msgspec.Meta(description="Live messages queued for sending this period.")]
    quota: Annotated[
        int | None, msgspec.Meta(description="The plan's monthly quota; null: no quota.")
    ]
    remaining: Annotated[
        int | None,
        msgspec.Meta(description="What is left of the quota (0 past it); null: no quota."),
    ]


class UsageOut(msgspec.Struct):
    object: Literal["usage"]
    plan: str
    overage: Annotated[
        Literal["block", "bill"],
        msgspec.Meta(
            description="Past a quota, `block`: refused with 429 `quota_exceeded`; `bill`: "
            "sent and billed per 1,000."
        ),
    ]
    period: Annotated[str, msgspec.Meta(description="The calendar month (UTC), `YYYY-MM`.")]
    period_start: datetime
    resets_at: Annotated[
        datetime, msgspec.Meta(description="When the quotas reset: the next month's start, UTC.")
    ]
    channels: list[ChannelUsageOut]


@get(
    "/usage",
    tags=["Usage"],
    guards=[requires_scope("read")],
    summary="Messages sent this month per channel, against the plan's quotas",
    description="Live mode only: test mode is never counted, so a test key sees the live "
    "figures of its tenant. A message counts once when it is queued for sending (not when "
    "skipped or suppressed), however often it is retried or replayed.",
)
async def get_usage(request: Request[Principal, None, Any], db_session: DbSession) -> UsageOut:
    state = request.app.state
    meter: Meter = state.get("meter") or Meter(state.redis)
    usage = await service.current(db_session, meter, tenant_id=request.user.tenant_id)
    return UsageOut(
        object="usage",
        plan=usage.plan,
        overage=usage.overage,  # type: ignore[arg-type]
        period=usage.period,
        period_start=usage.period_start,
        resets_at=usage.resets_at,
        channels=[
            ChannelUsageOut(c.channel, c.used, c.quota, c.remaining)  # type: ignore[arg-type]
            for c in usage.channels
        ],
    )
