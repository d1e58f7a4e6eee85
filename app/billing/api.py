"""POST /webhooks/stripe: Stripe's events, verified by signature; and POST /v1/billing/checkout,
POST /v1/billing/portal: where the tenant's owner pays or manages billing (a live key with
the `manage` scope).

With billing off (no Stripe keys, app/billing/__init__.py) the webhook answers 404 and the
/v1 routes 409. Stripe's own failures answer 502 (503 when Stripe cannot be reached).
"""

from __future__ import annotations

from typing import Any

import stripe
import structlog
from litestar import Controller, Request, Response, post
from litestar.params import JSONBody

from app import billing
from app.apidoc import problem_responses
from app.auth.keys import Principal
from app.auth.middleware import live_mode_required, requires_scope
from app.billing import events, service
from app.billing.client import stripe_client
from app.billing.schemas import BillingRedirect, CheckoutBody, PortalBody
from app.db import utcnow
from app.dependencies import DbSession
from app.problems import Problem, field_error
from app.settings import Settings

log = structlog.get_logger(__name__)

WEBHOOK_MAX_BODY = 1024 * 1024  # Stripe's events are a few KB


def _billing_off() -> Problem:
    return Problem(409, "billing_disabled", "Billing is not configured on this Herald.")


@post(
    "/webhooks/stripe",
    status_code=200,
    request_max_body_size=WEBHOOK_MAX_BODY,
    summary="Stripe's webhook events (subscriptions, checkouts, invoices), verified by "
    "`Stripe-Signature`",
    tags=["Billing"],
    security=[],
    responses=problem_responses(
        {
            400: "The signature does not verify (`bad_signature`), its timestamp is more "
            "than 300 s old (`stale`), or the body is not an event (`unparseable`).",
            404: "Billing is not configured (`billing_disabled`).",
        }
    ),
)
async def stripe_webhook(
    request: Request[Any, Any, Any], db_session: DbSession
) -> Response[dict[str, Any]]:
    settings: Settings = request.app.state.settings
    if not billing.enabled(settings):
        raise Problem(404, "billing_disabled", "Billing is not configured on this Herald.")
    body = await request.body()
    try:
        event = events.verify(settings, body, request.headers.get("stripe-signature"))
    except events.WebhookRefused as refused:
        log.warning("stripe webhook refused", reason=refused.slug, detail=refused.detail)
        raise Problem(400, refused.slug, refused.detail) from None
    received = await events.apply(db_session, settings, event, now=utcnow())
    await db_session.commit()
    return Response({"received": True, "outcome": received.outcome}, status_code=200)


ApiRequest = Request[Principal, None, Any]


def _problem(error: service.BillingError) -> Problem:
    if error.field is not None:
        return field_error(error.field, error.detail.partition(": ")[2] or error.detail)
    return Problem(error.status, error.slug, error.detail)


def _stripe_problem(error: stripe.StripeError) -> Problem:
    log.warning("stripe request failed", error=str(error), status=error.http_status)
    if isinstance(error, stripe.APIConnectionError):
        return Problem(503, "service_unavailable", "Stripe cannot be reached; try again.")
    return Problem(502, "stripe_error", f"Stripe refused the request: {error.user_message}")


class BillingController(Controller):
    """Stripe-hosted pages for the tenant's owner: Checkout and the Customer Portal."""

    path = "/billing"
    tags = ["Billing"]
    # Paying is the tenant's, not a mode's: live keys that may manage the tenant only.
    guards = [requires_scope("manage"), live_mode_required]

    @post(
        "/checkout",
        status_code=201,
        summary="A Stripe Checkout Session subscribing the tenant to a plan (or, with a "
        "subscription already paying, the portal page confirming the new plan)",
        responses=problem_responses(
            {
                409: "Billing is off (`billing_disabled`), or the tenant already has this "
                "plan (`conflict`).",
                502: "Stripe refused the request (`stripe_error`).",
                503: "Stripe cannot be reached.",
            }
        ),
    )
    async def checkout(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[CheckoutBody]
    ) -> BillingRedirect:
        settings: Settings = request.app.state.settings
        async with stripe_client(settings) as client:
            if client is None:
                raise _billing_off()
            try:
                redirect = await service.start_checkout(
                    db_session,
                    client,
                    settings,
                    tenant_id=request.user.tenant_id,
                    plan=data.plan,
                    success_url=data.success_url,
                    cancel_url=data.cancel_url,
                    actor=request.user.actor,
                )
            except service.BillingError as error:
                raise _problem(error) from None
            except stripe.StripeError as error:
                await db_session.rollback()
                raise _stripe_problem(error) from None
        await db_session.commit()
        return BillingRedirect("billing_redirect", redirect.kind, redirect.url)

    @post(
        "/portal",
        status_code=201,
        summary="A Stripe Customer Portal session: invoices, payment method, plan, cancellation",
        responses=problem_responses(
            {
                409: "Billing is off (`billing_disabled`), or the tenant never subscribed "
                "(`conflict`).",
                502: "Stripe refused the request (`stripe_error`).",
                503: "Stripe cannot be reached.",
            }
        ),
    )
    async def portal(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[PortalBody]
    ) -> BillingRedirect:
        settings: Settings = request.app.state.settings
        async with stripe_client(settings) as client:
            if client is None:
                raise _billing_off()
            try:
                url = await service.portal_url(
                    db_session, client, tenant_id=request.user.tenant_id, return_url=data.return_url
                )
            except service.BillingError as error:
                raise _problem(error) from None
            except stripe.StripeError as error:
                raise _stripe_problem(error) from None
        return BillingRedirect("billing_redirect", "portal", url)
