"""An app with Stripe billing on, its SDK pointed at a local fake of Stripe's API, and a
plans file naming the prices of the plans for sale (plus two plans with small quotas, one
billing overage and one blocking at its quota)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from app.main import create_app
from app.runtime import ServiceUrls
from app.settings import Settings
from app.tenants import plans
from tests.integration.billing.fake_stripe import FakeStripe, start
from tests.support import client_address, serving, settings_for

WEBHOOK_SECRET = "whsec_test_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH"
PRICES = {"growth": "price_growth_test", "enterprise": "price_enterprise_test"}
QUOTA = 10  # the inbox and email quotas of the two small plans

SMALL_PLANS = f"""
[plans.metered]
api_rate = 10000
api_burst = 10000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "bill"
price_per_1000 = "1.00"

[plans.metered.quota]
inbox = {QUOTA}
email = {QUOTA}

[plans.capped]
api_rate = 10000
api_burst = 10000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "block"

[plans.capped.quota]
inbox = {QUOTA}
"""


def sign(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """`Stripe-Signature` as Stripe documents it: t=<unix time>,v1=<hex HMAC-SHA256 with the
    whsec_ string as key over "<t>.<body>">; made here, apart from Herald's verifier."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@pytest.fixture(scope="session")
def billing_plans_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped plans with PRICES as their stripe_price_id, and the small plans."""
    text = plans.DEFAULT_FILE.read_text()
    for plan, price in PRICES.items():
        table = f"[plans.{plan}]\n"
        assert table in text
        text = text.replace(table, f'{table}stripe_price_id = "{price}"\n')
    path = tmp_path_factory.mktemp("billing-plans") / "plans.toml"
    path.write_text(text + SMALL_PLANS)
    return path


@pytest.fixture(scope="package", autouse=True)
def billing_plans(billing_plans_file: Path) -> Iterator[None]:
    """These plans for the tests of this folder, then the ones before. In the environment
    too: settings read in a test (settings_for) configure the plans again."""
    before = os.environ.get("HERALD_PLANS_FILE")
    os.environ["HERALD_PLANS_FILE"] = str(billing_plans_file)
    plans.configure(billing_plans_file)
    yield
    if before is None:
        del os.environ["HERALD_PLANS_FILE"]
    else:
        os.environ["HERALD_PLANS_FILE"] = before
    plans.configure(Path(before) if before else None)


@pytest.fixture(scope="session")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    server = start(fake)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def billing_settings(
    service_urls: ServiceUrls, fake_stripe: FakeStripe, billing_plans_file: Path
) -> Settings:
    return settings_for(
        service_urls.database_url,
        service_urls.redis_url,
        HERALD_STRIPE_SECRET_KEY="sk_test_herald",
        HERALD_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        HERALD_STRIPE_API_BASE=fake_stripe.url,
        HERALD_PLANS_FILE=str(billing_plans_file),
        HERALD_BILLING_GRACE_DAYS="7",
    )


@pytest.fixture(scope="session")
async def billing_app(billing_settings: Settings) -> AsyncIterator[Litestar]:
    async with serving(create_app(billing_settings)) as application:
        yield application


@pytest.fixture
async def billing_client(billing_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=billing_app, client=(client_address(), 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
        yield client


class Webhooks:
    """Posts events to /webhooks/stripe, signed as Stripe signs them."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, event: dict[str, Any], *, timestamp: int | None = None) -> httpx.Response:
        payload = json.dumps(event)
        return await self.client.post(
            "/webhooks/stripe",
            content=payload,
            headers={
                "Stripe-Signature": sign(payload, timestamp=timestamp),
                "Content-Type": "application/json",
            },
        )


@pytest.fixture
def webhooks(billing_client: httpx.AsyncClient) -> Webhooks:
    return Webhooks(billing_client)
