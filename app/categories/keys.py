"""The form of a category key, shared by categories and the preferences that name them."""

from __future__ import annotations

import re
from typing import Any

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KEY_RULE = "1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"


def is_category_key(key: str) -> bool:
    return KEY_PATTERN.fullmatch(key) is not None  # `$` alone would let a final newline by


# The same form in the OpenAPI document (bodies and path parameters naming a category).
KEY_SCHEMA: dict[str, Any] = {"pattern": KEY_PATTERN.pattern}
