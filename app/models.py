"""Imports every domain's models so that Base.metadata knows all tables (Alembic, tests)."""

from __future__ import annotations


def load_all() -> None:
    import app.analytics.models
    import app.audit.models
    import app.auth.models
    import app.auth.sso.models
    import app.billing.models
    import app.categories.models
    import app.notifications.models
    import app.providers.models
    import app.receipts.models
    import app.recipients.models
    import app.templates.models
    import app.tenants.models
    import app.usage.models
    import app.webhooks.models  # noqa: F401
