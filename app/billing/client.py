"""The Stripe SDK client Herald uses: async over httpx, pointed at HERALD_STRIPE_API_BASE
when that is set (tests point it at a local server answering Stripe's shapes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import stripe

from app.billing import enabled
from app.settings import Settings

# The SDK retries connection errors and 409/429/5xx answers itself, with an Idempotency-Key
# on every POST, so a retried create is not made twice.
NETWORK_RETRIES = 2
TIMEOUT = 20.0  # seconds


@asynccontextmanager
async def stripe_client(settings: Settings) -> AsyncIterator[stripe.StripeClient | None]:
    """A client for the configured account, its connections closed on exit; None when
    billing is off."""
    if not enabled(settings):
        yield None
        return
    assert settings.stripe_secret_key is not None
    http = stripe.HTTPXClient(timeout=TIMEOUT)
    base = settings.stripe_api_base
    client = stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": base, "meter_events": base} if base else {},
        max_network_retries=NETWORK_RETRIES,
        http_client=http,
    )
    try:
        yield client
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
