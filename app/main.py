"""The application factory: routes, authentication, dependencies, lifespan and OpenAPI."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis

import admin_ui
from app.apidoc import MsgspecSchemaPlugin, complete_document
from app.audiences.api import AudienceController
from app.audiences.service import CountSlots
from app.auth.accounts import Guards
from app.auth.api import ApiKeyController
from app.auth.devices import DeviceTokens
from app.auth.keys import KeyCache
from app.auth.mailer import SystemMailer
from app.auth.middleware import ApiKeyAuthenticationMiddleware
from app.auth.passwords import Passwords
from app.auth.throttle import AccountThrottle
from app.billing.api import BillingController, stripe_webhook
from app.categories.api import CategoryController
from app.crypto import keyring_for
from app.db import create_engine, session_factory
from app.dependencies import Services
from app.dlq.api import DlqController
from app.health import healthz, metrics, readyz
from app.inbox.api import InboxController, InboxTokenController
from app.inbox.guard import InboxAuthentication, refuse_inbox_tokens
from app.inbox.tokens import InboxTokenSigner
from app.inputs import CheckedRequest, refuse_nul_parameters
from app.notifications.api import NotificationController, list_messages, read_message
from app.notifications.writer import IntakeWriter
from app.observability.logging import configure_logging
from app.observability.middleware import request_context_middleware
from app.observability.tracing import start_tracing, stop_tracing
from app.problems import EXCEPTION_HANDLERS
from app.providers.api import ProviderController
from app.providers.breaker import CircuitBreakers
from app.ratelimit.buckets import CostBuckets, TokenBuckets
from app.ratelimit.middleware import REDIS_TIMEOUT as RATE_LIMIT_TIMEOUT
from app.ratelimit.middleware import rate_limit_middleware
from app.receipts import sns
from app.receipts.api import ReceiptController, receipts_router
from app.recipients.api import RecipientController, SuppressionController
from app.recipients.topics_api import TopicController
from app.runtime import EmbeddedServices
from app.settings import Settings, load_settings
from app.templates.api import TemplateController
from app.templates.pool import RenderPool
from app.templates.renderer import Renderer
from app.tenants.api import TenantSettingsController, who_am_i
from app.unsubscribe.tokens import UnsubscribeTokens
from app.usage.api import get_usage
from app.usage.meter import Meter
from app.webhooks.api import WebhookEndpointController

# The composition root may plug the queues' implementation into the domain; nothing else
# under app/ imports jobs/ (the import-linter contract in pyproject.toml).
from jobs import queues

log = structlog.get_logger(__name__)

API_VERSION = "2026-11-01"
SCALAR_VERSION = "1.76.4"  # @scalar/api-reference, vendored in admin_ui/static/scalar/
UNTRACED_PATHS = ["/healthz", "/readyz", "/metrics", "/static/"]  # probes and scrapes


def secret_key(settings: Settings) -> bytes:
    """The configured key; in development, one generated once and kept in the data folder."""
    if settings.secret_key is not None:
        return settings.secret_key
    path = settings.data_dir / "secret_key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        path.chmod(0o600)
    return base64.urlsafe_b64decode(path.read_text().strip())


def account_guards(settings: Settings, redis: Redis) -> Guards:
    """The dashboard's password doors: hashing pool, limits in Redis, device cookies."""
    throttle = AccountThrottle(
        TokenBuckets(redis),
        redis,
        secret_key(settings),
        max_failures=settings.signin_max_failures,
        longest_delay=settings.signin_lockout_seconds,
    )
    return Guards(
        Passwords(settings.password_hash_concurrency), throttle, DeviceTokens(secret_key(settings))
    )


def _lifespan(  # type: ignore[no-untyped-def]
    settings: Settings, tracing: TracerProvider | None, services: Services
):
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.env == "production" and settings.smtp_url is None:
            log.warning("HERALD_SMTP_URL is unset: e-mail verification links go to this log")
        embedded = EmbeddedServices(settings.data_dir, settings.database_url, settings.redis_url)
        # Without URLs only when an ASGI server runs the factory itself (the CLI starts the
        # servers first). On this thread, not a pool's: a server ends when the thread that
        # started it does (app/children.py).
        urls = embedded.start()
        engine = create_engine(urls.database_url)
        redis = Redis.from_url(urls.redis_url)
        arq = await queues.connect(urls.redis_url)
        outbox = queues.outbox(arq)
        app.state.update(
            engine=engine,
            sessions=session_factory(engine),
            redis=redis,
            breakers=CircuitBreakers(redis),
            key_cache=KeyCache(settings.api_key_cache_seconds),
            token_buckets=TokenBuckets(redis, batch_timeout=RATE_LIMIT_TIMEOUT),
            account_guards=account_guards(settings, redis),
            mailer=SystemMailer(settings.smtp_url, settings.mail_from),
            count_slots=CountSlots(),
            # SES receipts: SNS signing certificates, fetched only from SNS's own origins.
            sns_certificates=sns.CertificateCache(httpx.AsyncClient(timeout=10.0)),
            sns_origins=sns.SNS_ORIGINS,
        )
        # Its own small pool: the writer runs one batch at a time and checks connections
        # itself, so it skips the per-checkout ping of the request pool.
        intake_engine = create_engine(urls.database_url, pool_size=2, pre_ping=False)
        meter = Meter(redis) if settings.metering else None
        app.state.meter = meter
        intake_writer = IntakeWriter(intake_engine, outbox, meter)
        intake_writer.start()
        services.outbox, services.intake_writer = outbox, intake_writer
        # Template previews render in processes of their own, killed at their deadline.
        render_pool = RenderPool(
            processes=settings.render_processes, memory_mb=settings.render_memory_mb
        )
        render_pool.start()
        app.state.renderer = Renderer(render_pool, CostBuckets(redis))
        # What start-up built (routes, schemas, models, templates) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise walk it all
        # and stall the event loop for 50-100 ms whenever requests allocate enough.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await asyncio.to_thread(render_pool.close)
            await intake_writer.stop()
            await app.state.sns_certificates.client.aclose()
            app.state.account_guards.passwords.close()
            await intake_engine.dispose()
            await arq.aclose()
            await redis.aclose()
            await engine.dispose()
            await asyncio.to_thread(embedded.stop)
            await asyncio.to_thread(stop_tracing, tracing)

    return lifespan


