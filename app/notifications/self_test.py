"""Sending a template to the member who asks, as a test ("send a test to me" in the editor).

The test is an ordinary notification, accepted by the one intake path (writer.py) as
`POST /v1/notifications` would accept it, in the member's current data mode: a test-mode
one is delivered to the sandbox provider, a live one through the tenant's providers. Its
only recipient is the member, upserted as the tenant's recipient `dashboard-member:<user
id>` with the member's e-mail address, and it goes by e-mail only. It carries no API key
(`Principal.key_id` is None). Its Idempotency-Key holds the member, the template, the body
and the minute, so a double click sends one e-mail, not two.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import msgspec

from app.auth import roles
from app.auth.keys import Principal
from app.channels import Channel
from app.notifications.intake import Accepted
from app.notifications.schemas import NotificationCreate
from app.notifications.writer import IntakeWriter
from app.recipients.schemas import RecipientInput

MEMBER_PREFIX = "dashboard-member:"
TEST_CHANNEL: Channel = "email"


def member_recipient_id(user_id: uuid.UUID) -> str:
    """The external id under which a member receives the tests they send themselves."""
    return f"{MEMBER_PREFIX}{user_id}"


async def send_test_to_member(
    writer: IntakeWriter,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    plan: str,
    user_id: uuid.UUID,
    email: str,
    template_key: str,
    data: dict[str, Any],
    locale: str | None = None,
    role: str | None,
) -> Accepted:
    """Accept a notification of `template_key` (its latest version) to the member's e-mail.

    Raises RoleNotAllowed for a role that may not send tests, and what the intake raises
    (InvalidNotification naming the field, IntakeUnavailable) as the API would answer it."""
    roles.require(role, "send_test")
    body = NotificationCreate(
        template=template_key,
        to=[RecipientInput(external_id=member_recipient_id(user_id), email=email)],
        channels=[TEST_CHANNEL],
        data=data,
        locale=locale,
    )
    principal = Principal(
        tenant_id=tenant_id,
        key_id=None,
        key_prefix="dashboard",
        mode=mode,
        scopes=frozenset({"send"}),
        plan=plan,
    )
    digest = hashlib.sha256(msgspec.json.encode(body)).hexdigest()[:32]
    minute = int(time.time() // 60)
    return await writer.accept(principal, body, f"dashboard-test:{user_id}:{digest}:{minute}")
