"""The billing page: the tenant's plan and this month's use of it by channel (live messages
only: test mode never counts), its subscription's state, and the ways to Stripe's
own pages (Checkout to subscribe or change plan, the Customer Portal for invoices and the
payment method). Owners only: reading it too, as it shows what the tenant pays.

The page's forms post here and are answered with a redirect to Stripe: browsers check such
a redirect against the form-action policy of the page holding the form, so this page alone
admits Stripe's hosted origins there (`STRIPE_PAGES`), and the address configured for a
stand-in of Stripe's API (tests, development) when there is one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import stripe
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException
from redis.exceptions import RedisError

from admin_ui.pages import CONTENT_SECURITY_POLICY, form_text, page, see_other
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from app.auth import roles
from app.billing import enabled
from app.billing import service as billing
from app.billing.client import stripe_client
from app.db import utcnow
from app.dependencies import DbSession
from app.settings import Settings
from app.usage import service as usage_service
from app.usage.meter import Meter

STRIPE_PAGES = "https://checkout.stripe.com https://billing.stripe.com"
NOTICES = {
    "subscribed": "Thank you: Stripe will confirm the payment in a moment, and the plan "
    "changes as soon as it does.",
    "cancelled": "Nothing was changed.",
}


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _form_action(settings: Settings) -> str:
    sources = STRIPE_PAGES
    if settings.stripe_api_base:
        parts = urlsplit(settings.stripe_api_base)
        sources += f" {parts.scheme}://{parts.netloc}"
    return CONTENT_SECURITY_POLICY.replace("form-action 'self'", f"form-action 'self' {sources}")


async def _page(
    request: Request[Any, Any, Any],
    db_session: DbSession,
    member: Member,
    *,
    notice: str = "",
    error: str = "",
    status_code: int = 200,
) -> Response[Any]:
    settings = _settings(request)
    account = await billing.get_account(db_session, tenant_id=member.tenant.id)
    state = request.app.state
    meter: Meter = state.get("meter") or Meter(state.redis)
    try:
        usage = await usage_service.current(db_session, meter, tenant_id=member.tenant.id)
    except RedisError:
        usage = None  # the page still shows the plan; the meters say they are unavailable
    grace_ends = None
    if account is not None and account.past_due_since is not None:
        grace_ends = account.past_due_since + timedelta(days=settings.billing_grace_days)
    response = page(
        "billing/billing.html",
        status_code=status_code,
        member=member,
        active="billing",
        billing_on=enabled(settings),
        plan=member.tenant.plan,
        default_plan=billing.default_plan(settings),
        for_sale=[plan for plan in billing.prices() if plan != member.tenant.plan],
        account=account,
        entitled=billing.entitled_plan(settings, account, utcnow()),
        grace_ends=grace_ends,
        usage=usage,
        notice=NOTICES.get(notice, ""),
        error=error,
    )
    response.headers["Content-Security-Policy"] = _form_action(settings)
    return response


def _back(request: Request[Any, Any, Any], notice: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/billing?notice={notice}"


class BillingPageController(Controller):
    path = "/billing"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def show(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        notice: str = "",
    ) -> Response[Any]:
        require(member, "manage_billing")
        return await _page(request, db_session, member, notice=notice[:32])

    @post("/checkout")
    async def checkout(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_billing")
        plan = form_text(await request.form(), "plan")[:32]
        settings = _settings(request)
        async with stripe_client(settings) as client:
            if client is None:
                raise HTTPException(status_code=409, detail="Billing is off on this server.")
            try:
                redirect = await billing.start_checkout(
                    db_session,
                    client,
                    settings,
                    tenant_id=member.tenant.id,
                    plan=plan,
                    success_url=_back(request, "subscribed"),
                    cancel_url=_back(request, "cancelled"),
                    actor=member.actor,
                    role=member.role,
                )
            except roles.RoleNotAllowed as error:
                raise refused(member, error) from None
            except billing.BillingError as error:
                # Refused before anything but the tenant's Stripe customer was written: keep
                # that (Stripe has made it), and show why.
                await db_session.commit()
                return await _page(
                    request, db_session, member, error=str(error), status_code=error.status
                )
            except stripe.StripeError:
                await db_session.commit()
                return await _page(
                    request,
                    db_session,
                    member,
                    error="Stripe did not answer as expected. Try again in a moment.",
                    status_code=502,
                )
        await db_session.commit()
        return see_other(request, redirect.url)

    @post("/portal")
    async def portal(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_billing")
        settings = _settings(request)
        async with stripe_client(settings) as client:
            if client is None:
                raise HTTPException(status_code=409, detail="Billing is off on this server.")
            try:
                url = await billing.portal_url(
                    db_session,
                    client,
                    tenant_id=member.tenant.id,
                    return_url=_back(request, "portal"),
                    role=member.role,
                )
            except roles.RoleNotAllowed as error:
                raise refused(member, error) from None
            except billing.BillingError as error:
                return await _page(
                    request, db_session, member, error=str(error), status_code=error.status
                )
            except stripe.StripeError:
                return await _page(
                    request,
                    db_session,
                    member,
                    error="Stripe did not answer as expected. Try again in a moment.",
                    status_code=502,
                )
        return see_other(request, url)
