"""/v1/webhook-endpoints: made, read, replaced, deleted and rotated; secrets shown once and
verified by the reference `standardwebhooks` package; tenant and mode isolation; bad input
refused naming its field; private destinations refused."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app import crypto
from app.audit.models import AuditEntry
from app.auth import keys
from app.db import utcnow
from app.settings import Settings
from app.webhooks import service
from app.webhooks.models import WebhookEndpoint
from tests.support import TenantKey, assert_problem

# A public address written as a literal: no DNS lookup, so the test runs the same offline.
URL = "https://1.1.1.1/herald"


async def create(client: httpx.AsyncClient, owner: TenantKey, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/webhook-endpoints", headers=owner.headers, json={"url": URL, **body}
    )


async def test_create_read_replace_and_delete(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    made = await create(client, tenant, description="CRM")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["object"] == "webhook_endpoint" and body["url"] == URL
    assert body["event_types"] is None and body["enabled"] is True  # all events, on
    assert body["secret"].startswith("whsec_")
    endpoint_id = body["id"]

    read = await client.get(f"/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers)
    assert read.status_code == 200
    assert "secret" not in read.json(), "the secret is in the creation's answer only"
    listed = await client.get("/v1/webhook-endpoints", headers=tenant.headers)
    assert [e["id"] for e in listed.json()["data"]] == [endpoint_id]
    assert "secret" not in listed.json()["data"][0]

    replaced = await client.put(
        f"/v1/webhook-endpoints/{endpoint_id}",
        headers=tenant.headers,
        json={
            "url": "https://1.0.0.1/bounces",
            "event_types": ["message.complained", "message.bounced", "message.bounced"],
            "enabled": False,
        },
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["event_types"] == ["message.bounced", "message.complained"]
    assert replaced.json()["enabled"] is False and replaced.json()["description"] == ""

    gone = await client.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    again = await client.get(f"/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers)
    assert_problem(again, 404, "not_found")


async def test_signatures_verify_with_the_reference_package_through_a_rotation(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings, tenant: TenantKey
) -> None:
    made = (await create(client, tenant)).json()
    first = made["secret"]
    rotated = await client.post(
        f"/v1/webhook-endpoints/{made['id']}/rotate-secret", headers=tenant.headers
    )
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["secret"]
    assert second.startswith("whsec_") and second != first
    assert rotated.json()["previous_secret_expires_at"] is not None

    keyring = crypto.keyring_for(settings)
    endpoint = await session.get(WebhookEndpoint, uuid.UUID(made["id"]))
    assert endpoint is not None
    payload = json.dumps({"type": "message.sent", "data": {"id": "msg_1"}}).encode()
    now = int(utcnow().timestamp())
    headers = service.signed_headers(
        endpoint, keyring, message_id="evt_1", body=payload, timestamp=now
    )
    assert len(headers["webhook-signature"].split(" ")) == 2  # old and new, during the overlap
    for secret in (first, second):  # a receiver on either secret accepts
        Webhook(secret).verify(payload, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(first).verify(payload + b" ", headers)

    # The overlap over, only the new secret signs.
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint.id)
        .values(previous_expires_at=utcnow() - timedelta(seconds=1))
    )
    await session.commit()
    await session.refresh(endpoint)
    headers = service.signed_headers(
        endpoint, keyring, message_id="evt_2", body=payload, timestamp=now
    )
    assert len(headers["webhook-signature"].split(" ")) == 1
    Webhook(second).verify(payload, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(first).verify(payload, headers)
    read = await client.get(f"/v1/webhook-endpoints/{made['id']}", headers=tenant.headers)
    assert read.json()["previous_secret_expires_at"] is None


async def test_another_tenant_and_the_other_mode_see_nothing(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
) -> None:
    made = (await create(client, tenant)).json()
    test_key = await keys.issue_key(
        session,
        tenant_id=tenant.tenant_id,
        name="test",
        mode="test",
        scopes=["send", "read", "manage"],
        actor="test",
    )
    await session.commit()
    same_tenant_test_mode = TenantKey(tenant.tenant_id, test_key.key.id, test_key.secret)
    path = f"/v1/webhook-endpoints/{made['id']}"
    for outsider in (other_tenant, same_tenant_test_mode):
        assert_problem(await client.get(path, headers=outsider.headers), 404, "not_found")
        replaced = await client.put(path, headers=outsider.headers, json={"url": URL})
        assert_problem(replaced, 404, "not_found")
        rotated = await client.post(f"{path}/rotate-secret", headers=outsider.headers)
        assert_problem(rotated, 404, "not_found")
        assert_problem(await client.delete(path, headers=outsider.headers), 404, "not_found")
        listed = await client.get("/v1/webhook-endpoints", headers=outsider.headers)
        assert listed.json()["data"] == []
    assert (await client.get(path, headers=tenant.headers)).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://1.1.1.1/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": URL, "event_types": ["message.teleported"]}, "event_types"),
        ({"url": URL, "event_types": []}, "event_types"),
        ({"url": URL, "description": "x" * 501}, "description"),
        ({"url": "https://1.1.1.1/" + "a" * 2048}, "url"),
    ],
)
async def test_bad_input_is_refused_naming_its_field(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/webhook-endpoints", headers=tenant.headers, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert field in json.dumps(problem["errors"]), problem


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://localhost/hook",
    ],
)
async def test_private_destinations_are_refused(session: AsyncSession, url: str) -> None:
    with pytest.raises(service.EndpointInvalid) as refused:
        await service.create_endpoint(
            session,
            tenant_id=uuid.uuid4(),
            mode="live",
            data=service.EndpointInput(url),
            actor="test",
            keyring=crypto.default_keyring(),
            allow_private=False,
        )
    assert refused.value.field == "url"
    assert "127.0.0.1" not in refused.value.message  # which address it resolved to is not told


async def test_a_tenant_has_a_bounded_number_of_endpoints(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    for _ in range(service.MAX_ENDPOINTS):
        assert (await create(client, tenant)).status_code == 201
    assert_problem(await create(client, tenant), 409, "too_many_endpoints")
    audited = await session.scalars(
        select(AuditEntry).where(
            AuditEntry.tenant_id == tenant.tenant_id,
            AuditEntry.action == "webhook_endpoint.created",
        )
    )
    entries = list(audited)
    assert len(entries) == service.MAX_ENDPOINTS
    assert all("whsec_" not in json.dumps(entry.details) for entry in entries)