def api_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[
            who_am_i,
            get_usage,
            TenantSettingsController,
            ApiKeyController,
            NotificationController,
            list_messages,
            read_message,
            DlqController,
            InboxTokenController,
            RecipientController,
            TopicController,
            CategoryController,
            SuppressionController,
            ProviderController,
            TemplateController,
            AudienceController,
            WebhookEndpointController,
            ReceiptController,
            BillingController,
        ],
        # API keys only: an inbox token is refused (403) before their authentication. Then
        # authentication: the rate limit takes from the authenticated key's bucket.
        middleware=[refuse_inbox_tokens, ApiKeyAuthenticationMiddleware, rate_limit_middleware],
        security=[{"apiKey": []}],
    )


def inbox_router() -> Router:
    """The routes that read and mark an inbox: they take a recipient's inbox token, checked
    by the inbox's own authentication, as well as an API key (app/inbox/guard.py)."""
    return Router(
        path="/v1",
        route_handlers=[InboxController],
        # The rate limit takes from the token's recipient bucket, or the key's.
        middleware=[InboxAuthentication, rate_limit_middleware],
        security=[{"apiKey": []}],
    )


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Herald API",
        version=API_VERSION,
        description=(
            "Multi-tenant notification API. Authenticate with `Authorization: Bearer "
            "hk_live_…` (or `hk_test_…`). Errors are RFC 9457 problem+json."
        ),
        path="/docs",
        # A pinned copy served with the dashboard's static files (admin_ui/static/scalar/),
        # not a CDN's `@latest`: the reference works offline and behind firewalls, and
        # changes only when the copy does. Scalar's web fonts are not fetched either.
        render_plugins=[
            ScalarRenderPlugin(
                version=SCALAR_VERSION,
                js_url="/static/scalar/standalone.js",
                css_url="/static/scalar/style.css",
                options={"withDefaultFonts": False, "showDeveloperTools": "never"},
                favicon='<link rel="icon" type="image/svg+xml" href="/static/favicon.svg">',
            )
        ],
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(
                    type="http", scheme="bearer", description="An API key: hk_live_… or hk_test_…"
                )
            }
        ),
    )


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    dashboard = admin_ui.Dashboard(settings, secret_key(settings))
    tracing = start_tracing(settings.otlp_endpoint, settings.trace_sample_ratio, "herald-api")
    services = Services()
    plugins = [MsgspecSchemaPlugin(), *dashboard.plugins()]
    if tracing is not None:
        traced = OpenTelemetryConfig(tracer_provider=tracing, exclude=UNTRACED_PATHS)
        plugins.append(OpenTelemetryPlugin(traced))
    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            api_router(),
            inbox_router(),
            receipts_router(),
            stripe_webhook,
            *dashboard.routers(),
        ],
        dependencies=services.dependencies(),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        # Input limits of every route: JSON nesting depth, no NUL in any string (app/inputs.py).
        request_class=CheckedRequest,
        before_request=refuse_nul_parameters,
        middleware=[request_context_middleware],
        lifespan=[_lifespan(settings, tracing, services)],
        openapi_config=openapi_config(),
        template_config=dashboard.template_config(),
        plugins=plugins,
        # No app-wide CSRF config: the dashboard's router checks session-bound tokens
        # (admin_ui/csrf.py); /v1 and /webhooks take keys and signatures, not cookies.
        request_max_body_size=settings.max_body_bytes,
        state=State(
            {
                "settings": settings,
                "inbox_tokens": InboxTokenSigner(secret_key(settings)),
                # What the unsubscribe pages verify: the links delivery puts on e-mail.
                "unsubscribe_tokens": UnsubscribeTokens(keyring_for(settings)),
            }
        ),
    )
    # Built once here, where the errors every route may answer are added to it; /docs and
    # `herald openapi` serve this same object.
    complete_document(app.openapi_schema)
    return app
