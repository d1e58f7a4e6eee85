"""Rendering tenant templates for previews and sends: in the render pool, within the budget.

Every render runs in the pool's processes (pool.py), and costs its tenant render time from a
bucket of milliseconds per plan (app/tenants/plans.py, `CostBuckets` in app/ratelimit):
reserved before a batch at its worst case (each job's kill deadline), settled after it with
what it cost. A preview over budget is refused (`OverBudget`, a 429 at the API); a send's
renders stop where the budget does, and `Rendering.wait` says when to carry on, so one
tenant's runaway templates cannot take the render processes from the others.

When Redis cannot be reached the renders go ahead unmetered (a warning is logged): a
limit that cannot be checked must not stop every send.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import RedisError

from app.ratelimit.buckets import Bucket, CostBuckets, Reservation, render_bucket
from app.templates.content import Content
from app.templates.isolation import CheckSources, RenderBatch, RenderJob
from app.templates.models import TemplateVersion
from app.templates.pool import Outcome, RenderPool
from app.templates.rendering import RenderFailed
from app.templates.validation import FieldError
from app.tenants.plans import limits_for

log = structlog.get_logger(__name__)

BATCH_SIZE = 200  # jobs per round trip to a render process
REDIS_TIMEOUT = 0.5  # seconds; past it the render goes ahead unmetered


class OverBudget(Exception):
    """The tenant's render budget cannot cover this now; `retry_after` seconds it can."""

    def __init__(self, retry_after: float, bucket: Bucket) -> None:
        super().__init__(f"render budget exhausted; retry in {retry_after:.1f} s")
        self.retry_after = retry_after
        self.bucket = bucket


@dataclass(frozen=True)
class Rendering:
    outcomes: list[Outcome]  # one per job; None: not rendered, the budget ran out first
    wait: float | None  # when some were not rendered: seconds until the budget has room


class Renderer:
    """The render pool and the tenants' render budgets (None: unmetered)."""

    def __init__(self, pool: RenderPool, budgets: CostBuckets | None) -> None:
        self.pool = pool
        self.budgets = budgets

    @property
    def job_ms(self) -> float:
        """What one job can cost at worst: it is killed at this deadline."""
        return self.pool.kill_after * 1000

    async def preview(
        self,
        *,
        tenant_id: uuid.UUID,
        mode: str,
        plan: str,
        template: TemplateVersion,
        data: dict[str, Any],
        jobs: Sequence[RenderJob],
    ) -> list[Content | RenderFailed]:
        """Render every job, or none: raises OverBudget when the budget cannot cover all
        of them at their worst."""
        bucket = render_bucket(tenant_id, mode, limits_for(plan))
        worst = len(jobs) * self.job_ms
        reservation = await self._reserve(bucket, worst, least=worst)
        if reservation is not None and not reservation.granted:
            raise OverBudget(reservation.wait, bucket)
        result = await self.pool.render(RenderBatch(template, data, list(jobs)))
        await self._settle(bucket, reservation, result.cost_ms)
        return [_required(outcome) for outcome in result.outcomes]

    async def check(
        self, *, tenant_id: uuid.UUID, mode: str, plan: str, sources: dict[str, dict[str, Any]]
    ) -> list[FieldError]:
        """The fields of a template about to be saved that do not compile, compiled in the
        pool and charged to the render budget what it took. Raises OverBudget when the budget
        is spent: unlike a preview's renders, a compile sets nothing aside (an ordinary one
        takes milliseconds, its worst case a second per set of sources), so concurrent saves
        are not refused for the worst case of the others; the pool's deadline bounds each."""
        bucket = render_bucket(tenant_id, mode, limits_for(plan))
        reservation = await self._reserve(bucket, 1, least=1)
        if reservation is not None and not reservation.granted:
            raise OverBudget(reservation.wait, bucket)
        result = await self.pool.check(CheckSources(sources))
        await self._settle(bucket, reservation, result.cost_ms)
        return [{"field": field, "message": message} for field, message in result.errors]

    async def render(
        self,
        *,
        tenant_id: uuid.UUID,
        mode: str,
        plan: str,
        template: TemplateVersion,
        data: dict[str, Any],
        jobs: Sequence[RenderJob],
    ) -> Rendering:
        """Render the jobs in batches on every render process, as far as the budget goes."""
        bucket = render_bucket(tenant_id, mode, limits_for(plan))
        outcomes: list[Outcome] = [None] * len(jobs)
        slots = asyncio.Semaphore(self.pool.processes)
        waits: list[float] = []

        async def run(start: int) -> None:
            part = list(jobs[start : start + BATCH_SIZE])
            async with slots:
                if waits:  # the budget ran out under another batch: leave this one
                    return
                reservation = await self._reserve(
                    bucket, len(part) * self.job_ms, least=self.job_ms
                )
                if reservation is not None and not reservation.granted:
                    waits.append(reservation.wait)
                    return
                budget = None if reservation is None else reservation.granted
                result = await self.pool.render(RenderBatch(template, data, part, budget))
                await self._settle(bucket, reservation, result.cost_ms)
                outcomes[start : start + len(part)] = result.outcomes
                if None in result.outcomes:
                    waits.append(self.job_ms / bucket.rate)  # until one more job fits

        await asyncio.gather(*(run(start) for start in range(0, len(jobs), BATCH_SIZE)))
        return Rendering(outcomes, max(waits) if waits else None)

    async def _reserve(self, bucket: Bucket, want: float, *, least: float) -> Reservation | None:
        if self.budgets is None:
            return None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                return await self.budgets.reserve(bucket, want, least=least)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("render budget not checked: Redis did not answer", error=str(error))
            return None

    async def _settle(self, bucket: Bucket, reservation: Reservation | None, cost: float) -> None:
        if self.budgets is None or reservation is None:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self.budgets.settle(bucket, reservation.granted, cost)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("render cost not charged: Redis did not answer", error=str(error))


def _required(outcome: Outcome) -> Content | RenderFailed:
    if outcome is None:  # only a batch with a budget stops early, and a preview has none
        raise RuntimeError("a preview job was not rendered")
    return outcome
