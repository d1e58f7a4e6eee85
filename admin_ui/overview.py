"""The overview, the dashboard's home: how the tenant's sending went today and over the last
30 days (accepted, sent, delivered, failed, dead-lettered, by channel; delivery rate;
accept→sent latency), what waits in its queues by priority and in its DLQ now, and a chart
of the 30 days, drawn on the server as SVG.

Its figures come from the rollups PostgreSQL keeps as messages change (app/analytics), so
a view costs one indexed read however many messages the tenant has. A tenant with no
message yet is shown how to send its first one, with commands to copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import HTTPException

from admin_ui.charts import BarChart, stacked_bars
from admin_ui.pages import page
from admin_ui.session import SignedInMember, provide_member
from app.analytics import service as analytics
from app.analytics.service import Overview, Totals
from app.db import utcnow
from app.dependencies import DbSession
from app.notifications.models import PRIORITIES
from app.settings import Settings

SPANS = {"today": "Today", "30d": "Last 30 days"}
DEFAULT_SPAN = "30d"
SPAN_MAX_LENGTH = 8
CHANNEL_NAMES = {
    "email": "E-mail",
    "sms": "SMS",
    "push": "Push",
    "webhook": "Webhook",
    "inbox": "In-app inbox",
}
# What the empty state's commands send: a template, then a notification of it to a
# recipient given inline. Tests send these very bodies, so the commands shown work.
FIRST_TEMPLATE: dict[str, Any] = {
    "name": "Welcome",
    "content": {"email": {"subject": "Welcome, {{ name }}", "text": "Hello {{ name }}!"}},
}
FIRST_NOTIFICATION: dict[str, Any] = {
    "template": "welcome",
    "to": [{"external_id": "user-1", "email": "user-1@example.com"}],
    "data": {"name": "Ada"},
}


@dataclass(frozen=True)
class Stat:
    """A figure card: today's value, large, and the 30 days' below it."""

    key: str
    label: str
    today: str
    window: str
    hint: str
    link: str | None = None


def count(value: int) -> str:
    return f"{value:,}"


def rate(value: float | None) -> str:
    if value is None:
        return "—"
    percent = value * 100
    text = f"{percent:.1f}%"
    return text.replace(".0%", "%")


def duration(milliseconds: float | None) -> str:
    """850 ms, 1.4 s, 2.3 min, 1.2 h: a latency read from the histogram (approximate)."""
    if milliseconds is None:
        return "—"
    if milliseconds < 1_000:
        return f"{milliseconds:.0f} ms"
    seconds = milliseconds / 1_000
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3_600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3_600:.1f} h"


def _stats(found: Overview) -> list[Stat]:
    today, window = found.today_totals, found.window_totals
    return [
        Stat("accepted", "Accepted", count(today.accepted), count(window.accepted),
             "Messages written for your notifications"),
        Stat("sent", "Sent", count(today.sent), count(window.sent),
             "Handed to a provider"),
        Stat("delivered", "Delivered", count(today.delivered), count(window.delivered),
             "Confirmed by the provider's receipts"),
        Stat("failed", "Failed", count(today.failed), count(window.failed),
             "Dead-lettered, bounced or undelivered"),
        Stat("in-dlq", "In DLQ now", count(found.in_dlq),
             f"{count(window.dead_lettered)} dead-lettered",
             "Failed for good: inspect and replay them", "/dlq"),
        Stat("delivery-rate", "Delivery rate", rate(today.delivery_rate),
             rate(window.delivery_rate),
             "Finished messages that did not fail"),
    ]  # fmt: skip


def _chart(found: Overview) -> BarChart:
    slots = []
    for day in found.days:
        totals = day.totals
        title = (
            f"{day.day:%a %d %b}: {count(totals.accepted)} accepted, {count(totals.sent)} sent, "
            f"{count(totals.delivered)} delivered, {count(totals.failed)} failed"
        )
        series = [("sent", totals.sent), ("dead-lettered", totals.dead_lettered)]
        slots.append((f"{day.day:%d %b}", title, series))
    return stacked_bars(slots)


def _curl(settings: Settings, mode: str) -> str:
    """The commands that send a first notification, with the key as a shell variable: the
    key's secret is shown once when created, and Herald keeps only its hash."""
    base = settings.public_url
    template = json.dumps(FIRST_TEMPLATE, ensure_ascii=False)
    notification = json.dumps(FIRST_NOTIFICATION, ensure_ascii=False)
    return "\n".join(
        (
            f"export HERALD_KEY=hk_{mode}_...  # your {mode} key's secret",
            f"curl -s -X PUT {base}/v1/templates/welcome \\",
            '  -H "Authorization: Bearer $HERALD_KEY" -H "Content-Type: application/json" \\',
            f"  -d '{template}'",
            f"curl -s -X POST {base}/v1/notifications \\",
            '  -H "Authorization: Bearer $HERALD_KEY" -H "Content-Type: application/json" \\',
            f"  -d '{notification}'",
        )
    )


def _span_of(value: str | None) -> str:
    if value is None or value == "":
        return DEFAULT_SPAN
    if len(value) > SPAN_MAX_LENGTH or value not in SPANS:
        raise HTTPException(status_code=422, detail="span: choose today or 30d.")
    return value


class OverviewController(Controller):
    path = "/overview"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def show(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        span: str | None = None,
    ) -> Response[Any]:
        chosen = _span_of(span)
        found = await analytics.overview(
            db_session, tenant_id=member.tenant.id, mode=member.mode, today=utcnow().date()
        )
        by_channel: dict[str, Totals] = (
            found.today_by_channel if chosen == "today" else found.window_by_channel
        )
        settings: Settings = request.app.state.settings
        return page(
            "overview/page.html",
            member=member,
            found=found,
            span=chosen,
            spans=SPANS,
            stats=_stats(found),
            chart=_chart(found),
            by_channel=by_channel,
            channel_names=CHANNEL_NAMES,
            priorities=PRIORITIES,
            curl=_curl(settings, member.mode) if found.empty else "",
            count=count,
            rate=rate,
            duration=duration,
        )
