"""Bodies of /v1/audiences: who a notification would reach, asked before it is sent."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.audiences.filters import EXAMPLE, Filter
from app.recipients.validation import MAX_TOPIC_KEY, TOPIC_KEY_SCHEMA


class Audience(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of: `all` (every recipient of the key's mode), `topic` (the members of
    one topic), or `filter` (the recipients it matches). Erased recipients are never part
    of an audience."""

    openapi_extra: ClassVar[dict[str, Any]] = {
        "oneOf": [{"required": ["all"]}, {"required": ["topic"]}, {"required": ["filter"]}]
    }
    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"all": True},
        {"topic": "weekly-digest"},
        {"filter": EXAMPLE},
    ]

    all: Literal[True] | None = None
    topic: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1, max_length=MAX_TOPIC_KEY, extra_json_schema=TOPIC_KEY_SCHEMA
            ),
        ]
        | None
    ) = None
    filter: Filter | None = None


class AudienceCountRequest(msgspec.Struct, forbid_unknown_fields=True):
    openapi_examples: ClassVar[list[dict[str, Any]]] = [{"audience": {"filter": EXAMPLE}}]

    audience: Audience


class AudienceCount(msgspec.Struct):
    object: Literal["audience_count"]
    recipients: int
