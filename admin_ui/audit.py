"""The audit log page: who changed what in the tenant, newest first, and whether the log's
hash chain still holds.

Entries are filtered by actor (exact), action (a prefix: `webhook_endpoint.` finds every
endpoint change) and days (UTC), and paged by their sequence number. The chain's state is
the audit service's check of the newest CHECKED_ENTRIES entries (app/audit/service.py
`check_recent`): every entry's MAC under the operator's audit keys, its link to the entry
before and the numbering. That bounds what a page view costs; a longer chain's older part
is checked by `herald audit verify`, and the page says so. The log is the tenant's, not a
mode's: it shows live and test changes alike. Reading only: every member may.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get
from litestar.di import Provide

from admin_ui.pages import page
from admin_ui.query_params import bad_input, query_day, query_positive_int, query_text
from admin_ui.session import SignedInMember, provide_member
from app.audit import service as audit
from app.dependencies import DbSession

PAGE_SIZE = 50
# Entries whose MACs and links a page view checks, read through the (tenant_id, seq) index:
# 1,000 cost 65 ms on the shared 2-core test machine (a JSON encoding and an HMAC each), half
# the page's budget; 500 leave room for the entries list beside them.
CHECKED_ENTRIES = 500
MAX_ACTOR = 200  # audit_log.actor
MAX_ACTION = 100  # audit_log.action


class AuditController(Controller):
    path = "/audit"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def audit_log(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        actor = query_text(request, "actor", MAX_ACTOR)
        action = query_text(request, "action", MAX_ACTION)
        since = query_day(request, "from")
        until_day = query_day(request, "to")
        before = query_positive_int(request, "before")
        if since is not None and until_day is not None and until_day < since:
            raise bad_input("to", "a day on or after the day in 'from'")
        found = await audit.list_entries(
            db_session,
            tenant_id=member.tenant.id,
            limit=PAGE_SIZE,
            before=before,
            actor=actor or None,
            action=action or None,
            since=since,
            until=None if until_day is None else until_day + timedelta(days=1),
        )
        state = await audit.check_recent(
            db_session, tenant_id=member.tenant.id, limit=CHECKED_ENTRIES
        )
        filters = {
            "actor": actor,
            "action": action,
            "from": request.query_params.get("from") or "",
            "to": request.query_params.get("to") or "",
        }
        kept = {name: value for name, value in filters.items() if value}
        return page(
            "audit/list.html",
            member=member,
            entries=found.entries,
            next_url=(
                None
                if found.next_before is None
                else "/audit?" + urlencode({**kept, "before": found.next_before})
            ),
            newest_url="/audit?" + urlencode(kept) if before else None,
            filters=filters,
            filtered=bool(kept) or before is not None,
            state=state,
            checked_entries=CHECKED_ENTRIES,
            pretty=lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
        )
