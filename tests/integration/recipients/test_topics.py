"""/v1/topics: create, replace, read, list and delete topics; add, remove and list members in
bulk; member counts under erasure and concurrency; tenant and mode isolation."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.recipients.models import Topic, TopicMember
from tests.support import TenantKey, assert_problem, key_of, make_tenant


async def put_topic(
    client: httpx.AsyncClient, owner: TenantKey, key: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.put(f"/v1/topics/{key}", headers=owner.headers, json=body or {})


async def add(
    client: httpx.AsyncClient, owner: TenantKey, key: str, ids: list[str]
) -> httpx.Response:
    return await client.post(
        f"/v1/topics/{key}/members", headers=owner.headers, json={"recipients": ids}
    )


async def remove(
    client: httpx.AsyncClient, owner: TenantKey, key: str, ids: list[str]
) -> httpx.Response:
    return await client.post(
        f"/v1/topics/{key}/members/remove", headers=owner.headers, json={"recipients": ids}
    )


async def make_recipients(client: httpx.AsyncClient, owner: TenantKey, ids: list[str]) -> None:
    for start in range(0, len(ids), 1000):
        batch = [{"external_id": i} for i in ids[start : start + 1000]]
        response = await client.post(
            "/v1/recipients/batch", headers=owner.headers, json={"recipients": batch}
        )
        assert response.status_code == 200, response.text


async def member_rows(session: AsyncSession, owner: TenantKey, key: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(TopicMember)
        .where(TopicMember.tenant_id == owner.tenant_id, TopicMember.topic_key == key)
    )
    return int(count or 0)


async def all_members(client: httpx.AsyncClient, owner: TenantKey, key: str) -> list[str]:
    """Every member's external id, paged 100 at a time with the cursor."""
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = await client.get(f"/v1/topics/{key}/members", headers=owner.headers, params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["object"] == "list"
        seen += [m["recipient"] for m in body["data"]]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return seen
        cursor = body["next_cursor"]


def fields_of(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem["errors"]]


async def test_create_replace_read_and_delete(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    created = await put_topic(client, tenant, "weekly-digest")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"] == "weekly-digest" and body["object"] == "topic"
    assert body["name"] == "weekly-digest" and body["description"] == ""  # the defaults
    assert body["member_count"] == 0

    replaced = await put_topic(
        client, tenant, "weekly-digest", {"name": "Weekly digest", "description": "Mondays"}
    )
    assert replaced.status_code == 200, replaced.text
    after = replaced.json()
    assert (after["name"], after["description"]) == ("Weekly digest", "Mondays")
    assert after["created_at"] == body["created_at"]
    assert after["updated_at"] >= body["updated_at"]

    read = await client.get("/v1/topics/weekly-digest", headers=tenant.headers)
    assert read.status_code == 200 and read.json() == after

    await make_recipients(client, tenant, ["d1", "d2"])
    assert (await add(client, tenant, "weekly-digest", ["d1", "d2"])).status_code == 200
    deleted = await client.delete("/v1/topics/weekly-digest", headers=tenant.headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["member_count"] == 2 and deleted.json()["name"] == "Weekly digest"
    assert_problem(
        await client.get("/v1/topics/weekly-digest", headers=tenant.headers), 404, "not_found"
    )
    assert_problem(
        await client.delete("/v1/topics/weekly-digest", headers=tenant.headers), 404, "not_found"
    )
    assert await member_rows(session, tenant, "weekly-digest") == 0  # members went with it
    # The recipients stay.
    assert (await client.get("/v1/recipients/d1", headers=tenant.headers)).status_code == 200

    actions = (
        await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.target == "weekly-digest")
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert actions == ["topic.created", "topic.updated", "topic.members_added", "topic.deleted"]
    added = await session.scalar(
        select(AuditEntry.details).where(
            AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "topic.members_added"
        )
    )
    assert added is not None and "d1" not in str(added)  # counts, never ids
    assert added["added"] == 2


@pytest.mark.parametrize(
    "key", ["Caps", "-dash-first", "_under", "with space", "a" * 101, "é", "a/b", "a\n"]
)
async def test_a_malformed_key_is_refused_naming_key(
    client: httpx.AsyncClient, tenant: TenantKey, key: str
) -> None:
    response = await client.put(
        f"/v1/topics/{quote(key, safe='')}", headers=tenant.headers, json={}
    )
    if response.status_code == 404:  # a path the router does not route (a '/' inside)
        assert "/" in key
        return
    problem = assert_problem(response, 422, "validation_error")
    assert fields_of(problem) == ["key"]


async def test_keys_at_the_limits_are_taken(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    for key in ("a", "0", "a" * 100, "team.eng_2-b"):
        assert (await put_topic(client, tenant, key)).status_code == 201, key


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "n" * 101}, "name"),
        ({"description": "d" * 501}, "description"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_a_bad_body_is_refused_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await put_topic(client, tenant, "t", body), 422, "validation_error")
    assert fields_of(problem) == [field]


async def test_list_pages_by_key(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    keys = [f"topic-{n:02d}" for n in range(7)]
    for key in reversed(keys):
        assert (await put_topic(client, tenant, key)).status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/topics", headers=tenant.headers, params=params)).json()
        assert page["object"] == "list" and len(page["data"]) <= 3
        seen += [t["key"] for t in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
        assert cursor == seen[-1]
    assert seen == keys
    for limit in (0, 101):
        response = await client.get("/v1/topics", headers=tenant.headers, params={"limit": limit})
        assert fields_of(assert_problem(response, 422, "validation_error")) == ["limit"]


async def test_ten_thousand_members_in_one_call(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    ids = [f"member-{n:05d}" for n in range(10_000)]
    await make_recipients(client, tenant, ids)
    await put_topic(client, tenant, "everyone")

    added = await add(client, tenant, "everyone", ids)
    assert added.status_code == 200, added.text
    assert added.json() == {
        "object": "topic_members_change",
        "topic": "everyone",
        "added": 10_000,
        "unchanged": 0,
        "not_found": [],
        "member_count": 10_000,
    }
    again = (await add(client, tenant, "everyone", ids)).json()
    assert (again["added"], again["unchanged"], again["member_count"]) == (0, 10_000, 10_000)
    topic = (await client.get("/v1/topics/everyone", headers=tenant.headers)).json()
    assert topic["member_count"] == 10_000 == await member_rows(session, tenant, "everyone")

    listed = await all_members(client, tenant, "everyone")
    assert len(listed) == 10_000 and set(listed) == set(ids)

    gone = (await remove(client, tenant, "everyone", ids[:4000])).json()
    assert gone["object"] == "topic_members_change"
    assert (gone["removed"], gone["unchanged"], gone["member_count"]) == (4000, 0, 6000)
    assert await member_rows(session, tenant, "everyone") == 6000


async def test_unknown_erased_and_repeated_ids(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await make_recipients(client, tenant, ["ann", "bob", "cy", "gone"])
    assert (await client.delete("/v1/recipients/gone", headers=tenant.headers)).status_code == 200
    await put_topic(client, tenant, "mixed")

    body = (await add(client, tenant, "mixed", ["ann", "nobody", "ann", "gone", "bob"])).json()
    assert body["added"] == 2 and body["unchanged"] == 0
    assert body["not_found"] == ["nobody", "gone"]
    assert body["member_count"] == 2

    body = (await add(client, tenant, "mixed", ["bob", "cy", "cy"])).json()
    assert (body["added"], body["unchanged"], body["member_count"]) == (1, 1, 3)

    body = (await remove(client, tenant, "mixed", ["ann", "ann", "nobody", "bob"])).json()
    assert (body["removed"], body["unchanged"], body["not_found"]) == (2, 0, ["nobody"])
    assert body["member_count"] == 1
    body = (await remove(client, tenant, "mixed", ["ann"])).json()
    assert (body["removed"], body["unchanged"], body["member_count"]) == (0, 1, 1)

    [member] = (await client.get("/v1/topics/mixed/members", headers=tenant.headers)).json()["data"]
    assert member["object"] == "topic_member" and member["recipient"] == "cy"
    recipient = (await client.get("/v1/recipients/cy", headers=tenant.headers)).json()
    assert member["recipient_id"] == recipient["id"] and member["added_at"]
    assert await member_rows(session, tenant, "mixed") == 1

    # Members are never created here.
    response = await client.get("/v1/recipients/nobody", headers=tenant.headers)
    assert response.status_code == 404


async def test_member_changes_of_a_missing_topic_are_not_found(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await make_recipients(client, tenant, ["ann"])
    for response in (
        await add(client, tenant, "absent", ["ann"]),
        await remove(client, tenant, "absent", ["ann"]),
        await client.get("/v1/topics/absent/members", headers=tenant.headers),
    ):
        assert_problem(response, 404, "not_found")


async def test_bad_member_lists_are_refused_naming_the_item(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await put_topic(client, tenant, "t")
    for change in (add, remove):
        too_many = await change(client, tenant, "t", [f"r{n}" for n in range(10_001)])
        assert fields_of(assert_problem(too_many, 422, "validation_error")) == ["recipients"]
        empty = await change(client, tenant, "t", [])
        assert fields_of(assert_problem(empty, 422, "validation_error")) == ["recipients"]
        bad = await change(client, tenant, "t", ["ok", "fine", "x", "a/b", "erased:1", ""])
        problem = assert_problem(bad, 422, "validation_error")
        assert fields_of(problem)[0] in ("recipients[3]", "recipients[5]")
        assert set(fields_of(problem)) <= {"recipients[3]", "recipients[4]", "recipients[5]"}
        slash = await change(client, tenant, "t", ["ok", "a/b", "erased:x"])
        assert fields_of(assert_problem(slash, 422, "validation_error")) == [
            "recipients[1]",
            "recipients[2]",
        ]
        wrong_type = await change(client, tenant, "t", ["ok", 7])  # type: ignore[list-item]
        assert fields_of(assert_problem(wrong_type, 422, "validation_error")) == ["recipients[1]"]
    cursor = await client.get(
        "/v1/topics/t/members", headers=tenant.headers, params={"cursor": "nope"}
    )
    assert fields_of(assert_problem(cursor, 422, "validation_error")) == ["cursor"]


async def test_erasure_removes_memberships_and_counts(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await make_recipients(client, tenant, ["leaver", "stayer"])
    for key in ("news", "alerts", "other"):
        await put_topic(client, tenant, key)
    await add(client, tenant, "news", ["leaver", "stayer"])
    await add(client, tenant, "alerts", ["leaver"])
    await add(client, tenant, "other", ["stayer"])

    assert (await client.delete("/v1/recipients/leaver", headers=tenant.headers)).status_code == 200

    counts = {}
    for key in ("news", "alerts", "other"):
        counts[key] = (await client.get(f"/v1/topics/{key}", headers=tenant.headers)).json()[
            "member_count"
        ]
        assert counts[key] == await member_rows(session, tenant, key)
    assert counts == {"news": 1, "alerts": 0, "other": 1}
    assert await all_members(client, tenant, "news") == ["stayer"]
    entry = await session.scalar(
        select(AuditEntry.details).where(
            AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "recipient.erased"
        )
    )
    assert entry is not None and entry["topics"] == 2


async def test_concurrent_overlapping_changes_keep_the_count_true(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    ids = [f"c-{n:04d}" for n in range(1200)]
    await make_recipients(client, tenant, ids)
    await put_topic(client, tenant, "busy")
    # Six overlapping windows of 400 (each id in two or three of them), at once.
    windows = [ids[start : start + 400] for start in range(0, 1000, 160)]
    answers = await asyncio.gather(*(add(client, tenant, "busy", w) for w in windows))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    covered = {i for w in windows for i in w}
    assert sum(a.json()["added"] for a in answers) == len(covered)
    # Removals and additions at once, overlapping too.
    mixed = await asyncio.gather(
        remove(client, tenant, "busy", ids[:500]),
        add(client, tenant, "busy", ids[300:900]),
        remove(client, tenant, "busy", ids[400:700]),
        add(client, tenant, "busy", ids[:200]),
    )
    assert all(a.status_code == 200 for a in mixed), [a.text for a in mixed]
    rows = await member_rows(session, tenant, "busy")
    session.expire_all()
    stored = await session.scalar(
        select(Topic.member_count).where(Topic.tenant_id == tenant.tenant_id, Topic.key == "busy")
    )
    assert stored == rows
    topic = (await client.get("/v1/topics/busy", headers=tenant.headers)).json()
    assert topic["member_count"] == rows == len(await all_members(client, tenant, "busy"))


async def test_other_tenants_and_the_other_mode_see_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
) -> None:
    await make_recipients(client, tenant, ["ann", "bob"])
    await put_topic(client, tenant, "private", {"name": "Private"})
    await add(client, tenant, "private", ["ann"])
    test_key = await key_of(session, tenant, "test")
    # The other tenant has a recipient of the same external id, the test mode too.
    await make_recipients(client, other_tenant, ["ann", "bob"])
    await make_recipients(client, test_key, ["ann", "bob"])

    for outsider in (other_tenant, test_key):
        headers = outsider.headers
        for response in (
            await client.get("/v1/topics/private", headers=headers),
            await client.delete("/v1/topics/private", headers=headers),
            await add(client, outsider, "private", ["ann", "bob"]),
            await remove(client, outsider, "private", ["ann"]),
            await client.get("/v1/topics/private/members", headers=headers),
        ):
            assert_problem(response, 404, "not_found")
        assert (await client.get("/v1/topics", headers=headers)).json()["data"] == []

    # The same key written by the other mode is another topic, with members of its own mode.
    mine = await put_topic(client, test_key, "private", {"name": "Test"})
    assert mine.status_code == 201, mine.text
    change = (await add(client, test_key, "private", ["ann", "bob"])).json()
    assert (change["added"], change["member_count"]) == (2, 2)
    # A live topic cannot take another tenant's or mode's recipient.
    await make_recipients(client, test_key, ["test-only"])
    refused = (await add(client, tenant, "private", ["test-only"])).json()
    assert refused["not_found"] == ["test-only"] and refused["member_count"] == 1

    live = (await client.get("/v1/topics/private", headers=tenant.headers)).json()
    assert (live["name"], live["member_count"]) == ("Private", 1)
    assert await all_members(client, tenant, "private") == ["ann"]
    test = (await client.get("/v1/topics", headers=test_key.headers)).json()["data"]
    assert [(t["name"], t["member_count"]) for t in test] == [("Test", 2)]


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    reader = await make_tenant(session, "Reader", scopes=["read"])
    sender = await make_tenant(session, "Sender", scopes=["send"])
    assert (await put_topic(client, sender, "s")).status_code == 201
    for response in (
        await put_topic(client, reader, "s"),
        await add(client, reader, "s", ["x"]),
        await remove(client, reader, "s", ["x"]),
        await client.delete("/v1/topics/s", headers=reader.headers),
    ):
        assert assert_problem(response, 403, "insufficient_scope")["required_scope"] == "send"
    for path in ("/v1/topics", "/v1/topics/s", "/v1/topics/s/members"):
        assert_problem(await client.get(path, headers=sender.headers), 403, "insufficient_scope")
    assert (await client.get("/v1/topics", headers=reader.headers)).status_code == 200
