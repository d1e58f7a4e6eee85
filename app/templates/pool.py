"""The render pool: tenant templates render in child processes that can be killed for sure.

The sandbox's guards check the deadline between Jinja operations, but one C call (a
comparison, a sort, str() or a hash over a huge structure) holds the GIL past any deadline,
and a thread cannot be stopped. So renders run in `python -m app.templates.child`
processes (memory- and CPU-limited, see there), and the parent kills a child whose current
job has not answered `kill_after` seconds (the render limit plus a grace) after the one
before it. The job it was on fails as a `render` error; the jobs after it are sent again to
a fresh child, so only the culprit fails.

Why not a library pool: pebble's ProcessPool kills a worker on a task's timeout and replaces
it, but a task returns all at once, so a batch of renders would either pay one round trip
per recipient or, when killed, lose the answers it had and not say which job stalled (and
wait n x limit to find out). Here a batch is one round trip, answers stream back as each
job ends, and a stall is caught after one job's deadline. The children are plain
subprocesses speaking typed JSON (app/templates/isolation.py): they start with spawn
semantics (a fresh interpreter, safe from a parent running threads and an event loop),
under `herald api --workers N`, `herald dev`, `herald worker` and the tests alike.

The exchange with a child is blocking I/O with deadlines, run on a thread of the pool's own
per child, so the event loop only awaits a future. `render` is safe to call from any
event loop or thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from app.templates.content import Content
from app.templates.isolation import (
    HEADER,
    MAX_FRAME,
    Checked,
    CheckSources,
    Compiled,
    OutOfBudget,
    Ready,
    Refused,
    RenderBatch,
    Rendered,
    Reply,
    decode_reply,
    encode,
    frame,
)
from app.templates.limits import (
    COMPILE_TIMEOUT_SECONDS,
    RENDER_KILL_GRACE_SECONDS,
    RENDER_TIMEOUT_SECONDS,
)
from app.templates.rendering import RenderFailed

log = structlog.get_logger(__name__)

START_TIMEOUT = 60.0  # seconds a new child may take to import and say it is ready
CPU_SLACK_SECONDS = 2.0  # the kernel's backstop per job (RLIMIT_CPU), past the parent's kill
MAX_BATCHES_PER_CHILD = 10_000  # then it is replaced, so that no cache or leak grows for ever

Outcome = Content | RenderFailed | None  # None: not rendered, the batch's budget ran out


@dataclass(frozen=True)
class CheckResult:
    errors: list[tuple[str, str]]  # (field, message) of each source that does not compile
    cost_ms: float


@dataclass(frozen=True)
class BatchResult:
    outcomes: list[Outcome]  # one per job, in the batch's order
    cost_ms: float  # what the batch cost: time of its compile and jobs, deadlines of kills


class _Stalled(Exception):
    """The child did not answer before the deadline."""


class _Died(Exception):
    """The child's pipe closed: it died (memory limit, CPU limit, a crash) or was killed."""


