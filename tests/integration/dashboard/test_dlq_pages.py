"""The dead-letter queue pages over HTTP, as a browser drives them: groups with their counts,
a group's messages, one message with its attempts; replay and discard in two steps (a dry
run that changes nothing, then a confirmation carrying the count), refused to viewers and
to posts without a CSRF token, and blind to other tenants' and the other mode's messages.

Failed messages are made for real: a notification to an address the sandbox provider always
refuses, delivered by the real workers.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui import dlq as dlq_pages
from app.audit.models import AuditEntry
from app.notifications.models import Message
from app.runtime import ServiceUrls
from tests.integration.dashboard.as_member import post, signed_in, text_of
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, make_tenant, settings_for

EMAIL = {"email": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}"}}
GROUP = {"group": "1", "error_class": "permanent", "provider": "sandbox", "code": "400"}
GROUP_PAGE = "/dlq/group?error_class=permanent&provider=sandbox&code=400"


@pytest.fixture
async def sandbox(session: AsyncSession) -> TenantKey:
    return await make_tenant(session, "Sandboxed", mode="test")


async def failed_messages(
    api: httpx.AsyncClient,
    tenant: TenantKey,
    service_urls: ServiceUrls,
    recipients: list[str],
    *,
    render_failure: bool = False,
) -> list[str]:
    """Messages to `recipients` refused by the sandbox (and, if asked, one that fails to
    render), delivered by real workers; their ids, in the order of `recipients`."""
    await put_template(api, tenant, "hello", EMAIL)
    ids = []
    for external_id in recipients:
        await put_recipient(api, tenant, external_id, email="fail@sandbox.herald")
    accepted = [
        await notify(api, tenant, template="hello", to=[r], data={"name": "x"}) for r in recipients
    ]
    if render_failure:
        await put_recipient(api, tenant, "unrendered", email="fail@sandbox.herald")
        accepted.append(await notify(api, tenant, template="hello", to=["unrendered"], data={}))
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)
    for one in accepted:
        [message] = (await notification(api, tenant, one["id"]))["messages"]
        assert message["status"] == "failed", message
        ids.append(message["id"])
    return ids


async def status_of(session: AsyncSession, message_id: str) -> tuple[str, str | None]:
    session.expire_all()
    message = await session.get(Message, uuid.UUID(message_id), populate_existing=True)
    assert message is not None
    return message.status, message.skip_reason


async def test_empty_queue_says_what_lands_here(
    app: Litestar, session: AsyncSession, sandbox: TenantKey
) -> None:
    async with signed_in(app, session, sandbox) as owner:
        page = await owner.get("/dlq")
    assert page.status_code == 200
    assert "No dead letters in test data" in page.text
    assert 'class="group-row"' not in page.text


async def test_groups_items_and_dry_run_change_nothing(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
) -> None:
    first, second, unrendered = await failed_messages(
        client, sandbox, service_urls, ["bad1", "bad2"], render_failure=True
    )
    async with signed_in(app, session, sandbox) as owner:
        groups = await owner.get("/dlq")
        assert groups.status_code == 200
        rows = re.findall(r'<tr class="group-row">(.*?)</tr>', groups.text, re.S)
        assert len(rows) == 2
        assert "permanent" in rows[0] and "<code>400</code>" in rows[0]
        assert "<strong>2</strong>" in rows[0]  # the larger group first
        assert "render" in rows[1] and "<strong>1</strong>" in rows[1]
        assert "3 messages in 2 groups" in text_of(groups)

        group = await owner.get(GROUP_PAGE)
        assert group.status_code == 200
        assert first in group.text and second in group.text and unrendered not in group.text
        assert len(re.findall(r'<tr id="item-', group.text)) == 2
        render_group = await owner.get("/dlq/group?error_class=render&provider=&code=")
        assert unrendered in render_group.text and first not in render_group.text

        newer, older = sorted((first, second), reverse=True)
        # However many dead letters there are, the groups page counts the newest only.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(dlq_pages, "GROUPS_SCAN", 2)
            capped = await owner.get("/dlq")
        assert "Counts of the newest 2 dead letters; there are more" in text_of(capped)
        assert sum(int(n) for n in re.findall(r"<strong>(\d+)</strong>", capped.text)) == 2

        paged = await owner.get(f"{GROUP_PAGE}&cursor={newer}")  # the page after the newest
        assert older in paged.text and f'href="/dlq/{newer}"' not in paged.text

        item = await owner.get(f"/dlq/{first}")
        assert item.status_code == 200
        assert 'id="attempts"' in item.text and "sandbox" in item.text
        assert re.search(r'<pre class="error-text" id="last-error">[^<]+</pre>', item.text)

        dry = await post(owner, "/dlq/replay/preview", GROUP, htmx=True)
        assert dry.status_code == 200
        assert "<html" not in dry.text  # a partial for htmx
        assert "2 messages will be replayed" in text_of(dry)
        assert 'name="expected" value="2"' in dry.text
        # Without JavaScript the same step is a whole page.
        page = await post(owner, "/dlq/discard/preview", GROUP)
        assert "<html" in page.text and "2 messages will be discarded" in text_of(page)
        one = await post(owner, "/dlq/replay/preview", {"message": first})
        assert "1 message will be replayed" in text_of(one)
        none = await post(owner, "/dlq/replay/preview", {"message": unrendered})
        assert "No message to replay" in none.text

    assert [await status_of(session, m) for m in (first, second, unrendered)] == [
        ("failed", None)
    ] * 3
    audit = await session.scalars(
        select(AuditEntry).where(AuditEntry.tenant_id == sandbox.tenant_id)
    )
    assert not [e for e in audit if e.action.startswith("dlq.")]


async def test_replay_one_then_the_group_requeues(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
) -> None:
    first, second, third = await failed_messages(client, sandbox, service_urls, ["r1", "r2", "r3"])
    async with signed_in(app, session, sandbox) as owner:
        done = await post(owner, "/dlq/replay", {"message": first, "expected": "1"}, htmx=True)
        assert done.status_code == 200, done.text
        assert "1 message replayed" in text_of(done)
        assert "dlq-changed" in done.headers["hx-trigger"]  # the page's tables reload
        assert await status_of(session, first) == ("queued", None)

        # A confirmation whose count no longer holds acts on nothing and asks again.
        stale = await post(owner, "/dlq/replay", {**GROUP, "expected": "3"})
        assert stale.status_code == 200
        assert "The count changed since you checked it: 3 then, 2 now" in text_of(stale)
        assert 'name="expected" value="2"' in stale.text
        assert await status_of(session, second) == ("failed", None)

        group = await post(owner, "/dlq/replay", {**GROUP, "expected": "2"})
        assert group.status_code == 200
        assert "2 messages replayed" in text_of(group)
    assert [await status_of(session, m) for m in (first, second, third)] == [("queued", None)] * 3
    audit = await session.scalars(
        select(AuditEntry)
        .where(AuditEntry.tenant_id == sandbox.tenant_id, AuditEntry.action == "dlq.replayed")
        .order_by(AuditEntry.seq)
    )
    entries = list(audit)
    assert [e.details["count"] for e in entries] == [1, 2]
    assert all(e.actor.startswith("user:owner-") for e in entries)


async def test_discard_one_and_a_group(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
) -> None:
    first, second, third = await failed_messages(client, sandbox, service_urls, ["d1", "d2", "d3"])
    async with signed_in(app, session, sandbox) as owner:
        one = await post(owner, "/dlq/discard", {"message": first, "expected": "1"}, htmx=True)
        assert "1 message discarded" in text_of(one)
        assert await status_of(session, first) == ("cancelled", "discarded")
        assert await status_of(session, second) == ("failed", None)
        dry = await post(owner, "/dlq/discard/preview", GROUP)
        assert "2 messages will be discarded" in text_of(dry)
        group = await post(owner, "/dlq/discard", {**GROUP, "expected": "2"})
        assert "2 messages discarded" in text_of(group)
        assert "No dead letters" in (await owner.get("/dlq")).text
    for message_id in (second, third):
        assert await status_of(session, message_id) == ("cancelled", "discarded")


POSTS: list[tuple[str, dict[str, Any]]] = [
    ("/dlq/replay/preview", GROUP),
    ("/dlq/discard/preview", GROUP),
    ("/dlq/replay", {**GROUP, "expected": "1"}),
    ("/dlq/discard", {**GROUP, "expected": "1"}),
]


async def test_viewers_and_posts_without_a_token_are_refused(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
) -> None:
    [message_id] = await failed_messages(client, sandbox, service_urls, ["v1"])
    async with signed_in(app, session, sandbox, role="viewer") as viewer:
        for page in ("/dlq", GROUP_PAGE, f"/dlq/{message_id}"):
            shown = await viewer.get(page)
            assert shown.status_code == 200
            assert message_id in shown.text or "<strong>1</strong>" in shown.text
            assert "/dlq/replay/preview" not in shown.text  # no buttons for a viewer
        for path, fields in POSTS:
            for htmx in (False, True):
                refused = await post(viewer, path, fields, htmx=htmx)
                assert refused.status_code == 403, (path, htmx)
            refused = await post(viewer, path, {"message": message_id, "expected": "1"})
            assert refused.status_code == 403
    async with signed_in(app, session, sandbox) as owner:
        for path, fields in POSTS:
            no_token = await owner.post(path, data=fields)
            assert no_token.status_code == 403, path
            assert "This form has expired" in no_token.text
            forged = await owner.post(path, data={**fields, "_csrf_token": "1.bad"})
            assert forged.status_code == 403, path
    assert await status_of(session, message_id) == ("failed", None)


async def test_other_tenants_and_the_other_mode_are_not_found(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
) -> None:
    other = await make_tenant(session, "Globex", mode="test")
    [theirs] = await failed_messages(client, other, service_urls, ["x1"])
    [ours] = await failed_messages(client, sandbox, service_urls, ["o1"])
    async with signed_in(app, session, sandbox) as owner:
        assert (await owner.get(f"/dlq/{theirs}")).status_code == 404
        assert theirs not in (await owner.get(GROUP_PAGE)).text
        assert "<strong>1</strong>" in (await owner.get("/dlq")).text  # ours only
        for path in ("/dlq/replay/preview", "/dlq/discard/preview"):
            assert (await post(owner, path, {"message": theirs})).status_code == 404
        for path in ("/dlq/replay", "/dlq/discard"):
            answer = await post(owner, path, {"message": theirs, "expected": "1"})
            assert answer.status_code == 404
        # The same member looking at live data: the test message is not there.
        await post(owner, "/mode", {"mode": "live"})
        assert (await owner.get(f"/dlq/{ours}")).status_code == 404
        assert (await post(owner, "/dlq/replay/preview", {"message": ours})).status_code == 404
        replayed = await post(owner, "/dlq/replay", {"message": ours, "expected": "1"})
        assert replayed.status_code == 404
        assert "No dead letters" in (await owner.get("/dlq")).text
        group_replay = await post(owner, "/dlq/replay", {**GROUP, "expected": "0"})
        assert "No message to replay" in group_replay.text
    assert await status_of(session, theirs) == ("failed", None)
    assert await status_of(session, ours) == ("failed", None)


@pytest.mark.parametrize(
    "path",
    [
        "/dlq/group?error_class=nope&provider=&code=",
        "/dlq/group?error_class=permanent&provider=sandbox&code=4000",
        "/dlq/group?error_class=permanent&provider=sandbox&code=abc",
        f"/dlq/group?error_class=permanent&provider={'p' * 33}&code=",
        f"{GROUP_PAGE}&cursor=not-a-cursor",
        f"{GROUP_PAGE}&cursor={'0' * 400}",
    ],
)
async def test_bad_query_is_422_naming_the_field(
    app: Litestar, session: AsyncSession, sandbox: TenantKey, path: str
) -> None:
    field = re.search(r"(error_class|code|provider|cursor)=(nope|4000|abc|p{33}|not|0{400})", path)
    assert field
    async with signed_in(app, session, sandbox) as owner:
        page = await owner.get(path)
    assert page.status_code == 422
    assert f"{field.group(1)}:" in page.text


@pytest.mark.parametrize(
    ("path", "fields", "field"),
    [
        ("/dlq/replay/preview", {"message": "not-an-id"}, "message"),
        ("/dlq/replay/preview", {"message": f"{uuid.uuid4()}{'0' * 5000}"}, "message"),
        ("/dlq/replay/preview", {}, "message"),
        ("/dlq/discard/preview", {**GROUP, "error_class": "x" * 5000}, "error_class"),
        ("/dlq/replay", {**GROUP, "expected": "-1"}, "expected"),
        ("/dlq/discard", {**GROUP, "expected": "9" * 30}, "expected"),
    ],
)
async def test_bad_form_is_422_naming_the_field(
    app: Litestar,
    session: AsyncSession,
    sandbox: TenantKey,
    path: str,
    fields: dict[str, str],
    field: str,
) -> None:
    async with signed_in(app, session, sandbox) as owner:
        answer = await post(owner, path, fields)
    assert answer.status_code == 422
    assert f"{field}:" in answer.text
