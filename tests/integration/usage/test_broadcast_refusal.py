"""A broadcast larger than what is left of a blocking plan's quota, through the API and the
real dispatch job: sent up to the quota, or refused whole, as the tenant's setting or the
notification's own `on_quota_exceeded` says. Refused: no message, the notification
`refused` with its reason (API, event, dashboard), the quota as it was and nothing held.
Held whole and fitting: every message goes, its hold used up and the rest given back."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.notifications.intake import request_hash
from app.notifications.schemas import NotificationCreate
from app.runtime import ServiceUrls
from app.settings import Settings
from app.tenants.models import Tenant
from app.usage.meter import PREFIX, Meter, Reservation, next_period_start, period_of
from app.webhooks.models import WebhookEvent
from jobs import functions, queues
from tests.integration.dashboard.people import signed_in
from tests.integration.webhooks.endpoints import endpoint_at
from tests.send_path import put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, key_of, make_tenant, plans_with, settings_for

INBOX = {"inbox": {"title": "Hi", "body": "Hello"}}

# The shipped plans plus two with small quotas: one blocking, one billing its overage.
QUOTA_PLANS = """
[plans.quota-test]
api_rate = 10000
api_burst = 10000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "block"

[plans.quota-test.quota]
inbox = 1000

[plans.quota-bill]
api_rate = 10000
api_burst = 10000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "bill"
price_per_1000 = "1.00"

[plans.quota-bill.quota]
inbox = 10
"""


@pytest.fixture(scope="module", autouse=True)
def quota_plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with plans_with(tmp_path_factory.mktemp("plans"), QUOTA_PLANS):
        yield


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


async def on_plan(session: AsyncSession, plan: str, *, refuse: bool = False) -> TenantKey:
    """A tenant on `plan` (set before its key is first used: keys cache the plan)."""
    tenant = await make_tenant(session, f"overflow {uuid.uuid4().hex[:6]}")
    await session.execute(update(Tenant).where(Tenant.id == tenant.tenant_id).values(plan=plan))
    await session.commit()
    return tenant


async def choose(client: httpx.AsyncClient, key: TenantKey, choice: str) -> None:
    """The tenant's setting, through the API."""
    answer = await client.put(
        "/v1/tenant/on-quota-exceeded", headers=key.headers, json={"on_quota_exceeded": choice}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"object": "on_quota_exceeded", "on_quota_exceeded": choice}


async def audience_of(client: httpx.AsyncClient, key: TenantKey, n: int) -> None:
    await put_template(client, key, "hi", INBOX)
    for i in range(n):
        await put_recipient(client, key, f"fan{i:02d}")


async def leave(client: httpx.AsyncClient, key: TenantKey, left: int) -> None:
    """Hold all but `left` of the quota-test plan's 1,000 with a list not dispatched yet."""
    held = await send(client, key, [f"r{i}" for i in range(1000 - left)])
    assert held.status_code == 202, held.text


async def send(client: httpx.AsyncClient, key: TenantKey, to: list[str]) -> httpx.Response:
    body = {"template": "hi", "to": to, "channels": ["inbox"]}
    return await client.post("/v1/notifications", headers=key.headers, json=body)


async def broadcast(client: httpx.AsyncClient, key: TenantKey, **options: Any) -> str:
    body = {"template": "hi", "to": {"all": True}, "channels": ["inbox"], **options}
    accepted = await client.post("/v1/notifications", headers=key.headers, json=body)
    assert accepted.status_code == 202, accepted.text
    notification_id: str = accepted.json()["id"]
    return notification_id


async def dispatch(service_urls: ServiceUrls, notification_id: str) -> None:
    """Run the real dispatch job (delivery is not run)."""
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        ctx["redis"] = await queues.connect(service_urls.redis_url)
        try:
            await functions.dispatch(ctx, notification_id)
        finally:
            await ctx["redis"].aclose()


async def messages_of(session: AsyncSession, notification_id: str) -> dict[tuple[str, Any], int]:
    rows = await session.execute(
        text(
            "SELECT status, skip_reason, count(*) FROM messages WHERE notification_id = :id"
            " GROUP BY 1, 2"
        ),
        {"id": uuid.UUID(notification_id)},
    )
    return {(status, reason): n for status, reason, n in rows.all()}


async def holds_of(redis: Redis, key: TenantKey, notification_id: str) -> dict[str, int]:
    """What the notification holds of the quota in Redis, per channel."""
    raw = await redis.hgetall(f"{PREFIX}holds:{key.tenant_id}")  # type: ignore[misc]
    return {
        field.decode().split("|")[1]: int(n)
        for field, n in raw.items()
        if field.decode().startswith(notification_id) and int(n)
    }


