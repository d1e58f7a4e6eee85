"""The Deliverer's adapter cache: one adapter per route, at most ADAPTER_CACHE_SIZE kept."""

from __future__ import annotations

import collections
import uuid

import httpx
import pytest

from app.delivery.service import ADAPTER_CACHE_SIZE, AdapterCache
from app.providers.base import ProviderAdapter
from app.providers.service import ProviderRoute, build_adapter
from tests.support import settings_for

SETTINGS = settings_for("postgresql://unused/unused", "redis://unused/0")


def webhook_route(config_id: uuid.UUID, secret: str = "whsec_one") -> ProviderRoute:
    return ProviderRoute(config_id, "webhook", "webhook", 0, 50.0, 100, {"secret": secret}, {})


async def test_an_adapter_is_built_once_per_route_and_credentials() -> None:
    built: list[ProviderRoute] = []
    async with httpx.AsyncClient() as http:

        def build(route: ProviderRoute) -> ProviderAdapter:
            built.append(route)
            return build_adapter(route, http=http, settings=SETTINGS)

        cache = AdapterCache(build)
        config = uuid.uuid4()
        first = cache.get(webhook_route(config))
        assert cache.get(webhook_route(config)) is first
        rotated = cache.get(webhook_route(config, secret="whsec_two"))  # new credentials
        assert rotated is not first
        assert len(built) == 2 and len(cache) == 2


async def test_the_cache_does_not_grow_past_its_size() -> None:
    async with httpx.AsyncClient() as http:
        cache = AdapterCache(lambda route: build_adapter(route, http=http, settings=SETTINGS))
        routes = [webhook_route(uuid.uuid4()) for _ in range(ADAPTER_CACHE_SIZE + 50)]
        for route in routes:
            cache.get(route)
            assert len(cache) <= ADAPTER_CACHE_SIZE
        assert len(cache) == ADAPTER_CACHE_SIZE


async def test_the_least_recently_used_goes_first() -> None:
    builds: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient() as http:

        def build(route: ProviderRoute) -> ProviderAdapter:
            builds[str(route.config_id)] += 1
            return build_adapter(route, http=http, settings=SETTINGS)

        cache = AdapterCache(build, size=2)
        a, b, c = (webhook_route(uuid.uuid4()) for _ in range(3))
        cache.get(a)
        cache.get(b)
        cache.get(a)  # a is used again: b is now the least recently used
        cache.get(c)  # b goes
        cache.get(a)
        cache.get(b)  # built again; c goes
        cache.get(c)  # built again; a goes
        assert len(cache) == 2
        assert [builds[str(r.config_id)] for r in (a, b, c)] == [1, 2, 2]


def test_a_cache_holds_at_least_one() -> None:
    def build(route: ProviderRoute) -> ProviderAdapter:
        raise AssertionError("not built")

    with pytest.raises(ValueError):
        AdapterCache(build, size=0)
