"""Inbox tokens: the routes they may use, their mode, revocation; inbox links are http(s)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import Render
from app.runtime import ServiceUrls
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, make_tenant, settings_for


@pytest.fixture
async def sandbox(session: AsyncSession) -> TenantKey:
    return await make_tenant(session, "Inboxes", mode="test")


async def token_for(client: httpx.AsyncClient, tenant: TenantKey, who: str) -> dict[str, str]:
    issued = await client.post(f"/v1/recipients/{who}/inbox-token", headers=tenant.headers)
    assert issued.status_code == 201, issued.text
    return {"Authorization": f"Bearer {issued.json()['token']}"}


async def deliver(
    client: httpx.AsyncClient, tenant: TenantKey, service_urls: ServiceUrls, **data: str
) -> str:
    accepted = await notify(client, tenant, template="note", to=["mia"], data=data)
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)
    return str(accepted["id"])


async def test_revoking_ends_every_token_issued_so_far(
    client: httpx.AsyncClient, sandbox: TenantKey
) -> None:
    await put_recipient(client, sandbox, "mia")
    await put_recipient(client, sandbox, "noah")
    first, second = [await token_for(client, sandbox, "mia") for _ in range(2)]
    other = await token_for(client, sandbox, "noah")
    assert (await client.get("/v1/recipients/mia/inbox", headers=first)).status_code == 200

    revoked = await client.post("/v1/recipients/mia/inbox-tokens/revoke", headers=sandbox.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["object"] == "inbox_tokens_revoked"
    for token in (first, second):
        answer = await client.get("/v1/recipients/mia/inbox", headers=token)
        assert_problem(answer, 401, "unauthorized")
        assert "revoked" in answer.json()["detail"]
    # Another recipient's tokens are untouched, and a token issued now works.
    assert (await client.get("/v1/recipients/noah/inbox", headers=other)).status_code == 200
    fresh = await token_for(client, sandbox, "mia")
    assert (await client.get("/v1/recipients/mia/inbox", headers=fresh)).status_code == 200
    # Revoking needs an API key with `send`, never an inbox token.
    denied = await client.post("/v1/recipients/mia/inbox-tokens/revoke", headers=fresh)
    assert_problem(denied, 403, "forbidden")


async def test_a_token_reads_the_inbox_of_its_own_mode(
    client: httpx.AsyncClient, session: AsyncSession, sandbox: TenantKey
) -> None:
    """A test key's token is for the test recipient; the live `mia` is another person."""
    from tests.support import live_key

    live = await live_key(session, sandbox)
    await put_recipient(client, sandbox, "mia")
    await put_recipient(client, live, "mia")
    test_token = await token_for(client, sandbox, "mia")
    live_token = await token_for(client, live, "mia")
    assert (await client.get("/v1/recipients/mia/inbox", headers=test_token)).status_code == 200
    assert (await client.get("/v1/recipients/mia/inbox", headers=live_token)).status_code == 200
    # Revoking the live recipient's tokens leaves the test one's working.
    await client.post("/v1/recipients/mia/inbox-tokens/revoke", headers=live.headers)
    assert (await client.get("/v1/recipients/mia/inbox", headers=test_token)).status_code == 200
    assert_problem(
        await client.get("/v1/recipients/mia/inbox", headers=live_token), 401, "unauthorized"
    )


async def test_the_inbox_checks_its_tokens_and_api_key_routes_refuse_them(
    client: httpx.AsyncClient, session: AsyncSession, sandbox: TenantKey
) -> None:
    """The inbox routes authenticate inbox tokens themselves; every route of API keys
    refuses one (403), or a forged one as unauthorized (401), and an API key still reads."""
    from tests.support import live_key

    await put_recipient(client, sandbox, "mia")
    token = await token_for(client, sandbox, "mia")
    forged = {"Authorization": token["Authorization"][:-2] + "xx"}
    elsewhere = [
        ("GET", "/v1/categories", None),
        ("PUT", "/v1/categories/otp", {"name": "OTP", "critical": True}),
        ("GET", "/v1/recipients/mia/preferences", None),
        ("PUT", "/v1/tenant/kill-switches/email", {"mode": "pause"}),
        ("GET", "/v1/tenant/retry-policy", None),
        ("DELETE", "/v1/recipients/mia", None),
    ]
    for method, path, body in elsewhere:
        refused = await client.request(method, path, headers=token, json=body)
        assert_problem(refused, 403, "forbidden")
        assert_problem(
            await client.request(method, path, headers=forged, json=body), 401, "unauthorized"
        )
    # Nothing was changed by them: mia is there, no channel paused, no category added.
    live = await live_key(session, sandbox)
    assert (await client.get("/v1/recipients/mia", headers=sandbox.headers)).status_code == 200
    switched = await client.get("/v1/tenant/kill-switches", headers=live.headers)
    assert switched.json()["channels"] == {}
    keys = {
        c["key"]
        for c in (await client.get("/v1/categories", headers=sandbox.headers)).json()["data"]
    }
    assert "otp" not in keys
    # The inbox takes the token, and an API key with `read`, through its own authentication.
    for headers in (token, sandbox.headers):
        assert (await client.get("/v1/recipients/mia/inbox", headers=headers)).status_code == 200
        read_all = await client.post("/v1/recipients/mia/inbox/read-all", headers=headers)
        assert read_all.status_code == 200
    assert_problem(
        await client.get("/v1/recipients/mia/inbox", headers=forged), 401, "unauthorized"
    )
    no_auth = await client.get("/v1/recipients/mia/inbox")
    assert_problem(no_auth, 401, "unauthorized")


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(document.cookie)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "//evil.example/phish",
        "https:/missing-host",
        "https://example.com/a b",
    ],
)
async def test_inbox_links_are_http_or_a_path(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls, link: str
) -> None:
    await put_template(
        client, sandbox, "note", {"inbox": {"title": "t", "body": "b", "action_url": "{{ url }}"}}
    )
    await put_recipient(client, sandbox, "mia")
    notification_id = await deliver(client, sandbox, service_urls, url=link)
    [message] = (await notification(client, sandbox, notification_id))["messages"]
    assert (message["status"], message["error_class"]) == ("failed", "render")
    assert "inbox.action_url" in message["last_error"]


async def test_good_links_pass_and_old_bad_ones_are_not_shown(
    client: httpx.AsyncClient, session: AsyncSession, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(
        client, sandbox, "note", {"inbox": {"title": "t", "body": "b", "action_url": "{{ url }}"}}
    )
    await put_recipient(client, sandbox, "mia")
    for link in ("https://acme.example/orders/1", "/orders/2", "http://acme.example"):
        await deliver(client, sandbox, service_urls, url=link)
    token = await token_for(client, sandbox, "mia")
    items = (await client.get("/v1/recipients/mia/inbox", headers=token)).json()["data"]
    assert [i["action_url"] for i in items] == [
        "http://acme.example",
        "/orders/2",
        "https://acme.example/orders/1",
    ]
    # An item rendered before links were checked: shown without its link.
    await session.execute(
        update(Render)
        .where(Render.tenant_id == sandbox.tenant_id)
        .values(
            content={"channel": "inbox", "title": "t", "body": "b", "action_url": "javascript:x"}
        )
    )
    await session.commit()
    items = (await client.get("/v1/recipients/mia/inbox", headers=token)).json()["data"]
    assert [i["action_url"] for i in items] == [None, None, None]