async def exactly_left(client: httpx.AsyncClient, key: TenantKey, left: int) -> None:
    """`left` one-recipient sends pass intake and the next is refused: the quota has exactly
    that many left (used plus held)."""
    if left:
        assert (await send(client, key, [f"probe{i}" for i in range(left)])).status_code == 202
    assert_problem(await send(client, key, ["probe-more"]), 429, "quota_exceeded")


def assert_partial(by_status: dict[tuple[str, Any], int], sent: int, skipped: int) -> None:
    assert by_status.get(("skipped", "quota"), 0) == skipped, by_status
    assert sum(n for (status, _), n in by_status.items() if status == "queued") == sent


async def test_refused_whole_by_the_tenant_setting(
    client: httpx.AsyncClient,
    session: AsyncSession,
    service_urls: ServiceUrls,
    settings: Settings,
    redis: Redis,
) -> None:
    tenant = await on_plan(session, "quota-test")
    await choose(client, tenant, "refuse")
    await audience_of(client, tenant, 50)
    await endpoint_at(session, settings, tenant, "http://127.0.0.1:9/hook")
    await leave(client, tenant, 10)
    notification_id = await broadcast(client, tenant)
    await dispatch(service_urls, notification_id)
    await dispatch(service_urls, notification_id)  # a repeated job changes nothing

    assert await messages_of(session, notification_id) == {}
    shown = await client.get(f"/v1/notifications/{notification_id}", headers=tenant.headers)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["status"] == "refused" and body["counts"] == {} and body["messages"] == []
    assert body["on_quota_exceeded"] is None  # the tenant's setting decided
    reason = body["problems"]["quota_exceeded"]
    reset = next_period_start(period_of(utcnow())).isoformat().replace("+00:00", "Z")
    assert {k: v for k, v in reason.items() if k != "detail"} == {
        "channel": "inbox",
        "plan": "quota-test",
        "remaining": 10,
        "recipients": 50,
        "resets_at": reset,
    }
    assert "50 recipients" in reason["detail"] and reset in reason["detail"]

    # The tenant hears of it as it hears of a completed notification.
    [event] = await session.scalars(
        select(WebhookEvent).where(
            WebhookEvent.tenant_id == tenant.tenant_id, WebhookEvent.type == "notification.refused"
        )
    )
    assert event.ordering_key == notification_id
    assert event.data == {
        "notification_id": notification_id,
        "reason": "quota_exceeded",
        "channel": "inbox",
        "plan": "quota-test",
        "remaining": 10,
        "recipients": 50,
        "resets_at": reset,
    }
    # Nothing held for it, nothing counted: the 10 are still there, and no more.
    assert await holds_of(redis, tenant, notification_id) == {}
    usage = (await client.get("/v1/usage", headers=tenant.headers)).json()
    assert [c["used"] for c in usage["channels"] if c["channel"] == "inbox"] == [0]
    await exactly_left(client, tenant, 10)


async def test_the_notification_choice_beats_the_tenant_setting_both_ways(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls, redis: Redis
) -> None:
    # The tenant sends up to the quota; this notification asks to be refused.
    partial = await on_plan(session, "quota-test")
    await audience_of(client, partial, 50)
    await leave(client, partial, 10)
    refused_id = await broadcast(client, partial, on_quota_exceeded="refuse")
    await dispatch(service_urls, refused_id)
    assert await messages_of(session, refused_id) == {}
    shown = (await client.get(f"/v1/notifications/{refused_id}", headers=partial.headers)).json()
    assert shown["status"] == "refused" and shown["on_quota_exceeded"] == "refuse"
    assert shown["problems"]["quota_exceeded"]["remaining"] == 10
    assert await holds_of(redis, partial, refused_id) == {}

    # The tenant refuses; this notification asks to go out up to the quota.
    refusing = await on_plan(session, "quota-test")
    await choose(client, refusing, "refuse")
    await audience_of(client, refusing, 50)
    await leave(client, refusing, 10)
    partial_id = await broadcast(client, refusing, on_quota_exceeded="send_partial")
    await dispatch(service_urls, partial_id)
    assert_partial(await messages_of(session, partial_id), sent=10, skipped=40)
    shown = (await client.get(f"/v1/notifications/{partial_id}", headers=refusing.headers)).json()
    assert shown["status"] == "dispatched" and shown["on_quota_exceeded"] == "send_partial"
    await exactly_left(client, refusing, 0)


