"""Notifications to an audience (a topic, everyone, a filter): expanded in pages inside
PostgreSQL, each recipient's messages written once with the reason it is skipped, the
content rendered once per (channel, locale), and the held messages released a window at a
time. The expected outcome of each recipient is computed here from the rules, apart from
the code under test."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications import expansion, failures
from app.notifications.dispatch import dispatch
from app.notifications.models import Message, Notification, Render
from app.notifications.relay import stale_accepted
from app.runtime import ServiceUrls
from jobs import queues
from tests.send_path import notify, put_template
from tests.support import TenantKey, assert_problem, key_of, unmetered_renderer

N = 20_000
TEMPLATE = {
    "email": {"subject": "News", "text": "Hello"},
    "sms": {"text": "News"},
}
LOCALES = {"fr": {"email": {"subject": "Nouvelles", "text": "Bonjour"}}}


def person(i: int) -> dict[str, Any]:
    """Recipient i of the seeded audience, and what applies to it."""
    return {
        "external_id": f"u{i}",
        # Every tenth has no e-mail address; one in four writes it in capitals.
        "email": None
        if i % 10 == 0
        else (f"U{i}@EXAMPLE.COM" if i % 4 == 0 else f"u{i}@example.com"),
        "phone": f"+1415555{i:04d}" if i % 2 == 0 and i < 10_000 else None,
        "locale": ("fr-CA" if i % 5 == 0 else "fr")
        if i % 3 == 1
        else ("de" if i % 3 == 2 else None),
        "plan": "pro" if i % 6 == 0 else "free",
        "member": i % 3 != 2,
        "erased": i % 19 == 0,
        "email_off": i % 7 == 0,  # preference: e-mail off for every category
        "sms_off_category": i % 11 == 0,  # preference: sms off for the notification's category
        "email_off_topic": i % 13 == 0,  # preference: e-mail off for the topic `news`
        "suppressed": i % 17 == 0,  # its e-mail address is suppressed (in lower case)
    }


PEOPLE = [person(i) for i in range(N)]


def expected(wanted: Iterator[dict[str, Any]], *, topic: bool) -> Counter[tuple[str, str | None]]:
    """(channel, skip reason) counts as planning's rules say: no address, opted out,
    suppressed, in that order; erased recipients are in no audience."""
    counts: Counter[tuple[str, str | None]] = Counter()
    for p in wanted:
        if p["erased"]:
            continue
        if p["email"] is None:
            counts["email", "no_address"] += 1
        elif p["email_off"] or (topic and p["email_off_topic"]):
            counts["email", "opted_out"] += 1
        elif p["suppressed"]:
            counts["email", "suppressed"] += 1
        else:
            counts["email", None] += 1
        if p["phone"] is None:
            counts["sms", "no_address"] += 1
        elif p["sms_off_category"]:
            counts["sms", "opted_out"] += 1
        else:
            counts["sms", None] += 1
    return counts


async def seed(session: AsyncSession, key: TenantKey) -> None:
    """N recipients in one statement, their preferences, suppressions and topic membership."""
    params = {"tenant": key.tenant_id, "mode": key.mode}
    rows = [
        {
            "external_id": p["external_id"],
            "email": p["email"],
            "phone": p["phone"],
            "locale": p["locale"],
            "data": f'{{"plan": "{p["plan"]}"}}',
            "erased": p["erased"],
        }
        for p in PEOPLE
    ]
    await session.execute(
        text(
            """
            INSERT INTO recipients (id, tenant_id, mode, external_id, email, phone, locale, data,
                                    erased_at, created_at, updated_at)
            SELECT gen_random_uuid(), :tenant, :mode, r.external_id, r.email, r.phone, r.locale,
                   CAST(r.data AS jsonb), CASE WHEN r.erased THEN now() END, now(), now()
              FROM unnest(CAST(:external_id AS text[]), CAST(:email AS text[]),
                          CAST(:phone AS text[]), CAST(:locale AS text[]),
                          CAST(:data AS text[]), CAST(:erased AS boolean[]))
                   AS r(external_id, email, phone, locale, data, erased)
            """
        ),
        {**params, **{name: [row[name] for row in rows] for name in rows[0]}},
    )

    def ids(flag: str) -> list[str]:
        return [p["external_id"] for p in PEOPLE if p[flag]]

    for flag, category, channel in (
        ("email_off", "*", "email"),
        ("sms_off_category", "transactional", "sms"),
    ):
        await session.execute(
            text(
                """
                INSERT INTO preferences (tenant_id, recipient_id, category, channel, enabled)
                SELECT :tenant, r.id, :category, :channel, false FROM recipients AS r
                 WHERE r.tenant_id = :tenant AND r.mode = :mode
                   AND r.external_id = ANY(CAST(:ids AS text[]))
                """
            ),
            {**params, "category": category, "channel": channel, "ids": ids(flag)},
        )
    await session.execute(
        text(
            """
            INSERT INTO topic_preferences (tenant_id, recipient_id, topic_key, channel, enabled)
            SELECT :tenant, r.id, 'news', 'email', false FROM recipients AS r
             WHERE r.tenant_id = :tenant AND r.mode = :mode
               AND r.external_id = ANY(CAST(:ids AS text[]))
            """
        ),
        {**params, "ids": ids("email_off_topic")},
    )
    await session.execute(
        text(
            """
            INSERT INTO suppressions (id, tenant_id, mode, channel, address, reason, source)
            SELECT gen_random_uuid(), :tenant, :mode, 'email', lower(a), 'hard_bounce', 'test'
              FROM unnest(CAST(:addresses AS text[])) AS a
            """
        ),
        {**params, "addresses": [p["email"] for p in PEOPLE if p["suppressed"] and p["email"]]},
    )
    await session.execute(
        text(
            """
            INSERT INTO topic_members (tenant_id, mode, topic_key, recipient_id)
            SELECT :tenant, CAST(:mode AS text), 'news', r.id FROM recipients AS r
             WHERE r.tenant_id = :tenant AND r.mode = :mode
               AND r.external_id = ANY(CAST(:ids AS text[]))
            """
        ),
        {**params, "ids": ids("member")},
    )
    # As autovacuum would after such a load: the plans below are those of a tenant whose
    # recipients have been there a while.
    await session.execute(
        text("ANALYZE recipients, preferences, topic_preferences, suppressions, topic_members")
    )
    await session.execute(
        text(
            "UPDATE topics SET member_count = :n"
            " WHERE tenant_id = :tenant AND mode = :mode AND key = 'news'"
        ),
        {**params, "n": len(ids("member"))},
    )
    await session.commit()


@pytest.fixture
async def audience(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> AsyncIterator[TenantKey]:
    key = await key_of(session, tenant, "test")
    await put_template(client, key, "news", TEMPLATE, locales=LOCALES)
    topic = await client.put("/v1/topics/news", headers=key.headers, json={"name": "News"})
    assert topic.status_code in (200, 201), topic.text
    await seed(session, key)
    yield key
    # Broadcasts left releasing would be taken up by the relay of the next tests' workers.
    await session.rollback()
    await session.execute(
        text(
            "UPDATE notifications SET status = 'cancelled', releasing = false"
            " WHERE tenant_id = :tenant"
        ),
        {"tenant": key.tenant_id},
    )
    await session.commit()


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> Iterator[Redis]:  # type: ignore[misc]
    pool = await queues.connect(service_urls.redis_url)
    yield pool
    # The deliveries and hand-overs these tests enqueued are not for the next tests' workers.
    await pool.flushdb()
    await pool.aclose()


async def outcome(session: AsyncSession, notification_id: str) -> Counter[tuple[str, str | None]]:
    session.expire_all()
    rows = await session.execute(
        select(Message.channel, Message.skip_reason, func.count())
        .where(Message.notification_id == uuid.UUID(notification_id))
        .group_by(Message.channel, Message.skip_reason)
    )
    return Counter({(channel, reason): n for channel, reason, n in rows})


async def expand(session: AsyncSession, redis: Redis, notification_id: str) -> int:
    """Run dispatch (as the worker does) until every message is written; the runs it took."""
    for runs in range(1, 50):
        await dispatch(
            session,
            notification_id=uuid.UUID(notification_id),
            renderer=unmetered_renderer(),
            enqueuer=queues.outbox(redis),
            run_seconds=0,  # a page per run
        )
        await session.commit()
        found = await session.get(Notification, uuid.UUID(notification_id), populate_existing=True)
        assert found is not None
        if found.status != "accepted":
            return runs
        # A run handed over: the lease it left has run out for the next.
        await session.execute(
            text("UPDATE notifications SET dispatch_after = NULL WHERE id = :id"),
            {"id": found.id},
        )
        await session.commit()
    raise AssertionError("the audience was not expanded")


async def test_a_topic_broadcast_writes_each_members_messages_once_with_its_reason(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    accepted = await notify(
        client, audience, template="news", to={"topic": "news"}, channels=["email", "sms"]
    )
    await expand(session, redis, accepted["id"])
    members = (p for p in PEOPLE if p["member"])
    assert await outcome(session, accepted["id"]) == expected(members, topic=True)
    shown = await client.get(f"/v1/notifications/{accepted['id']}", headers=audience.headers)
    assert shown.json()["status"] == "dispatched"
    # One render per (channel, content locale): e-mail in fr and in the default, sms default.
    renders = await session.execute(
        select(Render.channel, Render.locale).where(
            Render.notification_id == uuid.UUID(accepted["id"])
        )
    )
    assert sorted(renders.all(), key=str) == sorted(
        [("email", "fr"), ("email", "en"), ("sms", "en")], key=str
    )
    # French speakers (fr, fr-CA) get the French e-mail; the others the default.
    french = await session.execute(
        text(
            """
            SELECT r.locale LIKE 'fr%' AS french, d.locale, count(*)
              FROM messages AS m JOIN recipients AS r ON r.id = m.recipient_id
              JOIN renders AS d ON d.id = m.render_id
             WHERE m.notification_id = :id AND m.channel = 'email'
             GROUP BY 1, 2
            """
        ),
        {"id": uuid.UUID(accepted["id"])},
    )
    assert {(bool(f), locale) for f, locale, _ in french.all()} == {(True, "fr"), (False, "en")}


async def test_everyone_and_a_filter_match_their_dry_run_count(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    wanted = {
        "op": "and",
        "filters": [
            {"op": "equals", "field": "data.plan", "value": "pro"},
            {"op": "exists", "field": "email"},
        ],
    }
    counted = await client.post(
        "/v1/audiences/count", headers=audience.headers, json={"audience": {"filter": wanted}}
    )
    matching = [p for p in PEOPLE if p["plan"] == "pro" and p["email"] and not p["erased"]]
    assert counted.json()["recipients"] == len(matching)
    accepted = await notify(
        client, audience, template="news", to={"filter": wanted}, channels=["email"]
    )
    await expand(session, redis, accepted["id"])
    written = await outcome(session, accepted["id"])
    assert sum(written.values()) == len(matching)
    assert written == Counter(
        {k: v for k, v in expected(iter(matching), topic=False).items() if k[0] == "email"}
    )

    everyone = await notify(client, audience, template="news", to={"all": True}, channels=["sms"])
    await expand(session, redis, everyone["id"])
    written = await outcome(session, everyone["id"])
    assert written == Counter(
        {k: v for k, v in expected(iter(PEOPLE), topic=False).items() if k[0] == "sms"}
    )


async def test_a_run_stopped_mid_expansion_is_resumed_without_duplicate_or_gap(
    client: httpx.AsyncClient,
    audience: TenantKey,
    session: AsyncSession,
    redis: Redis,
    engine: Any,
) -> None:
    accepted = await notify(client, audience, template="news", to={"all": True}, channels=["email"])
    notification_id = uuid.UUID(accepted["id"])
    from app.db import session_factory

    sessions = session_factory(engine)

    async def run() -> None:
        async with sessions() as own:
            await dispatch(
                own,
                notification_id=notification_id,
                renderer=unmetered_renderer(),
                enqueuer=queues.outbox(redis),
            )
            await own.commit()

    task = asyncio.create_task(run())
    # Stopped once some pages are written and before the last: as a killed worker is.
    for _ in range(500):
        await asyncio.sleep(0.01)
        written = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.notification_id == notification_id)
        )
        await session.commit()
        if written:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    found = await session.get(Notification, notification_id, populate_existing=True)
    assert found is not None and found.status == "accepted", (
        "the run finished before it was stopped"
    )
    assert found.expansion_cursor is not None
    await expand(session, redis, accepted["id"])
    everyone = Counter(
        {k: v for k, v in expected(iter(PEOPLE), topic=False).items() if k[0] == "email"}
    )
    assert await outcome(session, accepted["id"]) == everyone
    missing = await session.scalar(
        text(
            """
            SELECT count(*) FROM recipients AS r
             WHERE r.tenant_id = :tenant AND r.mode = 'test' AND r.erased_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM messages AS m
                                WHERE m.notification_id = :id AND m.recipient_id = r.id)
            """
        ),
        {"tenant": audience.tenant_id, "id": notification_id},
    )
    assert missing == 0


async def test_held_messages_are_released_a_window_at_a_time(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    accepted = await notify(
        client, audience, template="news", to={"topic": "news"}, channels=["email"]
    )
    runs = await expand(session, redis, accepted["id"])
    notification_id = uuid.UUID(accepted["id"])
    held = await session.scalar(
        select(func.count())
        .select_from(Message)
        .where(
            Message.notification_id == notification_id,
            Message.status == "queued",
            Message.next_attempt_at == expansion.HELD,
        )
    )
    queued = sum(
        n
        for (_, reason), n in expected((p for p in PEOPLE if p["member"]), topic=True).items()
        if reason is None and _ == "email"
    )
    window, _every = expansion.tick(50)  # the free plan's rate
    # Each run released one window: a run releases the next only once most of the last has
    # left the queue, and each of these runs ended after its first step.
    assert held == queued - window * runs
    found = await session.get(Notification, notification_id, populate_existing=True)
    assert found is not None and found.releasing


def fields(response: httpx.Response) -> list[str]:
    problem = assert_problem(response, 422, "validation_error")
    return [error["field"] for error in problem["errors"]]  # type: ignore[attr-defined]


async def test_an_audience_is_checked_at_intake(
    client: httpx.AsyncClient, audience: TenantKey
) -> None:
    async def send(to: Any) -> httpx.Response:
        return await client.post(
            "/v1/notifications", headers=audience.headers, json={"template": "news", "to": to}
        )

    assert fields(await send({"topic": "nope"})) == ["to.topic"]
    assert fields(await send({"topic": "news", "all": True})) == ["to"]
    deep: dict[str, Any] = {"op": "exists", "field": "email"}
    for _ in range(10):
        deep = {"op": "not", "filter": deep}
    assert fields(await send({"filter": deep}))[0].startswith("to.filter")
    # High priority needs a critical category, for an audience as for a list.
    live = await client.post(
        "/v1/notifications",
        headers=audience.headers,
        json={"template": "news", "to": {"all": True}, "priority": "high"},
    )
    assert fields(live) == ["priority"]


async def one_run(session: AsyncSession, redis: Redis, notification_id: str) -> Notification:
    """One dispatch run that ends after its first step (a page written, a window released)."""
    await dispatch(
        session,
        notification_id=uuid.UUID(notification_id),
        renderer=unmetered_renderer(),
        enqueuer=queues.outbox(redis),
        run_seconds=0,
    )
    await session.commit()
    found = await session.get(Notification, uuid.UUID(notification_id), populate_existing=True)
    assert found is not None
    return found


async def statuses(session: AsyncSession, notification_id: str) -> Counter[str]:
    session.expire_all()
    rows = await session.execute(
        select(Message.status, func.count())
        .where(Message.notification_id == uuid.UUID(notification_id))
        .group_by(Message.status)
    )
    return Counter(dict(rows.all()))


async def test_cancel_mid_broadcast_stops_it_and_cancels_every_message_not_sent(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    accepted = await notify(client, audience, template="news", to={"all": True}, channels=["email"])
    found = await one_run(session, redis, accepted["id"])
    assert found.status == "accepted" and found.releasing
    written = await statuses(session, accepted["id"])
    assert written["queued"] > 0 and sum(written.values()) == expansion.PAGE_SIZE
    cancelled = await client.post(
        f"/v1/notifications/{accepted['id']}/cancel", headers=audience.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled_messages"] == written["queued"]
    # Its job cancels what was held, and writes no page more.
    await one_run(session, redis, accepted["id"])
    after = await statuses(session, accepted["id"])
    assert after["queued"] == 0
    assert after["cancelled"] == written["queued"]
    assert sum(after.values()) == sum(written.values())
    found = await session.get(Notification, uuid.UUID(accepted["id"]), populate_existing=True)
    assert found is not None and not found.releasing and found.status == "cancelled"


async def test_pause_mid_broadcast_holds_it_and_resume_finishes_it(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    accepted = await notify(client, audience, template="news", to={"all": True}, channels=["sms"])
    await one_run(session, redis, accepted["id"])
    written = await statuses(session, accepted["id"])
    paused = await client.post(
        f"/v1/notifications/{accepted['id']}/pause", headers=audience.headers
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["held_messages"] == written["queued"]
    # While paused, a run writes nothing and releases nothing.
    found = await one_run(session, redis, accepted["id"])
    assert found.status == "paused"
    assert await statuses(session, accepted["id"]) == written
    held = await expansion.held_count(session, uuid.UUID(accepted["id"]))
    assert held == written["queued"]
    resumed = await client.post(
        f"/v1/notifications/{accepted['id']}/resume", headers=audience.headers
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "accepted"
    await expand(session, redis, accepted["id"])
    everyone = Counter(
        {k: v for k, v in expected(iter(PEOPLE), topic=False).items() if k[0] == "sms"}
    )
    assert await outcome(session, accepted["id"]) == everyone


async def test_topic_members_are_read_page_by_page(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    """Documented: members join or leave a running broadcast until its pages reach them."""
    accepted = await notify(
        client, audience, template="news", to={"topic": "news"}, channels=["email"]
    )
    found = await one_run(session, redis, accepted["id"])
    cursor = found.expansion_cursor
    assert cursor is not None
    ids = dict(
        (
            await session.execute(
                text(
                    "SELECT external_id, id FROM recipients WHERE tenant_id = :t AND mode = 'test'"
                    " AND erased_at IS NULL"
                ),
                {"t": audience.tenant_id},
            )
        ).all()
    )
    ahead = sorted((i, e) for e, i in ids.items() if i > cursor)
    behind = sorted((i, e) for e, i in ids.items() if i < cursor)
    members = {p["external_id"] for p in PEOPLE if p["member"]}
    leaving = next(e for _, e in ahead if e in members)
    joining_ahead = next(e for _, e in ahead if e not in members)
    joining_behind = next(e for _, e in behind if e not in members)
    for verb, who in (("members", [joining_ahead, joining_behind]), ("members/remove", [leaving])):
        changed = await client.post(
            f"/v1/topics/news/{verb}", headers=audience.headers, json={"recipients": who}
        )
        assert changed.status_code == 200, changed.text
    await expand(session, redis, accepted["id"])
    got = {
        e
        for (e,) in (
            await session.execute(
                text(
                    "SELECT r.external_id FROM messages AS m JOIN recipients AS r"
                    " ON r.id = m.recipient_id WHERE m.notification_id = :id"
                ),
                {"id": uuid.UUID(accepted["id"])},
            )
        ).all()
    }
    assert joining_ahead in got
    assert joining_behind not in got
    assert leaving not in got


async def test_personalised_content_is_rendered_per_recipient_a_page_at_a_time(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    await put_template(
        client,
        audience,
        "hello",
        {"email": {"subject": "Hi {{ recipient.id }}", "text": "x"}},
    )
    chosen = [p for p in PEOPLE[:80] if not p["erased"] and p["email"]]
    ids = [p["external_id"] for p in chosen]
    assert (await client.put("/v1/topics/vip", headers=audience.headers, json={})).status_code in (
        200,
        201,
    )
    added = await client.post(
        "/v1/topics/vip/members", headers=audience.headers, json={"recipients": ids}
    )
    assert added.status_code == 200, added.text
    off = ids[:3]
    for external_id in off:
        switched = await client.put(
            f"/v1/recipients/{external_id}/preferences",
            headers=audience.headers,
            json={"topics": {"vip": {"email": False}}},
        )
        assert switched.status_code == 200, switched.text
    accepted = await notify(client, audience, template="hello", to={"topic": "vip"})
    await expand(session, redis, accepted["id"])
    rows = (
        await session.execute(
            text(
                """
                SELECT r.external_id, m.skip_reason, d.content ->> 'subject', m.status, m.last_error
                  FROM messages AS m JOIN recipients AS r ON r.id = m.recipient_id
                  LEFT JOIN renders AS d ON d.id = m.render_id
                 WHERE m.notification_id = :id
                """
            ),
            {"id": uuid.UUID(accepted["id"])},
        )
    ).all()
    by_id = {external_id: (reason, subject) for external_id, reason, subject, *_ in rows}
    assert set(by_id) == set(ids)
    for p in chosen:
        reason, subject = by_id[p["external_id"]]
        if p["external_id"] in off or p["email_off"]:
            assert reason == "opted_out"
        elif p["suppressed"]:
            assert reason == "suppressed"
        else:
            assert (reason, subject) == (None, f"Hi {p['external_id']}"), rows[:3]


async def test_a_broadcast_cancelled_while_its_run_goes_on_cancels_every_held_message(
    client: httpx.AsyncClient,
    audience: TenantKey,
    session: AsyncSession,
    redis: Redis,
    engine: Any,
) -> None:
    """The run sees the cancel at its next step and stops; the job the cancel enqueued
    then cancels what is still held, as it does when no run was under way."""
    accepted = await notify(client, audience, template="news", to={"all": True}, channels=["email"])
    notification_id = uuid.UUID(accepted["id"])
    from app.db import session_factory

    sessions = session_factory(engine)

    async def run() -> None:
        async with sessions() as own:
            await dispatch(
                own,
                notification_id=notification_id,
                renderer=unmetered_renderer(),
                enqueuer=queues.outbox(redis),
            )
            await own.commit()

    task = asyncio.create_task(run())
    for _ in range(1000):
        await asyncio.sleep(0.01)
        found = await session.get(Notification, notification_id, populate_existing=True)
        await session.commit()
        assert found is not None
        if found.expansion_cursor is not None:
            break
    assert not task.done() and found.expansion_cursor is not None, "no page written"
    cancelled = await client.post(
        f"/v1/notifications/{accepted['id']}/cancel", headers=audience.headers
    )
    assert cancelled.status_code == 200, cancelled.text
    await task
    session.expire_all()  # the test's session read the notification while the run went on
    await one_run(session, redis, accepted["id"])
    after = await statuses(session, accepted["id"])
    assert after["queued"] == 0, after
    assert after["cancelled"] == cancelled.json()["cancelled_messages"]
    assert await expansion.held_count(session, notification_id) == 0
    found = await session.get(Notification, notification_id, populate_existing=True)
    assert found is not None and not found.releasing and found.status == "cancelled"


async def test_a_broadcast_failed_part_way_cancels_what_it_held(
    client: httpx.AsyncClient, audience: TenantKey, session: AsyncSession, redis: Redis
) -> None:
    accepted = await notify(client, audience, template="news", to={"all": True}, channels=["email"])
    notification_id = uuid.UUID(accepted["id"])
    await one_run(session, redis, accepted["id"])
    assert await expansion.held_count(session, notification_id) > 0
    # Its runs die, one after the other, until one too many fails it.
    await session.execute(
        text("UPDATE notifications SET dispatch_attempts = :n WHERE id = :id"),
        {"n": failures.MAX_DISPATCH_ATTEMPTS, "id": notification_id},
    )
    await session.commit()
    assert not await failures.begin_attempt(session, notification_id=notification_id)
    stale = await stale_accepted(session, older_than=timedelta(0), limit=100)
    await session.commit()
    assert notification_id in {n.id for n in stale}  # the relay enqueues its dispatch
    await one_run(session, redis, accepted["id"])
    assert await expansion.held_count(session, notification_id) == 0
    found = await session.get(Notification, notification_id, populate_existing=True)
    assert found is not None and found.status == "failed" and not found.releasing
    left = await statuses(session, accepted["id"])
    assert left["queued"] <= expansion.MAX_WINDOW  # what was released before it failed
    assert left["cancelled"] > 0
