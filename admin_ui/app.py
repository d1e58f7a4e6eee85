"""Wiring of the dashboard: its routers, templates, static files, session cookie and plugins."""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, Router
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.plugins import PluginProtocol
from litestar.plugins.htmx import HTMXPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from admin_ui.account import AccountController, ModeController
from admin_ui.accounts import AccountsController
from admin_ui.audit import AuditController
from admin_ui.billing import BillingPageController
from admin_ui.csrf import CsrfTokens, csrf_middleware
from admin_ui.dlq import DlqController
from admin_ui.errors import EXCEPTION_HANDLERS
from admin_ui.keys import KeysController
from admin_ui.members import InviteController, MembersController, TenantSwitchController
from admin_ui.messages import MessagesController
from admin_ui.notifications import NotificationsController
from admin_ui.overview import OverviewController
from admin_ui.pages import SECURITY_HEADERS, register_template_helpers
from admin_ui.password_reset import PasswordResetController
from admin_ui.providers import ProvidersController
from admin_ui.receipts import ReceiptsController
from admin_ui.recipients import RecipientsController
from admin_ui.session import session_middleware
from admin_ui.settings import SettingsController
from admin_ui.sso import SsoController
from admin_ui.template_pages import TemplatePagesController
from admin_ui.unsubscribe import EXCEPTION_HANDLERS as PUBLIC_EXCEPTION_HANDLERS
from admin_ui.unsubscribe import PUBLIC_HEADERS, UnsubscribeController
from admin_ui.webhooks import WebhooksController
from app.settings import Settings

HERE = Path(__file__).parent

# Every signed-in page's controller, one per line; each module says what its pages are for.
PAGES: list[type[Controller]] = [
    BillingPageController,
    AccountsController,
    AccountController,
    ModeController,
    KeysController,
    MembersController,
    InviteController,
    TenantSwitchController,
    PasswordResetController,
    SsoController,
    TemplatePagesController,
    MessagesController,
    RecipientsController,
    ProvidersController,
    SettingsController,
    WebhooksController,
    ReceiptsController,
    AuditController,
    DlqController,
    NotificationsController,
    OverviewController,
]

SECURITY_RESPONSE_HEADERS = [
    ResponseHeader(name=name, value=value) for name, value in SECURITY_HEADERS.items()
]


class Dashboard:
    """The dashboard as create_app mounts it: routers, template engine and plugins."""

    def __init__(self, settings: Settings, secret_key: bytes) -> None:
        self.settings = settings
        self.secret_key = secret_key

    def routers(self) -> list[Router]:
        return [
            Router(
                path="/",
                route_handlers=PAGES,
                # The CSRF check reads the session: it comes second.
                middleware=[
                    session_middleware(self.settings, self.secret_key),
                    csrf_middleware(CsrfTokens(self.secret_key)),
                ],
                exception_handlers=EXCEPTION_HANDLERS,
                response_headers=SECURITY_RESPONSE_HEADERS,
                # Pages show tenant data and, once, a key's secret: never cache them.
                cache_control=CacheControlHeader(no_store=True),
                include_in_schema=False,
            ),
            # A recipient's unsubscribe pages: the token in the path is the capability, and a
            # mail provider's one-click POST carries no cookie, so neither the session nor
            # the CSRF check applies (admin_ui/unsubscribe.py).
            Router(
                path="/",
                route_handlers=[UnsubscribeController],
                exception_handlers=PUBLIC_EXCEPTION_HANDLERS,
                response_headers=[
                    ResponseHeader(name=name, value=value) for name, value in PUBLIC_HEADERS.items()
                ],
                cache_control=CacheControlHeader(no_store=True),
                include_in_schema=False,
            ),
            create_static_files_router(
                path="/static", directories=[HERE / "static"], include_in_schema=False
            ),
        ]

    def template_config(self) -> TemplateConfig[JinjaTemplateEngine]:
        return TemplateConfig(
            directory=HERE / "templates",
            engine=JinjaTemplateEngine,
            engine_callback=register_template_helpers,
        )

    def plugins(self) -> list[PluginProtocol]:
        return [HTMXPlugin()]
