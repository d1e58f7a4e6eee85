"""A notification whose dispatch keeps failing is failed with its reason, not relayed for ever.

Runs left unfinished by a killed worker are what `begin_attempt` alone leaves behind (the
count is committed before the work); tests/faults/test_template_bombs.py kills real worker
processes for it. A run that raises is a dispatch with its render processes stopped.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.failures import MAX_DISPATCH_ATTEMPTS, begin_attempt
from app.notifications.models import Notification
from app.notifications.relay import stale_accepted
from app.runtime import ServiceUrls
from app.templates.pool import RenderPool
from app.templates.renderer import Renderer
from jobs import functions, queues
from tests.send_path import notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, settings_for


async def _accepted(client: httpx.AsyncClient, tenant: TenantKey) -> str:
    await put_template(client, tenant, "plain", {"inbox": {"title": "T", "body": "Hi"}})
    await put_recipient(client, tenant, "f1")
    return str((await notify(client, tenant, template="plain", to=["f1"]))["id"])


async def _row(session: AsyncSession, notification_id: str) -> Notification:
    session.expire_all()
    row = await session.get(Notification, uuid.UUID(notification_id))
    assert row is not None
    return row


async def test_runs_left_unfinished_fail_the_notification_with_the_reason(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    notification_id = await _accepted(client, tenant)
    for _ in range(MAX_DISPATCH_ATTEMPTS):  # each: a worker counted its run and died
        assert await begin_attempt(session, notification_id=uuid.UUID(notification_id))
    assert (await _row(session, notification_id)).dispatch_attempts == MAX_DISPATCH_ATTEMPTS
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        ctx["redis"] = pool = await queues.connect(service_urls.redis_url)
        try:
            assert await functions.dispatch(ctx, notification_id) == 0
        finally:
            await pool.aclose()
    view = await notification(client, tenant, notification_id)
    assert view["status"] == "failed" and view["messages"] == []
    assert view["problems"]["dispatch"] == (
        f"dispatch failed {MAX_DISPATCH_ATTEMPTS} times; the last time: "
        "the worker stopped during the dispatch (killed or crashed)"
    )
    stale = await stale_accepted(session, older_than=timedelta(0), limit=1000)
    assert uuid.UUID(notification_id) not in {p.id for p in stale}


async def test_a_run_that_raises_is_recorded_and_the_last_error_is_the_reason(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    notification_id = await _accepted(client, tenant)
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    stopped = RenderPool(processes=1, memory_mb=512)
    stopped.close()  # every dispatch with it raises
    async with workers(settings) as ctx:
        ctx["redis"] = pool = await queues.connect(service_urls.redis_url)
        working = ctx["renderer"]
        ctx["renderer"] = Renderer(stopped, None)
        try:
            for attempt in range(1, MAX_DISPATCH_ATTEMPTS):
                with pytest.raises(RuntimeError, match="the render pool is closed"):
                    await functions.dispatch(ctx, notification_id)
                row = await _row(session, notification_id)
                assert (row.status, row.dispatch_attempts) == ("accepted", attempt)
                assert row.dispatch_error == "RuntimeError: the render pool is closed"
            # A run that finishes (the last one allowed) sets the count back.
            ctx["renderer"] = working
            assert await functions.dispatch(ctx, notification_id) == 1
        finally:
            await pool.aclose()
    row = await _row(session, notification_id)
    assert (row.status, row.dispatch_attempts, row.dispatch_error) == ("dispatched", 0, None)


async def test_the_run_after_too_many_raising_ones_gives_up(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    notification_id = await _accepted(client, tenant)
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    stopped = RenderPool(processes=1, memory_mb=512)
    stopped.close()
    async with workers(settings) as ctx:
        ctx["redis"] = pool = await queues.connect(service_urls.redis_url)
        ctx["renderer"] = Renderer(stopped, None)
        try:
            for _ in range(MAX_DISPATCH_ATTEMPTS):
                with pytest.raises(RuntimeError):
                    await functions.dispatch(ctx, notification_id)
            assert await functions.dispatch(ctx, notification_id) == 0
        finally:
            await pool.aclose()
    view = await notification(client, tenant, notification_id)
    assert view["status"] == "failed"
    assert view["problems"]["dispatch"] == (
        f"dispatch failed {MAX_DISPATCH_ATTEMPTS} times; the last time: "
        "RuntimeError: the render pool is closed"
    )
