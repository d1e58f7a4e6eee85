"""Input no endpoint can use answers a problem naming it, never a 500 or a 503 to retry:
bodies nested too deep, NUL in bodies, query strings and paths, credentials that are not
ASCII, JSON the decoder refuses, and time bounds whose UTC instant is past the calendar's
edge."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.inputs import MAX_JSON_DEPTH
from app.runtime import ServiceUrls
from tests.send_path import drain, notify, put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, make_tenant, settings_for

EMAIL = {"email": {"subject": "Hi {{ name }}", "text": "Hi"}}


def nested(levels: int) -> Any:
    """`levels` objects, one inside the other."""
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def errors_of(problem: dict[str, object]) -> list[dict[str, str]]:
    errors = problem["errors"]
    assert isinstance(errors, list)
    return errors


@pytest.fixture
async def sender(client: httpx.AsyncClient, tenant: TenantKey) -> TenantKey:
    """The tenant with a template `hello` and a recipient `ann` to notify."""
    await put_template(client, tenant, "hello", EMAIL)
    await put_recipient(client, tenant, "ann", email="ann@example.com")
    return tenant


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/notifications"),
        ("PUT", "/v1/recipients/deep"),
        ("POST", "/v1/recipients/batch"),
        ("PUT", "/v1/templates/deep"),
        ("POST", "/v1/providers"),
        ("PUT", "/v1/tenant/retry-policy"),
    ],
)
@pytest.mark.parametrize("levels", [1_000, 200_000])
async def test_bodies_nested_past_the_decoder_are_refused(
    client: httpx.AsyncClient, tenant: TenantKey, method: str, path: str, levels: int
) -> None:
    """Well under the body size limit, deep enough to exhaust the decoder's stack."""
    body = '{"data": ' + "[" * levels + "]" * levels + "}"
    response = await client.request(
        method,
        path,
        headers={**tenant.headers, "Content-Type": "application/json"},
        content=body.encode(),
    )
    problem = assert_problem(response, 400, "nesting_too_deep")
    assert problem["max_depth"] == MAX_JSON_DEPTH


async def test_data_nests_up_to_the_limit(client: httpx.AsyncClient, sender: TenantKey) -> None:
    """The body is the first level and `data` the second: 30 more fit in `data`."""
    at_limit = {"template": "hello", "to": ["ann"], "data": nested(MAX_JSON_DEPTH - 1)}
    response = await client.post("/v1/notifications", headers=sender.headers, json=at_limit)
    assert response.status_code == 202, response.text

    over = {"template": "hello", "to": ["ann"], "data": nested(MAX_JSON_DEPTH)}
    response = await client.post("/v1/notifications", headers=sender.headers, json=over)
    assert_problem(response, 400, "nesting_too_deep")
    response = await client.put("/v1/recipients/ann", headers=sender.headers, json=over)
    assert_problem(response, 400, "nesting_too_deep")


