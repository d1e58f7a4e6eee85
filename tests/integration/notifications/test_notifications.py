"""Notifications through the sandbox provider (test keys): rules decided at dispatch,
idempotency, cancel, send_at, priorities, bad input and tenant isolation."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import Notification
from app.providers.adapters.sandbox import SLOW_SECONDS
from app.runtime import ServiceUrls
from jobs import functions, queues
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, make_tenant, settings_for

EMAIL_AND_INBOX = {
    "email": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}"},
    "inbox": {
        "title": "Hello {{ name }}",
        "body": "Hi {{ name }}",
        "action_url": "https://acme.test/x",
    },
}


@pytest.fixture
async def sandbox(session: AsyncSession) -> TenantKey:
    """A tenant calling with a test key: every channel goes to the sandbox provider."""
    return await make_tenant(session, "Sandboxed", mode="test")


async def run_workers(service_urls: ServiceUrls) -> None:
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)


def statuses(view: dict[str, object]) -> dict[str, tuple[str, str | None]]:
    return {
        f"{m['recipient']}:{m['channel']}": (m["status"], m["skip_reason"] or m["error_class"])  # type: ignore[index]
        for m in view["messages"]  # type: ignore[attr-defined]
    }


async def test_sandbox_outcomes_by_address(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "hello", {"email": EMAIL_AND_INBOX["email"]})
    await put_recipient(client, sandbox, "ok", email="ok@example.com")
    await put_recipient(client, sandbox, "bounce", email="bounce@sandbox.herald")
    await put_recipient(client, sandbox, "flaky", email="transient@sandbox.herald")
    accepted = await notify(
        client, sandbox, template="hello", to=["ok", "bounce", "flaky"], data={"name": "you"}
    )
    await run_workers(service_urls)
    view = await notification(client, sandbox, accepted["id"])
    assert statuses(view) == {
        "ok:email": ("sent", None),
        "bounce:email": ("failed", "permanent"),
        "flaky:email": ("retrying", "transient"),
    }
    flaky = next(m for m in view["messages"] if m["recipient"] == "flaky")
    assert flaky["next_attempt_at"] is not None
    # The hard bounce suppressed the address: the next notification skips it.
    suppressed = await client.get(
        "/v1/suppressions", headers=sandbox.headers, params={"address": "bounce@sandbox.herald"}
    )
    assert [s["reason"] for s in suppressed.json()["data"]] == ["hard_bounce"]
    again = await notify(client, sandbox, template="hello", to=["bounce"], data={"name": "you"})
    await run_workers(service_urls)
    assert statuses(await notification(client, sandbox, again["id"])) == {
        "bounce:email": ("skipped", "suppressed")
    }


async def test_sandbox_slow_address_and_failing_number(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    """`slow@` is sent after the sandbox's delay; +15005550001 fails for good."""
    await put_template(
        client,
        sandbox,
        "both-ways",
        {"email": EMAIL_AND_INBOX["email"], "sms": {"text": "Hi {{ name }}"}},
    )
    await put_recipient(client, sandbox, "sluggish", email="slow@example.com")
    await put_recipient(client, sandbox, "dead-line", phone="+15005550001")
    accepted = await notify(
        client, sandbox, template="both-ways", to=["sluggish", "dead-line"], data={"name": "x"}
    )
    await run_workers(service_urls)
    view = await notification(client, sandbox, accepted["id"])
    assert statuses(view) == {
        "sluggish:email": ("sent", None),
        "sluggish:sms": ("skipped", "no_address"),
        "dead-line:email": ("skipped", "no_address"),
        "dead-line:sms": ("failed", "permanent"),
    }
    by_address = {m["address"]: m for m in view["messages"]}
    slow = await client.get(
        f"/v1/messages/{by_address['slow@example.com']['id']}", headers=sandbox.headers
    )
    [attempt] = slow.json()["history"]
    assert attempt["outcome"] == "sent"
    assert attempt["latency_ms"] >= SLOW_SECONDS * 1000
    dead = await client.get(
        f"/v1/messages/{by_address['+15005550001']['id']}", headers=sandbox.headers
    )
    [attempt] = dead.json()["history"]
    assert (attempt["outcome"], attempt["status_code"]) == ("failed", 400)
    assert dead.json()["attempts"] == 1  # a permanent failure is not retried


