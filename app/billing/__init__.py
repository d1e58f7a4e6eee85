"""Billing with Stripe: plans bought through Checkout, managed in the Customer Portal, kept
in step by Stripe's webhooks, and overage reported to a Stripe billing meter.

Billing is on when both Stripe secrets are configured (`enabled`); without them nothing here
calls Stripe and tenants keep the plan the operator gives them.
"""

from __future__ import annotations

from app.settings import Settings


def enabled(settings: Settings) -> bool:
    """Whether Stripe billing is configured (both its API key and its webhook secret)."""
    return bool(settings.stripe_secret_key and settings.stripe_webhook_secret)
