"""The OpenAPI document of the REST API, as committed in docs/openapi/openapi.json."""

from __future__ import annotations

import json

from app.main import create_app
from app.settings import load_settings


def openapi_document() -> str:
    settings = load_settings({"HERALD_ENV": "test", "HERALD_SECRET_KEY": "A" * 43})
    schema = create_app(settings).openapi_schema.to_schema()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
