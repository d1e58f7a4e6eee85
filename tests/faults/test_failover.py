"""The primary provider goes down: its breaker opens, e-mail fails over, and comes back.

The tenant's e-mail channel has two configs: SendGrid first (a local server speaking its
Mail Send API, reached through HERALD_PROVIDER_BASE_URLS) and SMTP second (aiosmtpd). While
SendGrid answers 500 its breaker opens after a batch's failures, GET /v1/providers shows it
`open`, and retries go to SMTP. Once SendGrid recovers and the cool-down has passed, the
half-open probe succeeds, the breaker closes, and new mail goes to SendGrid again. The
workers' breakers cool down in 6 s instead of 30 s, so the test need not wait long.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.providers.breaker import breaker_key, route_key_for
from jobs import queues
from tests.fakes import Mailbox
from tests.faults.harness import (
    Answer,
    Receiver,
    Stack,
    Timeline,
    assert_one_id_per_recipient,
    check_ledger,
    mailbox_arrivals,
    mailbox_kept,
    sendgrid_identity,
    wait_until,
)
from tests.send_path import notify, put_recipient, put_template
from tests.support import TenantKey

DOWN, PROBED, BACK = 30, 5, 10  # DOWN >= the breaker's 20-call minimum
FAST_RETRIES = {"max_attempts": 20, "window_hours": 1}


@pytest.fixture
def sendgrid() -> Iterator[Receiver]:
    server = Receiver(identify=sendgrid_identity)
    yield server
    server.close()


@pytest.fixture
def stack_env(sendgrid: Receiver) -> dict[str, str]:
    return {"HERALD_PROVIDER_BASE_URLS": f"sendgrid={sendgrid.url}"}


async def test_a_provider_down_fails_over_and_its_breaker_closes_again(
    stack: Stack, sendgrid: Receiver, mailbox: tuple[Mailbox, int]
) -> None:
    clock = Timeline()
    box, port = mailbox
    sendgrid.script = lambda _id, _to, _n: Answer(500)
    tenant = await stack.tenant("Failover")
    policy = await stack.api.put(
        "/v1/tenant/retry-policy", headers=tenant.headers, json=FAST_RETRIES
    )
    assert policy.status_code == 200, policy.text
    primary = await _config(
        stack.api,
        tenant,
        {
            "provider": "sendgrid",
            "name": "primary",
            "priority": 0,
            "credentials": {"api_key": "SG.fault-test"},
            "options": {"from_email": "hi@acme.test"},
        },
    )
    secondary = await _config(
        stack.api,
        tenant,
        {
            "provider": "smtp",
            "name": "secondary",
            "priority": 1,
            "options": {
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "from_email": "hi@acme.test",
            },
        },
    )
    await put_template(stack.api, tenant, "mail", {"email": {"subject": "Hi", "text": "Hello"}})
    people = [f"e{n}" for n in range(DOWN + PROBED + BACK)]
    for person in people:
        await put_recipient(stack.api, tenant, person, email=f"{person}@example.com")

    with stack.worker("failover"):
        down = await notify(stack.api, tenant, template="mail", to=people[:DOWN])
        await wait_until(
            lambda: _breaker_is(stack, tenant, primary, "open"), within=20, what="open"
        )
        await wait_until(
            lambda: stack.settled(tenant, DOWN, notification_id=down["id"]),
            within=45,
            what="the failed-over messages final",
        )
        failed_over = await stack.messages(tenant, down["id"])
        assert {(row.status, row.provider) for row in failed_over} == {("sent", "smtp")}
        assert len(sendgrid.arrivals) >= DOWN and not sendgrid.kept()
        assert set(mailbox_kept(box)) == {str(row.id) for row in failed_over}
        assert await _breaker_is(stack, tenant, primary, "open"), "the cool-down ran out"
        clock.mark("the breaker open, the first batch failed over")

        sendgrid.script = lambda _id, _to, _n: Answer(202)
        await _end_cool_down(stack, tenant, primary)
        assert await _breaker_is(stack, tenant, primary, "half_open")
        probed = await notify(stack.api, tenant, template="mail", to=people[DOWN : DOWN + PROBED])
        await wait_until(
            lambda: _breaker_is(stack, tenant, primary, "closed"), within=20, what="closed"
        )
        await wait_until(
            lambda: stack.settled(tenant, PROBED, notification_id=probed["id"]),
            within=20,
            what="the probed batch final",
        )
        # The one probe went to SendGrid; the rest of its batch to SMTP, as still open.
        providers = [row.provider for row in await stack.messages(tenant, probed["id"])]
        assert sorted(providers) == ["sendgrid"] + ["smtp"] * (PROBED - 1)

        back = await notify(stack.api, tenant, template="mail", to=people[DOWN + PROBED :])
        await wait_until(
            lambda: stack.settled(tenant, BACK, notification_id=back["id"]),
            within=20,
            what="the last batch final",
        )
        returned = await stack.messages(tenant, back["id"])
        assert {(row.status, row.provider) for row in returned} == {("sent", "sendgrid")}
    clock.mark("the breaker closed, mail back on the primary")

    listed = await stack.api.get("/v1/providers", headers=tenant.headers)
    states = {item["id"]: item["breaker"]["state"] for item in listed.json()["data"]}
    assert states == {primary: "closed", secondary: "closed"}
    rows = await stack.messages(tenant)
    kept = sendgrid.kept() + mailbox_kept(box)
    assert check_ledger(rows, kept, in_flight=0) == 0
    assert_one_id_per_recipient(
        [(a.message_id, a.recipient) for a in sendgrid.arrivals] + mailbox_arrivals(box)
    )


async def _config(api: httpx.AsyncClient, tenant: TenantKey, body: dict[str, object]) -> str:
    body = {"channel": "email", **body}
    response = await api.post("/v1/providers", headers=tenant.headers, json=body)
    assert response.status_code == 201, response.text
    config_id: str = response.json()["id"]
    return config_id


async def _end_cool_down(stack: Stack, tenant: TenantKey, config_id: str) -> None:
    """What the open breaker's 30 s cool-down running out looks like, without waiting."""
    key = breaker_key(tenant.tenant_id, route_key_for(uuid.UUID(config_id), "email"))
    redis = await queues.connect(stack.redis_url)
    try:
        assert await redis.hexists(key, "retry_at"), "the breaker is not open"
        await redis.hset(key, "retry_at", int(time.time() * 1000) - 1)
    finally:
        await redis.aclose()


async def _breaker_is(stack: Stack, tenant: TenantKey, config_id: str, state: str) -> bool:
    response = await stack.api.get(f"/v1/providers/{config_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    return bool(response.json()["breaker"]["state"] == state)
