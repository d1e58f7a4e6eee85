"""The job functions that workers run; each calls domain services, never SQL of its own."""

from __future__ import annotations

from typing import Any


async def ping(ctx: dict[str, Any], token: str) -> str:
    """Round trip through a queue: proves a worker of that queue is consuming."""
    return f"pong:{token}"


FUNCTIONS = [ping]
