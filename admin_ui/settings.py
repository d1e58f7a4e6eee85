"""The settings page: the tenant's delivery controls (app/tenants/delivery_controls.py).

- kill switches per channel: pause it (messages wait, and go when it is lifted), drop its
  non-critical messages (critical categories still flow), or let it flow;
- the retry policy: how many attempts within how many hours before a message goes to the
  dead-letter queue (bounds in app/delivery/retry.py);
- the default locale of recipients who have none;
- what a broadcast larger than what is left of the plan's quota does: go out up to the
  quota, or be refused whole (app/usage/overflow.py).

These are the tenant's and apply to both data modes. Changing them is for owners and admins
(manage_settings), checked here and by the service; each change is audited. Lifting a pause
releases the messages it held once the change is committed (app/delivery/held.py).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery

from admin_ui.pages import form_text, page, see_other
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from app.auth import roles
from app.channels import CHANNELS
from app.delivery import held
from app.delivery.retry import MAX_ATTEMPTS_RANGE, WINDOW_HOURS_RANGE, RetryPolicy
from app.dependencies import DbSession, OutboxDependency
from app.tenants import delivery_controls as controls
from app.usage import overflow

SWITCH_CHOICES = {
    "off": "Sending",
    "pause": "Paused",
    "drop_noncritical": "Critical only",
}
SWITCH_HELP = {
    "off": "Messages go out as usual.",
    "pause": "Messages wait; they go when you switch back.",
    "drop_noncritical": "Non-critical messages are skipped; critical ones (one-time codes) go.",
}
NOTICES = {
    "switch": "Kill switch changed.",
    "retry": "Retry policy saved. It applies to attempts scheduled from now on.",
    "locale": "Default locale saved.",
    "quota": "Saved. It applies to broadcasts dispatched from now on.",
}
QUOTA_CHOICES = {
    "send_partial": (
        "Send up to the quota",
        "What the quota cannot hold is skipped (reason: quota); the rest goes out.",
    ),
    "refuse": (
        "Refuse the whole broadcast",
        "Nothing is sent; the notification ends refused, and the quota is left as it was.",
    ),
}
MAX_NUMBER_TEXT = 12
MAX_LOCALE_TEXT = 35


async def _settings_page(
    db_session: DbSession,
    member: Member,
    *,
    notice: str = "",
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    delivery = await controls.get_delivery_settings(db_session, tenant_id=member.tenant.id)
    try:
        policy = await controls.get_retry_policy(db_session, tenant_id=member.tenant.id)
    except controls.TenantNotFound:
        raise NotFoundException("This tenant no longer exists.") from None
    shown = {
        "max_attempts": str(policy.max_attempts),
        "window_hours": f"{policy.window_hours:g}",
        "default_locale": delivery.default_locale or "",
        "on_quota_exceeded": delivery.on_quota_exceeded,
        **(values or {}),
    }
    return page(
        "settings/settings.html",
        status_code=status_code,
        member=member,
        switches=delivery.kill_switches,
        channels=CHANNELS,
        choices=SWITCH_CHOICES,
        switch_help=SWITCH_HELP,
        policy=policy,
        values=shown,
        attempts_range=MAX_ATTEMPTS_RANGE,
        hours_range=WINDOW_HOURS_RANGE,
        quota_choices=QUOTA_CHOICES,
        notice=NOTICES.get(notice, ""),
        errors=errors or {},
    )


class SettingsController(Controller):
    path = "/settings"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def show(
        self, db_session: DbSession, member: SignedInMember, notice: FromQuery[str] = ""
    ) -> Response[Any]:
        return await _settings_page(db_session, member, notice=notice)

    @post("/kill-switches/{channel:str}")
    async def set_kill_switch(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        outbox: OutboxDependency,
        member: SignedInMember,
        channel: FromPath[str],
    ) -> Response[Any]:
        require(member, "manage_settings")
        if channel not in CHANNELS:
            raise NotFoundException(f"No channel {channel[:40]!r}.")
        choice = form_text(await request.form(), "mode")
        if choice not in SWITCH_CHOICES:
            return await _settings_page(
                db_session,
                member,
                errors={f"switch-{channel}": "Choose sending, paused or critical only."},
                status_code=422,
            )
        try:
            work = await controls.set_kill_switch(
                db_session,
                tenant_id=member.tenant.id,
                channel=channel,
                mode=None if choice == "off" else choice,  # type: ignore[arg-type]
                actor=member.actor,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except controls.TenantNotFound:
            raise NotFoundException("This tenant no longer exists.") from None
        await db_session.commit()
        if work.resumes:
            await held.release(db_session, outbox, tenant_id=work.tenant_id, channel=channel)
        return see_other(request, "/settings?notice=switch")

    @post("/retry-policy")
    async def set_retry_policy(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_settings")
        form = await request.form()
        values = {
            "max_attempts": form_text(form, "max_attempts").strip()[:MAX_NUMBER_TEXT],
            "window_hours": form_text(form, "window_hours").strip()[:MAX_NUMBER_TEXT],
        }
        errors: dict[str, str] = {}
        attempts: Any = values["max_attempts"]
        hours: Any = values["window_hours"]
        try:
            attempts = int(attempts)
        except ValueError:
            errors["max_attempts"] = "A whole number of attempts."
        try:
            hours = float(hours)
        except ValueError:
            errors["window_hours"] = "A number of hours."
        if not errors:
            try:
                await controls.set_retry_policy(
                    db_session,
                    tenant_id=member.tenant.id,
                    policy=RetryPolicy(max_attempts=attempts, window_hours=hours),
                    actor=member.actor,
                    role=member.role,
                )
            except roles.RoleNotAllowed as error:
                raise refused(member, error) from None
            except controls.SettingInvalid as invalid:
                errors[invalid.field] = f"Must be {invalid.message}."
        if errors:
            return await _settings_page(
                db_session, member, errors=errors, values=values, status_code=422
            )
        await db_session.commit()
        return see_other(request, "/settings?notice=retry")

    @post("/default-locale")
    async def set_default_locale(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_settings")
        text = form_text(await request.form(), "default_locale").strip()[: MAX_LOCALE_TEXT + 1]
        try:
            await controls.set_default_locale(
                db_session,
                tenant_id=member.tenant.id,
                locale=text or None,
                actor=member.actor,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except controls.SettingInvalid as invalid:
            return await _settings_page(
                db_session,
                member,
                errors={"default_locale": invalid.message},
                values={"default_locale": text},
                status_code=422,
            )
        await db_session.commit()
        return see_other(request, "/settings?notice=locale")

    @post("/on-quota-exceeded")
    async def set_on_quota_exceeded(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_settings")
        choice = form_text(await request.form(), "on_quota_exceeded")
        if choice not in overflow.CHOICES:
            return await _settings_page(
                db_session,
                member,
                errors={"on_quota_exceeded": "Choose to send up to the quota or to refuse."},
                status_code=422,
            )
        try:
            await controls.set_on_quota_exceeded(
                db_session,
                tenant_id=member.tenant.id,
                choice=choice,
                actor=member.actor,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except controls.TenantNotFound:
            raise NotFoundException("This tenant no longer exists.") from None
        await db_session.commit()
        return see_other(request, "/settings?notice=quota")
