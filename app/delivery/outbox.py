"""The outbox: the jobs the domain asks the queues to run, and the one way to hand them over.

PostgreSQL is the truth and the queues are its outbox. A service commits rows and returns
the `Job`s that put them to work; the caller hands them to an `Enqueuer` in one batch once
the transaction has committed. Every job id is built here, so that enqueueing the same work
twice is refused by the queue (dispatch of a notification, the first delivery of a batch)
while work that must run again gets an id of its own (a retry, a sweep, a replay).

The domain only knows the `Enqueuer` protocol; jobs/queues.py implements it over arq. The
API's composition root (app/main.py) plugs it in, and the job functions (jobs/functions.py,
jobs/cron.py) wrap their worker's pool in it. No module under app/ but the composition
roots (app/main.py, app/cli.py) imports jobs/: the import-linter contract in
pyproject.toml says so.

An enqueue that fails after the commit loses nothing: the outbox relay re-enqueues
notifications still `accepted`, and the sweeper messages still `queued` or `retrying`
(app/notifications/relay.py, app/delivery/sweeper.py). `enqueue_after_commit` therefore
logs and counts the failure and carries on.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

import structlog
from prometheus_client import Counter

log = structlog.get_logger(__name__)

# Message ids per deliver job: what dispatch, the sweeper, a DLQ replay, a lifted pause and
# messages given back unsent all batch by, and the page size of work done in pages.
BATCH_SIZE = 100

ENQUEUE_FAILURES = Counter(
    "herald_enqueue_failures_total",
    "Jobs whose enqueue failed after their rows were committed (the relay or sweeper "
    "enqueues them later)",
    ["function"],
)

Function = Literal["dispatch", "deliver"]
# Deliveries that must run although a job of the same messages may still hold its id.
Redelivery = Literal["sweep", "resume", "replay"]


@dataclass(frozen=True, slots=True)
class Job:
    """One job for the queues: which function, on which priority queue, with which id."""

    priority: str  # the queue: high | normal | low
    function: Function
    args: tuple[Any, ...]
    id: str
    defer_until: datetime | None = None


class Enqueuer(Protocol):
    """What the queues offer the domain: a batch of jobs in one round trip."""

    async def enqueue(self, jobs: Sequence[Job]) -> list[bool]:
        """Enqueue `jobs` at once; per job, True when it was written (False: its id is
        already taken, by a job queued, running or whose result is kept). Raises when the
        queue cannot be reached."""
        ...


class Outbox:
    """The enqueuer as services and controllers use it (given by dependency injection)."""

    def __init__(self, enqueuer: Enqueuer) -> None:
        self.enqueuer = enqueuer

    async def enqueue(self, jobs: Sequence[Job]) -> list[bool]:
        """Enqueue or raise: for workers, whose job fails (and is retried) with it."""
        if not jobs:
            return []
        return await self.enqueuer.enqueue(jobs)

    async def enqueue_after_commit(self, jobs: Sequence[Job]) -> list[bool]:
        """Enqueue the jobs of committed rows; a failure is logged and counted, not raised:
        the relay and the sweeper enqueue what it lost."""
        try:
            return await self.enqueue(jobs)
        except Exception:
            functions: dict[str, int] = defaultdict(int)
            for job in jobs:
                functions[job.function] += 1
            for function, count in functions.items():
                ENQUEUE_FAILURES.labels(function).inc(count)
            log.exception(
                "enqueue failed; the relay and the sweeper will enqueue again",
                jobs=len(jobs),
                first_job_id=jobs[0].id,
            )
            return [False] * len(jobs)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def dispatch(notification_id: uuid.UUID, priority: str, send_at: datetime | None) -> Job:
    # The job id is the notification's: enqueueing it twice (a retry, the relay) is harmless.
    return Job(
        priority, "dispatch", (str(notification_id),), f"dispatch:{notification_id}", send_at
    )


def later_dispatch(notification_id: uuid.UUID, priority: str, at: datetime) -> Job:
    """The rest of a dispatch deferred for the render budget. Its own id: the running job
    still holds `dispatch:<id>`; the relay leaves the notification alone until `at`."""
    job_id = f"dispatch:{notification_id}:{_ms(at)}"
    return Job(priority, "dispatch", (str(notification_id),), job_id, at)


def deliver(priority: str, message_ids: Sequence[uuid.UUID], at: datetime | None = None) -> Job:
    """A batch's first delivery (dispatch): made twice, it is refused the second time. `at`:
    not before then (dispatch paces a large notification's batches at its tenant's rate)."""
    ids = [str(message_id) for message_id in message_ids]
    return Job(priority, "deliver", (ids, priority), f"deliver:{ids[0]}:{len(ids)}", at)


def redeliver(reason: Redelivery, priority: str, message_ids: Sequence[uuid.UUID], tag: str) -> Job:
    """Messages delivered again (a sweep, a lifted pause, a DLQ replay): `tag` (the tick,
    the time, the call) gives the job an id of its own, since a deliver or retry job of the
    same messages may still hold theirs and arq refuses an id it holds."""
    ids = [str(message_id) for message_id in message_ids]
    return Job(priority, "deliver", (ids, priority), f"{reason}:{ids[0]}:{len(ids)}:{tag}")


def retry(priority: str, message_id: uuid.UUID, attempt: int, at: datetime) -> Job:
    # The due time makes the id unique even when a replay restarts the attempt count
    # while the previous retry's result is still kept.
    job_id = f"retry:{message_id}:{attempt}:{_ms(at)}"
    return Job(priority, "deliver", ([str(message_id)], priority), job_id, at)


def waiting(priority: str, message_ids: Sequence[uuid.UUID], at: datetime) -> Job:
    """Messages given back unsent (tokens, breakers, shutdown), due together at `at`."""
    ids = [str(message_id) for message_id in message_ids]
    job_id = f"wait:{ids[0]}:{len(ids)}:{_ms(at)}"
    return Job(priority, "deliver", (ids, priority, True), job_id, at)


class DueLater(Protocol):
    """A message to run again (app/delivery/service.py's Due)."""

    @property
    def message_id(self) -> uuid.UUID: ...
    @property
    def priority(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def attempt(self) -> int: ...


def later(due: Iterable[DueLater]) -> list[Job]:
    """What a delivery hands back: a retry is a job of its own; messages given back unsent
    come back together with those due at the same moment (the router times its groups so)."""
    due = list(due)
    jobs = [retry(d.priority, d.message_id, d.attempt, d.at) for d in due if d.attempt]
    together = batches(((d.priority, d.at), d.message_id) for d in due if not d.attempt)
    jobs += [waiting(priority, ids, at) for (priority, at), ids in together]
    return jobs


K = TypeVar("K", bound=Hashable)


def batches(keyed: Iterable[tuple[K, uuid.UUID]]) -> list[tuple[K, list[uuid.UUID]]]:
    """Ids grouped by key (in order of first appearance) and cut into BATCH_SIZE pieces."""
    groups: dict[K, list[uuid.UUID]] = {}
    for key, message_id in keyed:
        groups.setdefault(key, []).append(message_id)
    return [
        (key, ids[start : start + BATCH_SIZE])
        for key, ids in groups.items()
        for start in range(0, len(ids), BATCH_SIZE)
    ]
