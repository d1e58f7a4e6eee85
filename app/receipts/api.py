"""POST /webhooks/providers/{provider_config_id}: providers' delivery receipts; and
GET /v1/receipts, GET /v1/receipts/{id}: what a tenant's providers posted, for the tenant.

Each provider config has its own receipt URL (shown in its API answer as `receipts_url`), so
the URL names the tenant and the scheme, and the config holds the secret that verifies the
request. No API key: the request is believed only when its scheme's signature (or, for
Postmark, its basic-auth credentials) verifies with that config's secret, and its signed
timestamp is within the provider's tolerance (HERALD_RECEIPT_TOLERANCES).

Answers: 200 when verified (a replay too: it changes nothing); 401 when the signature, the
credentials or the timestamp fail; 400 when a verified body cannot be read; 404 when the
URL names no config that takes receipts. Every request is stored as a receipt with its
verdict (app/receipts/service.py), a failure included, so that a tenant can see what was
refused and why, up to REFUSED_STORED_PER_MINUTE refusals a minute per config (anyone can
post refusals; beyond the allowance they are answered alike, counted, not stored). Bodies
are limited to RECEIPT_MAX_BODY (a SendGrid batch of thousands of events is well under it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Annotated, Any

import structlog
from litestar import Controller, Request, Response, Router, get, post
from litestar.params import FromPath, FromQuery, QueryParameter
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import crypto
from app.apidoc import problem_responses
from app.auth.keys import Principal
from app.auth.middleware import live_mode_required, requires_scope
from app.db import utcnow
from app.dependencies import DbSession
from app.pagination import MAX_LIMIT
from app.problems import Problem
from app.providers import credentials as specs
from app.providers.models import ProviderConfig
from app.providers.schemas import RECEIVING
from app.providers.service import open_credentials
from app.receipts import mailgun, postmark, sendgrid, service, sns, standard, twilio
from app.receipts.events import Inbound, Parsed, refused
from app.receipts.schemas import ReceiptDetail, ReceiptList, ReceiptOut, Verdict
from app.settings import Settings

log = structlog.get_logger(__name__)

REDIS_TIMEOUT = 0.2  # seconds: the allowance check is not worth more

RECEIPT_MAX_BODY = 5 * 1024 * 1024
# Refused requests are stored up to this many a minute per provider config (and for unknown
# configs, all together): anyone can post them, and each would be a row (and up to 256 KB of
# body) kept for days. Beyond it they are answered alike and counted, not stored.
REFUSED_STORED_PER_MINUTE = 100
UNSTORED = Counter(
    "herald_receipts_unstored_total",
    "Refused provider webhook requests not stored (over the per-minute allowance)",
    ["verdict"],
)


async def _may_store(request: Request[Any, Any, Any], scope: str) -> bool:
    """Whether a refused request of `scope` (a config id, or "unknown") is within this
    minute's allowance. Without Redis it is stored: an outage should not hide refusals."""
    redis: Redis = request.app.state.redis
    key = f"herald:receipts:refused:{{{scope}}}:{int(time.time() // 60)}"
    try:
        async with asyncio.timeout(REDIS_TIMEOUT):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, 120)
                count, _ = await pipe.execute()
    except (RedisError, OSError, TimeoutError):
        return True
    return int(count) <= REFUSED_STORED_PER_MINUTE


def _tolerance(settings: Settings, provider: str) -> timedelta:
    return timedelta(seconds=settings.receipt_tolerances.get(provider, 300))


async def _parse(
    request: Request[Any, Any, Any],
    config: ProviderConfig,
    secrets: dict[str, Any],
    inbound: Inbound,
) -> Parsed:
    """What the config's scheme makes of the request."""
    settings: Settings = request.app.state.settings
    tolerance = _tolerance(settings, config.provider)
    missing = refused("bad_signature", "the provider config has no webhook secret to verify with")
    match config.provider:
        case "sendgrid":
            key = specs.read(secrets, specs.SendgridCredentials).webhook_verification_key
            return sendgrid.receive_sendgrid(inbound, key, tolerance=tolerance) if key else missing
        case "mailgun":
            signing = specs.read(secrets, specs.MailgunCredentials).webhook_signing_key
            return (
                mailgun.receive_mailgun(inbound, signing, tolerance=tolerance)
                if signing
                else missing
            )
        case "twilio":
            token = specs.read(secrets, specs.TwilioCredentials).auth_token
            return twilio.receive_twilio(inbound, token)
        case "postmark":
            pair = specs.read(secrets, specs.PostmarkCredentials)
            if not pair.webhook_username or not pair.webhook_password:
                return missing
            return postmark.receive_postmark(inbound, pair.webhook_username, pair.webhook_password)
        case "ses":
            options = specs.read(config.options, specs.SesOptions)
            certificates: sns.CertificateCache = request.app.state.sns_certificates
            return await sns.receive_sns(
                inbound,
                options.sns_topic_arns,
                certificates,
                tolerance=tolerance,
                origins=request.app.state.sns_origins,
            )
        case "webhook":
            secret = specs.read(secrets, specs.WebhookCredentials).secret
            return (
                standard.receive_standard(inbound, [secret], tolerance=tolerance)
                if secret
                else missing
            )
    return missing


