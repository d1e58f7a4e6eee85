"""Members in a real browser: a real `herald api` process, headless Chromium, and a real SMTP
server (aiosmtpd) that the invitation and password-reset links are read from.

An owner invites a viewer by e-mail; the viewer follows the mailed link, creates their
account, signs in and finds no way to revoke a key (and a forged revoke is refused); then
the viewer forgets their password and sets a new one through the mailed link. Screenshots:
test-artifacts/members.png, invite-accept.png, password-reset.png. Last, the owner is
invited to a second tenant, joins it from her session and switches back through the top
bar (members-tenant-switch.png).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from app.runtime import ServiceUrls
from tests.e2e.browser import PASSWORD, chromium, sign_up
from tests.fakes import Mailbox
from tests.support import herald_api

NEW_PASSWORD = "an even longer password"


@pytest.fixture
def server(
    service_urls: ServiceUrls, tmp_path: Path, mailbox: tuple[Mailbox, int]
) -> Iterator[str]:
    """A `herald api` process mailing through the test's SMTP server; its URL."""
    _, smtp_port = mailbox
    with herald_api(
        service_urls.database_url,
        service_urls.redis_url,
        tmp_path,
        HERALD_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
    ) as api:
        yield api.url


async def mailed_link(box: Mailbox, to: str, pattern: str, count: int) -> str:
    """The link matching `pattern` in the `count`th mail to `to`, waiting (a few seconds at
    most) for it to arrive: the password-reset mail leaves after the page is answered."""
    deadline = time.monotonic() + 10
    while True:
        mails = [envelope for envelope in box.received if to in envelope.rcpt_tos]
        if len(mails) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(mails) == count, f"{count} mails to {to}, not {len(mails)}"
    mail = message_from_bytes(mails[-1].original_content or b"", policy=policy.default)
    body = mail.get_body(("plain",))
    assert body is not None
    found = re.search(pattern, body.get_content())
    assert found, body.get_content()
    return found.group(0)


async def verify_email(page: Page, box: Mailbox, email: str) -> None:
    """Follow the mailed verification link and confirm: mailed invitations wait for it."""
    await page.goto(await mailed_link(box, email, r"http://\S+/verify-email\?token=\S+", 1))
    await page.get_by_role("button", name="Confirm my e-mail address").click()
    await expect(page.locator("h1")).to_have_text("E-mail verified")


async def create_test_key(page: Page, name: str) -> None:
    form = page.locator("#key-create form")
    await form.get_by_label("Name").fill(name)
    await form.locator("input[name=mode][value=test]").check(force=True)
    await form.get_by_role("button", name="Create key").click()
    await expect(page.locator(".secret-reveal")).to_contain_text(f"Key “{name}” created")


async def sign_in(page: Page, base_url: str, email: str, password: str) -> None:
    await page.goto(f"{base_url}/signin")
    await page.get_by_label("E-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base_url}/overview")  # the dashboard's home
    await page.goto(f"{base_url}/keys")


