"""Bodies of /v1/billing: where to send the tenant's owner to pay or manage billing."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

ReturnUrl = Annotated[
    str,
    msgspec.Meta(
        pattern="^https?://[^\\s]+$",
        max_length=2048,
        description="An absolute http(s) URL Stripe sends the owner back to.",
    ),
]


class CheckoutBody(msgspec.Struct, forbid_unknown_fields=True):
    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {
            "plan": "growth",
            "success_url": "https://app.example.com/billing/done",
            "cancel_url": "https://app.example.com/billing",
        }
    ]

    plan: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    success_url: ReturnUrl
    cancel_url: ReturnUrl


class PortalBody(msgspec.Struct, forbid_unknown_fields=True):
    return_url: ReturnUrl


class BillingRedirect(msgspec.Struct):
    object: Literal["billing_redirect"]
    kind: Annotated[
        Literal["checkout", "plan_change", "portal"],
        msgspec.Meta(
            description="`checkout`: Stripe Checkout, to subscribe; `plan_change`: the "
            "Customer Portal's page confirming a new price for the current subscription; "
            "`portal`: the Customer Portal."
        ),
    ]
    url: str
