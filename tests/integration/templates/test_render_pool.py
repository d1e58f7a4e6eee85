"""The render pool: real child processes, killed at the deadline, limited in memory and CPU.

Templates here get past the in-process guards on purpose: `title` of a 4 MB string is one C
call of about half a second, which the guards only see after it returned. Pools with short
limits make such a call overrun its deadline for sure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.templates.content import SmsContent
from app.templates.isolation import CheckSources, RenderBatch, RenderJob
from app.templates.models import TemplateVersion
from app.templates.pool import RenderPool, _Child
from app.templates.rendering import RenderFailed
from tests.unit.test_rendering import sms, version

STALL = "{{ ('ab ' * 1300000)|title|length }}"  # one C call of ~0.5 s, within every guard


def _pool(**options: Any) -> Iterator[RenderPool]:
    pool = RenderPool(**{"processes": 1, "memory_mb": 512, **options})
    pool.start()
    yield pool
    pool.close()


@pytest.fixture
def pool() -> Iterator[RenderPool]:
    yield from _pool(processes=2)


@pytest.fixture
def quick() -> Iterator[RenderPool]:
    """A pool whose renders are killed 50 ms after they start."""
    yield from _pool(timeout=0.03, grace=0.02)


def _child_start_seconds() -> float:
    """How long a render process takes to start and say it is ready here (the slower of two)."""
    took = []
    for _ in range(2):
        began = time.monotonic()
        child = _Child(512)
        try:
            child.wait_ready()
        finally:
            child.kill()
        took.append(time.monotonic() - began)
    return max(took)


def jobs(n: int, **options: Any) -> list[RenderJob]:
    return [RenderJob("sms", **options) for _ in range(n)]


def texts(outcomes: list[Any]) -> list[str]:
    return [o.text if isinstance(o, SmsContent) else f"failed: {o}" for o in outcomes]


async def test_a_batch_of_personalised_renders_is_one_round_trip(pool: RenderPool) -> None:
    template = sms("Hi {{ recipient.name }}, order {{ order }}")
    batch = [RenderJob("sms", recipient={"name": f"n{i}"}) for i in range(1000)]
    result = await pool.render(RenderBatch(template, {"order": 7}, batch))
    assert texts(result.outcomes) == [f"Hi n{i}, order 7" for i in range(1000)]
    assert 0 < result.cost_ms < 1000 * 100  # each job's own time, well under its limit


async def test_a_stalled_render_is_killed_and_only_it_fails(quick: RenderPool) -> None:
    template = version(
        {"sms": {"text": "{{ n }}"}},
        locales={"fr": {"sms": {"text": STALL}}},
    )
    before = quick.pids
    order = [RenderJob("sms"), RenderJob("sms", locale="fr"), RenderJob("sms")]
    began = time.monotonic()
    result = await quick.render(RenderBatch(template, {"n": 1}, order * 2))
    took = time.monotonic() - began
    assert texts(result.outcomes) == [
        "1",
        "failed: rendering took longer than the 30 ms limit (stopped)",
        "1",
        "1",
        "failed: rendering took longer than the 30 ms limit (stopped)",
        "1",
    ]
    assert isinstance(result.outcomes[1], RenderFailed)
    assert result.outcomes[1].field == "sms"
    # Each kill costs its deadline; a stall of 0.5 s each would have taken over a second.
    assert result.cost_ms >= 2 * 50
    # Two restarts of a child at most, each an interpreter's start, timed on this machine.
    assert took < 1.0 + 2 * _child_start_seconds(), took
    assert quick.pids and set(quick.pids).isdisjoint(before)
    for pid in before:
        assert not _alive(pid), "a killed render process is still there"


async def test_a_render_over_the_memory_limit_fails_and_the_pool_goes_on(
    pool: RenderPool,
) -> None:
    await pool.render(RenderBatch(sms("x"), {}, jobs(1)))
    started = _vm_size_mb(pool.pids[0])  # the interpreter and its imports
    lists = ", ".join(f"range({n}00000, {n + 1}00000)|list" for n in range(5))
    hog = sms(f"{{% set l = [{lists}] %}}{{% set s = 'x' * 4000000 %}}{{{{ (s|title)|length }}}}")
    # Five lists of 100,000 numbers and two 4 MB strings are within the template limits
    # (about 25 MB), not within 12 MB more than a started process holds.
    for small in _pool(memory_mb=started + 12):
        result = await small.render(RenderBatch(hog, {}, jobs(1)))
        [outcome] = result.outcomes
        assert isinstance(outcome, RenderFailed)
        assert "memory" in str(outcome), str(outcome)
        again = await small.render(RenderBatch(sms("ok"), {}, jobs(1)))
        assert texts(again.outcomes) == ["ok"]
    # With the usual 512 MiB the same render has room (it runs into the time limit instead).
    ordinary = await pool.render(RenderBatch(hog, {}, jobs(1)))
    assert "memory" not in str(ordinary.outcomes[0])


async def test_a_render_process_that_dies_is_replaced(quick: RenderPool) -> None:
    [pid] = quick.pids
    await quick.render(RenderBatch(sms("warm"), {}, jobs(1)))
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.1)
    result = await quick.render(RenderBatch(sms("{{ x }}"), {"x": "after"}, jobs(3)))
    # It died while idle: the batch goes to a fresh process, and no job is blamed.
    assert texts(result.outcomes) == ["after"] * 3
    assert quick.pids != [pid]


async def test_a_batch_stops_where_its_budget_does(quick: RenderPool) -> None:
    slow = sms("{% for i in range(10 ** 5) %}{% for j in range(10 ** 5) %}{% endfor %}{% endfor %}")
    result = await quick.render(RenderBatch(slow, {}, jobs(10), budget_ms=70))
    rendered = [o for o in result.outcomes if o is not None]
    assert 2 <= len(rendered) <= 4, result.outcomes
    assert all(isinstance(o, RenderFailed) for o in rendered)
    assert result.outcomes[len(rendered) :] == [None] * (10 - len(rendered))
    assert 70 <= result.cost_ms < 70 + 50 + 20


async def test_concurrent_batches_use_every_process(pool: RenderPool) -> None:
    stalls = sms(
        "{% for i in range(10 ** 5) %}{% for j in range(10 ** 5) %}{% endfor %}{% endfor %}"
    )
    results = await asyncio.gather(
        *(pool.render(RenderBatch(stalls, {}, jobs(2))) for _ in range(2))
    )
    assert all(isinstance(o, RenderFailed) for r in results for o in r.outcomes)
    # Two batches on two processes: side by side, not one after the other.
    assert pool.most_in_flight == 2


async def test_close_stops_every_process() -> None:
    pool = RenderPool(processes=2, memory_mb=512)
    pool.start()
    await pool.render(RenderBatch(sms("x"), {}, jobs(1)))
    pids = pool.pids
    await asyncio.to_thread(pool.close)
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError):
        await pool.render(RenderBatch(sms("x"), {}, jobs(1)))


async def test_close_during_a_batch_ends_it_and_leaves_no_process() -> None:
    pool = RenderPool(processes=1, memory_mb=512)
    pool.start()
    await pool.render(RenderBatch(sms("x"), {}, jobs(1)))
    stalls = sms(STALL)
    running = asyncio.ensure_future(pool.render(RenderBatch(stalls, {}, jobs(3))))
    await asyncio.sleep(0.1)
    pids = pool.pids
    began = time.monotonic()
    await asyncio.to_thread(pool.close)
    assert time.monotonic() - began < 2
    result = await running
    assert isinstance(result.outcomes[0], RenderFailed)
    assert not any(_alive(pid) for pid in pids)
    assert pool.pids == []


async def test_renders_survive_a_template_with_a_syntax_error(pool: RenderPool) -> None:
    broken: TemplateVersion = sms("{% if %}")
    result = await pool.render(RenderBatch(broken, {}, jobs(2)))
    assert [str(o).startswith("line 1:") for o in result.outcomes] == [True, True]


def _vm_size_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        [line] = [line for line in status if line.startswith("VmSize:")]
    return int(line.split()[1]) // 1024 + 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not collected it yet.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


# Compiles for about a second in this process (a literal of 30,000 items): within 64 KiB.
SLOW_TO_COMPILE = "{{ [" + ",".join(["1"] * 30_000) + "] }}"


async def test_a_check_compiles_every_source_in_a_child_and_names_what_fails(
    pool: RenderPool,
) -> None:
    result = await pool.check(
        CheckSources(
            {
                "content": {"sms": {"text": "Hi {{ name }}"}, "email": {"subject": "{{ }"}},
                "locales.fr": {"sms": {"text": "{% if x %}oui"}},
            }
        )
    )
    fields = [field for field, _ in result.errors]
    assert fields == ["content.email.subject", "locales.fr.sms.text"]
    assert result.errors[0][1].startswith("line 1: ")
    assert result.cost_ms >= 0
    assert (await pool.check(CheckSources({"content": {"sms": {"text": "ok"}}}))).errors == []


async def test_a_check_past_the_compile_limit_kills_its_child_and_refuses_the_template() -> None:
    for quick in _pool(compile_timeout=0.05):
        before = quick.pids
        result = await quick.check(CheckSources({"content": {"sms": {"text": SLOW_TO_COMPILE}}}))
        assert result.errors == [("content", "compiling took longer than the 50 ms limit")]
        assert result.cost_ms == 50  # charged the limit, as a render killed at its deadline
        assert quick.pids != before  # the child that overran is gone, another took its place
        after = await quick.check(CheckSources({"content": {"sms": {"text": "{{ x"}}}))
        assert [field for field, _ in after.errors] == ["content.sms.text"]
