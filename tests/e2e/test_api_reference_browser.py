"""The API reference at /docs in a real browser, with every request to another host refused:
the pinned copy of Scalar served by Herald itself renders the OpenAPI document, so the page
works offline and behind a firewall. Leaves test-artifacts/api-reference.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Route, async_playwright, expect

from app.runtime import ServiceUrls
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.support import herald_api


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    with herald_api(service_urls.database_url, service_urls.redis_url, tmp_path) as api:
        yield api.url


async def test_the_reference_is_served_pinned_and_renders_offline(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as client:
        page_html = (await client.get("/docs")).text
        script = await client.get("/static/scalar/standalone.js")
    assert "/static/scalar/standalone.js" in page_html
    assert "https://" not in page_html  # nothing from a CDN: icon, styles, script all local
    assert script.status_code == 200 and len(script.content) > 1_000_000

    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    own_host = urlsplit(server).netloc
    elsewhere: list[str] = []

    async def only_herald(route: Route) -> None:
        if urlsplit(route.request.url).netloc == own_host:
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.route("**/*", only_herald)
            await page.goto(f"{server}/docs")
            # Scalar has read the document and rendered its operations.
            await expect(page.get_by_text("Herald API").first).to_be_visible(timeout=20_000)
            await expect(page.get_by_text("Webhook endpoints").first).to_be_visible()
            await page.screenshot(path=str(ARTIFACTS / "api-reference.png"))
        finally:
            await browser.close()
    assert elsewhere == [], f"the reference reached other hosts: {elsewhere[:5]}"