async def test_members_invite_accept_and_password_reset(
    server: str, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    viewer_email = f"vic-{uuid.uuid4().hex[:8]}@acme.example"
    async with chromium() as session:
        owner = session.page
        owner_email = await sign_up(owner, server, "Acme Rockets")
        await expect(owner.locator(".account-tenant")).to_have_text("Acme Rockets")
        await owner.goto(f"{server}/keys")  # sign-up lands on the overview
        await create_test_key(owner, "Billing service")
        await verify_email(owner, box, owner_email)
        await owner.goto(f"{server}/keys")
        # Invitations are mailed from live data (from test data they go to the sandbox); a
        # verified tenant's pages show live data first.
        await expect(owner.locator("#data-mode")).to_have_text("Live data")

        await owner.get_by_role("link", name="Members").click()
        await expect(owner.locator("h1")).to_have_text("Members")
        await owner.get_by_label("E-mail", exact=True).fill(viewer_email)
        await owner.get_by_label("Role", exact=True).select_option("viewer")
        await owner.get_by_role("button", name="Send invitation").click()
        await expect(owner.locator("#members-notice")).to_contain_text("Invitation sent")
        await expect(owner.locator("#invites-table")).to_contain_text(viewer_email)
        await session.screenshot("members")

        link = await mailed_link(box, viewer_email, r"http://\S+/invite/\S+", 1)
        viewer = await session.new_page()
        await viewer.goto(link)
        await expect(viewer.locator("h1")).to_have_text("Join Acme Rockets")
        await viewer.get_by_label("Your name").fill("Vic Viewer")
        await viewer.get_by_label("Choose a password").fill(PASSWORD)
        await session.screenshot("invite-accept", viewer)
        await viewer.get_by_role("button", name="Create account and join").click()
        await viewer.wait_for_url(f"{server}/overview")
        await expect(viewer.locator(".account-user")).to_contain_text("viewer")

        await viewer.get_by_role("button", name="Sign out").click()
        await sign_in(viewer, server, viewer_email, PASSWORD)
        rows = viewer.locator("#keys-body tr.key-row")
        await expect(rows.filter(has_text="Billing service")).to_have_count(1)
        await expect(viewer.get_by_role("button", name="Revoke")).to_have_count(0)
        row_id = await rows.first.get_attribute("id")
        assert row_id and row_id.startswith("key-")
        token = re.search(
            r'"x-csrftoken": "([^"]+)"',
            await viewer.locator("body").get_attribute("hx-headers") or "",
        )
        assert token
        # A forged revoke, with the viewer's cookies and a valid CSRF token, is refused.
        forged = await viewer.context.request.post(
            f"{server}/keys/{row_id.removeprefix('key-')}/revoke",
            headers={"x-csrftoken": token.group(1)},
        )
        assert forged.status == 403, await forged.text()
        await viewer.reload()
        await expect(rows.filter(has_text="Billing service")).to_contain_text("Active")
        await viewer.get_by_role("link", name="Members").click()
        await expect(viewer.locator("#invite-form")).to_have_count(0)
        await expect(viewer.locator("#members-table")).to_contain_text(viewer_email)

        # The viewer forgets their password.
        await viewer.get_by_role("button", name="Sign out").click()
        await viewer.get_by_role("link", name="Forgot your password?").click()
        await viewer.get_by_label("E-mail").fill(viewer_email)
        await viewer.get_by_role("button", name="Send the link").click()
        await expect(viewer.locator("#reset-sent")).to_contain_text(viewer_email)
        reset = await mailed_link(box, viewer_email, r"http://\S+/password-reset/\S+", 2)
        await viewer.goto(reset)
        await expect(viewer.locator("h1")).to_have_text("Choose a new password")
        await viewer.get_by_label("New password").fill(NEW_PASSWORD)
        await session.screenshot("password-reset", viewer)
        await viewer.get_by_role("button", name="Set the new password").click()
        await expect(viewer.locator("#reset-done")).to_be_visible()
        await sign_in(viewer, server, viewer_email, NEW_PASSWORD)
        await expect(viewer.locator(".account-tenant")).to_have_text("Acme Rockets")
        # The link worked once.
        before = len(session.problems)
        await viewer.goto(reset)
        await expect(viewer.locator("h1")).to_have_text("This link does not work")
        # The browser logs the page's status (400), which is the point here.
        assert [p for p in session.problems[before:] if "400" not in p] == []
        del session.problems[before:]

        # Ada is invited to a second tenant, joins it from her session, and switches back.
        globex = await session.new_page()
        globex_email = await sign_up(globex, server, "Globex")
        await verify_email(globex, box, globex_email)
        await globex.goto(f"{server}/keys")
        await expect(globex.locator("#data-mode")).to_have_text("Live data")
        await globex.goto(f"{server}/members")
        await globex.get_by_label("E-mail", exact=True).fill(owner_email)
        await globex.get_by_role("button", name="Send invitation").click()
        await expect(globex.locator("#members-notice")).to_contain_text("Invitation sent")
        invite = await mailed_link(box, owner_email, r"http://\S+/invite/\S+", 2)
        await owner.goto(invite)
        await expect(owner.locator("#accept-form")).to_contain_text("You are signed in as")
        await owner.get_by_role("button", name="Join Globex").click()
        await owner.wait_for_url(f"{server}/overview")
        await expect(owner.locator(".account-tenant")).to_have_text("Globex")
        await owner.get_by_text("Switch tenant").click()
        await expect(owner.locator(".tenant-menu")).to_be_visible()
        await session.screenshot("members-tenant-switch")
        await owner.locator(".tenant-option", has_text="Acme Rockets").click()
        await expect(owner.locator(".account-tenant")).to_have_text("Acme Rockets")
        await expect(owner.locator(".account-user")).to_contain_text("owner")
    assert session.problems == [], session.problems
