"""The receipts pages over HTTP: receipts made by real signed provider requests (SendGrid's
ECDSA), listed and filtered by config and verdict, one shown with its verdict, redacted
headers, escaped body and the events it produced; test mode explained; tenants apart."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.receipts.models import Receipt
from tests.dashboard import PASSWORD, browser, sign_in
from tests.integration.dashboard.hooks_support import add_member, switch_mode
from tests.integration.receipts.test_receipts import (
    SendgridSigner,
    messages,
    sendgrid_config,
    sendgrid_event,
)
from tests.support import TenantKey

RECEIPT_ROW = re.compile(r'<tr id="receipt-([0-9a-f-]{36})"')


async def post_signed(
    client: httpx.AsyncClient,
    config_id: str,
    signer: SendgridSigner,
    events: list[dict[str, object]],
    *,
    timestamp: int | None = None,
    extra_headers: dict[str, str] | None = None,
) -> httpx.Response:
    body = json.dumps(events).encode()
    headers = {**signer.headers(body, timestamp), **(extra_headers or {})}
    return await client.post(f"/webhooks/providers/{config_id}", content=body, headers=headers)


async def receipt_ids(session: AsyncSession, tenant_id: uuid.UUID) -> dict[str, uuid.UUID]:
    rows = await session.execute(
        select(Receipt.verdict, Receipt.id).where(Receipt.tenant_id == tenant_id)
    )
    return {verdict: receipt_id for verdict, receipt_id in rows}


async def test_receipts_listed_filtered_and_shown(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
) -> None:
    owner_email = await add_member(session, tenant.tenant_id, "owner")
    async with browser(app) as page_client:
        assert (await sign_in(page_client, owner_email, PASSWORD)).status_code == 303
        await switch_mode(page_client, "live")
        empty = await page_client.get("/receipts")
        assert empty.status_code == 200
        assert "No receipts yet" in empty.text

        signer = SendgridSigner()
        config_id = await sendgrid_config(client, tenant, signer)
        sent = await messages(session, tenant, 2)
        hostile = "<img src=x onerror=alert(1)>"
        delivered = [
            sendgrid_event(sent[0], "delivered", response=hostile),
            sendgrid_event(sent[1], "delivered"),
        ]
        accepted = await post_signed(
            client,
            config_id,
            signer,
            delivered,
            extra_headers={"Authorization": "Basic c2VjcmV0OnNlY3JldA=="},
        )
        assert accepted.status_code == 200, accepted.text
        forged = await post_signed(
            client, config_id, SendgridSigner(), [sendgrid_event(sent[0], "bounce")]
        )
        assert forged.status_code == 401
        stale = await post_signed(
            client,
            config_id,
            signer,
            [sendgrid_event(sent[0], "open")],
            timestamp=int(time.time()) - 3 * 86400,
        )
        assert stale.status_code == 401
        mine = await receipt_ids(session, tenant.tenant_id)
        assert set(mine) == {"verified", "bad_signature", "stale"}

        # Another tenant's receipt, which must never show.
        their_signer = SendgridSigner()
        their_config = await sendgrid_config(client, other_tenant, their_signer)
        (theirs_sent,) = await messages(session, other_tenant, 1)
        await post_signed(
            client, their_config, their_signer, [sendgrid_event(theirs_sent, "delivered")]
        )
        theirs = await receipt_ids(session, other_tenant.tenant_id)

        listed = await page_client.get("/receipts")
        assert listed.status_code == 200
        assert {uuid.UUID(found) for found in RECEIPT_ROW.findall(listed.text)} == set(
            mine.values()
        )
        assert "SendGrid" in listed.text and "bad signature" in listed.text

        only_bad = await page_client.get("/receipts?verdict=bad_signature")
        assert RECEIPT_ROW.findall(only_bad.text) == [str(mine["bad_signature"])]
        by_config = await page_client.get(f"/receipts?config={config_id}&verdict=")
        assert len(RECEIPT_ROW.findall(by_config.text)) == 3
        none = await page_client.get(f"/receipts?config={uuid.uuid4()}")
        assert RECEIPT_ROW.findall(none.text) == []
        assert "No receipts match these filters" in none.text
        their_filter = await page_client.get(f"/receipts?config={their_config}")
        assert RECEIPT_ROW.findall(their_filter.text) == []

        shown = await page_client.get(f"/receipts/{mine['verified']}")
        assert shown.status_code == 200
        assert 'id="verdict">verified<' in shown.text
        for message in sent:
            assert f'href="/messages/{message.id}"' in shown.text
        assert "Moved the message to <strong>delivered</strong>" in shown.text
        headers = re.search(
            r'<dl class="facts header-list" id="headers-table">.*?</dl>', shown.text, re.S
        )
        assert headers and "[redacted]" in headers.group(0)
        assert "c2VjcmV0" not in shown.text
        body = re.search(r'<pre class="code-block" id="receipt-body">(.*?)</pre>', shown.text, re.S)
        assert body and "JSON, indented" in shown.text
        assert "&#34;event&#34;: &#34;delivered&#34;" in body.group(1)
        assert "&lt;img src=x onerror=alert(1)&gt;" in body.group(1)
        assert "<img src=x" not in shown.text

        bad = await page_client.get(f"/receipts/{mine['bad_signature']}")
        assert 'id="verdict">bad signature<' in bad.text
        assert re.search(r'<dd id="reason">[^<]+</dd>', bad.text)
        assert "Herald takes no events from a request it did not believe" in bad.text

        for theirs_id in theirs.values():
            assert (await page_client.get(f"/receipts/{theirs_id}")).status_code == 404
        assert (await page_client.get(f"/receipts/{uuid.uuid4()}")).status_code == 404

        # Test mode: no receipts there, and a live receipt's page is not found.
        await switch_mode(page_client, "test")
        explained = await page_client.get("/receipts")
        assert "Test mode has no receipts" in explained.text
        assert not RECEIPT_ROW.findall(explained.text)
        assert (await page_client.get(f"/receipts/{mine['verified']}")).status_code == 404


async def test_bad_filters_are_a_422_naming_them(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    email = await add_member(session, tenant.tenant_id, "viewer")
    async with browser(app) as page_client:
        assert (await sign_in(page_client, email, PASSWORD)).status_code == 303
        await switch_mode(page_client, "live")
        assert (await page_client.get("/receipts")).status_code == 200, "viewers read receipts"
        for query, name in (
            ("verdict=exploded", "verdict"),
            ("verdict=unknown_config", "verdict"),
            ("config=nope", "config"),
            ("cursor=" + "a" * 300, "cursor"),
        ):
            answer = await page_client.get(f"/receipts?{query}")
            assert answer.status_code == 422, query
            assert f"{name}:" in answer.text