async def test_a_broadcast_that_fits_goes_out_whole_and_its_hold_is_used_up(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls, redis: Redis
) -> None:
    tenant = await on_plan(session, "quota-test")
    await choose(client, tenant, "refuse")
    await audience_of(client, tenant, 10)
    await leave(client, tenant, 10)
    notification_id = await broadcast(client, tenant)
    await dispatch(service_urls, notification_id)
    assert await messages_of(session, notification_id) == {("queued", None): 10}
    quota_held = await session.scalar(
        text("SELECT quota_held FROM notifications WHERE id = :id"),
        {"id": uuid.UUID(notification_id)},
    )
    assert quota_held is True
    assert await holds_of(redis, tenant, notification_id) == {}  # used up by its messages
    usage = (await client.get("/v1/usage", headers=tenant.headers)).json()
    assert [c["used"] for c in usage["channels"] if c["channel"] == "inbox"] == [10]
    await exactly_left(client, tenant, 0)


async def test_what_the_count_held_and_the_audience_did_not_use_goes_back(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls, redis: Redis
) -> None:
    """Counted 10, written 6 (four have no inbox: opted out): the 4 held for them are given
    back once the last page is written."""
    tenant = await on_plan(session, "quota-test")
    await choose(client, tenant, "refuse")
    await audience_of(client, tenant, 10)
    for i in range(4):
        answer = await client.put(
            f"/v1/recipients/fan{i:02d}/preferences",
            headers=tenant.headers,
            json={"categories": {"transactional": {"inbox": False}}},
        )
        assert answer.status_code == 200, answer.text
    await leave(client, tenant, 20)
    notification_id = await broadcast(client, tenant)
    await dispatch(service_urls, notification_id)
    by_status = await messages_of(session, notification_id)
    assert by_status == {("queued", None): 6, ("skipped", "opted_out"): 4}
    assert await holds_of(redis, tenant, notification_id) == {}
    await exactly_left(client, tenant, 14)


