"""The public unsubscribe pages over HTTP against the real app: the one-click POST with and
without its body, the GET that changes nothing, tokens that do not open anything, the
preference centre, and the audit log of each change."""

from __future__ import annotations

import re
import uuid

import httpx
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.crypto import keyring_for
from app.recipients.models import Preference, Recipient
from app.settings import Settings
from app.unsubscribe.tokens import TokenClaims, UnsubscribeTokens
from app.webhooks import service as webhook_service
from app.webhooks.models import WebhookEndpoint, WebhookEvent
from tests.send_path import put_recipient
from tests.support import TenantKey, key_of

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


async def recipient_id(session: AsyncSession, tenant: TenantKey, external_id: str) -> uuid.UUID:
    found = await session.scalar(
        select(Recipient.id).where(
            Recipient.tenant_id == tenant.tenant_id,
            Recipient.mode == tenant.mode,
            Recipient.external_id == external_id,
        )
    )
    assert found is not None
    return found


async def switches(session: AsyncSession, recipient: uuid.UUID) -> dict[tuple[str, str], bool]:
    session.expire_all()
    rows = await session.execute(
        select(Preference.category, Preference.channel, Preference.enabled).where(
            Preference.recipient_id == recipient
        )
    )
    return {(category, channel): enabled for category, channel, enabled in rows}


async def audited(session: AsyncSession, tenant: TenantKey, action: str) -> list[AuditEntry]:
    rows = await session.scalars(
        select(AuditEntry)
        .where(AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == action)
        .order_by(AuditEntry.seq)
    )
    return list(rows)


def token_for(settings: Settings, tenant: TenantKey, recipient: uuid.UUID, category: str) -> str:
    tokens = UnsubscribeTokens(keyring_for(settings))
    return tokens.make(TokenClaims(tenant.tenant_id, tenant.mode, recipient, category))


async def test_one_click_post_unsubscribes_at_once_and_again_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    await put_recipient(client, tenant, "ada", email="ada@example.com")
    ada = await recipient_id(session, tenant, "ada")
    token = token_for(settings, tenant, ada, "marketing")

    # As a mail provider sends it: a form body, no cookie, no CSRF token.
    answer = await client.post(f"/u/{token}", data=ONE_CLICK)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "You are unsubscribed" in answer.text
    assert "set-cookie" not in answer.headers
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert await switches(session, ada) == {("marketing", "email"): False}
    [entry] = await audited(session, tenant, "recipient.unsubscribed")
    assert entry.target == str(ada)
    assert entry.actor == f"recipient:{ada}"
    assert entry.details == {
        "category": "marketing",
        "channel": "email",
        "mode": tenant.mode,
        "via": "one_click",
    }

    again = await client.post(f"/u/{token}", data=ONE_CLICK)
    assert again.status_code == 200 and "You are unsubscribed" in again.text
    assert len(await audited(session, tenant, "recipient.unsubscribed")) == 1


