"""What `herald bench fanout` makes of its rows: the seed's rows, the figures of a run
beside their targets, and which stream notifications count."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

from bench.fanout import (
    LOCALES,
    Broadcast,
    Options,
    Run,
    Sent,
    Streams,
    StreamTimes,
    describe,
    recipient_rows,
    sent_line,
    shared_queues,
    stages,
)
from bench.memory import MemoryWatch, ProcessMemory
from bench.report import Report, Section

INF = math.inf


def _options(**changes: object) -> Options:
    values: dict[str, object] = {
        "recipients": 1_000,
        "plans": ("enterprise", "growth"),
        "workers": 2,
        "high_workers": 0,
        "drain_seconds": 60.0,
        "stream_rate": 5.0,
        "audience": "all",
        "timeout": 600.0,
    }
    values.update(changes)
    return Options(**values)  # type: ignore[arg-type]


def test_the_seed_rows_are_numbered_recipients_with_addresses_and_locales() -> None:
    tenant = uuid.uuid4()
    rows = recipient_rows(tenant, 100, 10)
    assert [row[3] for row in rows] == [f"user-{n}" for n in range(100, 110)]
    assert all(row[4] == f"{row[3]}@example.com" for row in rows)
    assert {row[5] for row in rows} == set(LOCALES)  # every locale, and some without one
    ids = [row[0] for row in rows if isinstance(row[0], uuid.UUID)]
    assert ids == sorted(ids) and len(set(ids)) == 10  # time-ordered, as the API's ids are
    assert {row[1] for row in rows} == {tenant} and {row[2] for row in rows} == {"test"}


def _times(accepted: list[float], sent: list[float]) -> StreamTimes:
    """Notifications dispatched half-way to their send (not dispatched when not sent)."""
    return StreamTimes([Sent(a, s / 2, s) for a, s in zip(accepted, sent, strict=True)])


def test_stream_times_count_what_was_accepted_while_the_broadcast_was_delivered() -> None:
    times = StreamTimes(
        [Sent(0.5, 0.05, 0.1), Sent(10.0, 0.1, 0.2), Sent(30.0, INF, INF), Sent(70.0, 0.01, 0.05)]
    )
    assert times.unsent == 1 and times.undispatched == 1
    during = times.during(60.0)
    assert [i.accepted for i in during.items] == [0.5, 10.0, 30.0] and during.unsent == 1
    assert times.during(None) is times
    before, after = during.split(10.0)
    assert before.latency == [0.1] and after.latency == [0.2, INF]


def test_the_workers_leave_the_high_queue_to_a_lane_of_its_own_when_one_runs() -> None:
    assert shared_queues(_options(high_workers=1)) == "normal,low"  # fly.toml's two lanes
    assert shared_queues(_options(high_workers=0)) == "high,normal,low"


def test_the_sent_line_has_a_figure_per_second_or_per_stretch() -> None:
    assert sent_line({0: 5, 2: 7}) == "sent per second: 5 0 7"
    assert sent_line({s: 1 for s in range(10)}, most=4) == "sent per 3 s: 3 3 3 1"
    assert sent_line({}) == "sent per second: "


def _run(plan: str, memory: dict[int, ProcessMemory]) -> Run:
    streams = Streams("http://bench", [], 5.0)
    streams.accepted = {"A high": [], "B high": [], "C normal": []}
    streams.refused = {"A high": [], "B high": [], "C normal": []}
    watch = MemoryWatch({})
    watch.processes = memory
    origin = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    # Materialised at 40 s; the drain window ran from 40 s to 100 s.
    window = (origin + 40.0, origin + 100.0)
    return Run(plan, [uuid.uuid4()], *window, streams, watch, (1.5, 2.5))


def _broadcast(**changes: object) -> Broadcast:
    values: dict[str, object] = {
        "accepted_at": datetime(2026, 1, 1, tzinfo=UTC),
        "materialised": 40.0,
        "by_status": {"sent": 400_000, "queued": 600_000},
        "expected": 1_000_000,
        "sent_per_second": {0: 1_000, 1: 2_000},
        "last_sent": 99.9,
        "sent_while_materialising": 100_000,
        "sent_in_drain": 300_000,
    }
    values.update(changes)
    return Broadcast(**values)  # type: ignore[arg-type]


def _memory() -> dict[int, ProcessMemory]:
    return {
        1: ProcessMemory(1, "api", 100.0, 110.0, 120.0, 105.0),
        2: ProcessMemory(2, "worker-1", 90.0, 150.0, 180.0, 95.0),
        3: ProcessMemory(3, "worker-1/render[3]", 50.0, 51.0, 52.0, 50.0),
        4: ProcessMemory(4, "worker-2", 90.0, 310.0, 320.0, 95.0),
    }


def _figures(section: Section, report: Report) -> dict[str, tuple[float, bool | None]]:
    return {f.name: (f.value, report.verdict(f)) for f in section.figures}


def test_a_run_is_described_beside_its_targets() -> None:
    streams = {
        "A high": _times([1.0] * 100, [0.1] * 99 + [0.3]),
        "B high": _times([1.0] * 100, [0.1] * 100),
        "C normal": _times([1.0] * 100, [0.5] * 98 + [INF, INF]),
    }
    section = Section("fanout")
    describe(_run("enterprise", _memory()), _broadcast(), streams, _options(), section)
    ceilings = Section("ceilings")
    ceilings.add("copy_recipients", 100_000.0, "rows/s")
    ceilings.add("pg_claim", 20_000.0, "rows/s")
    report = Report(ceilings, [section])
    found = _figures(section, report)
    assert found["materialise time"] == (40.0, True)
    # 1,000,000 rows in 40 s is 25,000 rows/s: 25 % of the COPY ceiling, at least 15 %.
    assert found["materialise rate"] == (25_000.0, True)
    assert found["delivered"][0] == 300_000 / 60.0
    assert found["A high accept→sent p99"] == (0.3, False)
    assert found["B high accept→sent p99"] == (0.1, True)
    # Two of a hundred never sent: the p99 is infinitely late.
    assert found["C normal accept→sent p99"] == (INF, False)
    assert found["C normal not sent"][0] == 2
    assert found["peak RSS, API"] == (120.0, True)
    assert found["peak RSS, workers"] == (320.0, False)
    assert found["peak RSS, render processes"] == (52.0, True)
    assert found["peak RSS, any process"] == (320.0, False)
    assert any("25% of A's send rate: not A's send bucket" in note for note in section.notes)
    assert any("2 not dispatched" in note and "2 not sent" in note for note in section.notes)


def test_a_broadcast_not_materialised_fails_its_time_and_rate() -> None:
    section = Section("fanout")
    broadcast = _broadcast(materialised=None, by_status={"queued": 10_000})
    streams = {"A high": StreamTimes([])}
    describe(_run("growth", _memory()), broadcast, streams, _options(), section)
    report = Report(None, [section])
    found = _figures(section, report)
    assert math.isnan(found["materialise time"][0]) and found["materialise time"][1] is False
    assert found["materialise rate"][1] is False
    assert any("NOT MATERIALISED" in note for note in section.notes)
    assert any("ROWS WRITTEN 10,000" in note for note in section.notes)


def test_a_broadcast_delivered_early_ends_the_window_and_the_streams_counted() -> None:
    # Everything sent by 70 s: the rate is over 40 s to 70 s, and a stream notification
    # accepted at 80 s (after the last broadcast message) does not count.
    broadcast = _broadcast(by_status={"sent": 1_000_000}, last_sent=70.0, sent_in_drain=600_000)
    streams = {"B high": _times([10.0, 80.0], [0.1, 5.0])}
    section = Section("fanout")
    describe(_run("growth", _memory()), broadcast, streams, _options(), section)
    found = _figures(section, Report(None, [section]))
    assert found["delivered"][0] == 600_000 / 30.0
    assert found["B high accept→sent p99"] == (0.1, True)
    assert any("A's send bucket was the limit" in note for note in section.notes)


def test_stages_are_two_and_four_per_plan() -> None:
    assert stages(_options(plans=("enterprise",))) == 6
    assert stages(_options()) == 10
