"""Counting the commands that reach the queues, as Redis itself sees them (MONITOR).

MONITOR streams every command the server runs, with its database number, whoever sent it:
nothing of Herald is wrapped or patched. A command belongs to the queues when it names an
arq job key or a queue (the enqueue script names `arq:job:` among its keys), so the API's
rate-limit scripts and other databases' traffic on a shared server are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from redis.asyncio import Redis

from jobs import queues

QUEUE_MARKS = ("arq:job:", *queues.QUEUE_NAMES.values())


@dataclass
class QueueTraffic:
    commands: list[str] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        """Commands sent to the queues: one script call per batched enqueue."""
        return len(self.commands)

    @property
    def script_calls(self) -> int:
        return sum(1 for c in self.commands if c.split(" ", 1)[0].strip('"') in ("EVALSHA", "EVAL"))


@contextlib.asynccontextmanager
async def queue_traffic(redis_url: str) -> AsyncIterator[QueueTraffic]:
    """The queue commands run on `redis_url`'s database while the block runs."""
    db = int(urlsplit(redis_url).path.lstrip("/") or 0)
    client = Redis.from_url(redis_url)
    # Loaded beforehand, so that a first EVALSHA's NOSCRIPT fallback is not counted.
    await client.script_load(queues.ENQUEUE_MANY)
    traffic = QueueTraffic()
    marker = f"queue-traffic-end-{uuid.uuid4().hex}"
    started = asyncio.Event()

    async def listen() -> None:
        async with client.monitor() as monitor:
            started.set()
            async for command in monitor.listen():
                text = command["command"]
                if marker in text:
                    return
                if command.get("client_type") == "lua":
                    continue  # what a script runs is part of its one call
                if command["db"] == db and any(mark in text for mark in QUEUE_MARKS):
                    traffic.commands.append(text)

    listener = asyncio.create_task(listen())
    await started.wait()
    # MONITOR is on once the server has answered the command: a round trip after it.
    probe = Redis.from_url(redis_url)
    await probe.ping()
    try:
        yield traffic
    finally:
        await probe.echo(marker)  # MONITOR shows commands in the order they ran
        await asyncio.wait_for(listener, timeout=30)
        await probe.aclose()
        await client.aclose()


async def queued_jobs(redis_url: str) -> dict[str, list[str]]:
    """The job ids waiting on each priority's queue."""
    redis = Redis.from_url(redis_url)
    try:
        return {
            priority: [job.decode() for job in await redis.zrange(name, 0, -1)]
            for priority, name in queues.QUEUE_NAMES.items()
        }
    finally:
        await redis.aclose()
