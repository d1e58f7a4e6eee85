"""The delivery log and the message page, over HTTP as a browser sees them.

Messages are made the real way: a test key sends notifications through the API and real
workers dispatch and deliver them to the sandbox provider (one sent, one refused, one
skipped for want of an address, one SMS). Another tenant's message and the other mode's
data must never show; every filter narrows the log; bad filters are a 422 naming the field;
the live partial returns what was made since the page was read, and only that.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications import log
from app.runtime import ServiceUrls
from tests.dashboard import (
    PASSWORD,
    browser,
    create_key,
    post_form,
    sign_in,
    sign_up,
    unique_email,
)
from tests.integration.dashboard.test_dashboard import add_member
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, settings_for

WELCOME = {
    "email": {
        "subject": "Welcome {{ name }}",
        "html": "<p>Hello <b>{{ name }}</b></p><script>alert('x')</script>",
        "text": "Hello {{ name }}",
    }
}
OTP = {"sms": {"text": "Your code is {{ code }}"}}
ROW = re.compile(r'<tr id="msg-([0-9a-f-]{36})"')
LIVE = re.compile(r'hx-get="(/messages/live\?[^"]+)"')


@dataclass
class Scenario:
    owner: httpx.AsyncClient  # signed in to Acme, viewing test data
    key: TenantKey
    welcome: str  # notification ids
    otp: str
    sent: str  # message ids
    failed: str
    skipped: str
    sms: str
    other: str  # Globex's message
    other_owner: httpx.AsyncClient
    email: str  # the owner's


async def run_workers(service_urls: ServiceUrls) -> None:
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)


async def key_of(client: httpx.AsyncClient, api: httpx.AsyncClient) -> TenantKey:
    created = await create_key(client, scopes=("send", "read", "manage"))
    tenant = await api.get("/v1/tenant", headers={"Authorization": f"Bearer {created.secret}"})
    assert tenant.status_code == 200, tenant.text
    return TenantKey(uuid.UUID(tenant.json()["id"]), created.key_id, created.secret)


async def messages_of(
    api: httpx.AsyncClient, key: TenantKey, notification_id: str
) -> dict[str, Any]:
    """The notification's messages by recipient (and channel, for the SMS)."""
    found = (await notification(api, key, notification_id))["messages"]
    return {f"{m['recipient']}:{m['channel']}": m for m in found}


@pytest.fixture(scope="module")
async def scenario(app: Litestar, service_urls: ServiceUrls) -> AsyncIterator[Scenario]:
    async with (
        browser(app) as owner,
        browser(app) as other_owner,
        browser(app) as api,
    ):
        email = unique_email()
        assert (await sign_up(owner, email, company="Acme")).status_code == 303
        assert (await sign_up(other_owner, unique_email(), company="Globex")).status_code == 303
        key = await key_of(owner, api)
        other = await key_of(other_owner, api)
        await put_template(api, key, "welcome", WELCOME)
        await put_template(api, key, "otp", OTP)
        await put_recipient(api, key, "ann", email="ann@example.com", phone="+14155550123")
        await put_recipient(api, key, "bob", email="fail@sandbox.herald")
        await put_recipient(api, key, "cy", phone="+14155550124")
        welcome = await notify(
            api, key, template="welcome", to=["ann", "bob", "cy"], data={"name": "Ann"}
        )
        otp = await notify(api, key, template="otp", to=["ann"], data={"code": "123456"})
        await put_template(api, other, "welcome", WELCOME)
        await put_recipient(api, other, "zed-globex", email="zed@globex.example")
        theirs = await notify(api, other, template="welcome", to=["zed-globex"], data={"name": "Z"})
        await run_workers(service_urls)
        mine = await messages_of(api, key, welcome["id"])
        sms = await messages_of(api, key, otp["id"])
        [other_message] = (await messages_of(api, other, theirs["id"])).values()
        assert mine["ann:email"]["status"] == "sent"
        assert mine["bob:email"]["status"] == "failed"
        assert mine["cy:email"]["status"] == "skipped"
        assert sms["ann:sms"]["status"] == "sent"
        yield Scenario(
            owner=owner,
            key=key,
            welcome=welcome["id"],
            otp=otp["id"],
            sent=mine["ann:email"]["id"],
            failed=mine["bob:email"]["id"],
            skipped=mine["cy:email"]["id"],
            sms=sms["ann:sms"]["id"],
            other=other_message["id"],
            other_owner=other_owner,
            email=email,
        )


def rows(page: httpx.Response) -> list[str]:
    return ROW.findall(page.text)