async def test_preferences_and_critical_categories(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(
        client, sandbox, "promo", {"email": EMAIL_AND_INBOX["email"]}, category="marketing"
    )
    await put_template(
        client, sandbox, "reset", {"email": EMAIL_AND_INBOX["email"]}, category="security"
    )
    await put_recipient(client, sandbox, "quiet", email="quiet@example.com")
    prefs = {"channels": {"email": False}}
    response = await client.put(
        "/v1/recipients/quiet/preferences", headers=sandbox.headers, json=prefs
    )
    assert response.status_code == 200, response.text

    promo = await notify(client, sandbox, template="promo", to=["quiet"], data={"name": "q"})
    reset = await notify(client, sandbox, template="reset", to=["quiet"], data={"name": "q"})
    await run_workers(service_urls)
    assert statuses(await notification(client, sandbox, promo["id"])) == {
        "quiet:email": ("skipped", "opted_out")
    }
    # `security` is critical: an opt-out does not hold back a password reset.
    assert statuses(await notification(client, sandbox, reset["id"])) == {
        "quiet:email": ("sent", None)
    }


async def test_missing_addresses_and_unknown_recipients(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "both", EMAIL_AND_INBOX)
    await put_recipient(client, sandbox, "no-email")
    accepted = await notify(
        client, sandbox, template="both", to=["no-email", "ghost"], data={"name": "n"}
    )
    await run_workers(service_urls)
    view = await notification(client, sandbox, accepted["id"])
    assert statuses(view) == {
        "no-email:email": ("skipped", "no_address"),
        "no-email:inbox": ("sent", None),
    }
    assert view["problems"] == {"unknown_recipients": ["ghost"]}


async def test_render_failure_names_the_missing_variable(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "strict", {"email": EMAIL_AND_INBOX["email"]})
    await put_recipient(client, sandbox, "r1", email="r1@example.com")
    accepted = await notify(client, sandbox, template="strict", to=["r1"], data={})
    await run_workers(service_urls)
    [message] = (await notification(client, sandbox, accepted["id"]))["messages"]
    assert (message["status"], message["error_class"]) == ("failed", "render")
    assert "'name' is undefined" in message["last_error"]


async def test_locale_variants_with_fallback(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(
        client,
        sandbox,
        "greeting",
        {"inbox": {"title": "Hello", "body": "Welcome"}},
        locales={"fr": {"inbox": {"title": "Bonjour", "body": "Bienvenue"}}},
    )
    await put_recipient(client, sandbox, "amelie", locale="fr-CA")
    await put_recipient(client, sandbox, "bob", locale="de")
    await notify(client, sandbox, template="greeting", to=["amelie", "bob"])
    await run_workers(service_urls)
    titles = {}
    for person in ("amelie", "bob"):
        inbox = await client.get(f"/v1/recipients/{person}/inbox", headers=sandbox.headers)
        titles[person] = [item["title"] for item in inbox.json()["data"]]
    assert titles == {"amelie": ["Bonjour"], "bob": ["Hello"]}


async def test_inbox_with_a_recipient_token(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls, session: AsyncSession
) -> None:
    await put_template(client, sandbox, "note", {"inbox": EMAIL_AND_INBOX["inbox"]})
    for person in ("mia", "noah"):
        await put_recipient(client, sandbox, person)
    for n in range(3):
        await notify(client, sandbox, template="note", to=["mia"], data={"name": f"#{n}"})
    await notify(client, sandbox, template="note", to=["noah"], data={"name": "noah"})
    await run_workers(service_urls)

    issued = await client.post("/v1/recipients/mia/inbox-token", headers=sandbox.headers)
    assert issued.status_code == 201, issued.text
    token = {"Authorization": f"Bearer {issued.json()['token']}"}

    inbox = (await client.get("/v1/recipients/mia/inbox", headers=token)).json()
    assert inbox["unread_count"] == 3
    # Newest delivery first; the three were dispatched concurrently, in no fixed order.
    assert sorted(item["title"] for item in inbox["data"]) == ["Hello #0", "Hello #1", "Hello #2"]
    assert inbox["data"][0]["id"] > inbox["data"][1]["id"] > inbox["data"][2]["id"]
    first = inbox["data"][0]
    read = await client.post(f"/v1/recipients/mia/inbox/{first['id']}/read", headers=token)
    assert read.json() == {"marked_read": 1, "unread_count": 2}
    unread = (
        await client.get("/v1/recipients/mia/inbox", headers=token, params={"unread": "true"})
    ).json()
    assert len(unread["data"]) == 2
    assert (await client.post("/v1/recipients/mia/inbox/read-all", headers=token)).json() == {
        "marked_read": 2,
        "unread_count": 0,
    }

    # The token opens Mia's inbox and nothing else: every other route refuses it.
    assert_problem(await client.get("/v1/recipients/noah/inbox", headers=token), 404, "not_found")
    assert_problem(await client.get("/v1/api-keys", headers=token), 403, "forbidden")
    assert_problem(await client.get("/v1/tenant", headers=token), 403, "forbidden")
    assert_problem(await client.get("/v1/recipients/mia", headers=token), 403, "forbidden")
    assert_problem(
        await client.post("/v1/recipients/mia/inbox-token", headers=token), 403, "forbidden"
    )
    assert_problem(await client.post("/v1/notifications", headers=token, json={}), 403, "forbidden")
    # An API key opens an inbox only with the `read` scope.
    sender = await make_tenant(session, "Send only", mode="test", scopes=["send"])
    await put_recipient(client, sender, "mia")
    inbox_path = "/v1/recipients/mia/inbox"
    assert_problem(await client.get(inbox_path, headers=sender.headers), 403, "insufficient_scope")
    for path in (f"{inbox_path}/read-all", f"{inbox_path}/{first['id']}/read"):
        assert_problem(await client.post(path, headers=sender.headers), 403, "insufficient_scope")
    forged = {"Authorization": f"Bearer {issued.json()['token'][:-2]}xx"}
    assert_problem(
        await client.get("/v1/recipients/mia/inbox", headers=forged), 401, "unauthorized"
    )


async def test_marking_an_item_that_is_not_in_the_inbox_is_404(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "both", EMAIL_AND_INBOX)
    await put_recipient(client, sandbox, "ines", email="ines@example.com")
    await put_recipient(client, sandbox, "jon")
    accepted = await notify(
        client, sandbox, template="both", to=["ines", "jon"], data={"name": "i"}
    )
    await run_workers(service_urls)
    messages = (await notification(client, sandbox, accepted["id"]))["messages"]
    item = next(m for m in messages if (m["recipient"], m["channel"]) == ("ines", "inbox"))
    email = next(m for m in messages if m["channel"] == "email")
    jons = next(m for m in messages if m["recipient"] == "jon" and m["channel"] == "inbox")
    inbox = "/v1/recipients/ines/inbox"

    # Not an item of Ines's inbox: a made-up id, her e-mail, Jon's inbox item.
    for other in (str(uuid.uuid4()), email["id"], jons["id"]):
        missing = await client.post(f"{inbox}/{other}/read", headers=sandbox.headers)
        assert other in str(assert_problem(missing, 404, "not_found")["detail"])
    read = await client.post(f"{inbox}/{item['id']}/read", headers=sandbox.headers)
    assert read.json() == {"marked_read": 1, "unread_count": 0}
    # Read already: nothing changes, and that is no error.
    again = await client.post(f"{inbox}/{item['id']}/read", headers=sandbox.headers)
    assert (again.status_code, again.json()) == (200, {"marked_read": 0, "unread_count": 0})
    # Jon's item was left unread by the refused call.
    jon = (await client.get("/v1/recipients/jon/inbox", headers=sandbox.headers)).json()
    assert jon["unread_count"] == 1


async def test_idempotency_key_replays_and_conflicts(
    client: httpx.AsyncClient, sandbox: TenantKey, session: AsyncSession
) -> None:
    await put_template(client, sandbox, "once", {"email": EMAIL_AND_INBOX["email"]})
    body = {"template": "once", "to": ["someone"], "data": {"name": "x"}}
    headers = {**sandbox.headers, "Idempotency-Key": "order-42-shipped"}
    first = await client.post("/v1/notifications", headers=headers, json=body)
    again = await client.post("/v1/notifications", headers=headers, json=body)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    changed = await client.post(
        "/v1/notifications", headers=headers, json={**body, "data": {"name": "y"}}
    )
    problem = assert_problem(changed, 422, "idempotency_key_reused")
    assert first.json()["id"] in str(problem["detail"])

    race_headers = {**sandbox.headers, "Idempotency-Key": "race"}
    answers = await asyncio.gather(
        *(client.post("/v1/notifications", headers=race_headers, json=body) for _ in range(50))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    stored = await session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.tenant_id == sandbox.tenant_id, Notification.idempotency_key == "race")
    )
    assert stored == 1


@pytest.mark.parametrize("inline", [False, True], ids=["ids", "inline_recipients"])
async def test_replay_does_not_validate_again(
    client: httpx.AsyncClient, sandbox: TenantKey, inline: bool
) -> None:
    """The same key and body answer the original even once the template is gone, whether
    the recipients are ids or given inline."""
    await put_template(client, sandbox, "short-lived", {"email": EMAIL_AND_INBOX["email"]})
    to: list[object] = [{"external_id": "r1", "email": "r1@example.com"}] if inline else ["r1"]
    body = {"template": "short-lived", "to": to, "data": {"name": "x"}}
    headers = {**sandbox.headers, "Idempotency-Key": "before-the-delete"}
    first = await client.post("/v1/notifications", headers=headers, json=body)
    assert first.status_code == 202, first.text
    deleted = await client.delete("/v1/templates/short-lived", headers=sandbox.headers)
    assert deleted.status_code == 200, deleted.text

    again = await client.post("/v1/notifications", headers=headers, json=body)
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    changed = await client.post(
        "/v1/notifications", headers=headers, json={**body, "data": {"name": "y"}}
    )
    assert_problem(changed, 422, "idempotency_key_reused")
    # Without a key the same body is checked as any new request is.
    fresh = await client.post("/v1/notifications", headers=sandbox.headers, json=body)
    assert [e["field"] for e in assert_problem(fresh, 422, "validation_error")["errors"]] == [  # type: ignore[attr-defined]
        "template"
    ]


async def test_idempotency_with_inline_recipients_under_concurrency(
    client: httpx.AsyncClient, sandbox: TenantKey, session: AsyncSession
) -> None:
    """Identical requests racing on one key: one notification, one answer for all. Those
    that lose the insert roll back their recipient upserts and replay the winner."""
    await put_template(client, sandbox, "inline-once", {"email": EMAIL_AND_INBOX["email"]})
    to = [
        {"external_id": "racer-1", "email": "racer-1@example.com", "data": {"seat": 1}},
        {"external_id": "racer-2", "email": "racer-2@example.com", "locale": "fr-CA"},
    ]
    body = {"template": "inline-once", "to": to, "data": {"name": "x"}}
    headers = {**sandbox.headers, "Idempotency-Key": "inline-race"}
    answers = await asyncio.gather(
        *(client.post("/v1/notifications", headers=headers, json=body) for _ in range(30))
    )
    assert {a.status_code for a in answers} == {202}, [
        a.text for a in answers if a.status_code != 202
    ]
    assert len({a.json()["id"] for a in answers}) == 1
    originals = [a for a in answers if "idempotent-replayed" not in a.headers]
    assert len(originals) == 1
    stored = await session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(
            Notification.tenant_id == sandbox.tenant_id,
            Notification.idempotency_key == "inline-race",
        )
    )
    assert stored == 1
    racer = await client.get("/v1/recipients/racer-2", headers=sandbox.headers)
    assert (racer.json()["email"], racer.json()["locale"]) == ("racer-2@example.com", "fr-CA")


