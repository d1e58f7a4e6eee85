"""/healthz and /readyz against real services, including a Redis that goes away."""

from __future__ import annotations

import subprocess

import httpx

from app.runtime import ServiceUrls
from tests.support import ready_client, settings_for


async def test_healthz_needs_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_ready_when_both_answer(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_not_ready_names_redis_when_it_dies(
    service_urls: ServiceUrls, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, redis_url = own_redis
    async with ready_client(settings_for(service_urls.database_url, redis_url)) as client:
        assert (await client.get("/readyz")).status_code == 200

        process.kill()
        process.wait()
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["redis"] != "ok"
        assert "redis" in body["detail"] and "postgres" not in body["detail"]


async def test_metrics_are_exposed(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    text = (await client.get("/metrics")).text
    assert 'herald_http_requests_total{method="GET",route="/healthz",status="200"}' in text
