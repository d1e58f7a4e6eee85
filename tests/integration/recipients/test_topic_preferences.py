"""Preferences per topic: set through /v1/recipients/{id}/preferences beside the category
ones, checked and named like them, kept per tenant, audited, and gone with an erasure."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.channels import CHANNELS
from app.recipients.models import Preference, Recipient, TopicPreference
from tests.support import TenantKey, assert_problem

ALL_ON = dict.fromkeys(CHANNELS, True)
PATH = "/v1/recipients/pat/preferences"


def fields_of(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem["errors"]]


async def _pat(client: httpx.AsyncClient, owner: TenantKey, **fields: Any) -> None:
    response = await client.put("/v1/recipients/pat", headers=owner.headers, json=fields)
    assert response.status_code in (200, 201), response.text


async def test_topic_switches_round_trip_and_merge(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await _pat(client, tenant)
    # A topic that exists and the recipient belongs to, and one that does not exist (yet).
    await client.put("/v1/topics/weekly-digest", headers=tenant.headers, json={})
    await client.post(
        "/v1/topics/weekly-digest/members", headers=tenant.headers, json={"recipients": ["pat"]}
    )
    first = {
        "categories": {"marketing": {"sms": False}},
        "topics": {"weekly-digest": {"email": False}, "team.eng": {"push": False, "inbox": True}},
    }
    response = await client.put(PATH, headers=tenant.headers, json=first)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "channels": ALL_ON,
        "categories": {"marketing": {"sms": False}},
        "topics": {
            "team.eng": {"inbox": True, "push": False},
            "weekly-digest": {"email": False},
        },
    }

    # Only what is given changes: a switch turned back on, one added, the rest kept.
    second = {"topics": {"weekly-digest": {"email": True, "sms": False}}}
    assert (await client.put(PATH, headers=tenant.headers, json=second)).status_code == 200
    read = await client.get(PATH, headers=tenant.headers)
    assert read.status_code == 200
    assert read.json() == {
        "channels": ALL_ON,
        "categories": {"marketing": {"sms": False}},
        "topics": {
            "team.eng": {"inbox": True, "push": False},
            "weekly-digest": {"email": True, "sms": False},
        },
    }
    # A body without `topics` leaves them alone.
    third = await client.put(PATH, headers=tenant.headers, json={"channels": {"push": False}})
    assert third.json()["topics"] == read.json()["topics"]
    # Deleting the topic does not take the recipient's choice along: it stands if the topic
    # comes back.
    await client.delete("/v1/topics/weekly-digest", headers=tenant.headers)
    after = (await client.get(PATH, headers=tenant.headers)).json()
    assert after["topics"]["weekly-digest"] == {"email": True, "sms": False}


async def test_invalid_topic_switches_are_named_and_store_nothing(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await _pat(client, tenant)
    cases = [
        ({"topics": {"Weekly Digest": {"email": False}}}, "topics.Weekly Digest"),
        ({"topics": {"-digest": {"email": False}}}, "topics.-digest"),
        ({"topics": {"": {"email": False}}}, "topics."),
        ({"topics": {"d" * 101: {"email": False}}}, f"topics.{'d' * 101}"),
        ({"topics": {"digest\n": {"email": False}}}, "topics.digest\n"),
        ({"topics": {"weekly-digest": {"fax": False}}}, "topics.weekly-digest.fax"),
        ({"topics": {f"t{n}": {"email": False} for n in range(101)}}, "topics"),
        # A good category and a bad topic: the whole update is refused.
        (
            {"categories": {"marketing": {"email": False}}, "topics": {"x": {"pigeon": True}}},
            "topics.x.pigeon",
        ),
    ]
    for body, field in cases:
        response = await client.put(PATH, headers=tenant.headers, json=body)
        problem = assert_problem(response, 422, "validation_error")
        assert fields_of(problem) == [field], body
        assert field in str(problem["detail"])
    # Refused as the body is decoded, before the service sees it, and named all the same.
    typed = await client.put(
        PATH, headers=tenant.headers, json={"topics": {"weekly-digest": {"email": "no"}}}
    )
    assert fields_of(assert_problem(typed, 422, "validation_error")) == ["topics[...][...]"]
    shape = await client.put(PATH, headers=tenant.headers, json={"topics": ["weekly-digest"]})
    assert fields_of(assert_problem(shape, 422, "validation_error")) == ["topics"]

    stored = await session.scalar(
        select(func.count())
        .select_from(Recipient)
        .join(Preference, Preference.recipient_id == Recipient.id, isouter=True)
        .join(TopicPreference, TopicPreference.recipient_id == Recipient.id, isouter=True)
        .where(
            Recipient.tenant_id == tenant.tenant_id,
            (Preference.recipient_id.is_not(None)) | (TopicPreference.recipient_id.is_not(None)),
        )
    )
    assert stored == 0
    # The largest update allowed goes through.
    most = {"topics": {f"t{n:03}": dict.fromkeys(CHANNELS, False) for n in range(100)}}
    response = await client.put(PATH, headers=tenant.headers, json=most)
    assert response.status_code == 200, response.text
    assert len(response.json()["topics"]) == 100


async def test_topic_switches_are_audited_by_count(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await _pat(client, tenant)
    body = {"channels": {"sms": False}, "topics": {"weekly-digest": {"email": False, "sms": True}}}
    assert (await client.put(PATH, headers=tenant.headers, json=body)).status_code == 200
    [entry] = await session.scalars(
        select(AuditEntry).where(
            AuditEntry.tenant_id == tenant.tenant_id,
            AuditEntry.action == "recipient.preferences_updated",
        )
    )
    assert entry.details == {"switches": 1, "topic_switches": 2}
    # An update that sets nothing records nothing.
    assert (await client.put(PATH, headers=tenant.headers, json={"topics": {}})).status_code == 200
    count = await session.scalar(
        select(func.count())
        .select_from(AuditEntry)
        .where(
            AuditEntry.tenant_id == tenant.tenant_id,
            AuditEntry.action == "recipient.preferences_updated",
        )
    )
    assert count == 1


async def test_tenants_keep_their_own_topic_switches(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    for owner in (tenant, other_tenant):  # the same external id in both
        await _pat(client, owner)
    mine = {"topics": {"weekly-digest": {"email": False}}}
    assert (await client.put(PATH, headers=tenant.headers, json=mine)).status_code == 200
    theirs = await client.get(PATH, headers=other_tenant.headers)
    assert theirs.json()["topics"] == {}
    # The other tenant writes its own recipient's switches, never this one's.
    flipped = {"topics": {"weekly-digest": {"email": True}}}
    assert (await client.put(PATH, headers=other_tenant.headers, json=flipped)).status_code == 200
    assert (await client.get(PATH, headers=tenant.headers)).json()["topics"] == {
        "weekly-digest": {"email": False}
    }
    await client.put("/v1/recipients/only-mine", headers=tenant.headers, json={})
    for method in ("GET", "PUT"):
        answer = await client.request(
            method,
            "/v1/recipients/only-mine/preferences",
            headers=other_tenant.headers,
            json=mine if method == "PUT" else None,
        )
        assert_problem(answer, 404, "not_found")


async def test_erasure_removes_topic_switches(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await _pat(client, tenant, email="pat@example.com")
    await client.put("/v1/recipients/stays", headers=tenant.headers, json={})
    body = {"topics": {"weekly-digest": {"email": False}, "offers": {"sms": False}}}
    for external_id in ("pat", "stays"):
        response = await client.put(
            f"/v1/recipients/{external_id}/preferences", headers=tenant.headers, json=body
        )
        assert response.status_code == 200, response.text
    pat = await session.scalar(
        select(Recipient.id).where(
            Recipient.tenant_id == tenant.tenant_id, Recipient.external_id == "pat"
        )
    )

    assert (await client.delete("/v1/recipients/pat", headers=tenant.headers)).status_code == 200

    def switches(recipient_id: Any) -> Any:
        return (
            select(func.count())
            .select_from(TopicPreference)
            .where(TopicPreference.recipient_id == recipient_id)
        )

    assert await session.scalar(switches(pat)) == 0
    # The recipient row stays (messages refer to it); only the erased one's switches go.
    assert await session.scalar(select(Recipient.erased_at).where(Recipient.id == pat))
    stays = (await client.get("/v1/recipients/stays/preferences", headers=tenant.headers)).json()
    assert stays["topics"] == {"offers": {"sms": False}, "weekly-digest": {"email": False}}
    # Registered again under the same id, they start with no switches at all.
    await _pat(client, tenant)
    fresh = (await client.get(PATH, headers=tenant.headers)).json()
    assert fresh == {"channels": ALL_ON, "categories": {}, "topics": {}}
