"""Stripe event bodies as the API documents them (API version 2025-03-31 and later: an
invoice names its subscription under parent.subscription_details)."""

from __future__ import annotations

import time
import uuid
from typing import Any


def event(kind: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": int(time.time()) if created is None else created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }


def checkout_completed(
    tenant_id: uuid.UUID, customer: str, subscription: str, *, created: int | None = None
) -> dict[str, Any]:
    return event(
        "checkout.session.completed",
        {
            "id": f"cs_test_{uuid.uuid4().hex}",
            "object": "checkout.session",
            "client_reference_id": str(tenant_id),
            "customer": customer,
            "mode": "subscription",
            "payment_status": "paid",
            "status": "complete",
            "subscription": subscription,
            "metadata": {"tenant_id": str(tenant_id)},
        },
        created=created,
    )


def subscription(
    kind: str,
    subscription_id: str,
    customer: str,
    *,
    price: str,
    status: str = "active",
    born: int,
    created: int,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """customer.subscription.<kind>: the subscription `born` at that time, in `status`."""
    return event(
        f"customer.subscription.{kind}",
        {
            "id": subscription_id,
            "object": "subscription",
            "created": born,
            "customer": customer,
            "status": status,
            "cancel_at_period_end": False,
            "metadata": metadata or {},
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": f"si_{subscription_id[4:]}",
                        "object": "subscription_item",
                        "price": {"id": price, "object": "price", "type": "recurring"},
                        "quantity": 1,
                    }
                ],
            },
        },
        created=created,
    )


def invoice(kind: str, customer: str, subscription_id: str, *, created: int) -> dict[str, Any]:
    paid = kind == "invoice.paid"
    return event(
        kind,
        {
            "id": f"in_{uuid.uuid4().hex[:24]}",
            "object": "invoice",
            "customer": customer,
            "status": "paid" if paid else "open",
            "attempt_count": 1,
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": subscription_id, "metadata": {}},
            },
        },
        created=created,
    )