async def test_cancel_skips_what_is_not_sent(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "cancel-me", {"email": EMAIL_AND_INBOX["email"]})
    await put_recipient(client, sandbox, "c1", email="c1@example.com")
    await put_recipient(client, sandbox, "c2", email="c2@example.com")
    accepted = await notify(
        client, sandbox, template="cancel-me", to=["c1", "c2"], data={"name": "c"}
    )
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        # Dispatch only: messages exist and are queued, delivery has not run.
        ctx["redis"] = await queues.connect(service_urls.redis_url)
        await functions.dispatch(ctx, accepted["id"])
        await ctx["redis"].aclose()
        cancelled = await client.post(
            f"/v1/notifications/{accepted['id']}/cancel", headers=sandbox.headers
        )
        assert cancelled.json()["cancelled_messages"] == 2
        await drain(ctx, service_urls.redis_url)
    view = await notification(client, sandbox, accepted["id"])
    assert view["status"] == "cancelled"
    assert view["counts"] == {"cancelled": 2}


async def test_send_at_defers_dispatch(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "later", {"email": EMAIL_AND_INBOX["email"]})
    await put_recipient(client, sandbox, "l1", email="l1@example.com")
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    accepted = await notify(
        client,
        sandbox,
        template="later",
        to=["l1"],
        data={"name": "l"},
        send_at=send_at.isoformat(),
    )
    assert accepted["send_at"] is not None
    await run_workers(service_urls)
    assert (await notification(client, sandbox, accepted["id"]))["status"] == "accepted"
    await asyncio.sleep(max(0.0, (send_at - datetime.now(UTC)).total_seconds()) + 0.3)
    await run_workers(service_urls)
    view = await notification(client, sandbox, accepted["id"])
    assert view["counts"] == {"sent": 1}


