"""Hostile templates against running services: the API keeps answering, workers keep
delivering, and a dispatch that keeps dying ends `failed` with its reason.

- Previews of each bomb, sent to a `herald api` process while a thread polls `/healthz`
  every 10 ms: each ends as a render error (`ok: false`) well within a second, and every
  `/healthz` answer comes in under 100 ms. Most bombs are refused by the in-process guards;
  `STALL` (`title` of a 4 MB string, one C call of about half a second) gets past them and
  is killed by the render pool.
- A `herald worker` dispatching a tenant's personalised stall to many recipients (each
  render killed at its deadline) meanwhile delivers another tenant's notifications.
- A `herald worker` SIGKILLed during a dispatch, again and again (arq's in-progress mark
  expiring is simulated): arq gives the job up after its fifth try, the relay enqueues the
  dispatch again, and that run, the sixth, fails the notification with its reason instead of
  rendering again; the other tenant's messages arrive once each.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from arq import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix
from sqlalchemy import select

from app.notifications.failures import MAX_DISPATCH_ATTEMPTS
from app.notifications.models import Notification
from bench.attacks import Poller
from jobs import queues
from tests.faults.harness import Receiver, Stack, Timeline, check_ledger, wait_until
from tests.send_path import notify, put_template
from tests.support import TenantKey
from tests.unit.test_render_guards import BOMBS, doubled

STALL = "{{ ('ab ' * 1300000)|title|length }}"
ATTACKS = {
    "==": BOMBS["=="],
    "print": BOMBS["print"],
    "in": BOMBS["in"],
    "sort": BOMBS["sort"],
    "str()": BOMBS["string"],
    "list literal": doubled(28, "a") + "{{ [a, a, a]|length }}",
    "dict literal": BOMBS["dict literal"],
    "dict key": BOMBS["dict key"],
    "NUL": '{{ "\\x00" }}',
    "stall": STALL,
}
HEALTHZ_BOUND = 0.100  # seconds: every answer, while any attack runs


async def test_every_bomb_is_a_render_error_while_the_api_answers_healthz(stack: Stack) -> None:
    clock = Timeline()
    tenant = await stack.tenant("Bomber")
    async with stack.api_server("api", processes=1) as api:
        await put_template(api, tenant, "warm", {"sms": {"text": "ok"}})
        warm = await api.post("/v1/templates/warm/preview", headers=tenant.headers, json={})
        assert warm.json()["channels"]["sms"]["ok"] is True
        clock.mark("herald api serving, its render processes ready")
        for name, source in ATTACKS.items():
            key = f"bomb-{uuid.uuid4().hex[:8]}"
            await put_template(api, tenant, key, {"sms": {"text": source}})
            poller = Poller(str(api.base_url), every=0.01)
            with poller.polling():
                await asyncio.sleep(0.05)  # a few answers before the attack
                began = time.monotonic()
                answer = await api.post(
                    f"/v1/templates/{key}/preview", headers=tenant.headers, json={}
                )
                took = time.monotonic() - began
                await asyncio.sleep(0.05)
            assert answer.status_code == 200, answer.text
            sms = answer.json()["channels"]["sms"]
            # A render killed by the pool names its channel: the process that knew which
            # field it was in is gone.
            field = "sms" if name == "stall" else "sms.text"
            assert sms["ok"] is False and sms["error"]["field"] == field, (name, sms)
            slowest = max(poller.latencies)
            clock.mark(
                f"{name}: {took * 1000:.0f} ms, healthz max {slowest * 1000:.0f} ms "
                f"of {len(poller.latencies)} — {sms['error']['message'][:60]}"
            )
            assert took < 1.5, f"{name}: the preview took {took:.2f} s"
            assert poller.failures == [], (name, poller.failures)
            assert slowest < HEALTHZ_BOUND, f"{name}: /healthz took {slowest * 1000:.0f} ms"
        assert "stopped" in sms["error"]["message"]  # the stall: the pool killed its render
    # `herald api --workers 2`: each server process has render processes of its own.
    async with stack.api_server("api2", processes=2) as api:
        for _ in range(4):
            answer = await api.post(f"/v1/templates/{key}/preview", headers=tenant.headers, json={})
            assert answer.json()["channels"]["sms"]["ok"] is False


async def test_a_worker_delivers_other_tenants_while_one_dispatch_renders_a_bomb(
    stack: Stack,
) -> None:
    clock = Timeline()
    receiver = Receiver()
    victims = [f"v{n}" for n in range(8)]
    hostile = await stack.webhook_tenant(receiver, victims)
    await _stall_template(stack, hostile)
    others = [f"o{n}" for n in range(5)]
    other = await stack.webhook_tenant(receiver, others)
    try:
        with stack.worker("bombed"):
            bomb = await notify(stack.api, hostile, template="stall", to=victims)
            await wait_until(
                lambda: _attempts(stack, bomb["id"], 1), within=30, what="the bomb's dispatch"
            )
            clock.mark("the hostile dispatch is rendering")
            sent = await notify(stack.api, other, template="fault", to=others)
            await wait_until(
                lambda: stack.settled(other, len(others), notification_id=sent["id"]),
                within=20,
                what="the other tenant's deliveries",
            )
            assert await _status(stack, bomb["id"]) == "accepted", "the bomb was not rendering"
            clock.mark("the other tenant's messages delivered meanwhile")
            await wait_until(
                lambda: stack.settled(hostile, len(victims)), within=60, what="the bomb's end"
            )
            clock.mark("the hostile dispatch ended")
        rows = await stack.messages(hostile)
        assert {(row.status, row.error_class) for row in rows} == {("failed", "render")}
        assert await _status(stack, bomb["id"]) == "dispatched"
        other_rows = await stack.messages(other)
        assert {row.status for row in other_rows} == {"sent"}
        check_ledger([*rows, *other_rows], receiver.kept(), in_flight=0)
    finally:
        receiver.close()


@pytest.mark.timeout(240)
async def test_a_dispatch_killed_again_and_again_ends_failed_with_its_reason(
    stack: Stack,
) -> None:
    clock = Timeline()
    receiver = Receiver()
    victims = [f"k{n}" for n in range(20)]  # renders killed one by one: ~10 s of dispatch
    hostile = await stack.webhook_tenant(receiver, victims)
    await _stall_template(stack, hostile)
    # Renders of killed runs are never settled: a plan whose budget outlasts five of them.
    await stack.execute(
        "UPDATE tenants SET plan = 'enterprise' WHERE id = :id", id=hostile.tenant_id
    )
    others = [f"p{n}" for n in range(3)]
    other = await stack.webhook_tenant(receiver, others)
    pool = await queues.connect(stack.redis_url)
    try:
        bomb = await notify(stack.api, hostile, template="stall", to=victims)
        sent = await notify(stack.api, other, template="fault", to=others)
        job = f"dispatch:{bomb['id']}"
        for attempt in range(1, MAX_DISPATCH_ATTEMPTS + 1):
            with stack.worker(f"killed-{attempt}") as worker:
                if attempt == 1:  # the other tenant's send goes out beside the bomb's
                    await wait_until(
                        lambda: stack.settled(other, len(others), notification_id=sent["id"]),
                        within=30,
                        what="the other tenant's deliveries",
                    )
                await wait_until(
                    lambda n=attempt: _attempts(stack, bomb["id"], n),  # type: ignore[misc]
                    within=30,
                    what=f"dispatch run {attempt}",
                )
                await asyncio.sleep(0.3)  # into its renders
                worker.kill()
            clock.mark(f"worker killed during dispatch run {attempt}")
            # arq runs a killed worker's job again (its next try) once the job's in-progress
            # mark expires, 310 s later: deleting the mark is that time passing.
            assert await pool.delete(in_progress_key_prefix + job) == 1
        with stack.worker("last"):
            # The job's sixth try is past arq's max_tries (5): arq fails it without running
            # it, and keeps that result for 60 s; then the relay enqueues the dispatch anew.
            await wait_until(
                lambda: _exists(pool, result_key_prefix + job), within=30, what="arq's give-up"
            )
            await pool.delete(result_key_prefix + job)  # its 60 s passing
            await wait_until(
                lambda: _has_status(stack, bomb["id"], "failed"), within=30, what="the give-up"
            )
        clock.mark("the notification failed")
        view = (
            await stack.api.get(f"/v1/notifications/{bomb['id']}", headers=hostile.headers)
        ).json()
        assert view["status"] == "failed" and view["messages"] == []
        assert view["problems"]["dispatch"] == (
            f"dispatch failed {MAX_DISPATCH_ATTEMPTS} times; the last time: "
            "the worker stopped during the dispatch (killed or crashed)"
        )
        other_rows = await stack.messages(other)
        assert {row.status for row in other_rows} == {"sent"}
        check_ledger(other_rows, receiver.kept(), in_flight=0)
    finally:
        await pool.aclose()
        receiver.close()


async def _stall_template(stack: Stack, tenant: TenantKey) -> None:
    body = {"event": "{{ recipient.id }}" + STALL}
    await put_template(stack.api, tenant, "stall", {"webhook": {"body": body}})


async def _exists(pool: ArqRedis, key: str) -> bool:
    return bool(await pool.exists(key))


async def _notification(stack: Stack, notification_id: str) -> Notification:
    async with stack.sessions() as session:
        row = await session.scalar(
            select(Notification).where(Notification.id == uuid.UUID(notification_id))
        )
        assert row is not None
        return row


async def _attempts(stack: Stack, notification_id: str, n: int) -> bool:
    return (await _notification(stack, notification_id)).dispatch_attempts >= n


async def _status(stack: Stack, notification_id: str) -> str:
    return (await _notification(stack, notification_id)).status


async def _has_status(stack: Stack, notification_id: str, status: str) -> bool:
    return await _status(stack, notification_id) == status
