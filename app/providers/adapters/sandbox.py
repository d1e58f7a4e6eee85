"""The sandbox provider: every `hk_test_` key delivers here, on every channel.

It never does network I/O. The outcome is chosen by the address, so that a tenant can
exercise every path of its integration (bounces, retries, rate limits, slow sends) with
test keys; see docs/api/providers.md, "Sandbox addresses".
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass

from app.providers.base import OutboundMessage, SendResult, failed, sent

SLOW_SECONDS = 2.0


@dataclass(frozen=True)
class Rule:
    markers: tuple[str, ...]
    result: SendResult | None  # None: succeed, after `delay`
    delay: float = 0.0


# First match wins; markers are matched anywhere in the lower-cased address.
RULES: tuple[Rule, ...] = (
    Rule(
        ("bounce@",),
        failed("permanent", "sandbox: hard bounce", status_code=550, suppress="hard_bounce"),
    ),
    Rule(
        ("fail@", "+15005550001", "fcm:invalid", "apns:invalid"),
        failed("permanent", "sandbox: invalid address", status_code=400),
    ),
    Rule(
        ("transient@", "+15005550002"),
        failed("transient", "sandbox: provider unavailable", status_code=503),
    ),
    Rule(
        ("ratelimit@", "+15005550003"),
        failed("rate_limited", "sandbox: rate limited", status_code=429, retry_after=1.0),
    ),
    Rule(("slow@", "+15005550004"), None, delay=SLOW_SECONDS),
)


# Any marker at all, in one search: most addresses have none, and are sent.
_ANY_MARKER = re.compile("|".join(re.escape(m) for rule in RULES for m in rule.markers))


def outcome(address: str) -> Rule | None:
    lowered = address.lower()
    if _ANY_MARKER.search(lowered) is None:
        return None
    return next((rule for rule in RULES if any(m in lowered for m in rule.markers)), None)


class SandboxAdapter:
    provider = "sandbox"

    def __init__(self, channel: str) -> None:
        self.channel = channel

    async def send(self, message: OutboundMessage) -> SendResult:
        rule = outcome(message.address)
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule is not None and rule.result is not None:
            return rule.result
        return sent(f"sandbox_{uuid.uuid4().hex}", status_code=200)
