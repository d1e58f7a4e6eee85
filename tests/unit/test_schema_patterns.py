"""Each pattern the OpenAPI document gives a recipient field is as strict as its validator:
every string it matches, the validator accepts (app/recipients/validation.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.categories.keys import KEY_SCHEMA as CATEGORY_KEY_SCHEMA
from app.providers.credentials import WEBHOOK_SECRET_PATTERN
from app.providers.standard_webhooks import secret_problem
from app.recipients.validation import (
    EMAIL_SCHEMA,
    EXTERNAL_ID_SCHEMA,
    LOCALE_SCHEMA,
    TOPIC_KEY_SCHEMA,
    URL_SCHEMA,
    RecipientInvalid,
    check_category_key,
    check_topic_key,
    normalise_email,
    normalise_external_id,
    normalise_locale,
    normalise_url,
)


def _webhook_secret(value: str) -> None:
    if problem := secret_problem(value):
        raise RecipientInvalid("secret", problem)


CASES: list[tuple[str, dict[str, Any], Callable[[str], object]]] = [
    ("email", EMAIL_SCHEMA, normalise_email),
    ("external_id", EXTERNAL_ID_SCHEMA, normalise_external_id),
    ("webhook_url", URL_SCHEMA, normalise_url),
    ("locale", LOCALE_SCHEMA, normalise_locale),
    ("category", CATEGORY_KEY_SCHEMA, check_category_key),
    ("topic", TOPIC_KEY_SCHEMA, check_topic_key),
    ("webhook secret", {"pattern": WEBHOOK_SECRET_PATTERN}, _webhook_secret),
]


@pytest.mark.parametrize(("name", "schema", "validator"), CASES, ids=[c[0] for c in CASES])
def test_what_the_pattern_matches_the_validator_accepts(
    name: str, schema: dict[str, Any], validator: Callable[[str], object]
) -> None:
    limit = schema.get("maxLength", 10_000)
    refused: list[str] = []
    # fullmatch: JSON Schema's `$` (ECMA-262) is the end of the string, where Python's also
    # matches before a final newline.
    strings = st.from_regex(schema["pattern"], fullmatch=True)

    @settings(
        max_examples=100,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strings.filter(lambda value: len(value) <= limit))
    def check(value: str) -> None:
        try:
            validator(value)
        except RecipientInvalid:
            refused.append(value)

    check()
    assert not refused, f"{name}: the document allows {refused[:5]!r}"


def test_the_patterns_compile_as_python_regexes() -> None:
    for _, schema, _ in CASES:
        re.compile(schema["pattern"])
