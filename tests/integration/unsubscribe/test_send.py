"""Unsubscribe links through a real send: API → dispatch → deliver → SMTP to aiosmtpd.

A non-critical notification's mail carries one List-Unsubscribe (HTTPS, then the operator's
mailto) and List-Unsubscribe-Post, and `{{ unsubscribe_url }}` becomes the recipient's own
link; a critical one carries neither header and an empty link. The link then works: its
POST switches the category's e-mail off, and the next send of that category skips it.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import httpx

from app.runtime import ServiceUrls
from app.templates.content import UNSUBSCRIBE_URL_PLACEHOLDER
from tests.fakes import Mailbox
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, settings_for

PUBLIC_URL = "https://herald.example.com"
MAILTO = "unsubscribe@herald.example.com"
LINK = re.compile(rf"{re.escape(PUBLIC_URL)}/u/([A-Za-z0-9_-]+)")


def mail_to(box: Mailbox, address: str) -> list[EmailMessage]:
    found = []
    for envelope in box.received:
        if address in envelope.rcpt_tos:
            mail = email.message_from_bytes(
                envelope.original_content or b"", policy=email.policy.default
            )
            assert isinstance(mail, EmailMessage)
            found.append(mail)
    return found


def body(mail: EmailMessage, kind: str) -> str:
    part = mail.get_body((kind,))
    assert part is not None
    content: str = part.get_content()
    return content


async def test_non_critical_mail_has_its_own_link_and_critical_mail_none(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    service_urls: ServiceUrls,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    provider = {
        "channel": "email",
        "provider": "smtp",
        "name": "local relay",
        "options": {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "hi@a.t"},
    }
    created = await client.post("/v1/providers", headers=tenant.headers, json=provider)
    assert created.status_code == 201, created.text
    await put_template(
        client,
        tenant,
        "news",
        {
            "email": {
                "subject": "News for {{ recipient.data.name }}",
                "text": "Hello. Stop: {{ unsubscribe_url }} / forged: {{ forged }}",
                "html": '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
            }
        },
    )
    for name in ("ann", "ben"):
        await put_recipient(client, tenant, name, email=f"{name}@example.com", data={"name": name})
    # Data naming the placeholder gets each message's own link, never another's.
    data = {"forged": UNSUBSCRIBE_URL_PLACEHOLDER, "unsubscribe_url": "https://evil.test/"}
    sent = [
        await notify(
            client, tenant, template="news", to=["ann", "ben"], category="marketing", data=data
        ),
        await notify(client, tenant, template="news", to=["ann"], category="security", data=data),
    ]
    settings = settings_for(
        service_urls.database_url,
        service_urls.redis_url,
        HERALD_ALLOW_PRIVATE_URLS="true",
        HERALD_PUBLIC_URL=PUBLIC_URL,
        HERALD_UNSUBSCRIBE_MAILTO=MAILTO,
    )
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)
    for accepted, count in zip(sent, (2, 1), strict=True):
        assert (await notification(client, tenant, accepted["id"]))["counts"] == {"sent": count}

    tokens = {}
    for name in ("ann", "ben"):
        news = [m for m in mail_to(box, f"{name}@example.com") if "Stop: https" in body(m, "plain")]
        assert len(news) == 1, name
        [mail] = news
        [header] = mail.get_all("List-Unsubscribe")
        found = re.fullmatch(
            rf"<{LINK.pattern}>, <mailto:{re.escape(MAILTO)}\?subject=unsubscribe-(\1)>", header
        )
        assert found, header
        tokens[name] = found.group(1)
        assert mail.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
        url = f"{PUBLIC_URL}/u/{tokens[name]}"
        assert body(mail, "plain").strip() == f"Hello. Stop: {url} / forged: {url}"
        assert f'<a href="{url}">Unsubscribe</a>' in body(mail, "html")
    assert tokens["ann"] != tokens["ben"]

    [critical] = [m for m in mail_to(box, "ann@example.com") if "Stop:  /" in body(m, "plain")]
    assert critical["List-Unsubscribe"] is None
    assert critical["List-Unsubscribe-Post"] is None
    assert body(critical, "plain").strip() == "Hello. Stop:  / forged:"
    assert '<a href="">Unsubscribe</a>' in body(critical, "html")

    # The link as a mail provider uses it: ann is off marketing e-mail, ben is not.
    one_click = await client.post(f"/u/{tokens['ann']}", data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    again = await notify(
        client, tenant, template="news", to=["ann", "ben"], category="marketing", data=data
    )
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)
    view = await notification(client, tenant, again["id"])
    by_address = {m["address"]: m["status"] for m in view["messages"]}
    assert by_address == {"ann@example.com": "skipped", "ben@example.com": "sent"}