async def shown(scenario: Scenario, **params: str) -> set[str]:
    page = await scenario.owner.get("/messages", params=params)
    assert page.status_code == 200, page.text
    return set(rows(page))


async def test_the_log_lists_the_tenants_messages_newest_first(scenario: Scenario) -> None:
    page = await scenario.owner.get("/messages")
    assert page.status_code == 200
    assert "Delivery log" in page.text
    listed = rows(page)
    assert set(listed) == {scenario.sent, scenario.failed, scenario.skipped, scenario.sms}
    assert listed == sorted(listed, reverse=True), "newest first"
    assert scenario.other not in page.text
    assert "zed-globex" not in page.text
    # Page one follows new messages; the CSP allows no inline script for it to need.
    assert 'hx-trigger="every 2s"' in page.text
    assert 'hx-swap="afterbegin"' in page.text
    assert "<script>" not in page.text.split("</head>", 1)[1]


async def test_each_filter_narrows_the_log(scenario: Scenario) -> None:
    s = scenario
    everything = {s.sent, s.failed, s.skipped, s.sms}
    now = datetime.now(UTC)
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({"status": "failed"}, {s.failed}),
        ({"status": "skipped"}, {s.skipped}),
        ({"status": "sent"}, {s.sent, s.sms}),
        ({"status": "bounced"}, set()),
        ({"channel": "sms"}, {s.sms}),
        ({"channel": "email"}, {s.sent, s.failed, s.skipped}),
        ({"recipient": "ann"}, {s.sent, s.sms}),
        ({"recipient": "nobody"}, set()),
        ({"template": "otp"}, {s.sms}),
        ({"template": "welcome"}, {s.sent, s.failed, s.skipped}),
        ({"notification": s.welcome}, {s.sent, s.failed, s.skipped}),
        ({"provider": "sandbox"}, {s.sent, s.failed, s.sms}),
        ({"error_class": "permanent"}, {s.failed}),
        ({"error_class": "transient"}, set()),
        ({"since": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")}, everything),
        ({"since": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")}, set()),
        ({"until": (now - timedelta(hours=1)).isoformat()}, set()),
        ({"until": (now + timedelta(hours=1)).isoformat()}, everything),
        ({"template": "welcome", "status": "failed"}, {s.failed}),
        ({"recipient": "ann", "channel": "sms", "template": "otp"}, {s.sms}),
        # Another tenant's notification is nobody's here.
        ({"notification": str(uuid.uuid4())}, set()),
    ]
    for params, expected in cases:
        assert await shown(scenario, **params) == expected, params
    filtered = await scenario.owner.get("/messages", params={"status": "bounced"})
    assert "No message matches these filters" in filtered.text
    assert '<option value="bounced" selected>' in filtered.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"channel": "fax"}, "channel"),
        ({"provider": "pigeon"}, "provider"),
        ({"error_class": "cosmic"}, "error_class"),
        ({"notification": "not-an-id"}, "notification"),
        ({"since": "yesterday"}, "since"),
        ({"until": "9" * 41}, "until"),
        ({"since": "2026-12-05T10:00", "until": "2026-12-05T09:00"}, "until"),
        ({"recipient": "r" * 201}, "recipient"),
        ({"recipient": "bad\x07id"}, "recipient"),
        ({"template": "no spaces"}, "template"),
        ({"template": "t" * 101}, "template"),
        ({"cursor": "!!not a cursor!!"}, "cursor"),
        ({"cursor": "AAAA"}, "cursor"),
    ],
)
async def test_bad_filters_are_refused_naming_the_field(
    scenario: Scenario, params: dict[str, str], field: str
) -> None:
    page = await scenario.owner.get("/messages", params=params)
    assert page.status_code == 422, page.text
    if field == "cursor":
        assert "This page link is damaged" in page.text
    else:
        assert f'id="error-{field}"' in page.text
        assert f'id="filter-{field}" ' in page.text
    assert not rows(page)


