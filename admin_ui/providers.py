"""The providers page: the tenant's provider accounts per channel, and what to do with them.

- /providers: every config grouped by channel in the order delivery tries them (priority),
  with its rate, credentials' fingerprint and circuit breaker (closed, open, half-open, read
  from Redis; app/providers/breaker.py); reset a breaker, enable or disable a config, and
  "send a test" through one config to an address the member types (app/providers/probe.py).
- /providers/new?provider=…: add one; /providers/{id}: change one. Credentials are
  write-only: the form never shows them (only the fingerprint), and an empty credential
  input keeps the stored value.

Provider configs are the tenant's, in both data modes (test sends always go to the
sandbox: the page says so, and a test from it in test mode is answered by the sandbox).
Another tenant's config is a 404. Roles: manage_providers and send_test, checked here and
by the services.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, FromQuery
from redis.exceptions import RedisError

from admin_ui import provider_forms as forms
from admin_ui.pages import form_text, page, see_other
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from app import crypto
from app.auth import roles
from app.channels import CHANNELS
from app.dependencies import DbSession, OutboxDependency
from app.providers import probe, service
from app.providers.breaker import REDIS_TIMEOUT, BreakerState, CircuitBreakers, route_key_for
from app.providers.credentials import SPECS, InvalidProviderConfig
from app.providers.models import ProviderConfig

log = structlog.get_logger(__name__)

MAX_CONFIGS = 100  # shown on the page; a tenant has a handful per channel
MAX_ADDRESS = 2048
NOTICES = {
    "created": "Provider added.",
    "updated": "Provider saved.",
    "enabled": "Provider enabled: delivery uses it again.",
    "disabled": "Provider disabled: delivery skips it.",
    "reset": "Breaker closed: delivery tries this provider again now.",
}
BREAKER_LABELS = {"closed": "Closed", "open": "Open", "half_open": "Half-open"}


def _keyring(request: Request[Any, Any, Any]) -> crypto.Keyring:
    return crypto.keyring_for(request.app.state.settings)


def _not_found(config_id: uuid.UUID) -> NotFoundException:
    return NotFoundException(f"No provider config {config_id} in this tenant.")


async def _breaker_states(
    request: Request[Any, Any, Any], member: Member, configs: Sequence[ProviderConfig]
) -> dict[str, BreakerState] | None:
    """The configs' breakers by route key; None when Redis does not answer in time."""
    breakers: CircuitBreakers = request.app.state.breakers
    keys = [route_key_for(config.id, config.channel) for config in configs]
    if not keys:
        return {}
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            return await breakers.states(member.tenant.id, keys)
    except (RedisError, OSError, TimeoutError) as error:
        log.warning("breaker states unavailable", error=f"{type(error).__name__}: {error}")
        return None


async def _providers_page(
    request: Request[Any, Any, Any],
    db_session: DbSession,
    member: Member,
    *,
    notice: str = "",
    tested: dict[str, Any] | None = None,
    secret: str | None = None,
    status_code: int = 200,
) -> Response[Any]:
    listed = await service.list_configs(db_session, tenant_id=member.tenant.id, limit=MAX_CONFIGS)
    configs = sorted(listed.items, key=lambda c: (CHANNELS.index(c.channel), c.priority, c.id))
    states = await _breaker_states(request, member, configs)
    by_channel = {
        channel: [c for c in configs if c.channel == channel]
        for channel in CHANNELS
        if channel != "inbox"
    }
    return page(
        "providers/list.html",
        status_code=status_code,
        member=member,
        by_channel=by_channel,
        breakers={str(c.id): (states or {}).get(route_key_for(c.id, c.channel)) for c in configs},
        breakers_unavailable=states is None,
        breaker_labels=BREAKER_LABELS,
        has_more=listed.has_more,
        notice=NOTICES.get(notice, ""),
        tested=tested,
        secret=secret,
        labels=forms.PROVIDER_LABELS,
    )


def _form_page(
    member: Member,
    form: forms.ProviderForm,
    config: ProviderConfig | None = None,
    status_code: int = 200,
) -> Response[Any]:
    return page(
        "providers/form.html",
        status_code=status_code,
        member=member,
        form=form,
        config=config,
        labels=forms.PROVIDER_LABELS,
    )


def _field_errors(form: forms.ProviderForm, invalid: InvalidProviderConfig) -> None:
    """Put the service's refusal on its input, or on the form when none shows it."""
    known = {i.name for i in form.option_inputs + form.credential_inputs}
    known |= {"name", "channel", "priority", "rate_per_second", "burst"}
    name = invalid.field if invalid.field in known else ""
    form.errors[name] = invalid.message if name else f"{invalid.field}: {invalid.message}"


