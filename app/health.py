"""Liveness, readiness and Prometheus metrics endpoints."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from sqlalchemy import text

from app.problems import problem_response

CHECK_TIMEOUT = 2.0


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is alive; it says nothing about its dependencies."""
    return {"status": "ok"}


async def _check_postgres(state: State) -> None:
    async with state.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _check_redis(state: State) -> None:
    await state.redis.ping()


async def _outcome(check: Any, state: State) -> str:
    try:
        await asyncio.wait_for(check(state), CHECK_TIMEOUT)
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT:g} s"
    except Exception as error:  # any failure means "not ready"; its text says why
        return f"{type(error).__name__}: {error}"[:300]
    return "ok"


@get("/readyz", include_in_schema=False)
async def readyz(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    """PostgreSQL and Redis both answer; otherwise 503 naming the one that failed."""
    checks = dict(
        zip(
            ("postgres", "redis"),
            await asyncio.gather(_outcome(_check_postgres, state), _outcome(_check_redis, state)),
            strict=True,
        )
    )
    failed = [name for name, outcome in checks.items() if outcome != "ok"]
    if failed:
        return problem_response(
            request,
            503,
            "service_unavailable",
            f"Not ready: {', '.join(failed)} did not answer.",
            extra={"checks": checks},
        )
    return Response({"status": "ready", "checks": checks})


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics() -> Response[bytes]:
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def _registry() -> CollectorRegistry:
    """This process's metrics, or, when several processes share a metrics folder
    (`herald api --workers N`, `herald dev`), the sum of all of theirs."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
