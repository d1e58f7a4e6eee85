"""The audit log page over HTTP: entries newest first, filtered and paged; the chain's state as
the audit service checks it, "broken" once a row is changed behind Herald's back; and only
the member's tenant's entries."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui import audit as audit_page
from app.audit import service as audit
from app.audit.models import AuditEntry
from app.db import utcnow
from tests.dashboard import PASSWORD, browser, sign_in
from tests.integration.audit.test_audit import as_owner
from tests.integration.dashboard.hooks_support import add_member, signed_up
from tests.support import TenantKey

ENTRY_ROW = re.compile(r'<tr id="entry-(\d+)"')


def seqs(page: httpx.Response) -> list[int]:
    return [int(found) for found in ENTRY_ROW.findall(page.text)]


async def append_many(session: AsyncSession, tenant_id: uuid.UUID, n: int, action: str) -> None:
    for i in range(n):
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=f"user:bulk{i % 2}@acme.example",
            action=action,
            target=f"thing-{i}",
            details={"i": i},
        )
    await session.commit()


async def newest_seq(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    seq = await session.scalar(
        select(AuditEntry.seq)
        .where(AuditEntry.tenant_id == tenant_id)
        .order_by(AuditEntry.seq.desc())
        .limit(1)
    )
    assert seq is not None
    return seq


async def test_entries_newest_first_filtered_and_paged_with_the_chain_verified(
    client: httpx.AsyncClient, session: AsyncSession, other_tenant: TenantKey
) -> None:
    owner = await signed_up(client, session, "Audited Ltd")
    await append_many(session, owner.tenant_id, 60, "thing.changed")
    newest = await newest_seq(session, owner.tenant_id)

    first = await client.get("/audit")
    assert first.status_code == 200
    assert seqs(first) == list(range(newest, newest - 50, -1))
    assert 'id="chain-verdict">Verified<' in first.text
    assert f"Verified up to entry <strong>{newest}</strong>: the whole chain" in first.text
    older = re.search(r'href="(/audit\?before=\d+)"', first.text)
    assert older
    second = await client.get(older.group(1))
    assert seqs(second) == list(range(newest - 50, 0, -1))
    assert "Older entries" not in second.text

    by_actor = await client.get("/audit?actor=user:bulk1@acme.example")
    assert len(seqs(by_actor)) == 30
    assert "user:bulk0@" not in by_actor.text.split('id="audit-table"')[1]
    by_action = await client.get("/audit?action=thing.")
    assert len(seqs(by_action)) == 50
    paged = re.search(r'href="(/audit\?action=thing.&amp;before=\d+)"', by_action.text)
    assert paged, "the next page keeps the filter"
    assert len(seqs(await client.get(paged.group(1).replace("&amp;", "&")))) == 10
    literal = await client.get("/audit?action=thing_")
    assert seqs(literal) == [], "a prefix, not a pattern: _ is not a wildcard"
    today = utcnow().date()
    assert len(seqs(await client.get(f"/audit?from={today}&to={today}"))) == 50
    tomorrow = today + timedelta(days=1)
    future = await client.get(f"/audit?from={tomorrow}")
    assert seqs(future) == [] and "No entries match these filters" in future.text
    yesterday = today - timedelta(days=1)
    assert seqs(await client.get(f"/audit?to={yesterday}")) == []

    # Another tenant's entries never show.
    their_targets = list(
        await session.scalars(
            select(AuditEntry.target).where(AuditEntry.tenant_id == other_tenant.tenant_id)
        )
    )
    assert their_targets
    everything = (await client.get("/audit")).text
    for target in their_targets:
        assert target not in everything


async def test_a_tampered_row_shows_the_chain_broken_there(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await signed_up(client, session, "Tampered Ltd")
    await append_many(session, owner.tenant_id, 5, "thing.changed")
    assert 'id="chain-verdict">Verified<' in (await client.get("/audit")).text
    await as_owner(
        session,
        "UPDATE audit_log SET actor = 'user:nobody@acme.example' WHERE tenant_id = :t AND seq = 3",
        {"t": owner.tenant_id},
    )
    page = await client.get("/audit")
    assert page.status_code == 200
    assert 'id="chain-verdict">Broken<' in page.text
    assert "Broken at entry <strong>3</strong>: contents do not match the stored MAC" in page.text
    assert '<tr id="entry-3" class="is-broken">' in page.text


async def test_the_check_is_bounded_to_the_newest_entries(
    session: AsyncSession, tenant: TenantKey
) -> None:
    """A long chain is checked over its newest `limit` entries only, and says so; a break in
    that window is found, one before it is for the full check."""
    await append_many(session, tenant.tenant_id, 20, "thing.changed")
    newest = await newest_seq(session, tenant.tenant_id)
    whole = await audit.check_recent(session, tenant_id=tenant.tenant_id, limit=1000)
    assert (whole.first_seq, whole.last_seq, whole.complete, whole.broken) == (
        1,
        newest,
        True,
        None,
    )
    window = await audit.check_recent(session, tenant_id=tenant.tenant_id, limit=5)
    assert (window.first_seq, window.last_seq, window.complete, window.broken) == (
        newest - 4,
        newest,
        False,
        None,
    )
    await as_owner(
        session,
        "UPDATE audit_log SET details = '{\"i\": 99}' WHERE tenant_id = :t AND seq = :s",
        {"t": tenant.tenant_id, "s": newest - 2},
    )
    inside = await audit.check_recent(session, tenant_id=tenant.tenant_id, limit=5)
    assert inside.broken is not None and inside.broken.seq == newest - 2
    await as_owner(
        session,
        "UPDATE audit_log SET details = '{\"i\": 98}' WHERE tenant_id = :t AND seq = 2",
        {"t": tenant.tenant_id},
    )
    full = await audit.check(session, tenant_id=tenant.tenant_id)
    assert [b.seq for b in full.breaks] == [2]
    await session.rollback()  # the full check's cursor ends with its transaction
    # The entry before a window, deleted: the window's first entry links to nothing.
    await as_owner(
        session,
        "DELETE FROM audit_log WHERE tenant_id = :t AND seq = :s",
        {"t": tenant.tenant_id, "s": newest - 10},
    )
    gap = await audit.check_recent(session, tenant_id=tenant.tenant_id, limit=10)
    assert gap.broken is not None and gap.broken.seq == newest - 9
    assert gap.broken.reason == f"entry {newest - 10} is missing"
    nothing = await audit.check_recent(session, tenant_id=uuid.uuid4(), limit=10)
    assert nothing.empty and nothing.broken is None


async def test_a_long_chain_says_how_much_of_it_the_page_checked(
    client: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await signed_up(client, session, "Long Chain Ltd")
    await append_many(session, owner.tenant_id, 12, "thing.changed")
    newest = await newest_seq(session, owner.tenant_id)
    monkeypatch.setattr(audit_page, "CHECKED_ENTRIES", 5)
    page = await client.get("/audit")
    assert 'id="chain-verdict">Verified<' in page.text
    assert (
        f"the newest 5 entries\n          ({newest - 4} to {newest}) are intact and linked"
        in page.text
    )
    assert "herald audit verify" in page.text
    await as_owner(
        session,
        "UPDATE audit_log SET target = 'elsewhere' WHERE tenant_id = :t AND seq = :s",
        {"t": owner.tenant_id, "s": newest - 1},
    )
    broken = await client.get("/audit")
    assert f"Broken at entry <strong>{newest - 1}</strong>" in broken.text
    assert f"Entries {newest - 4} to {newest - 2} are intact." in broken.text


async def test_bad_filters_are_a_422_naming_them(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    email = await add_member(session, tenant.tenant_id, "viewer")
    async with browser(app) as viewer:
        assert (await sign_in(viewer, email, PASSWORD)).status_code == 303
        assert (await viewer.get("/audit")).status_code == 200, "every member reads the log"
        for query, name in (
            ("from=yesterday", "from"),
            ("to=2026-13-01", "to"),
            ("from=2026-02-02&to=2026-02-01", "to"),
            ("before=-3", "before"),
            ("before=abc", "before"),
            ("actor=" + "a" * 201, "actor"),
            ("action=" + "a" * 101, "action"),
            ("actor=a%00b", "actor"),
        ):
            answer = await viewer.get(f"/audit?{query}")
            assert answer.status_code == 422, query
            assert f"{name}:" in answer.text, query
