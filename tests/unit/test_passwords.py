"""The hashing pool: right answers, the event loop free while argon2 runs, a bounded queue."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.auth.passwords import MAX_WAITING_PER_SLOT, Passwords, PasswordsBusy


async def test_hash_and_verify_and_unknown_users() -> None:
    passwords = Passwords()
    try:
        hashed = await passwords.hash("a long enough password")
        assert await passwords.verify(hashed, "a long enough password")
        assert not await passwords.verify(hashed, "another password")
        assert not await passwords.verify(None, "not anyone's password"), "no hash: never right"
        assert not await passwords.verify("not a hash", "x")
        assert passwords.computed == 5
    finally:
        passwords.close()


async def test_the_event_loop_keeps_running_while_passwords_are_hashed() -> None:
    """argon2-cffi releases the GIL: a thread hashing does not stop the loop's thread."""
    passwords = Passwords(concurrency=2)
    hashed = await passwords.hash("a long enough password")
    work = asyncio.gather(*(passwords.verify(hashed, f"guess {n}") for n in range(6)))
    gaps = []
    while not work.done():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        gaps.append(time.perf_counter() - started)
    await work
    passwords.close()
    assert len(gaps) > 20, "the loop went round while hashes ran"
    assert max(gaps) < 0.1, f"the loop stalled for {max(gaps) * 1000:.0f} ms"


async def test_a_flood_waits_within_bounds_and_the_rest_is_refused_at_once() -> None:
    passwords = Passwords(concurrency=1)
    assert passwords.max_admitted == 1 + MAX_WAITING_PER_SLOT
    attempts = [passwords.verify(None, f"guess {n}") for n in range(passwords.max_admitted + 5)]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    passwords.close()
    refused = [o for o in outcomes if isinstance(o, PasswordsBusy)]
    assert len(refused) == 5
    assert outcomes.count(False) == passwords.max_admitted


async def test_a_cancelled_wait_gives_its_place_back() -> None:
    passwords = Passwords(concurrency=1)
    waiting = [asyncio.ensure_future(passwords.verify(None, "x")) for _ in range(3)]
    await asyncio.sleep(0.01)
    for task in waiting[1:]:
        task.cancel()
    assert await waiting[0] is False
    for task in waiting[1:]:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await passwords.verify(None, "y") is False, "the pool still works"
    passwords.close()
