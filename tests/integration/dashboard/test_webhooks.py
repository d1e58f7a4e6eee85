"""The webhooks pages over HTTP, as a browser uses them: endpoints listed, added (through the
SSRF guard), edited, enabled and disabled, given new secrets and test events; each one's
delivery log, paged, with Resend; RBAC, CSRF and tenant/mode isolation on every route."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import crypto
from app.audit.models import AuditEntry
from app.auth import roles
from app.db import utcnow
from app.settings import Settings
from app.webhooks import delivery, service
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.dashboard import PASSWORD, browser, csrf_token, htmx_headers, post_form, sign_in
from tests.integration.dashboard.hooks_support import add_member, signed_up, switch_mode
from tests.support import TenantKey

URL = "https://hooks.example.com/herald"
WHSEC = re.compile(r"whsec_[A-Za-z0-9+/=]{20,}")
ENDPOINT_ID = re.compile(r'id="endpoint-([0-9a-f-]{36})"')


async def add_endpoint(
    client: httpx.AsyncClient, url: str = URL, event_types: tuple[str, ...] = ()
) -> tuple[uuid.UUID, str]:
    """Add an endpoint through the form; its id and the secret the answer shows."""
    answer = await post_form(client, "/webhooks", {"url": url, "event_types": list(event_types)})  # type: ignore[dict-item]
    assert answer.status_code == 201, answer.text
    (secret,) = set(WHSEC.findall(answer.text))
    found = re.search(r'action="/webhooks/([0-9a-f-]{36})/test"', answer.text)
    assert found
    return uuid.UUID(found.group(1)), secret


async def stored(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = await session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .execution_options(populate_existing=True)
    )
    assert endpoint is not None
    return endpoint


async def deliveries(session: AsyncSession, endpoint_id: uuid.UUID) -> list[WebhookDelivery]:
    found = await session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookDelivery.id)
        .execution_options(populate_existing=True)
    )
    return list(found)


async def test_an_empty_list_then_an_endpoint_added_with_its_secret_shown_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await signed_up(client, session, "Hooked Ltd")
    empty = await client.get("/webhooks")
    assert empty.status_code == 200
    assert "No endpoints in test mode yet" in empty.text
    assert "Add endpoint" in empty.text

    endpoint_id, secret = await add_endpoint(
        client, event_types=("message.bounced", "message.delivered")
    )
    made = await stored(session, endpoint_id)
    assert made.mode == "test"
    assert made.event_types == ["message.delivered", "message.bounced"]

    listed = await client.get("/webhooks")
    assert URL in listed.text
    assert ENDPOINT_ID.findall(listed.text) == [str(endpoint_id)]
    assert "message.bounced" in listed.text and "Enabled" in listed.text
    shown = await client.get(f"/webhooks/{endpoint_id}")
    assert shown.status_code == 200
    assert secret not in shown.text and not WHSEC.search(shown.text), "shown once"
    assert "No deliveries yet" in shown.text


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5/hook", "http://127.0.0.1:8080/", "http://[::1]/", "http://169.254.169.254/"],
)
async def test_a_private_url_is_refused_naming_the_field(
    client: httpx.AsyncClient, session: AsyncSession, url: str
) -> None:
    owner = await signed_up(client, session, "Private Ltd")
    answer = await post_form(client, "/webhooks", {"url": url})
    assert answer.status_code == 422
    error = re.search(r'<p class="field-error" id="error-url">([^<]*)</p>', answer.text)
    assert error and "not an address Herald will call" in error.group(1)
    assert url.replace("&", "&amp;") in answer.text, "the form keeps what was typed"
    count = await session.scalar(
        select(WebhookEndpoint.id).where(WebhookEndpoint.tenant_id == owner.tenant_id)
    )
    assert count is None


async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await signed_up(client, session, "Bad Input Ltd")
    cases = {
        "url": {"url": ""},
        "event_types": {"url": URL, "event_types": "message.exploded"},
        "description": {"url": URL, "description": "x" * 501},
    }
    for name, fields in cases.items():
        answer = await post_form(client, "/webhooks", fields)
        assert answer.status_code == 422, name
        assert f'id="error-{name}"' in answer.text, name
    too_long = await post_form(client, "/webhooks", {"url": "https://a.example/" + "x" * 2100})
    assert too_long.status_code == 422 and 'id="error-url"' in too_long.text
    not_a_url = await post_form(client, "/webhooks", {"url": "ftp://files.example/"})
    assert not_a_url.status_code == 422 and 'id="error-url"' in not_a_url.text

    endpoint_id, _ = await add_endpoint(client)
    for query, name in (("cursor=nope", "cursor"), ("status=exploded", "status")):
        page = await client.get(f"/webhooks/{endpoint_id}?{query}")
        assert page.status_code == 422, query
        assert f"{name}:" in page.text
    assert (await client.get(f"/webhooks/{endpoint_id}?cursor={'1' * 300}")).status_code == 422
    edit = await post_form(client, f"/webhooks/{endpoint_id}", {"url": "http://192.168.1.1/"})
    assert edit.status_code == 422 and 'id="error-url"' in edit.text
    assert (await stored(session, endpoint_id)).url == URL


async def test_edit_disable_enable_rotate_and_delete(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    owner = await signed_up(client, session, "Lifecycle Ltd")
    endpoint_id, first_secret = await add_endpoint(client)

    edited = await post_form(
        client,
        f"/webhooks/{endpoint_id}",
        {
            "url": "https://crm.example.com/in",
            "description": "To the CRM",
            "event_types": "message.failed",
        },
    )
    assert edited.status_code == 303
    endpoint = await stored(session, endpoint_id)
    assert (endpoint.url, endpoint.description, endpoint.event_types) == (
        "https://crm.example.com/in",
        "To the CRM",
        ["message.failed"],
    )

    assert (await post_form(client, f"/webhooks/{endpoint_id}/disable", {})).status_code == 303
    assert not (await stored(session, endpoint_id)).enabled
    page = await client.get(f"/webhooks/{endpoint_id}")
    assert "This endpoint is disabled." in page.text and ">Enable<" in page.text
    assert (await post_form(client, f"/webhooks/{endpoint_id}/enable", {})).status_code == 303
    assert (await stored(session, endpoint_id)).enabled

    rotated = await post_form(client, f"/webhooks/{endpoint_id}/rotate-secret", {})
    assert rotated.status_code == 200
    (second_secret,) = set(WHSEC.findall(rotated.text))
    assert second_secret != first_secret
    assert "previous secret keeps signing" in rotated.text
    signing = service.secrets_of(
        await stored(session, endpoint_id), crypto.keyring_for(settings), utcnow()
    )
    assert signing == [second_secret, first_secret]

    actions = list(
        await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == owner.tenant_id, AuditEntry.target == str(endpoint_id))
            .order_by(AuditEntry.seq)
        )
    )
    assert actions == [
        "webhook_endpoint.created",
        "webhook_endpoint.replaced",
        "webhook_endpoint.disabled",
        "webhook_endpoint.enabled",
        "webhook_endpoint.secret_rotated",
    ]
    deleted = await post_form(client, f"/webhooks/{endpoint_id}/delete", {})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/webhooks"
    assert (await client.get(f"/webhooks/{endpoint_id}")).status_code == 404


async def test_the_delivery_log_and_resend_requeues_a_finished_delivery(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await signed_up(client, session, "Resend Ltd")
    endpoint_id, _ = await add_endpoint(client)
    sent = await post_form(client, f"/webhooks/{endpoint_id}/test", {})
    assert sent.status_code == 303
    page = await client.get(sent.headers["location"])
    assert "A test event is on its way" in page.text
    assert "webhook.test" in page.text and "Pending" in page.text
    (test_delivery,) = await deliveries(session, endpoint_id)

    # The endpoint answers 500 until the schedule runs out: the delivery has failed.
    endpoint = await stored(session, endpoint_id)
    failure = delivery.Outcome(500, 137, "HTTP 500")
    while test_delivery.status == "pending":
        delivery.record(test_delivery, endpoint, failure, utcnow())
    await session.commit()
    page = await client.get(f"/webhooks/{endpoint_id}")
    row = re.search(rf'<tr id="delivery-{test_delivery.id}".*?</tr>', page.text, re.S)
    assert row
    assert (
        "Failed" in row.group(0)
        and '"response-code">500<' in row.group(0)
        and "137 ms" in row.group(0)
    )
    assert "HTTP 500" in row.group(0)
    assert "Failing since" in (await client.get("/webhooks")).text

    token = await csrf_token(client, f"/webhooks/{endpoint_id}")
    resent = await client.post(
        f"/webhooks/{endpoint_id}/deliveries/{test_delivery.id}/resend",
        headers=htmx_headers(token),
    )
    assert resent.status_code == 200
    assert resent.text.strip().startswith(f'<tr id="delivery-{test_delivery.id}"')
    assert "Pending" in resent.text
    (again,) = await deliveries(session, endpoint_id)
    assert again.status == "pending"
    assert again.next_attempt_at is not None and again.next_attempt_at <= utcnow()
    assert again.event_id == test_delivery.event_id, "the same webhook-id"
    resend_audit = await session.scalar(
        select(AuditEntry).where(
            AuditEntry.tenant_id == owner.tenant_id, AuditEntry.action == "webhook_delivery.resent"
        )
    )
    assert resend_audit is not None and resend_audit.target == str(test_delivery.id)

    # Without htmx: the form post goes back to the endpoint's page.
    plain = await post_form(
        client, f"/webhooks/{endpoint_id}/deliveries/{test_delivery.id}/resend", {}
    )
    assert plain.status_code == 303
    assert (
        await client.get(f"/webhooks/{endpoint_id}/deliveries/{uuid.uuid4()}/resend")
    ).status_code in (404, 405)
    missing = await post_form(
        client, f"/webhooks/{endpoint_id}/deliveries/{uuid.uuid4()}/resend", {}
    )
    assert missing.status_code == 404


async def test_disabled_by_herald_shows_why(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await signed_up(client, session, "Gone Ltd")
    endpoint_id, _ = await add_endpoint(client)
    await post_form(client, f"/webhooks/{endpoint_id}/test", {})
    (sent,) = await deliveries(session, endpoint_id)
    endpoint = await stored(session, endpoint_id)
    delivery.record(sent, endpoint, delivery.Outcome(410, 20, "HTTP 410"), utcnow())
    await session.commit()
    listed = await client.get("/webhooks")
    assert "Herald disabled it: the endpoint answered 410 Gone" in listed.text
    shown = await client.get(f"/webhooks/{endpoint_id}")
    assert "Herald disabled this endpoint: the endpoint answered 410 Gone" in shown.text


async def test_the_delivery_log_pages_by_cursor_and_filters_by_status(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await signed_up(client, session, "Busy Ltd")
    endpoint_id, _ = await add_endpoint(client)
    endpoint = await stored(session, endpoint_id)
    start = utcnow()
    for n in range(55):
        made = delivery.new_delivery(
            endpoint, "message.sent", {"n": n}, start + timedelta(seconds=n), timedelta(days=1)
        )
        if n % 5 == 0:
            made.status, made.next_attempt_at = "succeeded", None
        session.add(made)
    await session.commit()

    first = await client.get(f"/webhooks/{endpoint_id}")
    rows = re.findall(r'<tr id="delivery-([0-9a-f-]{36})"', first.text)
    assert len(rows) == 50
    cursor = re.search(r'href="/webhooks/[0-9a-f-]{36}\?cursor=([0-9a-f-]{36})"', first.text)
    assert cursor and cursor.group(1) == rows[-1]
    second = await client.get(f"/webhooks/{endpoint_id}?cursor={cursor.group(1)}")
    more = re.findall(r'<tr id="delivery-([0-9a-f-]{36})"', second.text)
    assert len(more) == 5 and not set(more) & set(rows)
    assert "Older deliveries" not in second.text
    every = [uuid.UUID(found) for found in rows + more]
    assert every == sorted(every, reverse=True), "newest first, by id"

    succeeded = await client.get(f"/webhooks/{endpoint_id}?status=succeeded")
    assert len(re.findall(r'<tr id="delivery-', succeeded.text)) == 11
    assert "Pending" not in re.sub(r"<option.*?</option>", "", succeeded.text)


async def test_a_payload_is_shown_escaped(client: httpx.AsyncClient, session: AsyncSession) -> None:
    await signed_up(client, session, "Escape Ltd")
    endpoint_id, _ = await add_endpoint(client)
    endpoint = await stored(session, endpoint_id)
    session.add(
        delivery.new_delivery(
            endpoint,
            "message.sent",
            {"subject": "<script>alert(1)</script>"},
            utcnow(),
            timedelta(days=1),
        )
    )
    await session.commit()
    page = await client.get(f"/webhooks/{endpoint_id}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert(1)" not in page.text


async def test_a_viewer_reads_but_every_post_is_refused(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await signed_up(client, session, "Viewed Ltd")
    endpoint_id, _ = await add_endpoint(client)
    await post_form(client, f"/webhooks/{endpoint_id}/test", {})
    (sent,) = await deliveries(session, endpoint_id)
    viewer_email = await add_member(session, owner.tenant_id, "viewer")
    async with browser(app) as viewer:
        assert (await sign_in(viewer, viewer_email, PASSWORD)).status_code == 303
        await switch_mode(viewer, "test")
        listed = await viewer.get("/webhooks")
        assert listed.status_code == 200 and URL in listed.text
        assert "Add endpoint" not in listed.text
        shown = await viewer.get(f"/webhooks/{endpoint_id}")
        assert shown.status_code == 200 and "webhook.test" in shown.text
        assert "Resend" not in shown.text and "Rotate secret" not in shown.text
        for path, fields in posts(endpoint_id, sent.id).items():
            refused = await post_form(viewer, path, fields)
            assert refused.status_code == 403, path
            assert "(viewer) can see webhook endpoints but not change them" in refused.text
    endpoint = await stored(session, endpoint_id)
    assert endpoint.url == URL and endpoint.enabled
    assert len(await deliveries(session, endpoint_id)) == 1


def posts(endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> dict[str, dict[str, str]]:
    """Every form the webhooks pages post, with a valid body."""
    base = f"/webhooks/{endpoint_id}"
    return {
        "/webhooks": {"url": "https://other.example.com/x"},
        base: {"url": "https://other.example.com/y"},
        f"{base}/disable": {},
        f"{base}/enable": {},
        f"{base}/rotate-secret": {},
        f"{base}/test": {},
        f"{base}/deliveries/{delivery_id}/resend": {},
        f"{base}/delete": {},
    }


async def test_every_post_needs_the_csrf_token(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    await signed_up(client, session, "Forged Ltd")
    endpoint_id, _ = await add_endpoint(client)
    await post_form(client, f"/webhooks/{endpoint_id}/test", {})
    (sent,) = await deliveries(session, endpoint_id)
    # Every form of the pages carries its token.
    for path in ("/webhooks", f"/webhooks/{endpoint_id}"):
        html = (await client.get(path)).text
        forms = re.findall(r"<form[^>]*method=\"post\".*?</form>", html, re.S)
        assert len(forms) == (3 if path == "/webhooks" else 8), path
        for form in forms:
            assert 'name="_csrf_token" value="' in form, form[:120]
    for path, fields in posts(endpoint_id, sent.id).items():
        forged = await client.post(path, data=fields)
        assert forged.status_code == 403, path
    assert len(await deliveries(session, endpoint_id)) == 1
    assert (await stored(session, endpoint_id)).enabled


async def test_another_tenants_and_the_other_modes_endpoints_are_not_found(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    other_tenant: TenantKey,
) -> None:
    await signed_up(client, session, "Isolated Ltd")
    theirs, _ = await service.create_endpoint(
        session,
        tenant_id=other_tenant.tenant_id,
        mode="test",
        data=service.EndpointInput("https://globex.example.com/secret-hook"),
        actor="test",
        keyring=crypto.keyring_for(settings),
        allow_private=False,
    )
    their_delivery = await delivery.send_test(session, theirs, utcnow(), actor="test")
    await session.commit()
    assert "globex.example.com" not in (await client.get("/webhooks")).text
    for path, fields in posts(theirs.id, their_delivery.id).items():
        if path == "/webhooks":
            continue
        assert (await post_form(client, path, fields)).status_code == 404, path
    assert (await client.get(f"/webhooks/{theirs.id}")).status_code == 404
    assert (await stored(session, theirs.id)).url == "https://globex.example.com/secret-hook"

    # The member's own test-mode endpoint is not found from live mode.
    mine, _ = await add_endpoint(client, "https://mine.example.com/test-only")
    await post_form(client, f"/webhooks/{mine}/test", {})
    (my_delivery,) = await deliveries(session, mine)
    await switch_mode(client, "live")
    live = await client.get("/webhooks")
    assert "mine.example.com" not in live.text and "No endpoints in live mode yet" in live.text
    assert (await client.get(f"/webhooks/{mine}")).status_code == 404
    for path, fields in posts(mine, my_delivery.id).items():
        if path == "/webhooks":
            continue
        assert (await post_form(client, path, fields)).status_code == 404, path


async def test_the_service_refuses_a_viewer_whichever_page_asks(
    session: AsyncSession, settings: Settings, tenant: TenantKey
) -> None:
    with pytest.raises(roles.RoleNotAllowed):
        await service.create_endpoint(
            session,
            tenant_id=tenant.tenant_id,
            mode="live",
            data=service.EndpointInput(URL),
            actor="user:v@acme.example",
            keyring=crypto.keyring_for(settings),
            allow_private=False,
            role="viewer",
        )
    made, _ = await service.create_endpoint(
        session,
        tenant_id=tenant.tenant_id,
        mode="live",
        data=service.EndpointInput(URL),
        actor="user:d@acme.example",
        keyring=crypto.keyring_for(settings),
        allow_private=False,
        role="developer",
    )
    with pytest.raises(roles.RoleNotAllowed):
        await service.set_enabled(
            session,
            tenant_id=tenant.tenant_id,
            mode="live",
            endpoint_id=made.id,
            enabled=False,
            actor="user:v@acme.example",
            role="viewer",
        )
    with pytest.raises(roles.RoleNotAllowed):
        await delivery.send_test(
            session, made, utcnow(), actor="user:v@acme.example", role="viewer"
        )
    await session.rollback()


async def test_the_twenty_first_endpoint_is_refused_naming_the_limit(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    owner = await signed_up(client, session, "Full Ltd")
    for n in range(service.MAX_ENDPOINTS):
        await service.create_endpoint(
            session,
            tenant_id=owner.tenant_id,
            mode="test",
            data=service.EndpointInput(f"https://hooks{n}.example.com/in"),
            actor="test",
            keyring=crypto.keyring_for(settings),
            allow_private=False,
        )
    await session.commit()
    listed = await client.get("/webhooks")
    assert len(ENDPOINT_ID.findall(listed.text)) == service.MAX_ENDPOINTS
    assert f"{service.MAX_ENDPOINTS} of {service.MAX_ENDPOINTS}" in listed.text
    refused = await post_form(client, "/webhooks", {"url": URL})
    assert refused.status_code == 422
    error = re.search(r'<p class="field-error" id="error-url">([^<]*)</p>', refused.text)
    assert error and "20 endpoints in test mode" in error.group(1)