async def test_cancel_before_send_at(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "never", {"email": EMAIL_AND_INBOX["email"]})
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    accepted = await notify(
        client, sandbox, template="never", to=["x"], data={"name": "x"}, send_at=send_at
    )
    response = await client.post(
        f"/v1/notifications/{accepted['id']}/cancel", headers=sandbox.headers
    )
    assert response.json()["status"] == "cancelled"


async def test_priorities_use_their_own_queues(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    """Dispatch, and then delivery, of a notification run on its priority's queue."""
    await put_template(client, sandbox, "prio", {"email": EMAIL_AND_INBOX["email"]})
    await put_recipient(client, sandbox, "p", email="p@example.com")
    redis = Redis.from_url(service_urls.redis_url)

    async def queues_holding(job: str) -> set[str]:
        return {name for name, key in queues.QUEUE_NAMES.items() if await redis.zscore(key, job)}

    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    try:
        dispatched, delivered = {}, {}
        async with workers(settings) as ctx:
            ctx["redis"] = await queues.connect(service_urls.redis_url)
            for priority in ("high", "normal", "low"):
                accepted = await notify(
                    client,
                    sandbox,
                    template="prio",
                    to=["p"],
                    data={"name": "p"},
                    priority=priority,
                    # High priority is for critical categories.
                    category="security" if priority == "high" else "transactional",
                )
                dispatched[priority] = await queues_holding(f"dispatch:{accepted['id']}")
                # Dispatch only, as a worker would: its deliver job goes onto a queue.
                assert await functions.dispatch(ctx, accepted["id"]) == 1
                [message] = (await notification(client, sandbox, accepted["id"]))["messages"]
                delivered[priority] = await queues_holding(f"deliver:{message['id']}:1")
            await ctx["redis"].aclose()
        expected = {"high": {"high"}, "normal": {"normal"}, "low": {"low"}}
        assert (dispatched, delivered) == (expected, expected)
    finally:
        await redis.aclose()
        await run_workers(service_urls)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template": "missing", "to": ["a"]}, "template"),
        ({"template": "bad-input", "to": ["a"], "channels": ["sms"]}, "channels[0]"),
        ({"template": "bad-input", "to": ["a"], "channels": ["fax"]}, "channels[0]"),
        ({"template": "bad-input", "to": []}, "to"),
        ({"template": "bad-input", "to": [f"u{n}" for n in range(1001)]}, "to"),
        ({"template": "bad-input", "to": [{"external_id": "i", "email": "nope"}]}, "to[0].email"),
        ({"template": "bad-input", "to": ["a"], "category": "unknown"}, "category"),
        ({"template": "bad-input", "to": ["a"], "priority": "urgent"}, "priority"),
        ({"template": "bad-input", "to": ["a"], "send_at": "2030-01-01T00:00:00"}, "send_at"),
        ({"template": "bad-input", "to": ["a"], "data": {"blob": "x" * 70_000}}, "data"),
        ({"template": "bad-input", "to": ["a"], "colour": "red"}, "colour"),
        ({"to": ["a"]}, "template"),
        ({"template": "bad-input", "to": [""]}, "to[0]"),
        ({"template": "bad-input", "to": ["a", "two words"]}, "to[1]"),
        ({"template": "bad-input", "to": ["a/b"]}, "to[0]"),
        ({"template": "bad-input", "to": ["x" * 201]}, "to[0]"),
        ({"template": "bad-input", "to": ["erased:0190"]}, "to[0]"),
        ({"template": "bad-input", "to": ["a", {"external_id": "b c"}]}, "to[1].external_id"),
        ({"template": "bad-input", "to": ["a"], "locale": "!!"}, "locale"),
        ({"template": "bad-input", "to": ["a"], "locale": "english"}, "locale"),
        ({"template": "bad-input", "to": ["a"], "locale": "fr-CA-x-y"}, "locale"),
    ],
)
async def test_bad_input_names_the_field(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, object], field: str
) -> None:
    await put_template(client, tenant, "bad-input", {"email": EMAIL_AND_INBOX["email"]})
    problem = assert_problem(
        await client.post("/v1/notifications", headers=tenant.headers, json=body),
        422,
        "validation_error",
    )
    assert field in [e["field"] for e in problem["errors"]], problem  # type: ignore[union-attr]