@post(
    "/providers/{provider_config_id:uuid}",
    status_code=200,
    request_max_body_size=RECEIPT_MAX_BODY,
    summary="A provider's delivery receipts (SendGrid, Mailgun, Twilio, SES via SNS, "
    "Postmark, Standard Webhooks), verified with the provider config's secret",
    tags=["Receipts"],
    security=[],
    responses=problem_responses(
        {
            400: "Verified, but the body is not in the provider's format (`unparseable`).",
            401: "The signature, credentials or timestamp do not hold "
            "(`bad_signature`, `stale`); nothing changed.",
            404: "No provider config that takes receipts has this id (`unknown_config`).",
        }
    ),
)
async def receive(
    request: Request[Any, Any, Any], db_session: DbSession, provider_config_id: FromPath[uuid.UUID]
) -> Response[dict[str, Any]]:
    now = utcnow()
    settings: Settings = request.app.state.settings
    body = await request.body()
    headers = {name.lower(): value for name, value in request.headers.items()}
    found = await service.config_of(db_session, provider_config_id)
    if found is None or found[0].provider not in RECEIVING:
        why = "no such provider config" if found is None else "this provider sends no receipts"
        if await _may_store(request, "unknown"):
            await service.store_unknown(
                db_session,
                config_id=provider_config_id,
                headers=headers,
                body_size=len(body),
                now=now,
                reason=why,
            )
            await db_session.commit()
        else:
            UNSTORED.labels("unknown_config").inc()
        raise Problem(404, "unknown_config", why)
    config, plan = found
    # The URL the provider called, as it knows it (Twilio signs it): the public address.
    query = request.url.query
    url = f"{settings.public_url}{request.url.path}" + (f"?{query}" if query else "")
    inbound = Inbound(url=url, headers=headers, body=body, received_at=now)
    secrets = open_credentials(config, crypto.keyring_for(settings))
    parsed = await _parse(request, config, secrets, inbound)
    if parsed.verdict != "verified" and not await _may_store(request, str(config.id)):
        UNSTORED.labels(parsed.verdict).inc()
        raise _refusal(parsed.verdict, parsed.reason)
    stored = await service.store(
        db_session,
        service.Config(config.id, config.tenant_id, config.provider, plan),
        parsed,
        headers=headers,
        body=body,
        now=now,
    )
    await db_session.commit()
    log.info(
        "receipt",
        receipt_id=str(stored.receipt_id),
        provider_config_id=str(config.id),
        verdict=stored.verdict,
        events=stored.events,
        new=stored.new,
        moved=stored.moved,
    )
    if stored.verdict in ("bad_signature", "stale", "unparseable"):
        raise _refusal(stored.verdict, parsed.reason)
    if parsed.subscribe_url is not None:
        confirmed = await sns.confirm_subscription(
            request.app.state.sns_certificates.client,
            parsed.subscribe_url,
            request.app.state.sns_origins,
        )
        log.info("sns subscription", confirmed=confirmed, provider_config_id=str(config.id))
    return Response(
        {"received": stored.events, "new": stored.new, "receipt_id": str(stored.receipt_id)},
        status_code=200,
    )


def _refusal(verdict: str, reason: str | None) -> Problem:
    if verdict == "unparseable":
        return Problem(400, verdict, reason or "the body cannot be read")
    return Problem(401, verdict, reason or "not verified")


ApiRequest = Request[Principal, None, Any]


class ReceiptController(Controller):
    """What providers posted to the tenant's receipt URLs, and what Herald made of it."""

    path = "/receipts"
    tags = ["Receipts"]
    # Provider configs are live, and so are their receipts.
    guards = [live_mode_required, requires_scope("read")]

    @get("/", summary="Receipts from the tenant's providers, newest first")
    async def list_receipts(
        self,
        request: ApiRequest,
        db_session: DbSession,
        provider_config_id: FromQuery[uuid.UUID | None] = None,
        verdict: FromQuery[Verdict | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
    ) -> ReceiptList:
        page = await service.list_receipts(
            db_session,
            tenant_id=request.user.tenant_id,
            provider_config_id=provider_config_id,
            verdict=verdict,
            limit=limit,
            cursor=cursor,
        )
        return ReceiptList(
            object="list",
            data=[ReceiptOut.of(r) for r in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @get(
        "/{receipt_id:uuid}",
        summary="A receipt: its headers (credentials redacted), body, verdict and events",
    )
    async def read_receipt(
        self, request: ApiRequest, db_session: DbSession, receipt_id: FromPath[uuid.UUID]
    ) -> ReceiptDetail:
        found = await service.get_receipt(
            db_session, tenant_id=request.user.tenant_id, receipt_id=receipt_id
        )
        if found is None:
            raise Problem(404, "not_found", f"No receipt {receipt_id} in this tenant.")
        return ReceiptDetail.full(*found)


def receipts_router() -> Router:
    """Providers' receipts: no API key, each request verified by its config's secret."""
    return Router(path="/webhooks", route_handlers=[receive])
