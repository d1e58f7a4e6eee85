"""/v1/providers end to end on PostgreSQL: lifecycle, secrecy, validation, isolation, routes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.crypto import Keyring, keyring_for
from app.providers import service
from app.providers.models import ProviderConfig
from app.settings import Settings
from tests.support import TenantKey, assert_problem, live_key, make_tenant

SENDGRID = {
    "channel": "email",
    "provider": "sendgrid",
    "name": "SendGrid main",
    "credentials": {"api_key": "SG.very-secret-key"},
    "options": {"from_email": "hello@acme.test", "from_name": "Acme"},
}


SES_KEYS = {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG"}
SES_TOPIC = "arn:aws:sns:eu-west-1:123456789012:herald-events"


def _ses(credentials: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return {
        "provider": "ses",
        "credentials": SES_KEYS if credentials is None else credentials,
        "options": {"from_email": "a@b.test", "region": "eu-west-1", **options},
    }


def _postmark(credentials: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return {
        "provider": "postmark",
        "credentials": {"server_token": "pm-token", **(credentials or {})},
        "options": {"from_email": "a@b.test", **options},
    }


def _pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


RSA_PEM = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_PEM = _pem(ec.generate_private_key(ec.SECP256R1()))


def fingerprint_of(credentials: dict[str, Any], settings: Settings) -> str:
    return service.fingerprint(credentials, keyring_for(settings))


async def create(client: httpx.AsyncClient, owner: TenantKey, **overrides: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/providers", headers=owner.headers, json={**SENDGRID, **overrides}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_lifecycle_and_credentials_never_leave(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    owner = await make_tenant(session, "Providers")
    created = await create(client, owner)
    assert created["object"] == "provider"
    assert (created["channel"], created["provider"], created["name"]) == (
        "email",
        "sendgrid",
        "SendGrid main",
    )
    assert created["options"] == {
        "from_email": "hello@acme.test",
        "from_name": "Acme",
        "reply_to": None,
    }
    assert created["rate_per_second"] == 100.0 and created["burst"] == 200  # provider defaults
    assert created["enabled"] is True and created["priority"] == 0
    assert created["fingerprint"] == fingerprint_of({"api_key": "SG.very-secret-key"}, settings)
    assert "credentials" not in created and "secret" not in created

    path = f"/v1/providers/{created['id']}"
    fetched = (await client.get(path, headers=owner.headers)).json()
    listed = (await client.get("/v1/providers", headers=owner.headers)).json()
    assert fetched == created
    assert listed["object"] == "list" and [p["id"] for p in listed["data"]] == [created["id"]]
    for answer in (created, fetched, listed):
        assert "SG.very-secret-key" not in json.dumps(answer)

    renamed = await client.put(path, headers=owner.headers, json={"name": "SG", "priority": 5})
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["priority"]) == ("SG", 5)
    assert renamed.json()["fingerprint"] == created["fingerprint"]  # credentials kept

    deleted = await client.delete(path, headers=owner.headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created["id"], "object": "provider", "deleted": True}
    assert_problem(await client.get(path, headers=owner.headers), 404, "not_found")
    assert_problem(await client.delete(path, headers=owner.headers), 404, "not_found")

    audit = (
        await session.execute(
            select(AuditEntry.action, AuditEntry.details)
            .where(AuditEntry.tenant_id == owner.tenant_id)
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert [action for action, _ in audit] == [
        "tenant.created",
        "api_key.created",
        "provider.created",
        "provider.updated",
        "provider.deleted",
    ]
    assert audit[3][1]["changed"] == ["name", "priority"]
    assert "SG.very-secret-key" not in json.dumps([details for _, details in audit])


async def test_a_fingerprint_cannot_confirm_a_guessed_secret(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    # The fingerprint was the SHA-256 of the credentials: anyone who saw it (the dashboard,
    # the audit log, a support ticket) could try guesses offline until one matched.
    owner = await make_tenant(session, "Guessed")
    created = await create(client, owner, credentials={"api_key": "SG.password1"})
    guess = json.dumps({"api_key": "SG.password1"}, sort_keys=True, separators=(",", ":"))
    assert created["fingerprint"] != hashlib.sha256(guess.encode()).hexdigest()[:16]
    # It is keyed: the same credentials under another server key fingerprint differently,
    # and under the same key alike (a tenant can still tell which key is in use).
    other = Keyring([("other", os.urandom(32))])
    assert created["fingerprint"] != service.fingerprint({"api_key": "SG.password1"}, other)
    again = await create(client, owner, name="again", credentials={"api_key": "SG.password1"})
    assert again["fingerprint"] == created["fingerprint"]
    assert re.fullmatch("[0-9a-f]{16}", created["fingerprint"])


async def test_the_database_holds_only_ciphertext(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    owner = await make_tenant(session, "Sealed")
    created = await create(client, owner)
    row = await session.scalar(
        select(ProviderConfig).where(ProviderConfig.id == uuid.UUID(created["id"]))
    )
    assert row is not None
    assert b"SG.very-secret-key" not in row.credentials_ciphertext
    assert b"api_key" not in row.credentials_ciphertext
    assert row.key_id == keyring_for(settings).current_key_id
    assert service.open_credentials(row, keyring_for(settings)) == {"api_key": "SG.very-secret-key"}


async def test_replacing_credentials_reseals_them(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    owner = await make_tenant(session, "Rotating")
    created = await create(client, owner)
    path = f"/v1/providers/{created['id']}"
    before = await session.scalar(
        select(ProviderConfig.credentials_ciphertext).where(
            ProviderConfig.id == uuid.UUID(created["id"])
        )
    )

    changed = await client.put(
        path, headers=owner.headers, json={"credentials": {"api_key": "SG.new"}}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["fingerprint"] == fingerprint_of({"api_key": "SG.new"}, settings)
    session.expire_all()
    row = await session.scalar(
        select(ProviderConfig).where(ProviderConfig.id == uuid.UUID(created["id"]))
    )
    assert row is not None and row.credentials_ciphertext != before
    assert service.open_credentials(row, keyring_for(settings)) == {"api_key": "SG.new"}

    options_only = await client.put(
        path, headers=owner.headers, json={"options": {"from_email": "news@acme.test"}}
    )
    assert options_only.json()["options"]["from_email"] == "news@acme.test"
    assert options_only.json()["fingerprint"] == fingerprint_of({"api_key": "SG.new"}, settings)


async def test_a_generated_webhook_secret_is_shown_once(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    owner = await make_tenant(session, "Hooks")
    body = {"channel": "webhook", "provider": "webhook", "name": "hooks"}
    created = await create(client, owner, **body, credentials={}, options={})
    secret = created["secret"]
    assert secret.startswith("whsec_")
    fetched = (await client.get(f"/v1/providers/{created['id']}", headers=owner.headers)).json()
    assert "secret" not in fetched
    assert (
        created["fingerprint"]
        == fetched["fingerprint"]
        == fingerprint_of({"secret": secret}, settings)
    )

    given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    own = await create(client, owner, **body, credentials={"secret": given}, options={})
    assert "secret" not in own  # the tenant knows its own secret: nothing to show


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"credentials": {}}, "credentials.api_key"),
        ({"credentials": {"api_key": 5}}, "credentials.api_key"),
        ({"credentials": {"api_key": "k", "extra": 1}}, "credentials.extra"),
        ({"options": {}}, "options.from_email"),
        ({"options": {"from_email": "not an address"}}, "options.from_email"),
        ({"provider": "mailgun"}, "options.domain"),
        (
            {
                "provider": "mailgun",
                "options": {"from_email": "a@b.test", "domain": "mg.b.test", "region": "ap"},
            },
            "options.region",
        ),
        ({"provider": "smtp", "credentials": {}}, "options.host"),
        (
            {
                "provider": "smtp",
                "credentials": {},
                "options": {"from_email": "a@b.test", "host": "smtp.b.test", "port": 0},
            },
            "options.port",
        ),
        (
            {
                "channel": "sms",
                "provider": "twilio",
                "credentials": {"account_sid": "AC" + "1" * 32},
            },
            "credentials.auth_token",
        ),
        (
            {
                "channel": "sms",
                "provider": "twilio",
                "credentials": {"account_sid": "nope", "auth_token": "t"},
            },
            "credentials.account_sid",
        ),
        (
            {
                "channel": "sms",
                "provider": "twilio",
                "credentials": {"account_sid": "AC" + "1" * 32, "auth_token": "t"},
                "options": {},
            },
            "options.from_number",
        ),
        (
            {
                "channel": "push",
                "provider": "fcm",
                "credentials": {
                    "service_account": {"client_email": "a@b.test", "private_key": RSA_PEM}
                },
                "options": {},
            },
            "credentials.service_account.project_id",
        ),
        (
            {
                "channel": "push",
                "provider": "fcm",
                "credentials": {
                    "service_account": {
                        "project_id": "p",
                        "client_email": "a@b.test",
                        "private_key": "junk",
                    }
                },
                "options": {},
            },
            "credentials.service_account.private_key",
        ),
        (
            {
                "channel": "push",
                "provider": "fcm",
                "credentials": {
                    "service_account": {
                        "project_id": "p",
                        "client_email": "a@b.test",
                        "private_key": EC_PEM,
                    }
                },
                "options": {},
            },
            "credentials.service_account.private_key",
        ),
        (
            {
                "channel": "push",
                "provider": "apns",
                "credentials": {"team_id": "T", "key_id": "K" * 10, "private_key": EC_PEM},
                "options": {"topic": "com.a"},
            },
            "credentials.team_id",
        ),
        (
            {
                "channel": "push",
                "provider": "apns",
                "credentials": {"team_id": "T" * 10, "key_id": "K" * 10, "private_key": RSA_PEM},
                "options": {"topic": "com.a"},
            },
            "credentials.private_key",
        ),
        (
            {
                "channel": "push",
                "provider": "apns",
                "credentials": {"team_id": "T" * 10, "key_id": "K" * 10, "private_key": EC_PEM},
                "options": {},
            },
            "options.topic",
        ),
        (
            {
                "channel": "webhook",
                "provider": "webhook",
                "credentials": {"secret": "plain"},
                "options": {},
            },
            "credentials.secret",
        ),
        (
            {
                "channel": "webhook",
                "provider": "webhook",
                "credentials": {"secret": "whsec_c2hvcnQ="},
                "options": {},
            },
            "credentials.secret",
        ),
        ({"provider": "ses", "credentials": SES_KEYS}, "options.region"),
        (_ses(region="moon-1"), "options.region"),
        (_ses(region="us-east-1\n"), "options.region"),
        (
            _ses({"access_key_id": "akia-lower", "secret_access_key": "s"}),
            "credentials.access_key_id",
        ),
        (_ses({"access_key_id": "AKIAIOSFODNN7EXAMPLE"}), "credentials.secret_access_key"),
        (_ses({**SES_KEYS, "session_token": "t"}), "credentials.session_token"),
        (_ses(configuration_set="not a name!"), "options.configuration_set"),
        (
            _ses(sns_topic_arns=["arn:aws:sqs:eu-west-1:123456789012:q"]),
            "options.sns_topic_arns[0]",
        ),
        (_ses(sns_topic_arns=[SES_TOPIC, "https://evil.test"]), "options.sns_topic_arns[1]"),
        (_ses(sns_topic_arns=[SES_TOPIC] * 11), "options.sns_topic_arns"),
        (_ses(sns_topic_arns=SES_TOPIC), "options.sns_topic_arns"),
        ({"provider": "postmark", "credentials": {}}, "credentials.server_token"),
        (_postmark({"server_token": "pm\r\nX-Evil: 1"}), "credentials.server_token"),
        (_postmark({"webhook_username": "hooks"}), "credentials.webhook_password"),
        (_postmark({"webhook_password": "pw"}), "credentials.webhook_username"),
        (
            _postmark({"webhook_username": "a:b", "webhook_password": "pw"}),
            "credentials.webhook_username",
        ),
        (_postmark(message_stream="no spaces"), "options.message_stream"),
        (_postmark(message_stream="outbound\n"), "options.message_stream"),
        (_postmark({"server_token": "pm-token\n"}), "credentials.server_token"),
        (_ses(from_name="Acme\n"), "options.from_name"),
        (_ses(sns_topic_arns=[SES_TOPIC, SES_TOPIC + "\n"]), "options.sns_topic_arns[1]"),
        ({**_postmark(), "channel": "sms"}, "channel"),
        ({"channel": "sms"}, "channel"),
        ({"provider": "pigeon"}, "provider"),
        ({"channel": "fax"}, "channel"),
        ({"name": ""}, "name"),
        ({"rate_per_second": 0}, "rate_per_second"),
        ({"rate_per_second": 1e-9}, "rate_per_second"),  # the Redis bucket cannot hold it
        ({"burst": 0}, "burst"),
        ({"priority": -1}, "priority"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_invalid_input_names_the_field(
    client: httpx.AsyncClient, tenant: TenantKey, overrides: dict[str, Any], field: str
) -> None:
    response = await client.post(
        "/v1/providers", headers=tenant.headers, json={**SENDGRID, **overrides}
    )
    problem = assert_problem(response, 422, "validation_error")
    fields = [error["field"] for error in problem["errors"]]  # type: ignore[union-attr]
    assert field in fields or any(field in str(e) for e in problem["errors"]), problem  # type: ignore[union-attr]
    assert "SG.very-secret-key" not in response.text


async def test_every_provider_can_be_configured(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    valid = [
        (
            "email",
            "smtp",
            {"username": "u", "password": "p"},
            {"from_email": "a@b.test", "host": "smtp.b.test", "port": 587},
        ),
        (
            "email",
            "mailgun",
            {"api_key": "key"},
            {"from_email": "a@b.test", "domain": "mg.b.test", "region": "eu"},
        ),
        (
            "sms",
            "twilio",
            {"account_sid": "AC" + "1" * 32, "auth_token": "t"},
            {"from_number": "+15005550006"},
        ),
        (
            "push",
            "fcm",
            {
                "service_account": json.dumps(
                    {
                        "project_id": "proj-1",
                        "client_email": "a@b.test",
                        "private_key": RSA_PEM,
                        "client_id": "1",
                    }
                )
            },
            {},
        ),
        (
            "push",
            "apns",
            {"team_id": "T" * 10, "key_id": "K" * 10, "private_key": EC_PEM},
            {"topic": "com.acme.app", "environment": "sandbox"},
        ),
        (
            "email",
            "ses",
            SES_KEYS,
            {"from_email": "a@b.test", "region": "us-gov-west-1", "sns_topic_arns": [SES_TOPIC]},
        ),
        (
            "email",
            "postmark",
            {"server_token": "pm-token", "webhook_username": "u", "webhook_password": "p"},
            {"from_email": "a@b.test", "message_stream": "broadcast"},
        ),
        ("sms", "sandbox", {}, {}),
    ]
    for channel, provider, credentials, options in valid:
        body = {
            "channel": channel,
            "provider": provider,
            "name": provider,
            "credentials": credentials,
            "options": options,
        }
        response = await client.post("/v1/providers", headers=tenant.headers, json=body)
        assert response.status_code == 201, (provider, response.text)
        assert "private_key" not in response.text and RSA_PEM[40:80] not in response.text


async def test_ses_and_postmark_defaults_and_secrecy(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    ses = await create(client, tenant, name="SES", **_ses(configuration_set="herald-events"))
    assert ses["options"] == {
        "from_email": "a@b.test",
        "from_name": None,
        "reply_to": None,
        "region": "eu-west-1",
        "configuration_set": "herald-events",
        "sns_topic_arns": [],
    }
    assert (ses["rate_per_second"], ses["burst"]) == (14.0, 14)
    postmark = await create(
        client,
        tenant,
        name="Postmark",
        **_postmark({"webhook_username": "hooks", "webhook_password": "pw-secret"}),
    )
    assert postmark["options"]["message_stream"] == "outbound"
    assert (postmark["rate_per_second"], postmark["burst"]) == (50.0, 50)
    listed = await client.get("/v1/providers", headers=tenant.headers)
    for secret in ("wJalrXUtnFEMI", "pm-token", "pw-secret"):
        assert secret not in listed.text

    # A PUT is checked against the stored half it leaves out: the pair stays whole.
    path = f"/v1/providers/{postmark['id']}"
    half = {"credentials": {"server_token": "t", "webhook_username": "x"}}
    problem = assert_problem(
        await client.put(path, headers=tenant.headers, json=half), 422, "validation_error"
    )
    assert "credentials.webhook_password" in json.dumps(problem["errors"]), problem
    region = {"options": {"from_email": "a@b.test", "region": "eu"}}
    problem = assert_problem(
        await client.put(f"/v1/providers/{ses['id']}", headers=tenant.headers, json=region),
        422,
        "validation_error",
    )
    assert "options.region" in json.dumps(problem["errors"]), problem


async def test_updates_are_validated_and_cannot_move_channel_or_provider(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    created = await create(client, tenant)
    path = f"/v1/providers/{created['id']}"
    for body, field in (
        ({"credentials": {}}, "credentials.api_key"),
        ({"options": {"from_email": "nope"}}, "options.from_email"),
        ({"provider": "mailgun"}, "provider"),
        ({"channel": "sms"}, "channel"),
        ({"burst": 0}, "burst"),
    ):
        problem = assert_problem(
            await client.put(path, headers=tenant.headers, json=body), 422, "validation_error"
        )
        assert field in json.dumps(problem["errors"]), problem
    unchanged = (await client.get(path, headers=tenant.headers)).json()
    assert unchanged == created


async def test_tenants_cannot_see_or_touch_each_others_configs(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    theirs = await create(client, other_tenant, name="Globex SendGrid")
    listed = (await client.get("/v1/providers", headers=tenant.headers)).json()
    assert theirs["id"] not in {item["id"] for item in listed["data"]}
    path = f"/v1/providers/{theirs['id']}"
    assert_problem(await client.get(path, headers=tenant.headers), 404, "not_found")
    assert_problem(
        await client.put(path, headers=tenant.headers, json={"name": "mine"}), 404, "not_found"
    )
    assert_problem(await client.delete(path, headers=tenant.headers), 404, "not_found")
    still = (await client.get(path, headers=other_tenant.headers)).json()
    assert still["name"] == "Globex SendGrid"


async def test_test_keys_can_neither_read_nor_change_configs(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    """Provider configs are live objects: a leaked test key learns nothing of them."""
    sandbox = await make_tenant(session, "Test mode", mode="test")
    config = await create(client, await live_key(session, sandbox))
    path = f"/v1/providers/{config['id']}"
    for method, url, body in (
        ("GET", "/v1/providers", None),
        ("POST", "/v1/providers", SENDGRID),
        ("GET", path, None),
        ("PUT", path, {"name": "mine now"}),
        ("DELETE", path, None),
        ("POST", f"{path}/breaker/reset", None),
    ):
        answer = await client.request(method, url, headers=sandbox.headers, json=body)
        assert_problem(answer, 403, "live_mode_required")
    kept = await client.get(path, headers=(await live_key(session, sandbox)).headers)
    assert kept.status_code == 200 and kept.json()["name"] == config["name"]
    limited = await make_tenant(session, "No manage", scopes=["send", "read"])
    assert_problem(
        await client.get("/v1/providers", headers=limited.headers), 403, "insufficient_scope"
    )


async def test_list_pages_and_filters_by_channel(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await make_tenant(session, "Many providers")
    for n in range(3):
        await create(client, owner, name=f"sg{n}")
    sms = await create(
        client, owner, channel="sms", provider="sandbox", name="sms", credentials={}, options={}
    )
    only_sms = (
        await client.get("/v1/providers", headers=owner.headers, params={"channel": "sms"})
    ).json()
    assert [item["id"] for item in only_sms["data"]] == [sms["id"]]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/providers", headers=owner.headers, params=params)).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 4


async def test_routes_follow_mode_priority_and_enabled(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    owner = await make_tenant(session, "Routing")
    backup = await create(client, owner, name="backup", priority=20)
    primary = await create(
        client, owner, name="primary", priority=10, credentials={"api_key": "SG.primary"}
    )
    await create(client, owner, name="off", priority=1, enabled=False)
    await create(
        client, owner, channel="sms", provider="sandbox", name="sms", credentials={}, options={}
    )
    other = await make_tenant(session, "Not routing")
    await create(client, other, name="theirs", priority=0)

    ring = keyring_for(settings)
    routes = await service.routes_for(
        session, tenant_id=owner.tenant_id, channel="email", mode="live", keyring=ring
    )
    assert [str(route.config_id) for route in routes] == [primary["id"], backup["id"]]
    assert routes[0].credentials == {"api_key": "SG.primary"}
    assert routes[0].options["from_email"] == "hello@acme.test"
    assert (routes[0].provider, routes[0].channel, routes[0].rate_per_second, routes[0].burst) == (
        "sendgrid",
        "email",
        100.0,
        200,
    )
    assert "SG.primary" not in repr(routes[0])

    for channel in ("email", "sms", "push", "webhook"):
        [sandbox] = await service.routes_for(
            session, tenant_id=owner.tenant_id, channel=channel, mode="test"
        )
        assert (sandbox.provider, sandbox.channel, sandbox.config_id) == ("sandbox", channel, None)
    # The inbox is Herald's own store: its built-in route, whatever the mode.
    for mode in ("live", "test"):
        [inbox] = await service.routes_for(
            session, tenant_id=owner.tenant_id, channel="inbox", mode=mode
        )
        assert inbox == service.INBOX_ROUTE
        assert (inbox.provider, inbox.channel, inbox.config_id) == ("inbox", "inbox", None)
    assert (
        await service.routes_for(
            session, tenant_id=owner.tenant_id, channel="push", mode="live", keyring=ring
        )
        == []
    )
    with pytest.raises(ValueError):
        await service.routes_for(session, tenant_id=owner.tenant_id, channel="email", mode="prod")


async def test_a_ciphertext_copied_to_another_row_does_not_open(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    victim = await make_tenant(session, "Victim")
    attacker = await make_tenant(session, "Attacker")
    theirs = await create(client, victim, credentials={"api_key": "SG.victim"})
    mine = await create(client, attacker, credentials={"api_key": "SG.attacker"})
    stolen = await session.scalar(
        select(ProviderConfig.credentials_ciphertext).where(
            ProviderConfig.id == uuid.UUID(theirs["id"])
        )
    )
    await session.execute(
        update(ProviderConfig)
        .where(ProviderConfig.id == uuid.UUID(mine["id"]))
        .values(credentials_ciphertext=stolen)
    )
    await session.commit()

    routes = await service.routes_for(
        session,
        tenant_id=attacker.tenant_id,
        channel="email",
        mode="live",
        keyring=keyring_for(settings),
    )
    assert routes == []  # left out (and logged), never decrypted into the wrong tenant
    # Changing only the options needs the stored credentials: the API asks for them again.
    response = await client.put(
        f"/v1/providers/{mine['id']}",
        headers=attacker.headers,
        json={"options": {"from_email": "x@y.test"}},
    )
    assert assert_problem(response, 422, "validation_error")["errors"] == [
        {
            "field": "credentials",
            "message": "the stored credentials cannot be decrypted: send them again",
        }
    ]


async def test_key_rotation_keeps_old_rows_readable_and_reseals_on_update(
    session: AsyncSession,
) -> None:
    owner = await make_tenant(session, "Rotation")
    old_key, new_key = os.urandom(32), os.urandom(32)
    old = Keyring([("2025", old_key)])
    saved = await service.create_config(
        session,
        tenant_id=owner.tenant_id,
        data=service.ConfigInput(
            channel="email",
            provider="sendgrid",
            name="sg",
            credentials={"api_key": "SG.k"},
            options={"from_email": "a@b.test"},
        ),
        actor="test",
        keyring=old,
    )
    await session.commit()
    assert saved.config.key_id == "2025"

    rotated = Keyring([("2026", new_key), ("2025", old_key)])
    [route] = await service.routes_for(
        session, tenant_id=owner.tenant_id, channel="email", mode="live", keyring=rotated
    )
    assert route.credentials == {"api_key": "SG.k"}

    updated = await service.update_config(
        session,
        tenant_id=owner.tenant_id,
        config_id=saved.config.id,
        changes=service.ConfigChanges(options={"from_email": "b@b.test"}),
        actor="test",
        keyring=rotated,
    )
    await session.commit()
    assert updated is not None and updated.config.key_id == "2026"
    retired = Keyring([("2026", new_key)])
    [route] = await service.routes_for(
        session, tenant_id=owner.tenant_id, channel="email", mode="live", keyring=retired
    )
    assert route.credentials == {"api_key": "SG.k"}
