"""Request and response bodies of the API-key endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from app.auth.models import ApiKey

Scope = Literal["send", "read", "manage"]
Mode = Literal["live", "test"]


class ApiKeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    mode: Mode | None = None
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["send", "read", "manage"]
    )


class ApiKeyOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["api_key"]
    name: str
    prefix: str
    mode: Mode
    scopes: list[Scope]
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(
            id=key.id,
            object="api_key",
            name=key.name,
            prefix=key.prefix,
            mode=key.mode,  # type: ignore[arg-type]
            scopes=key.scopes,  # type: ignore[arg-type]
            created_at=key.created_at,
            created_by=key.created_by,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


class ApiKeyCreated(ApiKeyOut):
    secret: str = ""


class ApiKeyList(msgspec.Struct):
    object: Literal["list"]
    data: list[ApiKeyOut]
    has_more: bool
    next_cursor: str | None