async def test_an_empty_post_unsubscribes_too_and_a_switched_on_category_goes_off(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    await put_recipient(client, tenant, "bo", email="bo@example.com")
    bo = await recipient_id(session, tenant, "bo")
    prefs = {"categories": {"transactional": {"email": True, "sms": False}}}
    put = await client.put("/v1/recipients/bo/preferences", headers=tenant.headers, json=prefs)
    assert put.status_code == 200

    token = token_for(settings, tenant, bo, "transactional")
    answer = await client.post(f"/u/{token}")
    assert answer.status_code == 200
    assert await switches(session, bo) == {
        ("transactional", "email"): False,
        ("transactional", "sms"): False,
    }
    view = await client.get("/v1/recipients/bo/preferences", headers=tenant.headers)
    assert view.json()["categories"] == {"transactional": {"email": False, "sms": False}}


async def test_the_get_page_only_asks(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    await put_recipient(client, tenant, "cy", email="cy@example.com")
    cy = await recipient_id(session, tenant, "cy")
    token = token_for(settings, tenant, cy, "marketing")

    for _ in range(2):  # a mail scanner fetching the link, then the person
        page = await client.get(f"/u/{token}")
        assert page.status_code == 200
        assert "Stop getting “Marketing” e-mail?" in page.text
        assert f'action="/u/{token}"' in page.text
        assert "<script" not in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
    assert await switches(session, cy) == {}
    assert await audited(session, tenant, "recipient.unsubscribed") == []

    # The page's button posts the form; the audit log says where it came from.
    done = await client.post(f"/u/{token}", data={**ONE_CLICK, "from": "page"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    [entry] = await audited(session, tenant, "recipient.unsubscribed")
    assert entry.details["via"] == "page"


async def test_tokens_that_open_nothing_are_a_404_page(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
    settings: Settings,
) -> None:
    await put_recipient(client, tenant, "dee", email="dee@example.com")
    dee = await recipient_id(session, tenant, "dee")
    token = token_for(settings, tenant, dee, "marketing")
    tampered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    test_key = await key_of(session, tenant, "test")
    other_key = UnsubscribeTokens(keyring_for(settings))
    refused = [
        tampered,
        token[:20],
        "x" * 500,
        "not-a-token",
        # Genuine tokens naming dee under another tenant, or in the other mode.
        other_key.make(TokenClaims(other_tenant.tenant_id, tenant.mode, dee, "marketing")),
        other_key.make(TokenClaims(tenant.tenant_id, test_key.mode, dee, "marketing")),
        # A recipient that does not exist.
        token_for(settings, tenant, uuid.uuid4(), "marketing"),
    ]
    for bad in refused:
        for method, path in (
            ("POST", f"/u/{bad}"),
            ("GET", f"/u/{bad}"),
            ("GET", f"/u/{bad}/preferences"),
            ("POST", f"/u/{bad}/preferences"),
        ):
            answer = await client.request(method, path, data=ONE_CLICK)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.headers["content-type"].startswith("text/html")
            assert "This link does not work" in answer.text
    assert await switches(session, dee) == {}
    assert await audited(session, tenant, "recipient.unsubscribed") == []
    count = select(func.count()).select_from(Preference)
    assert await session.scalar(count.where(Preference.tenant_id == other_tenant.tenant_id)) == 0


async def test_an_erased_recipient_link_is_a_404_page(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    await put_recipient(client, tenant, "eve", email="eve@example.com")
    eve = await recipient_id(session, tenant, "eve")
    token = token_for(settings, tenant, eve, "marketing")
    assert (await client.delete("/v1/recipients/eve", headers=tenant.headers)).status_code < 300
    assert (await client.post(f"/u/{token}", data=ONE_CLICK)).status_code == 404


CHECKBOX = re.compile(r'<input type="checkbox" name="on"[^>]*>')
VALUE = re.compile(r'value="([^"]+)"')


def ticked(html: str) -> dict[str, bool]:
    """Each checkbox of the centre's form by value: whether it is checked."""
    boxes = {}
    for tag in CHECKBOX.findall(html):
        value = VALUE.search(tag)
        assert value is not None
        boxes[value.group(1)] = re.search(r"\schecked\b", tag) is not None
    return boxes


async def test_the_preference_centre_shows_and_saves_non_critical_categories(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    category = {"name": "Weekly digest", "description": "Once a week.", "critical": False}
    put = await client.put("/v1/categories/digest", headers=tenant.headers, json=category)
    assert put.status_code in (200, 201), put.text
    await put_recipient(client, tenant, "fay", email="fay@example.com")
    fay = await recipient_id(session, tenant, "fay")
    token = token_for(settings, tenant, fay, "digest")

    page = await client.get(f"/u/{token}/preferences")
    assert page.status_code == 200
    shown = ticked(page.text)
    # Critical categories (security) are sent despite opt-outs: not offered; nor webhooks.
    assert {value.split(":")[0] for value in shown} == {"digest", "marketing", "transactional"}
    assert {value.split(":")[1] for value in shown} == {"email", "sms", "push", "inbox"}
    assert all(shown.values())
    assert f'action="/u/{token}/preferences"' in page.text

    keep = [value for value in shown if value not in ("digest:email", "marketing:sms")]
    saved = await client.post(f"/u/{token}/preferences", data={"form": "preferences", "on": keep})
    assert saved.status_code == 200
    assert "Your preferences are saved." in saved.text
    now = ticked(saved.text)
    assert now.pop("digest:email") is False and now.pop("marketing:sms") is False
    assert all(now.values())
    assert await switches(session, fay) == {
        ("digest", "email"): False,
        ("marketing", "sms"): False,
    }
    [entry] = await audited(session, tenant, "recipient.preferences_updated")
    assert (entry.actor, entry.target) == (f"recipient:{fay}", str(fay))

    # Back on; what is not shown (a critical category, a made-up one) is ignored.
    extra = ["security:email", "nope:email", "digest:webhook", "junk"]
    again = await client.post(
        f"/u/{token}/preferences", data={"form": "preferences", "on": [*shown, *extra]}
    )
    assert again.status_code == 200 and all(ticked(again.text).values())
    assert await switches(session, fay) == {
        ("digest", "email"): True,
        ("marketing", "sms"): True,
    }
    # Saving what is already stored writes nothing.
    await client.post(f"/u/{token}/preferences", data={"form": "preferences", "on": list(shown)})
    assert len(await audited(session, tenant, "recipient.preferences_updated")) == 2


async def test_any_body_of_a_post_unsubscribes_and_nothing_is_a_500(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    """Mail providers differ in what they send with the POST; hostile senders too."""
    await put_recipient(client, tenant, "gus", email="gus@example.com")
    gus = await recipient_id(session, tenant, "gus")
    token = token_for(settings, tenant, gus, "marketing")
    bodies = [
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click"),
        ("text/plain", b"List-Unsubscribe=One-Click"),
        ("application/json", b'{"List-Unsubscribe": '),
        ("application/x-www-form-urlencoded", b"\xff\xfe%%%=&&=\x00"),
        ("multipart/form-data; boundary=x", b"--x\r\nbroken"),
    ]
    for content_type, content in bodies:
        answer = await client.post(
            f"/u/{token}", content=content, headers={"content-type": content_type}
        )
        assert answer.status_code == 200, (content_type, answer.status_code, answer.text)
        assert "You are unsubscribed" in answer.text
        # The preference centre's form is its input: any other body is refused, as a page,
        # and changes nothing (no box ticked would otherwise mean everything off).
        centre = await client.post(
            f"/u/{token}/preferences", content=content, headers={"content-type": content_type}
        )
        assert centre.status_code in (400, 422), (content_type, centre.text)
        assert centre.headers["content-type"].startswith("text/html")
    assert await switches(session, gus) == {("marketing", "email"): False}


async def test_the_tenants_endpoints_hear_of_an_unsubscribe_once(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    made, _ = await webhook_service.create_endpoint(
        session,
        tenant_id=tenant.tenant_id,
        mode=tenant.mode,
        data=webhook_service.EndpointInput(
            "https://hooks.example.com/h", event_types=["recipient.unsubscribed"]
        ),
        actor="test",
        keyring=keyring_for(settings),
        allow_private=True,
    )
    await session.commit()
    await put_recipient(client, tenant, "cy", email="cy@example.com")
    cy = await recipient_id(session, tenant, "cy")
    token = token_for(settings, tenant, cy, "marketing")
    for _ in range(2):
        assert (await client.post(f"/u/{token}", data=ONE_CLICK)).status_code == 200
    written = (
        await session.execute(
            select(WebhookEvent.type, WebhookEvent.data).where(
                WebhookEvent.tenant_id == tenant.tenant_id
            )
        )
    ).all()
    assert written == [
        (
            "recipient.unsubscribed",
            {"recipient": "cy", "channel": "email", "category": "marketing", "source": "one_click"},
        )
    ]
    # Leave nothing for other tests' senders (the database is shared).
    await session.execute(delete(WebhookEvent).where(WebhookEvent.tenant_id == tenant.tenant_id))
    await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == made.id))
    await session.commit()
