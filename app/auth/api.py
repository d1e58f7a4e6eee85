"""/v1/api-keys: issue, list, read and revoke the tenant's API keys (scope `manage`).

A test key sees and manages test keys only; a live key, keys of both modes (app/auth/keys.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app.apidoc import problem_responses
from app.auth import keys
from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyOut
from app.dependencies import DbSession
from app.pagination import MAX_LIMIT
from app.problems import Problem, field_error

ApiRequest = Request[Principal, None, Any]


def _not_found(key_id: FromPath[uuid.UUID]) -> Problem:
    return Problem(404, "not_found", f"No API key {key_id} that this key may see.")


class ApiKeyController(Controller):
    path = "/api-keys"
    tags = ["API keys"]
    guards = [requires_scope("manage")]

    @post(
        "/",
        summary="Create an API key; the secret is in this answer only",
        responses=problem_responses(
            {409: "The tenant already holds 100 keys that are not revoked."}
        ),
    )
    async def create_key(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[ApiKeyCreate]
    ) -> ApiKeyCreated:
        principal = request.user
        try:
            issued = await keys.issue_key(
                db_session,
                tenant_id=principal.tenant_id,
                name=data.name,
                mode=data.mode or principal.mode,
                scopes=list(data.scopes),
                actor=principal.actor,
                caller_mode=principal.mode,
                rate_per_second=data.rate_per_second,
                burst=data.burst,
            )
        except keys.KeyForbidden as forbidden:
            raise Problem(
                403,
                "forbidden",
                f"{forbidden} Use a live key with `manage`.",
                errors=[{"field": "mode", "message": "live keys need a live caller"}],
            ) from None
        except keys.KeyLimitReached as full:
            raise Problem(409, "key_limit_reached", str(full)) from None
        except keys.InvalidKeyRequest as invalid:
            raise field_error(invalid.field, str(invalid)) from None
        await db_session.commit()
        out = ApiKeyOut.of(issued.key)
        return ApiKeyCreated(
            **{f: getattr(out, f) for f in out.__struct_fields__}, secret=issued.secret
        )

    @get("/", summary="List API keys, newest first")
    async def list_keys(
        self,
        request: ApiRequest,
        db_session: DbSession,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
    ) -> ApiKeyList:
        page = await keys.list_keys(
            db_session,
            tenant_id=request.user.tenant_id,
            modes=keys.modes_visible_to(request.user.mode),
            limit=limit,
            cursor=cursor,
        )
        return ApiKeyList(
            object="list",
            data=[ApiKeyOut.of(k) for k in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @get("/{key_id:uuid}", summary="Read one API key")
    async def get_key(
        self, request: ApiRequest, db_session: DbSession, key_id: FromPath[uuid.UUID]
    ) -> ApiKeyOut:
        key = await keys.get_key(
            db_session,
            tenant_id=request.user.tenant_id,
            key_id=key_id,
            modes=keys.modes_visible_to(request.user.mode),
        )
        if key is None:
            raise _not_found(key_id)
        return ApiKeyOut.of(key)

    @delete("/{key_id:uuid}", status_code=200, summary="Revoke an API key (effective within 1 s)")
    async def revoke_key(
        self, request: ApiRequest, db_session: DbSession, key_id: FromPath[uuid.UUID]
    ) -> ApiKeyOut:
        key = await keys.revoke_key(
            db_session,
            tenant_id=request.user.tenant_id,
            key_id=key_id,
            actor=request.user.actor,
            modes=keys.modes_visible_to(request.user.mode),
        )
        if key is None:
            raise _not_found(key_id)
        await db_session.commit()
        return ApiKeyOut.of(key)
