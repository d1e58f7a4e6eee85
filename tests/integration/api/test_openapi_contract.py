"""The OpenAPI document is as strict as the API: a client built from it is not refused.

- Every request body of the routes below has examples; each is valid by the document and
  accepted (2xx) by the running app on real PostgreSQL and Redis.
- Bodies generated from the document (hypothesis-jsonschema) are accepted too. JSON Schema
  cannot say a few rules (a phone number's numbering plan, an existing time zone, Jinja that
  compiles, objects that must exist, real private keys): the document says them in words,
  and `FIX_UPS` below makes generated bodies keep each of them, one named rule at a time.
"""

from __future__ import annotations

import copy
import json
import uuid
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audiences.filters import COLUMNS as FILTER_COLUMNS
from app.openapi import openapi_document
from app.providers.credentials import SPECS, InvalidProviderConfig, normalize
from app.tenants.models import Tenant
from tests.support import TenantKey, make_tenant

# The routes whose bodies a generated client got refused before the document was tightened.
ROUTES = [
    ("put", "/v1/tenant/kill-switches/{channel}"),
    ("put", "/v1/tenant/retry-policy"),
    ("put", "/v1/tenant/default-locale"),
    ("put", "/v1/templates/{key}"),
    ("put", "/v1/recipients/{external_id}"),
    ("post", "/v1/recipients/batch"),
    ("put", "/v1/recipients/{external_id}/preferences"),
    ("put", "/v1/topics/{key}"),
    ("post", "/v1/notifications"),
    ("post", "/v1/providers"),
    ("put", "/v1/providers/{provider_id}"),
    ("post", "/v1/suppressions"),
]
GENERATED_PER_ROUTE = 25
FUZZ_TEMPLATE = "fuzz"  # has content for every channel, so any `channels` list fits it


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(openapi_document())
    return value


