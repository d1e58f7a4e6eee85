"""A broadcast draining at its tenant's rate does not hold back a single notification sent
meanwhile: another tenant's, or the same tenant's own of high priority.

Real arq workers in-process (tests/send_path.py's `drain`, run beside the test), the sandbox
delivering (test mode). Tenant A sends to everyone, a few thousand recipients at the starter
plan's 200 messages/s; once its first messages are sent, one more notification is sent to
one recipient. The test holds to the order of events, never to how long they took: the
single message was sent while A's broadcast still had messages not sent, and before its
last one.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications import expansion
from app.notifications.models import Message
from app.runtime import ServiceUrls
from app.settings import Settings
from app.tenants.models import Tenant
from tests.send_path import drain, notify, put_recipient, put_template, workers
from tests.support import TenantKey, make_tenant

AUDIENCE = 2_500
MAIL = {"email": {"subject": "News", "text": "Hello"}}


async def seed(session: AsyncSession, tenant: TenantKey) -> None:
    """AUDIENCE recipients of tenant A, in one statement."""
    await session.execute(
        text(
            """
            INSERT INTO recipients (id, tenant_id, mode, external_id, email, data,
                                    created_at, updated_at)
            SELECT gen_random_uuid(), :tenant, 'test', 'a' || i, 'a' || i || '@example.com',
                   CAST('{}' AS jsonb), now(), now()
              FROM generate_series(0, :n - 1) AS i
            """
        ),
        {"tenant": tenant.tenant_id, "n": AUDIENCE},
    )
    await session.commit()


async def sent_times(session: AsyncSession, notification_id: str) -> list[datetime]:
    """When each of the notification's messages was sent, in order; all must be sent."""
    rows = (
        await session.execute(
            select(Message.status, Message.sent_at)
            .where(Message.notification_id == uuid.UUID(notification_id))
            .order_by(Message.sent_at)
        )
    ).all()
    await session.commit()
    assert {status for status, _ in rows} == {"sent"}
    return [at for _, at in rows if at is not None]


async def count_sent(session: AsyncSession, notification_id: str) -> int:
    found = await session.scalar(
        select(func.count())
        .select_from(Message)
        .where(Message.notification_id == uuid.UUID(notification_id), Message.status == "sent")
    )
    await session.commit()
    return int(found or 0)


async def until(condition: Any, *, within: float, what: str) -> None:
    """Poll until `condition()` holds; fail naming `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("single", ["other tenant", "own high priority"])
async def test_a_single_notification_is_not_held_behind_a_draining_broadcast(
    single: str,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    service_urls: ServiceUrls,
) -> None:
    a = await make_tenant(session, "Broadcaster", mode="test")
    b = await make_tenant(session, "Bystander", mode="test")
    # 200 messages/s: the broadcast drains for seconds, a window of 100 every 0.5 s.
    await session.execute(update(Tenant).where(Tenant.id == a.tenant_id).values(plan="starter"))
    await session.commit()
    for key in (a, b):
        await put_template(client, key, "news", MAIL)
    await seed(session, a)
    await put_recipient(client, b, "solo", email="solo@example.com")

    async with workers(settings) as ctx:
        draining = asyncio.create_task(drain(ctx, service_urls.redis_url, wait_seconds=100))
        try:
            broadcast = await notify(client, a, template="news", to={"all": True})
            await until(
                lambda: _some_sent(session, broadcast["id"]),
                within=60,
                what="the broadcast's first messages",
            )
            held = await expansion.held_count(session, uuid.UUID(broadcast["id"]))
            await session.commit()
            assert held > 0, "the broadcast was not draining any more"
            if single == "other tenant":
                one = await notify(client, b, template="news", to=["solo"])
            else:  # a critical category may ride the high queue
                one = await notify(
                    client, a, template="news", to=["a0"], category="security", priority="high"
                )
        finally:
            await draining  # until every queue is idle: the broadcast drained to its end
    [single_sent] = await sent_times(session, one["id"])
    broadcast_sent = await sent_times(session, broadcast["id"])
    assert len(broadcast_sent) == AUDIENCE
    # The single message went while the broadcast still had messages to send.
    after = sum(1 for at in broadcast_sent if at > single_sent)
    print(f"{single}: {after} of the broadcast's {AUDIENCE} messages were sent after it")
    assert single_sent < broadcast_sent[-1]
    assert after > 0


async def _some_sent(session: AsyncSession, notification_id: str) -> bool:
    return await count_sent(session, notification_id) > 0
