"""The seed of `herald bench fanout`: a tenant's recipients written by COPY, in chunks."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.recipients.models import Recipient
from app.runtime import ServiceUrls
from bench import fanout
from tests.support import make_tenant


async def test_the_seed_copies_numbered_recipients_in_chunks(
    session: AsyncSession, service_urls: ServiceUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "SEED_CHUNK", 40)  # three chunks, the last one short
    tenant = await make_tenant(session, "Seeded", mode="test")
    ticks: list[float] = []
    spent = await fanout.seed_recipients(
        service_urls.database_url, tenant.tenant_id, 100, lambda done, total: ticks.append(done)
    )
    assert spent > 0 and ticks == [40, 80, 100]
    rows = (
        await session.execute(
            select(Recipient.external_id, Recipient.email, Recipient.locale).where(
                Recipient.tenant_id == tenant.tenant_id, Recipient.mode == "test"
            )
        )
    ).all()
    assert sorted(r.external_id for r in rows) == sorted(f"user-{n}" for n in range(100))
    assert all(r.email == f"{r.external_id}@example.com" for r in rows)
    assert {r.locale for r in rows} == set(fanout.LOCALES)
    erased = await session.scalar(
        select(func.count())
        .select_from(Recipient)
        .where(Recipient.tenant_id == tenant.tenant_id, Recipient.erased_at.is_not(None))
    )
    assert erased == 0