@pytest.mark.parametrize("inline", [False, True], ids=["ids", "inline_recipients"])
async def test_a_bad_idempotency_key_names_the_header(
    client: httpx.AsyncClient, tenant: TenantKey, inline: bool
) -> None:
    await put_template(client, tenant, "keyed", {"email": EMAIL_AND_INBOX["email"]})
    to: list[object] = [{"external_id": "k1"}] if inline else ["k1"]
    for key in ("", "k" * 256):
        headers = {**tenant.headers, "Idempotency-Key": key}
        response = await client.post(
            "/v1/notifications", headers=headers, json={"template": "keyed", "to": to}
        )
        problem = assert_problem(response, 422, "validation_error")
        assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"]  # type: ignore[attr-defined]
    longest = {**tenant.headers, "Idempotency-Key": "k" * 255}
    response = await client.post(
        "/v1/notifications", headers=longest, json={"template": "keyed", "to": to}
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("inline", [False, True], ids=["ids", "inline_recipients"])
async def test_the_locale_is_stored_as_a_recipient_locale_is(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession, inline: bool
) -> None:
    await put_template(client, tenant, "localised", {"email": EMAIL_AND_INBOX["email"]})
    to: list[object] = [{"external_id": "l1"}] if inline else ["l1"]
    accepted = await notify(client, tenant, template="localised", to=to, locale="zh_hant_tw")
    stored = await session.scalar(
        select(Notification.locale).where(Notification.id == uuid.UUID(accepted["id"]))
    )
    assert stored == "zh-Hant-TW"


async def test_oversized_body_is_413(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    body = {"template": "x", "to": ["a"], "data": {"blob": "x" * (2 * 1024 * 1024)}}
    assert_problem(
        await client.post("/v1/notifications", headers=tenant.headers, json=body),
        413,
        "payload_too_large",
    )


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    reader = await make_tenant(session, "Reader only", scopes=["read"])
    assert_problem(
        await client.post("/v1/notifications", headers=reader.headers, json={}),
        403,
        "insufficient_scope",
    )
    sender = await make_tenant(session, "Sender only", scopes=["send"])
    assert_problem(
        await client.get("/v1/messages", headers=sender.headers), 403, "insufficient_scope"
    )


async def test_tenant_isolation(
    client: httpx.AsyncClient, sandbox: TenantKey, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    other = await make_tenant(session, "Other sandbox", mode="test")
    await put_template(client, sandbox, "mine", EMAIL_AND_INBOX)
    await put_recipient(client, sandbox, "private", email="private@example.com")
    accepted = await notify(client, sandbox, template="mine", to=["private"], data={"name": "p"})
    await run_workers(service_urls)

    path = f"/v1/notifications/{accepted['id']}"
    assert_problem(await client.get(path, headers=other.headers), 404, "not_found")
    assert_problem(await client.post(f"{path}/cancel", headers=other.headers), 404, "not_found")
    listed = (await client.get("/v1/messages", headers=other.headers)).json()
    assert listed["data"] == []
    assert_problem(
        await client.get("/v1/recipients/private/inbox", headers=other.headers), 404, "not_found"
    )
    assert_problem(
        await client.post("/v1/recipients/private/inbox-token", headers=other.headers),
        404,
        "not_found",
    )
    # Another tenant's template and recipients are not theirs to use.
    response = await client.post(
        "/v1/notifications", headers=other.headers, json={"template": "mine", "to": ["private"]}
    )
    assert_problem(response, 422, "validation_error")
    mine = (
        await client.get(
            "/v1/messages", headers=sandbox.headers, params={"notification": accepted["id"]}
        )
    ).json()
    assert {m["recipient"] for m in mine["data"]} == {"private"}


async def test_message_list_since_and_until(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    """`since` is inclusive and `until` exclusive, on the message's creation time."""
    await put_template(client, sandbox, "timed", {"inbox": EMAIL_AND_INBOX["inbox"]})
    await put_recipient(client, sandbox, "t1")
    for name in ("first", "second", "third"):
        await notify(client, sandbox, template="timed", to=["t1"], data={"name": name})
        await run_workers(service_urls)  # one after another: distinct creation times

    async def listed(**params: str) -> list[str]:
        response = await client.get("/v1/messages", headers=sandbox.headers, params=params)
        assert response.status_code == 200, response.text
        return [m["created_at"] for m in response.json()["data"]]

    third, second, first = await listed()  # newest first
    assert datetime.fromisoformat(first) < datetime.fromisoformat(second)
    assert datetime.fromisoformat(second) < datetime.fromisoformat(third)
    assert await listed(since=second) == [third, second]
    assert await listed(until=second) == [first]
    assert await listed(since=first, until=third) == [second, first]
    assert await listed(since=third, until=third) == []
    later = (datetime.fromisoformat(third) + timedelta(seconds=1)).isoformat()
    assert await listed(since=later) == []
    assert await listed(until=later) == [third, second, first]
    # An offset other than UTC means the same instant.
    paris = datetime.fromisoformat(second).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert await listed(since=paris) == [third, second]
    for name in ("since", "until"):
        bad = await client.get("/v1/messages", headers=sandbox.headers, params={name: "soon"})
        problem = assert_problem(bad, 422, "validation_error")
        assert [e["field"] for e in problem["errors"]] == [name]  # type: ignore[attr-defined]


async def test_message_list_filters(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    await put_template(client, sandbox, "listed", EMAIL_AND_INBOX)
    await put_recipient(client, sandbox, "f1", email="f1@example.com")
    await put_recipient(client, sandbox, "f2")
    accepted = await notify(client, sandbox, template="listed", to=["f1", "f2"], data={"name": "f"})
    await run_workers(service_urls)
    params = {"notification": accepted["id"]}
    skipped = (
        await client.get(
            "/v1/messages", headers=sandbox.headers, params={**params, "status": "skipped"}
        )
    ).json()
    assert [(m["recipient"], m["channel"]) for m in skipped["data"]] == [("f2", "email")]
    inbox = (
        await client.get(
            "/v1/messages", headers=sandbox.headers, params={**params, "channel": "inbox"}
        )
    ).json()
    assert {m["recipient"] for m in inbox["data"]} == {"f1", "f2"}
    f1 = (
        await client.get(
            "/v1/messages", headers=sandbox.headers, params={**params, "recipient": "f1"}
        )
    ).json()
    assert {m["channel"] for m in f1["data"]} == {"email", "inbox"}
    page = (
        await client.get("/v1/messages", headers=sandbox.headers, params={**params, "limit": 3})
    ).json()
    assert page["has_more"] and page["next_cursor"]
    rest = (
        await client.get(
            "/v1/messages",
            headers=sandbox.headers,
            params={**params, "limit": 3, "cursor": page["next_cursor"]},
        )
    ).json()
    assert len(page["data"]) + len(rest["data"]) == 4
    assert_problem(
        await client.get("/v1/messages", headers=sandbox.headers, params={"status": "lost"}),
        422,
        "validation_error",
    )
    assert_problem(
        await client.get(f"/v1/notifications/{uuid.uuid4()}", headers=sandbox.headers),
        404,
        "not_found",
    )


async def test_high_priority_is_for_critical_categories(
    client: httpx.AsyncClient, sandbox: TenantKey
) -> None:
    """The high queue is shared by every tenant: only what cannot wait may ride it."""
    await put_template(client, sandbox, "code", {"sms": {"text": "{{ code }}"}})
    await put_recipient(client, sandbox, "ivy", phone="+14155550100")
    critical = await client.put(
        "/v1/categories/otp", headers=sandbox.headers, json={"name": "OTP", "critical": True}
    )
    assert critical.status_code == 201, critical.text
    for to in (["ivy"], [{"external_id": "ivy"}]):  # ids, and a recipient given inline
        body = {"template": "code", "to": to, "data": {"code": "1"}, "priority": "high"}
        refused = await client.post("/v1/notifications", headers=sandbox.headers, json=body)
        problem = assert_problem(refused, 422, "validation_error")
        assert problem["errors"][0]["field"] == "priority"
        assert "'transactional' is not critical" in problem["detail"]
        for category in ("security", "otp"):
            accepted = await client.post(
                "/v1/notifications", headers=sandbox.headers, json={**body, "category": category}
            )
            assert accepted.status_code == 202, accepted.text
            view = await notification(client, sandbox, accepted.json()["id"])
            assert (view["priority"], view["category"]) == ("high", category)
