"""Live and test mode are two worlds: a key reads and changes the objects of its own mode only.

One tenant holds the same ids in both modes (recipient `alice`, template `welcome`, category
`otp`, a suppression, a notification sent with Idempotency-Key `order-1`, a failed message
in the DLQ, a key, a topic with a member, preferences per category and per topic). Every
route is called with the key of one mode on the other mode's objects: it answers 404 (or
403 where the route is live-only) and nothing of the other mode changes, in either
direction.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import keys
from app.categories.models import Category
from app.notifications.models import Message, Notification
from app.recipients.models import (
    Preference,
    Recipient,
    Suppression,
    Topic,
    TopicMember,
    TopicPreference,
)
from app.runtime import ServiceUrls
from app.templates.models import Template
from tests.send_path import drain, notification, put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, key_of, make_tenant, settings_for

WELCOME = {"email": {"subject": "Welcome {{ name }}", "text": "Hi {{ name }}"}}


@dataclass
class World:
    """One mode's objects; `only` names a recipient and a template of this mode alone."""

    key: TenantKey
    notification_id: str
    failed_message_id: str
    suppression_id: str
    other_key_id: str

    @property
    def only(self) -> str:
        return f"only-{self.key.mode}"


@dataclass
class Tenant:
    live: World
    test: World

    def of(self, mode: str) -> World:
        return self.live if mode == "live" else self.test


async def _world(client: httpx.AsyncClient, session: AsyncSession, key: TenantKey) -> World:
    """The same ids in each mode; the notification's message fails and lands in the DLQ
    (the sandbox refuses fail@…; live mode has no e-mail provider configured)."""
    await put_template(client, key, "welcome", WELCOME)
    await put_recipient(client, key, "alice", email="fail@sandbox.herald")
    await put_template(client, key, f"only-{key.mode}", WELCOME)
    await put_recipient(client, key, f"only-{key.mode}", email="x@example.com")
    topic = await client.put(f"/v1/topics/only-{key.mode}", headers=key.headers, json={})
    assert topic.status_code == 201, topic.text
    joined = await client.post(
        f"/v1/topics/only-{key.mode}/members",
        headers=key.headers,
        json={"recipients": [f"only-{key.mode}"]},
    )
    assert joined.status_code == 200 and joined.json()["added"] == 1, joined.text
    # Switches that the notification below does not read (its category is transactional,
    # its audience a list), on a recipient of both modes and on this mode's own.
    switches = {
        "categories": {"otp": {"sms": False}},
        "topics": {f"only-{key.mode}": {"email": False}},
    }
    for external_id in ("alice", f"only-{key.mode}"):
        stored = await client.put(
            f"/v1/recipients/{external_id}/preferences", headers=key.headers, json=switches
        )
        assert stored.status_code == 200, stored.text
    category = await client.put(
        "/v1/categories/otp", headers=key.headers, json={"name": "OTP", "critical": True}
    )
    assert category.status_code == 201, category.text
    suppression = await client.post(
        "/v1/suppressions",
        headers=key.headers,
        json={"channel": "email", "address": "gone@example.com", "reason": "manual"},
    )
    assert suppression.status_code == 201, suppression.text
    accepted = await client.post(
        "/v1/notifications",
        headers={**key.headers, "Idempotency-Key": "order-1"},
        json={"template": "welcome", "to": ["alice"], "data": {"name": "A"}},
    )
    assert accepted.status_code == 202, accepted.text
    other = await keys.issue_key(
        session,
        tenant_id=key.tenant_id,
        name="ci",
        mode=key.mode,
        scopes=["read"],
        actor="test",
    )
    await session.commit()
    return World(key, accepted.json()["id"], "", suppression.json()["id"], str(other.key.id))


@pytest.fixture(scope="module")
async def both(app: Litestar, engine: Any, service_urls: ServiceUrls) -> AsyncIterator[Tenant]:
    from app.db import session_factory

    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client,
        session_factory(engine)() as session,
    ):
        live_key = await make_tenant(session, "Two worlds", mode="live")
        test_key = await key_of(session, live_key, "test")
        tenant = Tenant(
            await _world(client, session, live_key), await _world(client, session, test_key)
        )
        async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
            await drain(ctx, service_urls.redis_url)
        for world in (tenant.live, tenant.test):
            [message] = (await notification(client, world.key, world.notification_id))["messages"]
            assert message["status"] == "failed", message
            world.failed_message_id = message["id"]
        yield tenant


