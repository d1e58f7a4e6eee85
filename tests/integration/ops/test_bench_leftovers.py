"""What a bench leaves queued when it stops its workers early: the jobs naming its own
database's messages and notifications are withdrawn, and no one else's."""

from __future__ import annotations

import subprocess
import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import outbox
from app.runtime import ServiceUrls
from bench.common import named_row, withdraw_jobs_of
from jobs import queues
from tests.send_path import notify, put_recipient, put_template
from tests.support import make_tenant


def test_a_job_id_names_its_message_or_notification_second() -> None:
    row = uuid.uuid4()
    assert named_row(f"deliver:{row}:100") == row
    assert named_row(f"wait:{row}:3:1700000000000") == row
    assert named_row(f"dispatch:{row}") == row
    assert named_row("cron:relay:1700000000") is None
    assert named_row("ping") is None


async def test_only_the_jobs_naming_this_databases_rows_are_withdrawn(
    session: AsyncSession,
    client: httpx.AsyncClient,
    service_urls: ServiceUrls,
    own_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    tenant = await make_tenant(session, "Leftovers")
    await put_template(client, tenant, "hello", {"email": {"subject": "Hi", "text": "Hello"}})
    await put_recipient(client, tenant, "left-1", email="left-1@example.com")
    ours = uuid.UUID((await notify(client, tenant, template="hello", to=["left-1"]))["id"])
    elsewhere = uuid.uuid4()  # a message of another database on the same Redis
    _, redis_url = own_redis
    pool = await queues.connect(redis_url)
    try:
        await queues.outbox(pool).enqueue(
            [
                outbox.dispatch(ours, "normal", None),
                outbox.deliver("high", [elsewhere]),
            ]
        )
        await pool.zadd(queues.QUEUE_NAMES["low"], {"cron:relay:1": 0})
        assert await withdraw_jobs_of(service_urls.database_url, redis_url) == 1
        left = {
            name: [m.decode() for m in await pool.zrange(queue, 0, -1)]
            for name, queue in queues.QUEUE_NAMES.items()
        }
        assert left == {
            "high": [f"deliver:{elsewhere}:1"],
            "normal": [],
            "low": ["cron:relay:1"],
        }
        assert not await pool.exists(f"arq:job:dispatch:{ours}")
    finally:
        await pool.aclose()
