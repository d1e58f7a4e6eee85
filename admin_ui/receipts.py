"""The receipts pages: every request a provider's webhook made to Herald for the tenant, and
what Herald made of it.

/receipts lists them newest first, filtered by provider config and by verdict (verified,
bad_signature, stale, replayed, unparseable), paged by cursor. /receipts/{id} shows one:
its verdict and why, its headers (credentials redacted when it was stored), its body as
received (escaped; indented when it is JSON) and the events it produced, each linking to its
message. Provider configs are live, so receipts only exist in live mode: in test mode the
pages say so (and a receipt's page is not found there). Reading only: no role is needed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from admin_ui.pages import page
from admin_ui.query_params import query_choice, query_uuid
from admin_ui.session import SignedInMember, provide_member
from app.dependencies import DbSession
from app.providers import service as providers
from app.receipts import service as receipts
from app.receipts.models import VERDICTS, Receipt

PAGE_SIZE = 50
# Receipts of the tenant's configs; `unknown_config` ones name no tenant and are never listed.
SHOWN_VERDICTS = tuple(verdict for verdict in VERDICTS if verdict != "unknown_config")
VERDICT_HELP = {
    "verified": "The signature checked out; its events were applied.",
    "replayed": "Signed, but every event in it was already known: nothing changed.",
    "bad_signature": "The signature did not match the provider config's credentials.",
    "stale": "Signed too long ago: refused as a possible replay.",
    "unparseable": "Signed or not, Herald could not read the body.",
    "unknown_config": "The URL named no provider config Herald knows.",
}
MAX_BODY_SHOWN = 256 * 1024  # what a receipt stores at most (receipts.STORED_BODY_LIMIT)


def body_text(receipt: Receipt) -> tuple[str, bool]:
    """The stored body as text for a <pre> (the template escapes it), and whether it is JSON
    (then indented)."""
    raw = (receipt.body or b"")[:MAX_BODY_SHOWN]
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
    except ValueError:
        return text, False


class ReceiptsController(Controller):
    path = "/receipts"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def list_receipts(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        config_id = query_uuid(request, "config")
        verdict = query_choice(request, "verdict", SHOWN_VERDICTS)
        cursor = query_uuid(request, "cursor")
        if member.mode != receipts.MODE:
            return page("receipts/list.html", member=member, live=False)
        configs = await providers.list_configs(db_session, tenant_id=member.tenant.id, limit=100)
        found = await receipts.list_receipts(
            db_session,
            tenant_id=member.tenant.id,
            provider_config_id=config_id,
            verdict=verdict,
            limit=PAGE_SIZE,
            cursor=cursor,
        )
        return page(
            "receipts/list.html",
            member=member,
            live=True,
            receipts=found.items,
            next_cursor=found.next_cursor,
            cursor=cursor,
            configs=configs.items,
            config_names={config.id: config.name for config in configs.items},
            config_id=config_id,
            verdict=verdict,
            verdicts=SHOWN_VERDICTS,
            verdict_help=VERDICT_HELP,
        )

    @get("/{receipt_id:uuid}")
    async def show_receipt(
        self, db_session: DbSession, member: SignedInMember, receipt_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        found = None
        if member.mode == receipts.MODE:
            found = await receipts.get_receipt(
                db_session, tenant_id=member.tenant.id, receipt_id=receipt_id
            )
        if found is None:
            raise NotFoundException(
                f"No receipt {receipt_id} in {member.tenant.name}'s {member.mode} data."
            )
        receipt, events = found
        config = await providers.get_config(
            db_session, tenant_id=member.tenant.id, config_id=receipt.provider_config_id
        )
        body, is_json = body_text(receipt)
        return page(
            "receipts/detail.html",
            member=member,
            receipt=receipt,
            events=events,
            more_events=receipt.new_events > len(events),
            config=config,
            body=body,
            is_json=is_json,
            verdict_help=VERDICT_HELP,
            pretty=lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
        )