class _Child:
    """One render process and its pipes."""

    def __init__(self, memory_mb: int) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "app.templates.child",
                str(memory_mb),
                str(CPU_SLACK_SECONDS),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        self._buffer = b""
        self.ready = False
        self.batches = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        if not self.ready:
            reply = self.receive(time.monotonic() + START_TIMEOUT)
            if not isinstance(reply, Ready):
                raise _Died(f"a render process started with {type(reply).__name__}")
            self.ready = True

    def send(self, body: bytes, deadline: float) -> None:
        data = memoryview(frame(body))
        while data:
            if not _wait(self._in, select.POLLOUT, deadline):
                raise _Stalled
            try:
                written = os.write(self._in, data[: 1 << 16])
            except (BrokenPipeError, OSError) as error:
                raise _Died(str(error)) from None
            data = data[written:]

    def receive(self, deadline: float) -> Reply:
        header = self._read(HEADER.size, deadline)
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise _Died(f"a frame of {size} bytes")
        return decode_reply(self._read(size, deadline))

    def _read(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            if not _wait(self._out, select.POLLIN, deadline):
                raise _Stalled
            chunk = os.read(self._out, max(size - len(self._buffer), 1 << 16))
            if not chunk:
                raise _Died("the render process closed its output")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def signal_kill(self) -> None:
        """SIGKILL, from any thread: the thread using it sees its output end."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def kill(self) -> None:
        self.signal_kill()
        self._close_pipes()
        self.process.wait()

    def stop(self, timeout: float) -> None:
        """Close its input (it exits at the end of it); kill it if it is still there."""
        self._close_pipes()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _wait(fd: int, event: int, deadline: float) -> bool:
    """Whether `fd` is ready for `event` (or closed) before `deadline`."""
    poller = select.poll()
    poller.register(fd, event)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(left * 1000):
            return True


class RenderPool:
    """`processes` render processes, each limited to `memory_mb` of address space."""

    def __init__(
        self,
        *,
        processes: int,
        memory_mb: int,
        timeout: float = RENDER_TIMEOUT_SECONDS,
        grace: float = RENDER_KILL_GRACE_SECONDS,
        compile_timeout: float = COMPILE_TIMEOUT_SECONDS,
    ) -> None:
        self.processes = processes
        self.memory_mb = memory_mb
        self.timeout = timeout
        self.kill_after = timeout + grace
        self.compile_timeout = compile_timeout
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._children: set[_Child] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight = 0
        self.most_in_flight = 0  # the most batches ever rendered at once (tests, metrics)
        self._executor = ThreadPoolExecutor(processes, thread_name_prefix="herald-render")

    def start(self) -> None:
        """Start the children; they get ready in the background (the first batch waits)."""
        for _ in range(self.processes):
            self._idle.put(self._spawn())

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [child.pid for child in self._children]

    async def render(self, batch: RenderBatch) -> BatchResult:
        """Render every job of the batch in one child; answers in the jobs' order."""
        if self._closed:
            raise RuntimeError("the render pool is closed")
        return await asyncio.wrap_future(self._executor.submit(self._run, batch))

    async def check(self, request: CheckSources) -> CheckResult:
        """Compile a template's sources in one child; what does not compile, by field.

        The child has `compile_timeout` per set of sources (the content, each locale): what
        a render batch, which compiles one of them, is given. Past it the child is killed
        and the whole template refused, as it would fail at every send.
        """
        if self._closed:
            raise RuntimeError("the render pool is closed")
        return await asyncio.wrap_future(self._executor.submit(self._check, request))

    def close(self) -> None:
        """Stop every child (a batch under way ends with its jobs failed) and the threads."""
        self._closed = True
        for child in self._drain_idle():
            child.stop(timeout=2)
        # The others are in a batch: a thread of ours is reading their pipes, and closes
        # them itself once the kill has ended its read.
        with self._lock:
            busy = list(self._children)
        for child in busy:
            child.signal_kill()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for child in self._drain_idle():
            child.stop(timeout=2)

    def _drain_idle(self) -> list[_Child]:
        children = []
        with contextlib.suppress(queue.Empty):
            while True:
                children.append(self._idle.get_nowait())
        with self._lock:
            self._children.difference_update(children)
        return children

    def _spawn(self) -> _Child:
        child = _Child(self.memory_mb)
        with self._lock:
            self._children.add(child)
        return child

    def _replace(self, child: _Child) -> _Child:
        child.kill()
        with self._lock:
            self._children.discard(child)
        return child if self._closed else self._spawn()

    def _run(self, batch: RenderBatch) -> BatchResult:
        child = self._idle.get()  # one per executor thread: never waits
        with self._lock:
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        try:
            return self._render_on(child, batch)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _render_on(self, child: _Child, batch: RenderBatch) -> BatchResult:
        outcomes: list[Outcome] = [None] * len(batch.jobs)
        cost = 0.0
        start = 0
        retried = False
        try:
            while start < len(batch.jobs) and not self._closed:
                budget = None if batch.budget_ms is None else batch.budget_ms - cost
                if budget is not None and budget <= 0:
                    break
                part = RenderBatch(batch.template, batch.data, batch.jobs[start:], budget)
                index, phase = start, "send"
                try:
                    child.wait_ready()
                    child.send(encode(part), time.monotonic() + self.compile_timeout)
                    phase = "compile"
                    reply = child.receive(time.monotonic() + self.compile_timeout)
                    if not isinstance(reply, Compiled):
                        raise _Died(f"a render process answered {type(reply).__name__}")
                    cost += reply.ms
                    phase = "render"
                    while index < len(batch.jobs):
                        reply = child.receive(time.monotonic() + self.kill_after)
                        if isinstance(reply, OutOfBudget):
                            return BatchResult(outcomes, cost)
                        outcomes[index] = _outcome(reply)
                        cost += reply.ms if isinstance(reply, Rendered | Refused) else 0.0
                        index += 1
                    start = index
                except (_Stalled, _Died) as stopped:
                    stalled = isinstance(stopped, _Stalled)
                    self._log(child, batch, phase, stalled, batch.jobs[index].channel)
                    child = self._replace(child)
                    if phase == "send" and not retried:
                        retried = True  # it died idle, or never started: once more
                        continue
                    # Compiling is done for the whole batch at once: its jobs fail together.
                    culprits = range(index, len(batch.jobs) if phase != "render" else index + 1)
                    for culprit in culprits:
                        why = self._why(stalled, phase)
                        outcomes[culprit] = RenderFailed(batch.jobs[culprit].channel, why)
                    if stalled:
                        deadline = self.kill_after if phase == "render" else self.compile_timeout
                        cost += deadline * 1000
                    start = culprits[-1] + 1
            child = self._retire_if_old(child)
            return BatchResult(outcomes, cost)
        finally:
            self._idle.put(child)

    def _check(self, request: CheckSources) -> CheckResult:
        child = self._idle.get()  # one per executor thread: never waits
        limit = self.compile_timeout * max(1, len(request.sources))
        try:
            for attempt in range(2):
                phase = "send"
                try:
                    child.wait_ready()
                    child.send(encode(request), time.monotonic() + limit)
                    phase = "check"
                    reply = child.receive(time.monotonic() + limit)
                    if not isinstance(reply, Checked):
                        raise _Died(f"a render process answered {type(reply).__name__}")
                    child = self._retire_if_old(child)
                    return CheckResult(reply.errors, reply.ms)
                except (_Stalled, _Died) as stopped:
                    stalled = isinstance(stopped, _Stalled)
                    log.warning(
                        "render process stopped",
                        pid=child.pid,
                        reason="deadline" if stalled else "exited",
                        phase=phase,
                    )
                    child = self._replace(child)
                    if phase == "send" and not attempt:
                        continue  # it died idle, or never started: once more
                    why = (
                        f"compiling took longer than the {limit * 1000:.0f} ms limit"
                        if stalled
                        else self._why(stalled, phase)
                    )
                    return CheckResult([("content", why)], limit * 1000 if stalled else 0.0)
            raise AssertionError("unreachable: the second attempt returns")
        finally:
            self._idle.put(child)

    def _retire_if_old(self, child: _Child) -> _Child:
        child.batches += 1
        if child.batches < MAX_BATCHES_PER_CHILD or self._closed:
            return child
        child.stop(timeout=2)
        with self._lock:
            self._children.discard(child)
        return self._spawn()

    def _log(
        self, child: _Child, batch: RenderBatch, phase: str, stalled: bool, channel: str
    ) -> None:
        log.warning(
            "render process stopped",
            pid=child.pid,
            reason="deadline" if stalled else "exited",
            phase=phase,
            template=batch.template.key,
            tenant_id=str(batch.template.tenant_id),
            channel=channel,
        )

    def _why(self, stalled: bool, phase: str) -> str:
        if not stalled:
            return (
                "the render process stopped (over its memory or CPU limit): "
                "the template builds too much"
            )
        if phase == "render":
            return f"rendering took longer than the {self.timeout * 1000:.0f} ms limit (stopped)"
        return f"compiling took longer than the {self.compile_timeout * 1000:.0f} ms limit"


def _outcome(reply: Reply) -> Outcome:
    if isinstance(reply, Rendered):
        return reply.content
    if isinstance(reply, Refused):
        return RenderFailed(reply.field, reply.message, reply.line)
    raise _Died(f"a render process answered {type(reply).__name__} for a job")
