"""/v1/tenant: who the calling key belongs to, and the tenant's delivery settings.

Reading the settings needs `read`, changing them `manage` and a live key. Kill switches, the
retry policy, the default locale and what a broadcast larger than the quota left does are
the tenant's, not the key's, and they govern live sending: a test key may read them but not
change them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from litestar import Controller, Request, get, put
from litestar.params import FromPath, JSONBody

from app.auth.keys import Principal
from app.auth.middleware import live_mode_required, requires_scope
from app.delivery import held
from app.delivery.retry import RetryPolicy
from app.dependencies import DbSession, OutboxDependency
from app.problems import Problem, field_error
from app.tenants import delivery_controls as controls
from app.tenants.schemas import (
    DefaultLocaleOut,
    DefaultLocaleUpdate,
    KillSwitchChange,
    KillSwitches,
    KillSwitchUpdate,
    OnQuotaExceededOut,
    OnQuotaExceededUpdate,
    RetryPolicyOut,
    RetryPolicyUpdate,
)
from app.tenants.service import get_tenant
from app.usage import overflow
from app.usage.overflow import OnQuotaExceeded

ApiRequest = Request[Principal, None, Any]
READ = [requires_scope("read")]
MANAGE = [requires_scope("manage"), live_mode_required]


class CallingKey(msgspec.Struct):
    id: uuid.UUID
    prefix: str
    mode: str
    scopes: list[str]


class TenantOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["tenant"]
    name: str
    plan: str
    created_at: datetime
    api_key: CallingKey
    kill_switches: dict[str, str]
    retry_policy: RetryPolicyOut
    default_locale: str | None
    on_quota_exceeded: OnQuotaExceeded


def _gone() -> Problem:
    return Problem(404, "not_found", "This key's tenant no longer exists.")


@get("/tenant", tags=["Tenant"], summary="The tenant and key making this call")
async def who_am_i(request: ApiRequest, db_session: DbSession) -> TenantOut:
    principal = request.user
    assert principal.key_id is not None  # the API's callers authenticate with keys only
    tenant = await get_tenant(db_session, tenant_id=principal.tenant_id)
    if tenant is None:  # deleted between authentication and now
        raise _gone()
    return TenantOut(
        id=tenant.id,
        object="tenant",
        name=tenant.name,
        plan=tenant.plan,
        created_at=tenant.created_at,
        api_key=CallingKey(
            id=principal.key_id,
            prefix=principal.key_prefix,
            mode=principal.mode,
            scopes=sorted(principal.scopes),
        ),
        kill_switches=dict(controls.switches_of(tenant.kill_switches)),
        retry_policy=RetryPolicyOut.of(RetryPolicy.of(tenant.retry_policy)),
        default_locale=tenant.default_locale,
        on_quota_exceeded=overflow.chosen(None, tenant.on_quota_exceeded),
    )


class TenantSettingsController(Controller):
    path = "/tenant"
    tags = ["Tenant"]

    @get("/kill-switches", guards=READ, summary="The tenant's kill switches per channel")
    async def get_kill_switches(self, request: ApiRequest, db_session: DbSession) -> KillSwitches:
        switches = await controls.get_kill_switches(db_session, tenant_id=request.user.tenant_id)
        return KillSwitches("kill_switches", dict(switches))

    @put(
        "/kill-switches/{channel:str}",
        guards=MANAGE,
        status_code=200,
        summary="Pause a channel, drop its non-critical messages, or switch it back on",
    )
    async def put_kill_switch(
        self,
        request: ApiRequest,
        db_session: DbSession,
        outbox: OutboxDependency,
        channel: FromPath[str],
        data: JSONBody[KillSwitchUpdate],
    ) -> KillSwitchChange:
        try:
            work = await controls.set_kill_switch(
                db_session,
                tenant_id=request.user.tenant_id,
                channel=channel,
                mode=None if data.mode == "off" else data.mode,
                actor=request.user.actor,
            )
        except controls.SettingInvalid as error:
            raise field_error(error.field, error.message) from None
        except controls.TenantNotFound:
            raise _gone() from None
        await db_session.commit()
        # After commit: a deliver job must find the switch off, or it would hold them again.
        released = (
            await held.release(db_session, outbox, tenant_id=work.tenant_id, channel=work.channel)
            if work.resumes
            else 0
        )
        return KillSwitchChange(
            object="kill_switch",
            channel=channel,
            mode=data.mode,
            previous=work.previous or "off",
            channels=dict(work.switches),
            released=released,
            dropped=work.dropped,
        )

    @get("/retry-policy", guards=READ, summary="The tenant's retry policy")
    async def get_retry_policy(self, request: ApiRequest, db_session: DbSession) -> RetryPolicyOut:
        try:
            policy = await controls.get_retry_policy(db_session, tenant_id=request.user.tenant_id)
        except controls.TenantNotFound:
            raise _gone() from None
        return RetryPolicyOut.of(policy)

    @put("/retry-policy", guards=MANAGE, status_code=200, summary="Replace the retry policy")
    async def put_retry_policy(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[RetryPolicyUpdate]
    ) -> RetryPolicyOut:
        wanted = RetryPolicy(data.max_attempts, data.window_hours)
        try:
            policy = await controls.set_retry_policy(
                db_session,
                tenant_id=request.user.tenant_id,
                policy=wanted,
                actor=request.user.actor,
            )
        except controls.SettingInvalid as error:
            raise field_error(error.field, error.message) from None
        except controls.TenantNotFound:
            raise _gone() from None
        await db_session.commit()
        return RetryPolicyOut.of(policy)

    @get("/default-locale", guards=READ, summary="The tenant's default locale")
    async def get_default_locale(
        self, request: ApiRequest, db_session: DbSession
    ) -> DefaultLocaleOut:
        try:
            locale = await controls.get_default_locale(db_session, tenant_id=request.user.tenant_id)
        except controls.TenantNotFound:
            raise _gone() from None
        return DefaultLocaleOut("default_locale", locale)

    @put(
        "/default-locale",
        guards=MANAGE,
        status_code=200,
        summary="Set the locale of recipients without one, the fallback before a template's own",
    )
    async def put_default_locale(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[DefaultLocaleUpdate]
    ) -> DefaultLocaleOut:
        try:
            locale = await controls.set_default_locale(
                db_session,
                tenant_id=request.user.tenant_id,
                locale=data.default_locale,
                actor=request.user.actor,
            )
        except controls.SettingInvalid as error:
            raise field_error(error.field, error.message) from None
        except controls.TenantNotFound:
            raise _gone() from None
        await db_session.commit()
        return DefaultLocaleOut("default_locale", locale)

    @get(
        "/on-quota-exceeded",
        guards=READ,
        summary="What a broadcast larger than the quota left does",
    )
    async def get_on_quota_exceeded(
        self, request: ApiRequest, db_session: DbSession
    ) -> OnQuotaExceededOut:
        try:
            choice = await controls.get_on_quota_exceeded(
                db_session, tenant_id=request.user.tenant_id
            )
        except controls.TenantNotFound:
            raise _gone() from None
        return OnQuotaExceededOut("on_quota_exceeded", choice)

    @put(
        "/on-quota-exceeded",
        guards=MANAGE,
        status_code=200,
        summary="Send a broadcast larger than the quota left up to the quota, or refuse it whole",
    )
    async def put_on_quota_exceeded(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[OnQuotaExceededUpdate]
    ) -> OnQuotaExceededOut:
        try:
            choice = await controls.set_on_quota_exceeded(
                db_session,
                tenant_id=request.user.tenant_id,
                choice=data.on_quota_exceeded,
                actor=request.user.actor,
            )
        except controls.SettingInvalid as error:
            raise field_error(error.field, error.message) from None
        except controls.TenantNotFound:
            raise _gone() from None
        await db_session.commit()
        return OnQuotaExceededOut("on_quota_exceeded", choice)
