"""The committed OpenAPI document matches the app: regenerate with `herald openapi`."""

from __future__ import annotations

from pathlib import Path

from app.openapi import openapi_document

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "openapi.json"


def test_committed_openapi_is_current() -> None:
    assert COMMITTED.read_text() == openapi_document(), "stale: run `herald openapi`"


def test_every_v1_route_is_documented_with_bearer_auth() -> None:
    import json

    document = json.loads(openapi_document())
    paths = document["paths"]
    assert {"/v1/tenant", "/v1/api-keys", "/v1/api-keys/{key_id}"} <= set(paths)
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert not any(path.startswith(("/signin", "/keys", "/static")) for path in paths)
