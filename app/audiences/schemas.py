"""Bodies of /v1/audiences: who a notification would reach, asked before it is sent."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from app.audiences.filters import EXAMPLE, Filter


class Audience(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of: `all` (every recipient of the key's mode), or `filter` (those it
    matches). Erased recipients are never part of an audience."""

    openapi_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["all"]}, {"required": ["filter"]}]
    }
    openapi_examples: ClassVar[list[dict[str, Any]]] = [{"all": True}, {"filter": EXAMPLE}]

    all: Literal[True] | None = None
    filter: Filter | None = None


class AudienceCountRequest(msgspec.Struct, forbid_unknown_fields=True):
    openapi_examples: ClassVar[list[dict[str, Any]]] = [{"audience": {"filter": EXAMPLE}}]

    audience: Audience


class AudienceCount(msgspec.Struct):
    object: Literal["audience_count"]
    recipients: int
