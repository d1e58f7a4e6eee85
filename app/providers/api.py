"""/v1/providers: a tenant's provider accounts per channel (scope `manage`).

Credentials are accepted, validated per provider, sealed, and never returned: answers show a
`fingerprint` instead. Provider configs are live objects (test mode always delivers to the
sandbox), so a test key can neither read nor change them: test keys are the ones that end
up in CI logs, and whoever holds one must not be able to learn or redirect where a tenant's
live mail goes (say, to an SMTP server of their own).

Reads show each config's circuit breaker, read from Redis in one round trip per answer; a
Redis that does not answer costs the `breaker` object (null), never the answer itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import structlog
from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from redis.exceptions import RedisError

from app import crypto
from app.apidoc import problem_responses
from app.auth.keys import Principal
from app.auth.middleware import live_mode_required, requires_scope
from app.channels import Channel
from app.crypto import Keyring
from app.dependencies import DbSession, OutboxDependency
from app.pagination import MAX_LIMIT
from app.problems import Problem, field_error
from app.providers import service
from app.providers.breaker import REDIS_TIMEOUT, BreakerState, CircuitBreakers, route_key_for
from app.providers.credentials import InvalidProviderConfig
from app.providers.models import ProviderConfig
from app.providers.schemas import (
    ProviderCreate,
    ProviderDeleted,
    ProviderList,
    ProviderOut,
    ProviderSaved,
    ProviderUpdate,
)

ApiRequest = Request[Principal, None, Any]

log = structlog.get_logger(__name__)


def _not_found(provider_id: uuid.UUID) -> Problem:
    return Problem(404, "not_found", f"No provider config {provider_id} in this tenant.")


def _keyring(request: ApiRequest) -> Keyring:
    return crypto.keyring_for(request.app.state.settings)


def _breakers(request: ApiRequest) -> CircuitBreakers:
    breakers: CircuitBreakers = request.app.state.breakers
    return breakers


async def _breaker_states(
    request: ApiRequest, configs: Sequence[ProviderConfig]
) -> dict[str, BreakerState]:
    """The configs' breakers by route key; empty when Redis does not answer in time."""
    keys = [route_key_for(config.id, config.channel) for config in configs]
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            return await _breakers(request).states(request.user.tenant_id, keys)
    except (RedisError, OSError, TimeoutError) as error:
        log.warning("breaker states unavailable", error=f"{type(error).__name__}: {error}")
        return {}


async def _with_breakers(
    request: ApiRequest, configs: Sequence[ProviderConfig]
) -> list[ProviderOut]:
    states = await _breaker_states(request, configs)
    return [
        ProviderOut.of(
            config,
            states.get(route_key_for(config.id, config.channel)),
            request.app.state.settings.public_url,
        )
        for config in configs
    ]


async def _saved(request: ApiRequest, saved: service.SavedConfig) -> ProviderSaved:
    config = saved.config
    states = await _breaker_states(request, [config])
    breaker = states.get(route_key_for(config.id, config.channel))
    return ProviderSaved.with_secret(
        config, saved.generated_secret, breaker, request.app.state.settings.public_url
    )


class ProviderController(Controller):
    path = "/providers"
    tags = ["Providers"]
    guards = [live_mode_required, requires_scope("manage")]

    @post("/", summary="Add a provider config; a generated webhook secret is in this answer only")
    async def create_provider(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[ProviderCreate]
    ) -> ProviderSaved:
        config_input = service.ConfigInput(
            channel=data.channel,
            provider=data.provider,
            name=data.name,
            priority=data.priority,
            rate_per_second=data.rate_per_second,
            burst=data.burst,
            credentials=data.credentials,
            options=data.options,
            enabled=data.enabled,
        )
        try:
            saved = await service.create_config(
                db_session,
                tenant_id=request.user.tenant_id,
                data=config_input,
                actor=request.user.actor,
                keyring=_keyring(request),
            )
        except InvalidProviderConfig as invalid:
            raise field_error(invalid.field, invalid.message) from None
        await db_session.commit()
        return await _saved(request, saved)

    @get("/", summary="List provider configs, newest first")
    async def list_providers(
        self,
        request: ApiRequest,
        db_session: DbSession,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
        channel: FromQuery[Channel | None] = None,
    ) -> ProviderList:
        page = await service.list_configs(
            db_session,
            tenant_id=request.user.tenant_id,
            limit=limit,
            cursor=cursor,
            channel=channel,
        )
        return ProviderList(
            object="list",
            data=await _with_breakers(request, page.items),
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @get("/{provider_id:uuid}", summary="Read one provider config (without credentials)")
    async def get_provider(
        self, request: ApiRequest, db_session: DbSession, provider_id: FromPath[uuid.UUID]
    ) -> ProviderOut:
        config = await service.get_config(
            db_session, tenant_id=request.user.tenant_id, config_id=provider_id
        )
        if config is None:
            raise _not_found(provider_id)
        return (await _with_breakers(request, [config]))[0]

    @put("/{provider_id:uuid}", summary="Change a provider config; absent fields are kept")
    async def update_provider(
        self,
        request: ApiRequest,
        db_session: DbSession,
        provider_id: FromPath[uuid.UUID],
        data: JSONBody[ProviderUpdate],
    ) -> ProviderSaved:
        changes = service.ConfigChanges(
            name=data.name,
            priority=data.priority,
            rate_per_second=data.rate_per_second,
            burst=data.burst,
            credentials=data.credentials,
            options=data.options,
            enabled=data.enabled,
        )
        try:
            saved = await service.update_config(
                db_session,
                tenant_id=request.user.tenant_id,
                config_id=provider_id,
                changes=changes,
                actor=request.user.actor,
                keyring=_keyring(request),
            )
        except InvalidProviderConfig as invalid:
            raise field_error(invalid.field, invalid.message) from None
        if saved is None:
            raise _not_found(provider_id)
        await db_session.commit()
        return await _saved(request, saved)

    @delete("/{provider_id:uuid}", status_code=200, summary="Delete a provider config")
    async def delete_provider(
        self, request: ApiRequest, db_session: DbSession, provider_id: FromPath[uuid.UUID]
    ) -> ProviderDeleted:
        deleted = await service.delete_config(
            db_session,
            tenant_id=request.user.tenant_id,
            config_id=provider_id,
            actor=request.user.actor,
        )
        if not deleted:
            raise _not_found(provider_id)
        await db_session.commit()
        return ProviderDeleted(id=provider_id, object="provider", deleted=True)

    @post(
        "/{provider_id:uuid}/breaker/reset",
        status_code=200,
        summary="Close the config's circuit breaker by hand; answers the config",
        responses=problem_responses({503: "Redis did not answer: the breaker was not reset."}),
    )
    async def reset_breaker(
        self,
        request: ApiRequest,
        db_session: DbSession,
        outbox: OutboxDependency,
        provider_id: FromPath[uuid.UUID],
    ) -> ProviderOut:
        try:
            reset = await service.reset_breaker(
                db_session,
                tenant_id=request.user.tenant_id,
                config_id=provider_id,
                actor=request.user.actor,
                breakers=_breakers(request),
            )
        except (RedisError, TimeoutError):
            raise Problem(
                503,
                "service_unavailable",
                "Redis did not answer: the breaker was not reset. Try again.",
            ) from None
        if reset is None:
            raise _not_found(provider_id)
        await db_session.commit()
        await outbox.enqueue_after_commit(reset.jobs)  # what waited for the breaker goes now
        return (await _with_breakers(request, [reset.config]))[0]