class ProvidersController(Controller):
    path = "/providers"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def list_providers(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        notice: FromQuery[str] = "",
    ) -> Response[Any]:
        return await _providers_page(request, db_session, member, notice=notice)

    @get("/new")
    async def new_provider(
        self,
        request: Request[Any, Any, Any],
        member: SignedInMember,
        provider: FromQuery[str] = "",
        channel: FromQuery[str] = "",
    ) -> Response[Any]:
        if not member.may("manage_providers"):  # nothing to read here: back to the list
            return see_other(request, "/providers")
        if provider not in SPECS:
            return page(
                "providers/choose.html",
                member=member,
                labels=forms.PROVIDER_LABELS,
                choices=forms.CHOOSABLE,
                specs=SPECS,
            )
        return _form_page(member, forms.blank(provider, channel))

    @post("/")
    async def create_provider(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_providers")
        data = await request.form()
        provider = form_text(data, "provider")
        if provider not in SPECS:
            return page(
                "providers/choose.html",
                status_code=422,
                member=member,
                labels=forms.PROVIDER_LABELS,
                choices=forms.CHOOSABLE,
                specs=SPECS,
                error="Choose one of the providers below.",
            )
        posted = forms.read(data, provider)
        if posted.form.errors:
            return _form_page(member, posted.form, status_code=422)
        try:
            saved = await service.create_config(
                db_session,
                tenant_id=member.tenant.id,
                data=service.ConfigInput(
                    channel=posted.form.channel,
                    provider=provider,
                    name=posted.name,
                    priority=posted.priority,
                    rate_per_second=posted.rate_per_second,
                    burst=posted.burst,
                    credentials=posted.credentials,
                    options=posted.options,
                    enabled=posted.form.enabled,
                ),
                actor=member.actor,
                keyring=_keyring(request),
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except InvalidProviderConfig as invalid:  # refused before anything was written
            _field_errors(posted.form, invalid)
            return _form_page(member, posted.form, status_code=422)
        await db_session.commit()
        if saved.generated_secret:  # a webhook signing secret made for them: shown this once
            return await _providers_page(
                request,
                db_session,
                member,
                notice="created",
                secret=saved.generated_secret,
                status_code=201,
            )
        return see_other(request, "/providers?notice=created")

    @get("/{config_id:uuid}")
    async def edit_provider(
        self, db_session: DbSession, member: SignedInMember, config_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        config = await service.get_config(
            db_session, tenant_id=member.tenant.id, config_id=config_id
        )
        if config is None:
            raise _not_found(config_id)
        return _form_page(member, forms.of_config(config), config)

    @post("/{config_id:uuid}")
    async def update_provider(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        config_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "manage_providers")
        config = await service.get_config(
            db_session, tenant_id=member.tenant.id, config_id=config_id
        )
        if config is None:
            raise _not_found(config_id)
        posted = forms.read(await request.form(), config.provider, channel=config.channel)
        if posted.form.errors:
            return _form_page(member, posted.form, config, status_code=422)
        try:
            await service.update_config(
                db_session,
                tenant_id=member.tenant.id,
                config_id=config_id,
                changes=service.ConfigChanges(
                    name=posted.name,
                    priority=posted.priority,
                    rate_per_second=posted.rate_per_second,
                    burst=posted.burst,
                    credentials=posted.credentials or None,
                    options=posted.options,
                    enabled=posted.form.enabled,
                    merge_credentials=True,
                ),
                actor=member.actor,
                keyring=_keyring(request),
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except InvalidProviderConfig as invalid:
            # Refused before anything was flushed; the request's session is not committed.
            _field_errors(posted.form, invalid)
            return _form_page(member, posted.form, config, status_code=422)
        await db_session.commit()
        return see_other(request, "/providers?notice=updated")

    @post("/{config_id:uuid}/enable")
    async def enable(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        config_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        return await _switch(request, db_session, member, config_id, enabled=True)

    @post("/{config_id:uuid}/disable")
    async def disable(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        config_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        return await _switch(request, db_session, member, config_id, enabled=False)

    @post("/{config_id:uuid}/breaker/reset")
    async def reset_breaker(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        outbox: OutboxDependency,
        member: SignedInMember,
        config_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "manage_providers")
        try:
            reset = await service.reset_breaker(
                db_session,
                tenant_id=member.tenant.id,
                config_id=config_id,
                actor=member.actor,
                breakers=request.app.state.breakers,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except (RedisError, OSError, TimeoutError):
            await db_session.rollback()
            raise HTTPException(
                status_code=503,
                detail="Redis did not answer: the breaker was not reset. Try again.",
            ) from None
        if reset is None:
            raise _not_found(config_id)
        await db_session.commit()
        await outbox.enqueue_after_commit(reset.jobs)  # what waited for the breaker goes now
        return see_other(request, "/providers?notice=reset")

    @post("/{config_id:uuid}/test")
    async def send_test(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        config_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "send_test")
        config = await service.get_config(
            db_session, tenant_id=member.tenant.id, config_id=config_id
        )
        if config is None:
            raise _not_found(config_id)
        address = form_text(await request.form(), "address").strip()
        tested: dict[str, Any] = {"config_id": str(config.id), "address": address[:MAX_ADDRESS]}
        if not address or len(address) > MAX_ADDRESS:
            tested["error"] = f"Type the address to send the test to (at most {MAX_ADDRESS})."
            return await _providers_page(
                request, db_session, member, tested=tested, status_code=422
            )
        try:
            outcome = await probe.send_test(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                plan=member.tenant.plan,
                config=config,
                address=address,
                actor=member.actor,
                keyring=_keyring(request),
                buckets=request.app.state.token_buckets,
                settings=request.app.state.settings,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except probe.ProbeRefused as refusal:
            tested["error"] = refusal.message
            return await _providers_page(
                request, db_session, member, tested=tested, status_code=422
            )
        await db_session.commit()
        tested["outcome"] = outcome
        return await _providers_page(request, db_session, member, tested=tested)


async def _switch(
    request: Request[Any, Any, Any],
    db_session: DbSession,
    member: Member,
    config_id: uuid.UUID,
    *,
    enabled: bool,
) -> Response[Any]:
    require(member, "manage_providers")
    try:
        saved = await service.update_config(
            db_session,
            tenant_id=member.tenant.id,
            config_id=config_id,
            changes=service.ConfigChanges(enabled=enabled),
            actor=member.actor,
            keyring=_keyring(request),
            role=member.role,
        )
    except roles.RoleNotAllowed as error:
        raise refused(member, error) from None
    if saved is None:
        raise _not_found(config_id)
    await db_session.commit()
    return see_other(request, f"/providers?notice={'enabled' if enabled else 'disabled'}")