async def test_a_service_account_nested_past_the_parser_is_named(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    """FCM's service account may be sent as the JSON file's text, parsed on its own."""
    text = "[" * 100_000 + "]" * 100_000
    body = {
        "channel": "push",
        "provider": "fcm",
        "name": "fcm",
        "credentials": {"service_account": text},
    }
    response = await client.post("/v1/providers", headers=tenant.headers, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert [e["field"] for e in errors_of(problem)] == ["credentials.service_account"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/v1/recipients/nul", {"data": {"name": "Ann\x00"}}, "data.name"),
        ("PUT", "/v1/recipients/nul", {"data": {"na\x00me": "Ann"}}, "data.na\x00me"),
        (
            "POST",
            "/v1/recipients/batch",
            {"recipients": [{"external_id": "nul", "data": {"tags": ["ok", "\x00"]}}]},
            "recipients[0].data.tags[1]",
        ),
        (
            "PUT",
            "/v1/templates/nul",
            {"content": {"email": {"subject": "Hi\x00", "text": "Hi"}}},
            "content.email.subject",
        ),
        ("PUT", "/v1/categories/nul", {"name": "News\x00"}, "name"),
        (
            "POST",
            "/v1/suppressions",
            {"channel": "email", "address": "nul@example.com", "source": "crm\x00"},
            "source",
        ),
        (
            "POST",
            "/v1/providers",
            {"channel": "webhook", "provider": "webhook", "name": "hook\x00"},
            "name",
        ),
        ("POST", "/v1/api-keys", {"name": "key\x00"}, "name"),
        ("POST", "/v1/templates/hello/preview", {"data": {"name": "\x00"}}, "data.name"),
    ],
)
async def test_nul_in_a_body_is_refused_naming_the_field(
    client: httpx.AsyncClient,
    sender: TenantKey,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await client.request(method, path, headers=sender.headers, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert [e["field"] for e in errors_of(problem)] == [field]
    assert (await client.get("/v1/recipients/nul", headers=sender.headers)).status_code == 404


async def test_nul_in_a_notification_is_refused_and_spares_its_batch(
    client: httpx.AsyncClient, sender: TenantKey
) -> None:
    """Sent together, the requests would share one group commit: the bad ones are refused
    before it (a 422, not a 503 inviting a retry that cannot succeed), the others pass."""

    async def send(body: dict[str, Any]) -> httpx.Response:
        return await client.post("/v1/notifications", headers=sender.headers, json=body)

    good = {"template": "hello", "to": ["ann"], "data": {"name": "Ann"}}
    bad = [
        ({**good, "data": {"name": "Ann\x00"}}, "data.name"),
        ({**good, "to": ["ann", "b\x00b"]}, "to[1]"),
        ({**good, "to": [{"external_id": "cy", "data": {"x\x00": 1}}]}, "to[0].data.x\x00"),
    ]
    responses = await asyncio.gather(*(send(body) for body, _ in bad), send(good), send(good))
    for response, (_, field) in zip(responses, bad, strict=False):
        problem = assert_problem(response, 422, "validation_error")
        assert [e["field"] for e in errors_of(problem)] == [field]
    assert [r.status_code for r in responses[len(bad) :]] == [202, 202]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/messages?recipient=%00", "recipient"),
        ("/v1/messages?recipient=ann&recipient=a%00", "recipient"),
        ("/v1/suppressions?address=a%00b%40example.com", "address"),
        ("/v1/dlq?provider=%00", "provider"),
        ("/v1/recipients?email=a%00%40example.com", "email"),
        ("/v1/recipients/a%00b", "external_id"),
        ("/v1/recipients/a%00b/preferences", "external_id"),
        ("/v1/recipients/a%00b/inbox", "external_id"),
        ("/v1/templates/a%00b", "key"),
    ],
)
async def test_nul_in_a_query_or_path_is_refused_naming_the_parameter(
    client: httpx.AsyncClient, tenant: TenantKey, path: str, field: str
) -> None:
    response = await client.get(path, headers=tenant.headers)
    problem = assert_problem(response, 422, "validation_error")
    assert [e["field"] for e in errors_of(problem)] == [field]


async def test_nul_is_checked_after_authentication(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/messages?recipient=%00")
    assert_problem(response, 401, "unauthorized")


@pytest.mark.parametrize("secret", [b"hit_\xff.\xfe", b"hk_live_\xff" + b"a" * 40])
async def test_a_credential_that_is_not_ascii_is_refused(
    client: httpx.AsyncClient, secret: bytes
) -> None:
    """Headers may carry any Latin-1 byte; no credential of ours has one."""
    headers = {"Authorization": b"Bearer " + secret}
    response = await client.get("/v1/recipients/ann/inbox", headers=headers)
    assert_problem(response, 401, "unauthorized")


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": {"name": "\\ud800"}}',  # a lone surrogate
        b'{"data": {"name": "\\udc00"}}',
        b'{"data": {"name": "\xff"}}',  # not UTF-8
        b'{"data": {"n": 1e400}}',  # past a double
        b'{"data": {"n": 1' + b"0" * 5000 + b"}}",  # an integer of 5,001 digits
        b'{"data": {"n": NaN}}',
        b'{"data": {"n": Infinity}}',
    ],
)
async def test_json_the_decoder_refuses_is_invalid_json(
    client: httpx.AsyncClient, tenant: TenantKey, body: bytes
) -> None:
    response = await client.put(
        "/v1/recipients/odd",
        headers={**tenant.headers, "Content-Type": "application/json"},
        content=body,
    )
    assert_problem(response, 400, "invalid_json")


async def test_time_bounds_at_the_calendars_edges_select_what_they_say(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    """Any timestamp RFC 3339 allows is a bound, even one whose UTC instant is in year 0 or
    10000: no message is older or newer than those."""
    sandbox = await make_tenant(session, "Edges", mode="test")
    await put_template(client, sandbox, "hello", EMAIL)
    await put_recipient(client, sandbox, "ann", email="ann@example.com")
    await notify(client, sandbox, template="hello", to=["ann"])
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)
    for moment, oldest in (
        ("0001-01-01T00:00:00+01:00", True),
        ("0001-01-01T00:00:00Z", True),
        ("9999-12-31T23:59:59-01:00", False),
        ("9999-12-31T23:59:59Z", False),
    ):
        for bound, matches in (("since", oldest), ("until", not oldest)):
            params = {bound: moment}
            response = await client.get("/v1/messages", headers=sandbox.headers, params=params)
            assert response.status_code == 200, response.text
            assert len(response.json()["data"]) == (1 if matches else 0), params
            response = await client.get("/v1/dlq", headers=sandbox.headers, params=params)
            assert response.status_code == 200, response.text
            selection = {"filter": params, "dry_run": True}
            response = await client.post("/v1/dlq/replay", headers=sandbox.headers, json=selection)
            assert response.status_code == 200, response.text