@pytest.fixture(params=["test on live", "live on test"])
def sides(request: pytest.FixtureRequest, both: Tenant) -> tuple[World, World]:
    """(the caller's world, the other world whose objects it must not reach)."""
    if request.param == "test on live":
        return both.test, both.live
    return both.live, both.test


async def _snapshot(session: AsyncSession, tenant_id: uuid.UUID, mode: str) -> dict[str, Any]:
    """Everything of one mode a send reads, as plain values."""
    session.expire_all()

    async def rows(model: Any, *columns: Any) -> list[tuple[Any, ...]]:
        query = select(*columns).where(model.tenant_id == tenant_id, model.mode == mode)
        return sorted(map(tuple, (await session.execute(query)).all()), key=repr)

    async def switches(model: Any, key: Any) -> list[tuple[Any, ...]]:
        """Preferences have their recipient's mode, not a column of their own."""
        query = (
            select(Recipient.external_id, key, model.channel, model.enabled)
            .join(
                Recipient,
                (Recipient.tenant_id == model.tenant_id) & (Recipient.id == model.recipient_id),
            )
            .where(Recipient.tenant_id == tenant_id, Recipient.mode == mode)
        )
        return sorted(map(tuple, (await session.execute(query)).all()), key=repr)

    return {
        "recipients": await rows(
            Recipient, Recipient.external_id, Recipient.email, Recipient.erased_at
        ),
        "templates": await rows(Template, Template.key, Template.version, Template.deleted_at),
        "categories": await rows(Category, Category.key, Category.critical),
        "suppressions": await rows(Suppression, Suppression.id, Suppression.address),
        "notifications": await rows(Notification, Notification.id, Notification.status),
        "messages": await rows(Message, Message.id, Message.status),
        "topics": await rows(Topic, Topic.key, Topic.name, Topic.member_count),
        "topic_members": await rows(TopicMember, TopicMember.topic_key, TopicMember.recipient_id),
        "preferences": await switches(Preference, Preference.category),
        "topic_preferences": await switches(TopicPreference, TopicPreference.topic_key),
    }


