"""Password hashing off the event loop: argon2 in a small, bounded pool of threads.

One argon2id hash (argon2-cffi's defaults: 64 MiB, 3 passes, 4 lanes) costs 0.2-0.3 s of CPU.
Computed on the event loop it stalls every request of the process, and the dashboard shares
its process with /v1: ten sign-in attempts a second stalled the API for seconds. So hashes
run in worker threads. Threads suffice because argon2-cffi's CFFI binding releases the GIL
for the whole computation (checked: a Python thread keeps running, and the event loop keeps
answering, while another thread hashes); argon2 itself starts a thread per lane.

At most `concurrency` hashes run at once (each takes 64 MiB and up to 4 cores); up to
`MAX_WAITING_PER_SLOT` times as many callers wait their turn on the event loop, where a
disconnected client's wait is simply cancelled; past that, `PasswordsBusy` refuses at once
rather than letting a flood queue without bound. The worker threads, and the lane threads
argon2 starts from them, run at a lower CPU priority (nice 10 on Linux), so that on a
saturated machine the event loop serving the API is scheduled first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MAX_WAITING_PER_SLOT = 16
NICENESS = 10

T = TypeVar("T")

_hasher = PasswordHasher()


class PasswordsBusy(Exception):
    """Too many password checks are waiting already; the caller should try again shortly."""


@functools.cache
def _dummy_hash() -> str:
    # Verified against when an e-mail is unknown, so both paths cost one verification.
    return _hasher.hash("not anyone's password")


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def _lower_priority() -> None:
    # On Linux a thread has its own nice value, and the threads it starts inherit it.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


class Passwords:
    """Hashes and verifies passwords in worker threads, a few at a time; one per process."""

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = concurrency
        self.max_admitted = concurrency * (1 + MAX_WAITING_PER_SLOT)
        self.computed = 0  # argon2 computations done: each costs the same, whoever asked
        self._admitted = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="argon2", initializer=_lower_priority
        )

    async def hash(self, password: str) -> str:
        return await self._run(_hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; with no hash (an unknown e-mail), a dummy is verified
        at the same cost and the answer is False."""
        return await self._run(_verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return _hasher.check_needs_rehash(password_hash)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, function: Callable[..., T], *args: str | None) -> T:
        if self._admitted >= self.max_admitted:
            raise PasswordsBusy
        self._admitted += 1
        try:
            await self._slots.acquire()
            loop = asyncio.get_running_loop()
            try:
                future: Future[T] = self._executor.submit(function, *args)
            except BaseException:
                self._slots.release()
                raise
            # The slot is freed when the computation ends, not when a cancelled caller
            # stops waiting for it: a running hash keeps its thread until it is done.
            future.add_done_callback(lambda _: _release_soon(loop, self._slots))
            result = await asyncio.wrap_future(future)
            self.computed += 1
            return result
        finally:
            self._admitted -= 1


def _release_soon(loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for the slot
        loop.call_soon_threadsafe(slots.release)
