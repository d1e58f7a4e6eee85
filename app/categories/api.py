"""/v1/categories: list a mode's categories, create or replace one.

Reading needs `read`; changing a category needs `manage`: a critical one overrides
recipients' opt-outs, which is configuration, not the integration that sends. Every category
read or written is of the calling key's mode (app/modes.py).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.categories import service
from app.categories.schemas import CategoryList, CategoryOut, CategoryUpdate
from app.dependencies import DbSession
from app.problems import field_error

ApiRequest = Request[Principal, None, Any]
READ = [requires_scope("read")]
MANAGE = [requires_scope("manage")]


def _category_out(record: service.CategoryRecord) -> CategoryOut:
    return CategoryOut(
        key=record.key,
        object="category",
        name=record.name,
        description=record.description,
        critical=record.critical,
        default=record.default,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


class CategoryController(Controller):
    path = "/categories"
    tags = ["Categories"]

    @get("/", guards=READ, summary="List categories, the built-in ones included")
    async def list_categories(self, request: ApiRequest, db_session: DbSession) -> CategoryList:
        records = await service.list_categories(
            db_session, tenant_id=request.user.tenant_id, mode=request.user.mode
        )
        return CategoryList(object="list", data=[_category_out(r) for r in records])

    @put(
        "/{key:str}",
        guards=MANAGE,
        status_code=200,
        responses={201: ResponseSpec(data_container=CategoryOut, description="Created")},
        summary="Create or replace a category (201 when the key is new)",
    )
    async def put_category(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        data: JSONBody[CategoryUpdate],
    ) -> Response[CategoryOut]:
        try:
            record, created = await service.put_category(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                key=key,
                name=data.name,
                description=data.description,
                critical=data.critical,
                actor=request.user.actor,
            )
        except service.CategoryInvalid as error:
            raise field_error(error.field, error.message) from None
        await db_session.commit()
        return Response(_category_out(record), status_code=201 if created else 200)
