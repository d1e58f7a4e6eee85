"""Request and response bodies of the API-key endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from app.auth.keys import MAX_KEY_BURST, MAX_KEY_RATE
from app.auth.models import ApiKey

Scope = Literal["send", "read", "manage"]
Mode = Literal["live", "test"]


class ApiKeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    mode: Mode | None = None
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["send", "read", "manage"]
    )
    # A limit of the key's own, below its tenant's plan: both or neither.
    rate_per_second: Annotated[float, msgspec.Meta(gt=0, le=MAX_KEY_RATE)] | None = None
    burst: Annotated[int, msgspec.Meta(ge=1, le=MAX_KEY_BURST)] | None = None


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
    rate_per_second: float | None
    burst: int | None

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
            rate_per_second=key.rate_per_second,
            burst=key.burst,
        )


class ApiKeyCreated(ApiKeyOut):
    secret: str = ""


class ApiKeyList(msgspec.Struct):
    object: Literal["list"]
    data: list[ApiKeyOut]
    has_more: bool
    next_cursor: str | None