# (method, path, body): every route that names one object; {…} come from the other world.
ROUTES_ON_OTHER_OBJECTS = [
    ("GET", "/v1/recipients/{only}", None),
    ("DELETE", "/v1/recipients/{only}", None),
    ("GET", "/v1/recipients/{only}/preferences", None),
    ("PUT", "/v1/recipients/{only}/preferences", {"channels": {"email": False}}),
    ("PUT", "/v1/recipients/{only}/preferences", {"topics": {"weekly-digest": {"email": False}}}),
    ("GET", "/v1/recipients/{only}/inbox", None),
    ("POST", "/v1/recipients/{only}/inbox-token", None),
    ("POST", "/v1/recipients/{only}/inbox-tokens/revoke", None),
    ("POST", "/v1/recipients/{only}/inbox/read-all", None),
    ("GET", "/v1/templates/{only}", None),
    ("GET", "/v1/templates/{only}/versions", None),
    ("DELETE", "/v1/templates/{only}", None),
    ("POST", "/v1/templates/{only}/preview", {"data": {"name": "x"}}),
    ("DELETE", "/v1/suppressions/{suppression_id}", None),
    ("GET", "/v1/notifications/{notification_id}", None),
    ("POST", "/v1/notifications/{notification_id}/cancel", None),
    ("POST", "/v1/notifications/{notification_id}/pause", None),
    ("POST", "/v1/notifications/{notification_id}/resume", None),
    ("GET", "/v1/topics/{only}", None),
    ("DELETE", "/v1/topics/{only}", None),
    ("GET", "/v1/topics/{only}/members", None),
    ("POST", "/v1/topics/{only}/members", {"recipients": ["alice"]}),
    ("POST", "/v1/topics/{only}/members/remove", {"recipients": ["alice"]}),
    ("GET", "/v1/messages/{failed_message_id}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES_ON_OTHER_OBJECTS)
async def test_objects_of_the_other_mode_are_not_found(
    client: httpx.AsyncClient,
    session: AsyncSession,
    sides: tuple[World, World],
    method: str,
    path: str,
    body: Any,
) -> None:
    mine, theirs = sides
    before = await _snapshot(session, theirs.key.tenant_id, theirs.key.mode)
    url = path.format(only=theirs.only, **vars(theirs))
    answer = await client.request(method, url, headers=mine.key.headers, json=body)
    assert_problem(answer, 404, "not_found")
    assert await _snapshot(session, theirs.key.tenant_id, theirs.key.mode) == before
    # The same route works on the caller's own object of that kind.
    own = path.format(only=mine.only, **vars(mine))
    if method == "GET":
        assert (await client.get(own, headers=mine.key.headers)).status_code == 200


async def test_dlq_replay_and_discard_reach_only_their_own_mode(
    client: httpx.AsyncClient, session: AsyncSession, sides: tuple[World, World]
) -> None:
    mine, theirs = sides
    before = await _snapshot(session, theirs.key.tenant_id, theirs.key.mode)
    listed = (await client.get("/v1/dlq", headers=mine.key.headers)).json()
    assert theirs.failed_message_id not in {m["id"] for m in listed["data"]}
    for action in ("replay", "discard"):
        answer = await client.post(
            f"/v1/dlq/{action}", headers=mine.key.headers, json={"ids": [theirs.failed_message_id]}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json().get("replayed", answer.json().get("discarded")) == 0
    # "Every failed message" selects the caller's own failure only.
    everything = await client.post(
        "/v1/dlq/replay", headers=mine.key.headers, json={"filter": {}, "dry_run": True}
    )
    assert everything.json() == {"count": 1, "not_replayable": 0}
    assert await _snapshot(session, theirs.key.tenant_id, theirs.key.mode) == before


async def test_lists_show_only_their_own_mode(
    client: httpx.AsyncClient, sides: tuple[World, World]
) -> None:
    mine, theirs = sides

    async def listed(path: str) -> list[dict[str, Any]]:
        answer = await client.get(path, headers=mine.key.headers)
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    messages = await listed("/v1/messages")
    assert theirs.failed_message_id not in {m["id"] for m in messages}
    assert mine.failed_message_id in {m["id"] for m in messages}
    assert theirs.suppression_id not in {s["id"] for s in await listed("/v1/suppressions")}
    assert mine.suppression_id in {s["id"] for s in await listed("/v1/suppressions")}
    recipients = {r["external_id"] for r in await listed("/v1/recipients")}
    assert theirs.only not in recipients and mine.only in recipients
    templates = {t["key"] for t in await listed("/v1/templates")}
    assert theirs.only not in templates and mine.only in templates
    categories = {c["key"]: c["critical"] for c in await listed("/v1/categories")}
    assert categories["otp"] is True  # the caller's own otp, not the other's
    topics = {t["key"] for t in await listed("/v1/topics")}
    assert theirs.only not in topics and mine.only in topics
    members = {m["recipient"] for m in await listed(f"/v1/topics/{mine.only}/members")}
    assert members == {mine.only}
    # An audience counts the caller's mode only: the other mode's topic is none of its.
    counted = await client.post(
        "/v1/audiences/count", headers=mine.key.headers, json={"audience": {"topic": theirs.only}}
    )
    assert_problem(counted, 422, "validation_error")


async def test_writes_create_objects_of_the_callers_mode(
    client: httpx.AsyncClient, session: AsyncSession, sides: tuple[World, World]
) -> None:
    """The same id written with the other mode's key is another object: the original stays."""
    mine, theirs = sides
    before = await _snapshot(session, theirs.key.tenant_id, theirs.key.mode)
    headers = mine.key.headers
    writes = [
        ("PUT", "/v1/recipients/alice", {"email": "attacker@example.org"}),
        (
            "PUT",
            "/v1/recipients/alice/preferences",
            {"categories": {"otp": {"sms": True}}, "topics": {"only-live": {"email": True}}},
        ),
        ("POST", "/v1/recipients/batch", {"recipients": [{"external_id": "alice"}]}),
        ("PUT", "/v1/templates/welcome", {"name": "x", "content": {"sms": {"text": "pwned"}}}),
        ("PUT", "/v1/categories/otp", {"name": "OTP", "critical": False}),
        (
            "POST",
            "/v1/suppressions",
            {"channel": "email", "address": "fail@sandbox.herald", "reason": "manual"},
        ),
    ]
    for method, path, body in writes:
        answer = await client.request(method, path, headers=headers, json=body)
        assert answer.status_code in (200, 201), (path, answer.text)
    # An inline recipient in a send writes the caller's mode too.
    inline = await client.post(
        "/v1/notifications",
        headers=headers,
        json={"template": "welcome", "to": [{"external_id": "alice", "email": "a@example.org"}]},
    )
    assert inline.status_code == 202, inline.text
    after = await _snapshot(session, theirs.key.tenant_id, theirs.key.mode)
    # Only the other side's own dispatch may have moved meanwhile; its objects are untouched.
    for table in (
        "recipients",
        "templates",
        "categories",
        "suppressions",
        "preferences",
        "topic_preferences",
    ):
        assert after[table] == before[table], table


async def test_idempotency_keys_are_per_mode(
    client: httpx.AsyncClient, sides: tuple[World, World]
) -> None:
    """Taking a key in one mode neither replays nor blocks the other mode's request."""
    mine, theirs = sides
    again = await client.post(
        "/v1/notifications",
        headers={**mine.key.headers, "Idempotency-Key": "order-1"},
        json={"template": "welcome", "to": ["alice"], "data": {"name": "A"}},
    )
    # The caller's own earlier request holds the key in its mode: a replay of that one.
    assert again.status_code == 202, again.text
    assert again.json()["id"] == mine.notification_id != theirs.notification_id
    fresh = await client.post(
        "/v1/notifications",
        headers={**mine.key.headers, "Idempotency-Key": f"only-{theirs.key.mode}"},
        json={"template": "welcome", "to": ["alice"], "data": {"name": "B"}},
    )
    taken = await client.post(
        "/v1/notifications",
        headers={**theirs.key.headers, "Idempotency-Key": f"only-{theirs.key.mode}"},
        json={"template": "welcome", "to": ["alice"], "data": {"name": "C"}},
    )
    assert fresh.status_code == taken.status_code == 202
    assert "idempotent-replayed" not in taken.headers
    assert fresh.json()["id"] != taken.json()["id"]


async def test_a_test_key_cannot_touch_live_keys(client: httpx.AsyncClient, both: Tenant) -> None:
    test, live = both.test, both.live
    listed = (await client.get("/v1/api-keys", headers=test.key.headers)).json()["data"]
    assert {k["mode"] for k in listed} == {"test"}
    for method in ("GET", "DELETE"):
        answer = await client.request(
            method, f"/v1/api-keys/{live.other_key_id}", headers=test.key.headers
        )
        assert_problem(answer, 404, "not_found")
    minted = await client.post(
        "/v1/api-keys", headers=test.key.headers, json={"name": "escalate", "mode": "live"}
    )
    assert_problem(minted, 403, "forbidden")
    # The live key still works, and the live caller sees and manages both modes' keys.
    assert (await client.get("/v1/tenant", headers=live.key.headers)).status_code == 200
    seen = (await client.get("/v1/api-keys", headers=live.key.headers)).json()["data"]
    assert {k["mode"] for k in seen} == {"live", "test"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/tenant/kill-switches/email", {"mode": "pause"}),
        ("/v1/tenant/retry-policy", {"max_attempts": 2, "window_hours": 1}),
        ("/v1/tenant/default-locale", {"default_locale": "fr"}),
    ],
)
async def test_a_test_key_cannot_change_live_settings(
    client: httpx.AsyncClient, both: Tenant, path: str, body: dict[str, Any]
) -> None:
    before = (await client.get("/v1/tenant", headers=both.live.key.headers)).json()
    answer = await client.put(path, headers=both.test.key.headers, json=body)
    assert_problem(answer, 403, "live_mode_required")
    after = (await client.get("/v1/tenant", headers=both.live.key.headers)).json()
    assert after == before
    # A test key reads them (they apply to test sends too).
    mine = (await client.get("/v1/tenant", headers=both.test.key.headers)).json()
    assert mine["kill_switches"] == before["kill_switches"]
