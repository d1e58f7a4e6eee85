"""Request and response bodies of /v1/categories.

Limits are checked again by the service, which Python callers reach without msgspec's
decoding.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec


class CategoryUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    critical: bool = False


class CategoryOut(msgspec.Struct):
    key: str
    object: Literal["category"]
    name: str
    description: str
    critical: bool
    default: bool
    created_at: datetime | None
    updated_at: datetime | None


class CategoryList(msgspec.Struct):
    object: Literal["list"]
    data: list[CategoryOut]