async def test_test_mode_and_plans_that_bill_are_never_refused(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    # Test mode has no quota: the whole audience goes, whatever the setting.
    tenant = await on_plan(session, "quota-test")
    await choose(client, tenant, "refuse")
    test_key = await key_of(session, tenant, "test")
    await audience_of(client, test_key, 50)
    await put_template(client, tenant, "hi", INBOX)
    await leave(client, tenant, 10)  # the live quota has 10 left
    notification_id = await broadcast(client, test_key, on_quota_exceeded="refuse")
    await dispatch(service_urls, notification_id)
    assert await messages_of(session, notification_id) == {("queued", None): 50}

    # A plan that bills past its quota (10 here) sends all 50 and bills the 40.
    billed = await on_plan(session, "quota-bill")
    await choose(client, billed, "refuse")
    await audience_of(client, billed, 50)
    notification_id = await broadcast(client, billed)
    await dispatch(service_urls, notification_id)
    assert await messages_of(session, notification_id) == {("queued", None): 50}
    shown = (
        await client.get(f"/v1/notifications/{notification_id}", headers=billed.headers)
    ).json()
    assert shown["status"] == "dispatched"


async def test_bad_choices_are_refused_naming_the_field(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tenant = await on_plan(session, "quota-test")
    await put_template(client, tenant, "hi", INBOX)
    body = {"template": "hi", "to": {"all": True}, "on_quota_exceeded": "maybe"}
    problem = assert_problem(
        await client.post("/v1/notifications", headers=tenant.headers, json=body),
        422,
        "validation_error",
    )
    assert [e["field"] for e in problem["errors"]] == ["on_quota_exceeded"]  # type: ignore[attr-defined]
    # A list's size is known at intake, where it is refused whole: no choice to make.
    listed = {"template": "hi", "to": ["ann"], "on_quota_exceeded": "send_partial"}
    problem = assert_problem(
        await client.post("/v1/notifications", headers=tenant.headers, json=listed),
        422,
        "validation_error",
    )
    assert [e["field"] for e in problem["errors"]] == ["on_quota_exceeded"]  # type: ignore[attr-defined]
    batch = await client.post(
        "/v1/notifications/batch", headers=tenant.headers, json={"notifications": [body]}
    )
    assert batch.status_code == 200, batch.text
    [item] = batch.json()["data"]
    assert item["status"] == 422
    assert [e["field"] for e in item["error"]["errors"]] == ["notifications[0].on_quota_exceeded"]

    # The tenant's setting: checked, named, and a test key may read it but not change it.
    bad = await client.put(
        "/v1/tenant/on-quota-exceeded", headers=tenant.headers, json={"on_quota_exceeded": "no"}
    )
    problem = assert_problem(bad, 422, "validation_error")
    assert [e["field"] for e in problem["errors"]] == ["on_quota_exceeded"]  # type: ignore[attr-defined]
    test_key = await key_of(session, tenant, "test")
    read = await client.get("/v1/tenant/on-quota-exceeded", headers=test_key.headers)
    assert read.json() == {"object": "on_quota_exceeded", "on_quota_exceeded": "send_partial"}
    change = await client.put(
        "/v1/tenant/on-quota-exceeded",
        headers=test_key.headers,
        json={"on_quota_exceeded": "refuse"},
    )
    assert change.status_code == 403
    who = (await client.get("/v1/tenant", headers=tenant.headers)).json()
    assert who["on_quota_exceeded"] == "send_partial"


def test_a_body_without_the_choice_hashes_as_before_it_existed() -> None:
    """An Idempotency-Key accepted before `on_quota_exceeded` existed replays the same."""
    body = NotificationCreate(template="hi", to=["ann"])
    before = (
        b'{"category":null,"channels":null,"data":{},"locale":null,"priority":"normal",'
        b'"send_at":null,"template":"hi","to":["ann"]}'
    )
    assert request_hash(body) == hashlib.sha256(before).hexdigest()


async def test_pages_use_the_audience_hold_first_then_what_is_left(
    service_urls: ServiceUrls, redis: Redis
) -> None:
    """The counted audience covers a page first; recipients beyond it (joined after the
    count) get what the quota has left, up to the quota."""
    meter = Meter(redis)
    tenant, period = uuid.uuid4(), period_of(utcnow())
    await meter.seed(tenant, period, {"inbox": 80})  # 20 left of 100
    note, later = uuid.uuid4(), utcnow() + timedelta(hours=1)

    def ask(n: int) -> Reservation:
        return Reservation(tenant, note, period, later, [("inbox", n, 100)])

    assert await meter.reserve([ask(15)]) == [None]  # the audience, held whole: 5 left
    assert await meter.take_held(ask(12)) == [12]  # a page inside the hold
    # It is used up as a page's messages are counted: 3 of the hold left.
    from app.usage.meter import Count

    await meter.record([Count(tenant, period, "inbox", 12, held_for=note)])
    assert await meter.take_held(ask(10)) == [8]  # 3 held + the 5 left; 2 to skip
    held = await redis.hget(f"{PREFIX}holds:{tenant}", f"{note}|inbox")  # type: ignore[misc]
    assert int(held) == 8
    assert await meter.take_held(ask(1)) == [1]  # covered by its own hold, not the quota


async def test_the_dashboard_shows_the_refusal(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    tenant = await on_plan(session, "quota-test")
    await audience_of(client, tenant, 50)
    await leave(client, tenant, 10)
    notification_id = await broadcast(client, tenant, on_quota_exceeded="refuse")
    await dispatch(service_urls, notification_id)
    async with signed_in(app, session, tenant.tenant_id, "viewer") as viewer:
        page = await viewer.get(f"/notifications/{notification_id}")
        assert page.status_code == 200
        assert 'id="notification-status">refused<' in page.text
        refusal = page.text.split('id="refusal"', 1)[1].split("</section>", 1)[0]
        assert "Refused: larger than the quota left" in refusal
        assert "quota-test" in refusal and "50 recipients" in refusal
        assert "no message was written or counted" in refusal
        assert "Never: it was refused" in page.text
        listed = await viewer.get("/notifications?status=refused")
        assert listed.status_code == 200 and notification_id in listed.text


async def test_a_run_that_held_the_audience_and_died_before_its_commit_holds_nothing_twice(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls, redis: Redis
) -> None:
    """The hold is in Redis before the first page commits: a run killed between the two
    leaves the hold and no `quota_held`. The next run holds again in its place, not on top of
    it (10 left, 10 asked: it fits), and sends every message once."""
    tenant = await on_plan(session, "quota-test")
    await choose(client, tenant, "refuse")
    await audience_of(client, tenant, 10)
    await leave(client, tenant, 10)
    notification_id = await broadcast(client, tenant)
    # What the dead run left: the audience held for this notification, nothing committed.
    meter = Meter(redis)
    period = period_of(utcnow())
    lost_run = Reservation(
        tenant.tenant_id,
        uuid.UUID(notification_id),
        period,
        utcnow(),
        [("inbox", 10, 1000)],
    )
    assert await meter.reserve([lost_run]) == [None]
    assert await holds_of(redis, tenant, notification_id) == {"inbox": 10}

    await dispatch(service_urls, notification_id)
    assert await messages_of(session, notification_id) == {("queued", None): 10}
    assert await holds_of(redis, tenant, notification_id) == {}
    await exactly_left(client, tenant, 0)