def body_schema(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The route's body schema, standing alone: its components ride along for its refs."""
    content = document["paths"][path][method]["requestBody"]["content"]
    return {**content["application/json"]["schema"], "components": document["components"]}


def resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if not ref:
        return schema
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


async def rich_tenant(session: AsyncSession, name: str) -> TenantKey:
    """A live tenant whose plan's API rate lets a test make hundreds of calls at once."""
    tenant = await make_tenant(session, name)
    await session.execute(
        update(Tenant).where(Tenant.id == tenant.tenant_id).values(plan="enterprise")
    )
    await session.commit()
    return tenant


def test_every_body_of_these_routes_has_valid_examples(document: dict[str, Any]) -> None:
    for method, path in ROUTES:
        schema = body_schema(document, method, path)
        examples = resolved(document, schema).get("examples")
        assert examples, f"{method.upper()} {path}: its body schema has no examples"
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        for example in examples:
            errors = [error.message for error in validator.iter_errors(example)]
            assert not errors, f"{method.upper()} {path}: {example} is invalid: {errors}"


def test_every_v1_operation_declares_its_problems(document: dict[str, Any]) -> None:
    problem = {"$ref": "#/components/schemas/ProblemDetails"}
    for path, item in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            wanted = {"401", "403", "422", "429"}
            wanted |= {"400", "413"} if "requestBody" in operation else set()
            wanted |= {"404"} if "{" in path else set()
            responses = operation["responses"]
            assert wanted <= set(responses), f"{method.upper()} {path}: {sorted(responses)}"
            for status in wanted:
                content = responses[status]["content"]
                assert content == {"application/problem+json": {"schema": problem}}, status
            for status, response in responses.items():  # no error of another shape either
                if status >= "400":
                    assert set(response["content"]) == {"application/problem+json"}, status
    key_creation = document["paths"]["/v1/api-keys"]["post"]["responses"]
    assert "409" in key_creation


def test_path_parameters_say_what_the_service_accepts(document: dict[str, Any]) -> None:
    def schema(path: str, method: str) -> dict[str, Any]:
        [parameter] = [
            p for p in document["paths"][path][method]["parameters"] if p["in"] == "path"
        ]
        found: dict[str, Any] = parameter["schema"]
        return found

    assert schema("/v1/tenant/kill-switches/{channel}", "put")["enum"] == [
        "email",
        "sms",
        "push",
        "webhook",
        "inbox",
    ]
    assert "pattern" in schema("/v1/templates/{key}", "put")
    assert "pattern" in schema("/v1/recipients/{external_id}", "put")
    assert schema("/v1/topics/{key}", "put")["maxLength"] == 100


async def _send(
    client: httpx.AsyncClient, tenant: TenantKey, method: str, path: str, body: Any
) -> httpx.Response:
    return await client.request(method.upper(), path, json=body, headers=tenant.headers)


async def test_the_examples_are_accepted(
    client: httpx.AsyncClient, session: AsyncSession, document: dict[str, Any]
) -> None:
    """In the order a new user would go: settings, templates, recipients, sends, providers,
    suppressions; the examples name the objects the earlier ones create."""
    tenant = await rich_tenant(session, "Examples")
    provider_id = ""
    template_keys = iter(["welcome", "order-shipped"])
    for method, path in ROUTES:
        examples = resolved(document, body_schema(document, method, path))["examples"]
        for example in examples:
            concrete = (
                path.replace("{channel}", "email")
                .replace("{external_id}", "user-1")
                .replace("{provider_id}", provider_id)
            )
            if "{key}" in path:
                concrete = concrete.replace("{key}", next(template_keys, "another"))
            response = await _send(client, tenant, method, concrete, example)
            assert response.status_code < 300, f"{method.upper()} {concrete} {example}: " + (
                response.text
            )
            if path == "/v1/providers":
                provider_id = response.json()["id"]


# --- Generated bodies -------------------------------------------------------------------------

VALID_PHONE = "+14155550123"


def _recipient(item: dict[str, Any]) -> None:
    """Numbering plans and the tz database are data, not patterns."""
    if isinstance(item.get("phone"), str):
        item["phone"] = VALID_PHONE
    if (
        isinstance(item.get("timezone"), str)
        and item["timezone"] not in zoneinfo.available_timezones()
    ):
        item["timezone"] = "Europe/Paris"


def _no_jinja(value: Any) -> Any:
    """Sources must compile as Jinja: generated text loses the braces that open a tag."""
    if isinstance(value, str):
        return value.replace("{", "")
    if isinstance(value, dict):
        return {key: _no_jinja(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_no_jinja(member) for member in value]
    return value


def _template(body: dict[str, Any]) -> None:
    body["content"] = _no_jinja(body["content"])
    if not any(source is not None for source in body["content"].values()):
        body["content"]["sms"] = {"text": "Hi"}  # see _template_trims
    body["category"] = None  # categories must exist
    channels = {name for name, source in body["content"].items() if source is not None}
    seen = {body.get("default_locale", "en").replace("_", "-").lower()}
    locales = {}
    for tag, override in body.get("locales", {}).items():
        if tag.replace("_", "-").lower() in seen:  # one override per locale
            continue
        seen.add(tag.replace("_", "-").lower())
        # A locale overrides only the channels the template has.
        locales[tag] = {k: v for k, v in _no_jinja(override).items() if k in channels}
    body["locales"] = locales


def _notification(body: dict[str, Any]) -> None:
    body["template"] = FUZZ_TEMPLATE  # templates must exist
    if body.get("category") is not None:
        body["category"] = "transactional"  # categories must exist
    if body.get("priority") == "high":
        body["category"] = "security"  # high priority is for critical categories
    send_at = body.get("send_at")
    if send_at is not None:
        moment = datetime.fromisoformat(send_at.replace("Z", "+00:00"))
        if moment.tzinfo is None or moment > datetime.now(UTC) + timedelta(days=89):
            body["send_at"] = None  # at most 90 days ahead
    if isinstance(body["to"], dict):  # an audience: a topic must exist, and one kind is given
        given = body["to"].get("filter")
        if given is not None and given.get("field") in FILTER_COLUMNS:
            # A recipient's own column (not one of its data) is compared with strings.
            if "value" in given:
                given["value"] = str(given["value"])
            if "values" in given:
                given["values"] = [str(v) for v in given["values"]]
        body["to"] = {"filter": given} if given is not None else {"all": True}
        return
    body.pop("on_quota_exceeded", None)  # an audience's choice: a list is refused whole
    for item in body["to"]:
        if isinstance(item, dict):
            _recipient(item)


def _suppression(body: dict[str, Any]) -> None:
    if body["channel"] == "sms":
        body["address"] = VALID_PHONE


def _batch(body: dict[str, Any]) -> None:
    for item in body["recipients"]:
        _recipient(item)


def _keyless_provider(body: dict[str, Any]) -> bool:
    """FCM and APNs need real private keys, which a pattern cannot generate."""
    return body["provider"] not in ("fcm", "apns")


FIX_UPS: dict[str, Callable[[dict[str, Any]], None]] = {
    "/v1/templates/{key}": _template,
    "/v1/recipients/{external_id}": _recipient,
    "/v1/recipients/batch": _batch,
    "/v1/notifications": _notification,
    "/v1/suppressions": _suppression,
}
FILTERS: dict[str, Callable[[dict[str, Any]], bool]] = {"/v1/providers": _keyless_provider}


JSON_VALUE = "#/components/schemas/JsonValue"


def _substituted(value: Any, ref: str, replacement: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_substituted(item, ref, replacement) for item in value]
    if not isinstance(value, dict):
        return value
    if value == {"$ref": ref}:
        return replacement
    return {key: _substituted(member, ref, replacement) for key, member in value.items()}


def _json_value(document: dict[str, Any], depth: int) -> dict[str, Any]:
    """`JsonValue` unrolled `depth` levels (the generator cannot follow recursive refs): a
    part of what the document allows, which is all a generated body needs to be."""
    whole: dict[str, Any] = document["components"]["schemas"]["JsonValue"]
    if depth == 0:
        return {
            "anyOf": [kind for kind in whole["anyOf"] if kind["type"] not in ("array", "object")]
        }
    unrolled: dict[str, Any] = _substituted(whole, JSON_VALUE, _json_value(document, depth - 1))
    return unrolled


def _refs(value: Any) -> set[str]:
    if isinstance(value, list):
        return set().union(*(_refs(item) for item in value)) if value else set()
    if not isinstance(value, dict):
        return set()
    found = {value["$ref"].rsplit("/", 1)[1]} if "$ref" in value else set()
    return found.union(*(_refs(member) for member in value.values()))


def generation_schema(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The body schema with only the components it reaches, `JsonValue` unrolled."""
    every = document["components"]["schemas"]
    root = _substituted(body_schema(document, method, path), JSON_VALUE, _json_value(document, 1))
    del root["components"]
    reached: dict[str, Any] = {}
    waiting = _refs(root)
    while waiting:
        name = waiting.pop()
        reached[name] = _substituted(every[name], JSON_VALUE, _json_value(document, 1))
        waiting |= _refs(reached[name]) - set(reached)
    schema = {**root, "components": {"schemas": reached}}
    GENERATION_TRIMS.get(path, lambda schema: None)(schema)
    return schema


def _template_trims(schema: dict[str, Any]) -> None:
    """hypothesis-jsonschema takes minutes over `content`'s "at least one channel" rule mixed
    with five channel schemas, and over `locales`: they are left out of generation (the
    examples cover locales) and `_template` gives content without a channel an SMS text."""
    write = schema["components"]["schemas"]["TemplateWrite"]["properties"]
    del write["content"]["anyOf"]
    del write["locales"]


def _notification_trims(schema: dict[str, Any]) -> None:
    """An audience's filter nests (`and`, `or`, `not`), which the generator cannot follow:
    generated filters are single conditions (tests/integration/audiences cover the rest)."""
    components = schema["components"]["schemas"]
    flat = [{"$ref": f"#/components/schemas/{name}"} for name in ("Equals", "In", "Exists")]
    components["Audience"]["properties"]["filter"] = {"anyOf": [{"anyOf": flat}, {"type": "null"}]}
    for name in ("And", "Or", "Not"):
        components.pop(name, None)


GENERATION_TRIMS: dict[str, Callable[[dict[str, Any]], None]] = {
    "/v1/templates/{key}": _template_trims,
    "/v1/notifications": _notification_trims,
}


def _without_formats(schema: Any) -> Any:
    """Formats whose pattern says it all are left to the pattern (the generator's own e-mail
    and URI strategies do not know our patterns); date-time stays."""
    if isinstance(schema, list):
        return [_without_formats(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    trimmed = {k: _without_formats(v) for k, v in schema.items() if k != "discriminator"}
    if "pattern" in trimmed and trimmed.get("format") in ("email", "uri"):
        del trimmed["format"]
    return trimmed


def generated(schema: dict[str, Any], keep: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """Bodies drawn from `schema`, the same ones on every run (derandomised)."""
    bodies: list[Any] = []

    @settings(
        max_examples=GENERATED_PER_ROUTE,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(_without_formats(schema)).filter(keep))
    def draw(body: Any) -> None:
        bodies.append(body)

    draw()
    return bodies


def _provider_for_update(body: dict[str, Any]) -> str | None:
    """A provider whose configs this PUT body fits: `credentials` and `options` are those of
    the config's provider, and an absent half keeps the stored one (STORED_CONFIGS)."""
    for provider, stored in STORED_CONFIGS.items():
        credentials = body.get("credentials")
        options = body.get("options")
        try:
            normalize(
                provider,
                SPECS[provider].channels[0],
                stored.get("credentials", {}) if credentials is None else credentials,
                stored.get("options", {}) if options is None else options,
            )
        except InvalidProviderConfig:
            continue
        return provider
    return None


STORED_CONFIGS = {
    "smtp": {"options": {"host": "smtp.example.com", "port": 587, "from_email": "a@example.com"}},
    "sendgrid": {"credentials": {"api_key": "k"}, "options": {"from_email": "a@example.com"}},
    "mailgun": {
        "credentials": {"api_key": "k"},
        "options": {"from_email": "a@example.com", "domain": "mg.example.com"},
    },
    "ses": {
        "credentials": {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "s"},
        "options": {"from_email": "a@example.com", "region": "us-east-1"},
    },
    "postmark": {"credentials": {"server_token": "t"}, "options": {"from_email": "a@example.com"}},
    "twilio": {
        "credentials": {"account_sid": "AC" + "0" * 32, "auth_token": "t"},
        "options": {"from_number": VALID_PHONE},
    },
    "webhook": {},
    "sandbox": {},
}


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_generated_bodies_are_not_refused(
    client: httpx.AsyncClient,
    session: AsyncSession,
    document: dict[str, Any],
    method: str,
    path: str,
) -> None:
    tenant = await rich_tenant(session, f"Fuzz {uuid.uuid4().hex[:6]}")
    every_channel = resolved(document, body_schema(document, "put", "/v1/templates/{key}"))[
        "examples"
    ][0]
    fuzz_template = copy.deepcopy(every_channel)
    fuzz_template["content"] |= {
        "sms": {"text": "Hi"},
        "push": {"title": "Hi", "body": "Hi"},
        "webhook": {"body": {"event": "hi"}},
    }
    assert (
        await _send(client, tenant, "put", f"/v1/templates/{FUZZ_TEMPLATE}", fuzz_template)
    ).is_success
    configs: dict[str, str] = {}
    if path == "/v1/providers/{provider_id}":
        for provider, stored in STORED_CONFIGS.items():
            body = {"provider": provider, "channel": SPECS[provider].channels[0], "name": provider}
            response = await _send(client, tenant, "post", "/v1/providers", body | stored)
            assert response.is_success, response.text
            configs[provider] = response.json()["id"]

    schema = generation_schema(document, method, path)
    bodies = generated(schema, FILTERS.get(path, lambda body: True))
    assert bodies  # a few when the schema allows few (three kill-switch modes)
    refused = []
    for n, body in enumerate(bodies):
        FIX_UPS.get(path, lambda body: None)(body)
        concrete = (
            path.replace("{channel}", "sms")
            .replace("{key}", f"generated-{n}")
            .replace("{external_id}", f"generated-{n}")
        )
        if "{provider_id}" in path:
            provider = _provider_for_update(body)
            assert provider is not None, f"no provider takes {body}"
            concrete = concrete.replace("{provider_id}", configs[provider])
        if path.endswith("/preferences"):  # a recipient's, who must exist
            assert (
                await _send(client, tenant, "put", concrete[: -len("/preferences")], {})
            ).is_success
        response = await _send(client, tenant, method, concrete, body)
        if not response.is_success:
            refused.append(f"{method.upper()} {concrete} {json.dumps(body)[:600]}: {response.text}")
    assert not refused, "\n".join(refused[:5])


@pytest.mark.parametrize("path", sorted(FIX_UPS))
def test_each_fix_up_is_for_a_route_walked(path: str) -> None:
    assert path in {p for _, p in ROUTES}
