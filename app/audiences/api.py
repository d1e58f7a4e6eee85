"""/v1/audiences: how many recipients an audience reaches, before anything is sent.

Reading needs `read`; the count is of the calling key's mode (app/modes.py).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.params import JSONBody

from app.apidoc import problem_responses
from app.audiences import service
from app.audiences.schemas import AudienceCount, AudienceCountRequest
from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.dependencies import DbSession
from app.problems import Problem, field_error

ApiRequest = Request[Principal, None, Any]


class AudienceController(Controller):
    path = "/audiences"
    tags = ["Audiences"]

    @post(
        "/count",
        status_code=200,
        guards=[requires_scope("read")],
        summary="Count the recipients an audience reaches now (a dry run: nothing is sent)",
        responses=problem_responses(
            {
                503: f"Counting took longer than {service.COUNT_TIMEOUT_MS // 1000} s and was "
                "stopped (narrow the filter), or this server runs as many counts as it allows "
                "(`Retry-After`)."
            }
        ),
    )
    async def count(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[AudienceCountRequest]
    ) -> AudienceCount:
        try:
            found = await service.count(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                audience=data.audience,
                slots=request.app.state.count_slots,
            )
        except service.CountsBusy as busy:
            raise _busy(busy.whose) from None
        except service.AudienceInvalid as invalid:
            raise field_error(invalid.field, invalid.message) from None
        except service.CountTimedOut:
            raise Problem(
                503,
                "audience_count_timeout",
                f"Counting took longer than {service.COUNT_TIMEOUT_MS // 1000} s and was "
                "stopped; narrow the filter or try again.",
            ) from None
        return AudienceCount(object="audience_count", recipients=found)


def _busy(whose: str) -> Problem:
    if whose == "tenant":
        return Problem(
            429,
            "rate_limited",
            "A count of this tenant's audiences is running: one runs at a time; retry in 1 s.",
            headers={"Retry-After": "1"},
            retry_after=1,
        )
    return Problem(
        503,
        "busy",
        "This server runs as many audience counts as it allows; retry in 1 s.",
        headers={"Retry-After": "1"},
        retry_after=1,
    )
