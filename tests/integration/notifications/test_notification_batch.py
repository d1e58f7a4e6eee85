"""POST /v1/notifications/batch: each item accepted or refused on its own, as a single POST of
it would be, with its own Idempotency-Key; the batch's limits; scopes and modes."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import Notification
from app.notifications.schemas import MAX_BATCH_NOTIFICATIONS
from app.runtime import ServiceUrls
from jobs import queues
from tests.send_path import put_recipient, put_template
from tests.support import TenantKey, assert_problem, key_of, make_tenant

CONTENT = {"email": {"subject": "Hi", "text": "Hello"}, "inbox": {"title": "Hi", "body": "Hello"}}
PATH = "/v1/notifications/batch"


async def send_batch(client: httpx.AsyncClient, key: TenantKey, items: list[Any]) -> dict[str, Any]:
    response = await client.post(PATH, headers=key.headers, json={"notifications": items})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["object"] == "notification_batch"
    assert [item["index"] for item in result["data"]] == list(range(len(items)))
    return result


async def test_each_item_is_accepted_or_refused_on_its_own(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    await put_template(client, tenant, "hello", CONTENT)
    await put_recipient(client, tenant, "ann", email="ann@example.com")
    good = {"template": "hello", "to": ["ann"]}
    result = await send_batch(
        client,
        tenant,
        [
            good,
            {"template": "hello", "to": [3]},  # a wrong type: refused by the decoder
            {**good, "template": "nope"},  # refused by the intake
            {**good, "channels": ["inbox"], "data": {"n": 1}},
            {**good, "colour": "red"},  # an unknown member
            "not an object",
            {**good, "to": [{"external_id": "bob", "email": "bob@example.com"}]},
            {**good, "channels": ["sms"]},
        ],
    )
    statuses = [item["status"] for item in result["data"]]
    assert statuses == [202, 422, 422, 202, 422, 422, 202, 422]
    assert (result["accepted"], result["refused"]) == (3, 5)
    fields = {
        item["index"]: [e["field"] for e in item["error"]["errors"]]
        for item in result["data"]
        if item["error"]
    }
    assert fields == {
        1: ["notifications[1].to[0]"],
        2: ["notifications[2].template"],
        4: ["notifications[4].colour"],
        5: ["notifications[5]"],
        7: ["notifications[7].channels[0]"],
    }
    for item in result["data"]:
        if item["error"]:
            assert item["notification"] is None and item["replayed"] is False
            error = item["error"]
            assert error["status"] == 422 and error["instance"] == PATH
            assert error["type"].endswith("/validation_error")
    accepted = [
        uuid.UUID(item["notification"]["id"]) for item in result["data"] if item["notification"]
    ]
    assert all(
        item["notification"]["status"] == "accepted"
        for item in result["data"]
        if item["notification"]
    )
    # Accepted means stored, in the key's tenant, with its dispatch job queued.
    stored = set(
        await session.scalars(
            select(Notification.id).where(Notification.tenant_id == tenant.tenant_id)
        )
    )
    assert stored == set(accepted)
    redis = Redis.from_url(service_urls.redis_url)
    try:
        queued = set(await redis.zrange(queues.QUEUE_NAMES["normal"], 0, -1))
    finally:
        await redis.aclose()
    assert {f"dispatch:{i}".encode() for i in accepted} <= queued
    # The inline recipient was created, as a single POST would have.
    found = await client.get("/v1/recipients/bob", headers=tenant.headers)
    assert found.status_code == 200 and found.json()["email"] == "bob@example.com"


async def test_items_keep_their_idempotency_keys(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await put_template(client, tenant, "hello", CONTENT)
    await put_recipient(client, tenant, "ann", email="ann@example.com")
    good = {"template": "hello", "to": ["ann"]}
    first = await send_batch(
        client,
        tenant,
        [
            {**good, "idempotency_key": "k-1"},
            {**good, "idempotency_key": "k-2", "data": {"n": 2}},
            # The same key and body twice in one batch: one notification, answered twice.
            {**good, "idempotency_key": "k-3"},
            {**good, "idempotency_key": "k-3"},
        ],
    )
    ids = [item["notification"]["id"] for item in first["data"]]
    assert ids[2] == ids[3] and len(set(ids)) == 3
    assert [item["replayed"] for item in first["data"]] == [False, False, False, True]
    # Sent again (a client retrying after a timeout): the same answers, replayed, and a key
    # reused with another body is refused without touching the others.
    again = await send_batch(
        client,
        tenant,
        [
            {**good, "idempotency_key": "k-1"},
            {**good, "idempotency_key": "k-2", "data": {"n": 3}},
            {**good, "idempotency_key": "k-4"},
        ],
    )
    assert [item["status"] for item in again["data"]] == [202, 422, 202]
    assert again["data"][0]["notification"]["id"] == ids[0] and again["data"][0]["replayed"]
    conflict = again["data"][1]["error"]
    assert conflict["type"].endswith("/idempotency_key_reused")
    assert conflict["errors"] == [
        {"field": "notifications[1].idempotency_key", "message": "reused with a different body"}
    ]
    assert ids[1] in conflict["detail"]
    # A key taken by a single POST is the same key in a batch: one request hash for both.
    single = await client.post(
        "/v1/notifications", headers={**tenant.headers, "Idempotency-Key": "k-5"}, json=good
    )
    assert single.status_code == 202
    batched = await send_batch(client, tenant, [{**good, "idempotency_key": "k-5"}])
    assert batched["data"][0]["replayed"] is True
    assert batched["data"][0]["notification"]["id"] == single.json()["id"]
    count = len(
        list(
            await session.scalars(
                select(Notification.id).where(Notification.tenant_id == tenant.tenant_id)
            )
        )
    )
    assert count == 5  # k-1, k-2, k-3, k-4, k-5


async def test_the_batch_itself_is_bounded(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    await put_template(client, tenant, "hello", CONTENT)
    item = {"template": "hello", "to": ["ann"]}
    cases: list[tuple[Any, int, str]] = [
        ({"notifications": []}, 422, "notifications"),
        ({"notifications": [item] * (MAX_BATCH_NOTIFICATIONS + 1)}, 422, "notifications"),
        ({}, 422, "notifications"),
        ({"notifications": [item], "extra": 1}, 422, "extra"),
        # Litestar names the whole body `data` (its argument), as a member of it would be.
        ([item], 422, "data"),
    ]
    for body, status, field in cases:
        response = await client.post(PATH, headers=tenant.headers, json=body)
        assert_problem(response, status, "validation_error")
        assert [e["field"] for e in response.json()["errors"]] == [field], response.text
    malformed = await client.post(
        PATH, headers={**tenant.headers, "Content-Type": "application/json"}, content=b"{"
    )
    assert_problem(malformed, 400, "invalid_json")
    # A thousand is allowed, and each one is its own notification.
    full = await send_batch(client, tenant, [item] * MAX_BATCH_NOTIFICATIONS)
    assert full["accepted"] == MAX_BATCH_NOTIFICATIONS
    assert len({entry["notification"]["id"] for entry in full["data"]}) == MAX_BATCH_NOTIFICATIONS


async def test_a_batch_needs_the_send_scope_and_stays_in_its_mode(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    reader = await make_tenant(session, "Reader", scopes=["read"])
    refused = await client.post(
        PATH, headers=reader.headers, json={"notifications": [{"template": "x", "to": ["a"]}]}
    )
    assert_problem(refused, 403, "insufficient_scope")
    # A test key's batch makes test notifications: the live key of the tenant cannot see
    # them, and another tenant's template of the same key is not this tenant's.
    test_key = await key_of(session, tenant, "test")
    await put_template(client, test_key, "hello", CONTENT)
    result = await send_batch(client, test_key, [{"template": "hello", "to": ["ann"]}])
    notification_id = result["data"][0]["notification"]["id"]
    seen = await client.get(f"/v1/notifications/{notification_id}", headers=test_key.headers)
    assert seen.status_code == 200 and seen.json()["mode"] == "test"
    hidden = await client.get(f"/v1/notifications/{notification_id}", headers=tenant.headers)
    assert hidden.status_code == 404
    live = await send_batch(client, tenant, [{"template": "hello", "to": ["ann"]}])
    assert live["data"][0]["error"]["errors"][0]["field"] == "notifications[0].template"


async def test_items_the_database_refused_are_503_and_safe_to_send_again(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await put_template(client, tenant, "hello", CONTENT)
    await put_recipient(client, tenant, "ann", email="ann@example.com")
    items = [
        {"template": "hello", "to": ["ann"], "data": {"n": n}, "idempotency_key": f"r-{n}"}
        for n in range(3)
    ]
    # PostgreSQL refusing this tenant's notifications, as a failing write would.
    name = f"refuse_{uuid.uuid4().hex[:8]}"
    await session.execute(
        text(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'writes refused'; END $$"
        )
    )
    await session.execute(
        text(
            f"CREATE TRIGGER {name} BEFORE INSERT ON notifications FOR EACH ROW "
            f"WHEN (NEW.tenant_id = '{tenant.tenant_id}') EXECUTE FUNCTION {name}()"
        )
    )
    await session.commit()
    try:
        refused = await send_batch(client, tenant, items)
    finally:
        await session.execute(text(f"DROP TRIGGER {name} ON notifications"))
        await session.execute(text(f"DROP FUNCTION {name}()"))
        await session.commit()
    assert [item["status"] for item in refused["data"]] == [503, 503, 503]
    assert (refused["accepted"], refused["refused"]) == (0, 3)
    assert all(item["error"]["type"].endswith("/unavailable") for item in refused["data"])
    # Nothing was stored; sent again with the same keys, each is accepted once.
    again = await send_batch(client, tenant, items)
    assert [item["status"] for item in again["data"]] == [202, 202, 202]
    assert not any(item["replayed"] for item in again["data"])
    stored = list(
        await session.scalars(
            select(Notification.id).where(Notification.tenant_id == tenant.tenant_id)
        )
    )
    assert sorted(stored) == sorted(uuid.UUID(i["notification"]["id"]) for i in again["data"])