async def test_older_pages_follow_the_cursor_and_do_not_poll(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases: list[dict[str, str]] = [{}, {"template": "welcome"}, {"channel": "email"}]
    expected = [await shown(scenario, **params) for params in cases]
    monkeypatch.setattr(log, "PAGE_SIZE", 2)
    for params, whole in zip(cases, expected, strict=True):
        seen: list[str] = []
        page = await scenario.owner.get("/messages", params=params)
        while True:
            assert page.status_code == 200
            seen += rows(page)
            older = re.search(r'href="([^"]+)" rel="next"', page.text)
            if older is None:
                break
            page = await scenario.owner.get(html.unescape(older.group(1)))
            assert 'hx-trigger="every 2s"' not in page.text, "older pages do not poll"
            assert "Back to the newest" in page.text
        assert len(seen) == len(set(seen)), "no message twice"
        assert set(seen) == whole, params
        assert len(seen) > 2, "more than one page"


async def test_the_template_filter_pages_through_notifications(
    session: AsyncSession, scenario: Scenario
) -> None:
    """Under the template filter the order is notification, then message; the cursor names
    both, and a page that read TEMPLATE_SCAN notifications carries on after them."""
    tenant_id, mode = scenario.key.tenant_id, "test"
    filters = log.LogFilters(template="welcome")
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = await log.log_page(
            session, tenant_id=tenant_id, mode=mode, filters=filters, cursor=cursor, limit=1
        )
        seen += [row.message.id for row in page.rows]
        if page.older is None:
            break
        cursor = log.Cursor.decode(page.older.encode())
        assert cursor == page.older
    s = scenario
    assert sorted(map(str, seen)) == sorted([s.sent, s.failed, s.skipped])
    assert seen == sorted(seen, reverse=True)


async def test_the_live_partial_returns_only_newer_matching_messages(
    scenario: Scenario, app: Litestar, service_urls: ServiceUrls
) -> None:
    s = scenario
    page = await s.owner.get("/messages")
    sms_page = await s.owner.get("/messages", params={"channel": "sms"})
    live, sms_live = (html.unescape(LIVE.findall(p.text)[0]) for p in (page, sms_page))
    assert "channel=sms" in sms_live
    quiet = await s.owner.get(live, headers={"HX-Request": "true"})
    assert quiet.status_code == 200
    assert rows(quiet) == []
    assert 'id="log-live" hx-swap-oob="true"' in quiet.text

    async with browser(app) as api:
        await put_recipient(api, s.key, "dee", email="dee@example.com")
        sent = await notify(api, s.key, template="welcome", to=["dee"], data={"name": "Dee"})
        await run_workers(service_urls)
        [fresh] = (await messages_of(api, s.key, sent["id"])).values()
    update = await s.owner.get(live, headers={"HX-Request": "true"})
    assert update.status_code == 200
    assert rows(update) == [fresh["id"]]
    assert "is-new" in update.text
    # The poller comes back with the new mark: polling again brings nothing twice.
    again = html.unescape(LIVE.findall(update.text)[0])
    assert again != live
    assert rows(await s.owner.get(again, headers={"HX-Request": "true"})) == []
    # The filters hold: an e-mail is not news to a log of SMS.
    assert rows(await s.owner.get(sms_live, headers={"HX-Request": "true"})) == []
    # Nor to another tenant's log, polled from the same mark.
    mark = re.search(r"after=([^&\"]+)", live)
    assert mark
    theirs = await s.other_owner.get(
        f"/messages/live?after={mark.group(1)}", headers={"HX-Request": "true"}
    )
    assert theirs.status_code == 200
    assert fresh["id"] not in theirs.text


async def test_a_flood_of_new_messages_asks_for_a_reload(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log, "PAGE_SIZE", 2)
    zero = log.Cursor(log.NOTHING).encode()
    flood = await scenario.owner.get(f"/messages/live?after={zero}", headers={"HX-Request": "true"})
    assert flood.status_code == 200
    assert "More than 2 new messages arrived" in flood.text
    assert rows(flood) == []
    assert 'hx-trigger="every 2s"' not in flood.text, "it stops polling"


async def test_a_bad_live_request_is_refused_and_stops_polling(scenario: Scenario) -> None:
    for params in (
        {},
        {"after": "%%%"},
        {"after": log.Cursor(log.NOTHING).encode(), "status": "x"},
    ):
        answer = await scenario.owner.get(
            "/messages/live", params=params, headers={"HX-Request": "true"}
        )
        assert answer.status_code == 422, params
        assert 'hx-trigger="every 2s"' not in answer.text


async def test_the_message_page_tells_the_story(scenario: Scenario) -> None:
    s = scenario
    failed = await s.owner.get(f"/messages/{s.failed}")
    assert failed.status_code == 200
    text = failed.text
    for expected in (
        "Timeline",
        "Accepted",
        "Dispatched",
        "Attempt 1: failed",
        "sandbox: invalid address",
        "Status code",
        "400",
        "Latency",
        "Dead-lettered",
        "Why it was not sent",
        "refused it for good",
        f'href="/notifications/{s.welcome}"',
        'href="/templates/welcome"',
        'href="/messages?recipient=bob"',
    ):
        assert expected in text, expected

    skipped = await s.owner.get(f"/messages/{s.skipped}")
    assert "Skipped: no address" in skipped.text
    assert "no address for this channel" in skipped.text
    assert "Nothing was rendered" in skipped.text or "Rendered content" in skipped.text

    sent = await s.owner.get(f"/messages/{s.sent}")
    assert "Attempt 1: sent" in sent.text
    assert 'id="why-not-sent"' not in sent.text
    assert "Welcome Ann" in sent.text
    # The tenant's HTML is shown in a sandboxed frame, escaped into its srcdoc: no script
    # of theirs reaches the dashboard's page.
    frame = re.search(r'<iframe class="html-preview" sandbox srcdoc="([^"]*)"', sent.text)
    assert frame, sent.text
    assert "&lt;script&gt;" in frame.group(1)
    assert "<script>alert" not in sent.text

    sms = await s.owner.get(f"/messages/{s.sms}")
    assert "Your code is 123456" in sms.text


async def test_other_tenants_and_the_other_mode_are_not_found(
    scenario: Scenario, app: Litestar
) -> None:
    s = scenario
    theirs = await s.owner.get(f"/messages/{s.other}")
    assert theirs.status_code == 404
    assert "zed" not in theirs.text
    assert (await s.owner.get(f"/messages/{uuid.uuid4()}")).status_code == 404
    assert (await s.other_owner.get(f"/messages/{s.failed}")).status_code == 404
    their_log = await s.other_owner.get("/messages")
    assert set(rows(their_log)) == {s.other}
    assert "bob" not in their_log.text

    # The same owner viewing live data (another browser of theirs): no test message there.
    async with browser(app) as client:
        assert (await sign_in(client, s.email, PASSWORD)).status_code == 303
        assert (await post_form(client, "/mode", {"mode": "live"})).status_code == 303
        live = await client.get("/messages")
        assert live.status_code == 200
        assert rows(live) == []
        assert "Send your first notification with a live key" in live.text
        assert (await client.get(f"/messages/{s.failed}")).status_code == 404
        for params in ({"notification": s.welcome}, {"recipient": "ann"}, {"template": "otp"}):
            assert rows(await client.get("/messages", params=params)) == []


async def test_signed_out_visitors_are_sent_to_sign_in(app: Litestar) -> None:
    async with browser(app) as client:
        for path in ("/messages", f"/messages/{uuid.uuid4()}", "/messages/live?after=x"):
            answer = await client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"] == "/signin"


async def test_a_viewer_reads_the_log_and_timelines(
    scenario: Scenario, app: Litestar, session: AsyncSession
) -> None:
    email = unique_email("viewer")
    await add_member(session, scenario.key.tenant_id, "viewer", email)
    async with browser(app) as viewer:
        assert (await sign_in(viewer, email, PASSWORD)).status_code == 303
        await post_form(viewer, "/mode", {"mode": "test"})
        assert scenario.failed in rows(await viewer.get("/messages"))
        assert (await viewer.get(f"/messages/{scenario.failed}")).status_code == 200


async def test_combined_filters_read_a_bounded_window_a_page(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status and channel together: the status's index is read, SCAN_WINDOW entries a page
    at most; a page that found nothing there says so and links further back."""
    monkeypatch.setattr(log, "SCAN_WINDOW", 1)
    seen: list[str] = []
    pages = 0
    short = False
    page = await scenario.owner.get("/messages", params={"status": "sent", "channel": "sms"})
    while True:
        assert page.status_code == 200
        pages += 1
        seen += rows(page)
        short = short or "No match in this stretch of the log" in page.text
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        if older is None:
            break
        page = await scenario.owner.get(html.unescape(older.group(1)))
    assert seen == [scenario.sms]
    assert pages >= 2
    assert short, "a page of the window without a match says why it is empty"


async def test_a_filter_without_an_index_reads_a_bounded_window_a_page(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel alone has no index (each would cost every claim an entry): the tenant's
    own index is read, SCAN_WINDOW entries a page at most, and the pages still find the
    one SMS among the e-mails."""
    monkeypatch.setattr(log, "SCAN_WINDOW", 1)
    seen: list[str] = []
    pages = 0
    page = await scenario.owner.get("/messages", params={"channel": "sms"})
    while True:
        assert page.status_code == 200
        pages += 1
        seen += rows(page)
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        if older is None:
            break
        page = await scenario.owner.get(html.unescape(older.group(1)))
    assert seen == [scenario.sms]
    assert pages >= 2
