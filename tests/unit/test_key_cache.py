"""The per-process key memory stays bounded, and a flood of refusals cannot evict valid keys."""

from __future__ import annotations

import os
import time
import uuid

from app.auth.keys import KeyCache, Principal


def principal() -> Principal:
    return Principal(uuid.uuid4(), uuid.uuid4(), "hk_live_abcdef", "live", frozenset({"send"}))


def test_refusals_are_bounded_and_leave_valid_keys_alone() -> None:
    cache = KeyCache(ttl=1.0, max_entries=100)
    valid = {os.urandom(32): principal() for _ in range(50)}
    for key_hash, known in valid.items():
        cache.put(key_hash, known)
    for _ in range(10_000):
        cache.refuse(os.urandom(32), "The API key is not recognised.")
    assert len(cache) <= 150
    assert all(cache.get(key_hash) is known for key_hash, known in valid.items())


def test_the_oldest_goes_first_and_entries_expire() -> None:
    cache = KeyCache(ttl=0.05, max_entries=3)
    hashes = [os.urandom(32) for _ in range(4)]
    for key_hash in hashes:
        cache.refuse(key_hash, "no", seconds=0.05)
    assert cache.refusal(hashes[0]) is None, "evicted: the oldest"
    assert cache.refusal(hashes[3]) == "no"
    cache.put(hashes[0], principal())
    time.sleep(0.06)
    assert cache.get(hashes[0]) is None and cache.refusal(hashes[3]) is None
    assert cache.refuse(hashes[1], "no", seconds=0) and cache.refusal(hashes[1]) is None
