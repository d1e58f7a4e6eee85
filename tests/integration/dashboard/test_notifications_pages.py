"""The notifications pages over HTTP, as a browser drives them: the list (newest first,
filtered, a page at a time), a notification's totals by status from the tallies, its
audience and template; cancel, pause and resume, refused to viewers and to posts without a
CSRF token, and blind to other tenants' and the other mode's notifications.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.notifications import queries
from app.notifications.models import Notification
from app.runtime import ServiceUrls
from tests.integration.dashboard.as_member import post, signed_in, text_of
from tests.send_path import drain, notify, put_recipient, put_template, workers
from tests.support import TenantKey, make_tenant, settings_for

EMAIL = {"email": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}"}}


@pytest.fixture
async def sandbox(session: AsyncSession) -> TenantKey:
    return await make_tenant(session, "Sandboxed", mode="test")


async def accepted(api: httpx.AsyncClient, tenant: TenantKey, template: str = "hello") -> str:
    """A notification accepted and not dispatched (no worker runs): it can be paused."""
    await put_template(api, tenant, template, EMAIL)
    await put_recipient(api, tenant, "ann", email="ann@example.com")
    return str((await notify(api, tenant, template=template, to=["ann"], data={"name": "A"}))["id"])


async def status_of(session: AsyncSession, notification_id: str) -> str:
    session.expire_all()
    found = await session.get(Notification, uuid.UUID(notification_id), populate_existing=True)
    assert found is not None
    return found.status


def listed(page: httpx.Response) -> list[str]:
    return re.findall(r'<tr id="notification-([0-9a-f-]{36})"', page.text)


async def test_empty_list_says_how_to_send_the_first(
    app: Litestar, session: AsyncSession, sandbox: TenantKey
) -> None:
    async with signed_in(app, session, sandbox) as owner:
        page = await owner.get("/notifications")
    assert page.status_code == 200
    assert "No notifications in test data yet" in page.text
    assert "hk_test_" in page.text and "/keys" in page.text


async def test_list_is_newest_first_filtered_and_paged(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, sandbox: TenantKey
) -> None:
    hello = await accepted(client, sandbox, "hello")
    await put_template(client, sandbox, "digest", EMAIL)
    batch = await client.post(
        "/v1/notifications/batch",
        headers=sandbox.headers,
        json={
            "notifications": [
                {"template": "digest", "to": ["ann"], "data": {"name": str(i)}} for i in range(51)
            ]
        },
    )
    assert batch.status_code == 200 and batch.json()["accepted"] == 51, batch.text
    digests = sorted((r["notification"]["id"] for r in batch.json()["data"]), reverse=True)
    cancelled = await client.post(f"/v1/notifications/{hello}/cancel", headers=sandbox.headers)
    assert cancelled.status_code == 200

    async with signed_in(app, session, sandbox) as owner:
        first = await owner.get("/notifications")
        assert first.status_code == 200
        assert listed(first) == digests[:50]  # newest first, 50 a page
        older = re.search(r'rel="next" href="(/notifications\?cursor=[0-9a-f-]{36})"', first.text)
        assert older
        second = await owner.get(older.group(1))
        assert listed(second) == [digests[50], hello]
        assert 'rel="next"' not in second.text

        only = await owner.get("/notifications?status=cancelled")
        assert listed(only) == [hello]
        assert listed(await owner.get("/notifications?template=hello")) == [hello]
        none = await owner.get("/notifications?since=2999-01-01T00:00")
        assert listed(none) == [] and "No notification matches these filters" in none.text
        assert len(listed(await owner.get("/notifications?until=2999-01-01T00:00"))) == 50
        # A filter searches a bounded number of notifications per page, and says so.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(queries, "LIST_SCAN", 20)
            searched = await owner.get("/notifications?status=cancelled")
            assert listed(searched) == []
            assert "None of the 20 notifications searched matches" in text_of(searched)
            onward = re.search(
                r'href="(/notifications\?status=cancelled&amp;cursor=[^"]+)"', searched.text
            )
            assert onward, searched.text
            rest = await owner.get(onward.group(1).replace("&amp;", "&"))
            assert listed(rest) == []  # the next 20
            last = re.search(
                r'href="(/notifications\?status=cancelled&amp;cursor=[^"]+)"', rest.text
            )
            assert last
            found = await owner.get(last.group(1).replace("&amp;", "&"))
            assert listed(found) == [hello]  # the 52nd, in the third window
            assert 'id="searched-to"' not in found.text  # the search reached the oldest

        # htmx asks for the results only, and gets the filters kept in the pager.
        partial = await owner.get("/notifications?template=digest", headers={"HX-Request": "true"})
        assert "<html" not in partial.text and len(listed(partial)) == 50
        assert "template=digest&amp;cursor=" in partial.text


async def test_detail_totals_targets_and_messages_link(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
) -> None:
    await put_template(client, sandbox, "hello", EMAIL)
    await put_recipient(client, sandbox, "good", email="good@example.com")
    await put_recipient(client, sandbox, "bad", email="fail@sandbox.herald")
    sent = await notify(client, sandbox, template="hello", to=["good", "bad"], data={"name": "x"})
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)

    async with signed_in(app, session, sandbox) as owner:
        listing = await owner.get("/notifications")
        assert "1 sent" in text_of(listing) and "1 failed" in text_of(listing)
        page = await owner.get(f"/notifications/{sent['id']}")
        assert page.status_code == 200
        totals = dict(
            re.findall(
                r'data-status="(\w+)"><span class="figure-value[^"]*">(\d+)</span>', page.text
            )
        )
        assert totals == {"sent": "1", "failed": "1"}
        assert re.search(
            r'<span class="figure-value">2</span><span class="figure-label">messages', page.text
        )
        assert f'href="/messages?notification={sent["id"]}"' in page.text
        assert '<span class="chip">good</span>' in page.text
        assert '<span class="chip">bad</span>' in page.text
        assert 'href="/templates/hello"' in page.text
        assert 'href="/dlq"' in page.text  # it has failed messages: they are dead letters
        # Dispatched and partly sent: it can still be cancelled or paused, not resumed.
        assert "/cancel" in page.text and "/pause" in page.text and "/resume" not in page.text


async def test_pause_resume_and_cancel(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, sandbox: TenantKey
) -> None:
    notification_id = await accepted(client, sandbox)
    base = f"/notifications/{notification_id}"
    async with signed_in(app, session, sandbox) as owner:
        paused = await post(owner, f"{base}/pause", {}, htmx=True)
        assert paused.status_code == 200, paused.text
        assert "<html" not in paused.text and "Paused: nothing more is sent" in paused.text
        assert f"{base}/resume" in paused.text and f"{base}/pause" not in paused.text
        assert await status_of(session, notification_id) == "paused"

        again = await post(owner, f"{base}/pause", {}, htmx=True)
        assert again.status_code == 409
        assert "is paused: it cannot be paused" in again.text

        resumed = await post(owner, f"{base}/resume", {})  # without JavaScript
        assert resumed.status_code == 303
        assert resumed.headers["location"] == f"{base}?done=resumed"
        assert await status_of(session, notification_id) == "accepted"

        cancelled = await post(owner, f"{base}/cancel", {})
        assert cancelled.headers["location"] == f"{base}?done=cancelled"
        page = await owner.get(cancelled.headers["location"])
        assert "Cancelled: messages not handed" in page.text
        assert f"{base}/cancel" not in page.text  # nothing left to do
        assert await status_of(session, notification_id) == "cancelled"
        assert (await post(owner, f"{base}/resume", {})).status_code == 409
    audit = await session.scalars(
        select(AuditEntry.action)
        .where(
            AuditEntry.tenant_id == sandbox.tenant_id,
            AuditEntry.target == f"notification:{notification_id}",
        )
        .order_by(AuditEntry.id)
    )
    assert list(audit) == ["notification.paused", "notification.resumed", "notification.cancelled"]


async def test_viewers_and_posts_without_a_token_are_refused(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, sandbox: TenantKey
) -> None:
    notification_id = await accepted(client, sandbox)
    base = f"/notifications/{notification_id}"
    async with signed_in(app, session, sandbox, role="viewer") as viewer:
        page = await viewer.get(base)
        assert page.status_code == 200 and "/cancel" not in page.text
        assert notification_id in (await viewer.get("/notifications")).text
        for action in ("cancel", "pause", "resume"):
            for htmx in (False, True):
                assert (await post(viewer, f"{base}/{action}", {}, htmx=htmx)).status_code == 403
    async with signed_in(app, session, sandbox, role="developer") as developer:
        for action in ("cancel", "pause", "resume"):
            refused = await developer.post(f"{base}/{action}", data={})
            assert refused.status_code == 403 and "This form has expired" in refused.text
            forged = await developer.post(f"{base}/{action}", data={"_csrf_token": "1.x"})
            assert forged.status_code == 403
    assert await status_of(session, notification_id) == "accepted"


async def test_other_tenants_and_the_other_mode_are_not_found(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, sandbox: TenantKey
) -> None:
    other = await make_tenant(session, "Globex", mode="test")
    theirs = await accepted(client, other, "globex-only")
    ours = await accepted(client, sandbox)
    async with signed_in(app, session, sandbox) as owner:
        assert (await owner.get(f"/notifications/{theirs}")).status_code == 404
        listing = await owner.get("/notifications")
        assert listed(listing) == [ours] and "globex-only" not in listing.text
        for action in ("cancel", "pause", "resume"):
            answer = await post(owner, f"/notifications/{theirs}/{action}", {})
            assert answer.status_code == 404
        await post(owner, "/mode", {"mode": "live"})
        assert (await owner.get(f"/notifications/{ours}")).status_code == 404
        assert listed(await owner.get("/notifications")) == []
        assert (await post(owner, f"/notifications/{ours}/cancel", {})).status_code == 404
    assert await status_of(session, theirs) == "accepted"
    assert await status_of(session, ours) == "accepted"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=nope", "status"),
        (f"template={'t' * 101}", "template"),
        ("since=yesterday", "since"),
        (f"until={'2' * 40}", "until"),
        ("cursor=abc", "cursor"),
    ],
)
async def test_bad_filters_are_422_naming_the_field(
    app: Litestar, session: AsyncSession, sandbox: TenantKey, query: str, field: str
) -> None:
    async with signed_in(app, session, sandbox) as owner:
        page = await owner.get(f"/notifications?{query}")
        assert page.status_code == 422
        assert f"{field}:" in page.text
        partial = await owner.get(f"/notifications?{query}", headers={"HX-Request": "true"})
        assert partial.status_code == 422
