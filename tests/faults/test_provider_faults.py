"""A provider that answers 500, then 429 with Retry-After, then times out, then recovers.

Every message meets the whole sequence: its first request gets 500 (transient), the next
two 429 with `Retry-After: 1` (rate limited), the fourth hangs past the webhook adapter's
15 s timeout (the receiver processes it and answers too late: the provider accepted it and
we could not know), the fifth 204. The tenant allows 3 attempts (within a 1 h window, for
short backoffs): the two 429s would have spent them had they counted, so the message
reaching `sent` on its fifth request shows they did not. The resend after the timeout is
the one duplicate each message may have, and it carries the same `webhook-id`.

Three messages, no more: with 5 outcomes each, more would pass the breaker's 20-call
minimum with 40 % failures and open it, a different test (test_failover.py).
"""

from __future__ import annotations

import uuid

from app.providers.adapters import webhook
from tests.faults.harness import (
    Answer,
    Receiver,
    Stack,
    Timeline,
    assert_one_id_per_recipient,
    check_ledger,
    wait_until,
)
from tests.send_path import notify

MESSAGES = 3
HANG = webhook.TIMEOUT + 1.5  # the adapter gives up first


def provider(_message_id: str, _recipient: str, n: int) -> Answer:
    """What the receiver answers to the n-th request for one message."""
    if n == 1:
        return Answer(500)
    if n in (2, 3):
        return Answer(429, {"Retry-After": "1"})
    if n == 4:
        return Answer(204, delay=HANG, kept=True)
    return Answer(204)


async def test_500s_429s_and_timeouts_end_sent_with_the_budget_intact(stack: Stack) -> None:
    clock = Timeline()
    receiver = Receiver()
    receiver.script = provider
    recipients = [f"p{n}" for n in range(MESSAGES)]
    tenant = await stack.webhook_tenant(receiver, recipients)
    policy = await stack.api.put(
        "/v1/tenant/retry-policy",
        headers=tenant.headers,
        json={"max_attempts": 3, "window_hours": 1},
    )
    assert policy.status_code == 200, policy.text
    try:
        with stack.worker("provider"):
            await notify(stack.api, tenant, template="fault", to=recipients)
            await wait_until(
                lambda: stack.settled(tenant, MESSAGES), within=55, every=0.2, what="final"
            )
        clock.mark("every message final")
        rows = await stack.messages(tenant)
        assert {row.status for row in rows} == {"sent"}
        kept = receiver.kept()
        timed_out = [a for a in receiver.arrivals if a.answer.delay == HANG]
        assert len(timed_out) == MESSAGES
        # Each timeout fell between the provider's acceptance and our write: one duplicate.
        assert check_ledger(rows, kept, in_flight=len(timed_out)) == len(timed_out)
        assert set(kept.values()) == {2}
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        for row in rows:
            assert (row.attempts, row.rate_limited_attempts) == (5, 2)
            attempts = await stack.attempts(uuid.UUID(str(row.id)))
            assert [(a.n, a.outcome, a.error_class, a.status_code) for a in attempts] == [
                (1, "failed", "transient", 500),
                (2, "failed", "rate_limited", 429),
                (3, "failed", "rate_limited", 429),
                (4, "failed", "transient", None),
                (5, "sent", None, 204),
            ]
            assert "did not answer in time" in (attempts[3].error or "")
    finally:
        receiver.close()
