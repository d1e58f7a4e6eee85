"""What `herald bench` reports: ratios to the ceilings measured in the same run, targets
marked PASS or FAIL, and the idle stretches that show a stall in e2e."""

from __future__ import annotations

import io
import json
import math

from bench.common import _milliseconds, read_report
from bench.e2e import Timeline, idle_stretches
from bench.report import Report, Section, Target


def _report() -> Report:
    ceilings = Section("ceilings")
    ceilings.add("pg_claim", 20_000.0, "rows/s")
    ceilings.add("healthz", 4_000.0, "requests/s")
    e2e = Section("e2e")
    e2e.add("throughput", 3_000.0, "messages/s", ceiling="pg_claim")
    e2e.add("accept→sent p50", 2.5, "s")
    e2e.add("unmeasured", 1.0, "x", ceiling="redis_ops")
    limit = Section("ratelimit")
    limit.add("overall", 198.0, "messages/s", against=200.0)
    return Report(ceilings, [e2e, limit])


def test_figures_are_divided_by_their_ceiling_or_their_contract() -> None:
    report = _report()
    [throughput, latency, unmeasured] = report.sections[0].figures
    assert report.ratio(throughput) == 0.15
    assert report.ratio(latency) is None  # no ceiling to compare with
    assert report.ratio(unmeasured) is None  # a ceiling this run did not measure
    assert report.ratio(report.sections[1].figures[0]) == 0.99


def test_the_json_and_the_table_carry_every_figure_and_ratio() -> None:
    report = _report()
    found = report.as_json()
    assert [f["name"] for f in found["ceilings"]["figures"]] == ["pg_claim", "healthz"]
    e2e = found["benches"][0]
    assert e2e["figures"][0] == {
        "name": "throughput",
        "value": 3_000.0,
        "unit": "messages/s",
        "ceiling": "pg_claim",
        "against": None,
        "ratio": 0.15,
    }
    json.dumps(found)  # serialisable as it is
    out = io.StringIO()
    report.print_table(out)
    table = out.getvalue()
    assert "throughput" in table and "15.0%" in table and "99.0%" in table
    assert "redis_ops (unmeasured)" in table


def test_a_value_that_is_not_a_number_is_null_in_json() -> None:
    section = Section("e2e")
    section.add("throughput", math.nan, "messages/s", ceiling="pg_claim")
    found = Report(None, [section]).as_json()
    assert found["benches"][0]["figures"][0]["value"] is None
    assert found["benches"][0]["figures"][0]["ratio"] is None


def test_idle_stretches_are_whole_seconds_where_nothing_moved() -> None:
    timeline = Timeline(
        accepted=[0.0] * 4,
        written=[0.5] * 4,
        claimed=[0.6, 0.7, 5.2, 5.4],
        sent=[0.6, 0.7, 5.2, 8.1],
        dispatched=[0.4],
        latency_ms=[1.0] * 4,
    )
    # Seconds 1-4 and 6-8 saw no dispatch and no claim; the run ended in second 8.
    assert idle_stretches(timeline) == [(1.0, 5.0), (6.0, 8.0)]
    assert idle_stretches(Timeline([], [], [], [], [], [])) == []


def test_wrk_latencies_are_read_in_milliseconds() -> None:
    assert _milliseconds("850.00us") == 0.85
    assert _milliseconds("12.5ms") == 12.5
    assert _milliseconds("1.20s") == 1200.0
    assert math.isnan(_milliseconds(None))


WRK_REPORT = """Running 8s test @ http://127.0.0.1:8000/healthz
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.10ms    3.02ms  43.40ms   68.50%
    Req/Sec     7.69k   699.33     9.02k    68.50%
  Latency Distribution
     50%    4.80ms
     75%    6.10ms
     90%    8.20ms
     99%   43.40ms
  122345 requests in 8.00s, 17.39MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  15293.12
"""


def test_a_wrk_report_is_read_from_its_own_lines() -> None:
    # "68.50%" in the thread stats ends in 50%: the median is read from its own line.
    assert read_report(WRK_REPORT) == {
        "requests": 122345.0,
        "not_2xx": 3.0,
        "requests_per_second": 15293.12,
        "p50_ms": 4.8,
        "p99_ms": 43.4,
    }


def _targeted() -> Report:
    ceilings = Section("ceilings")
    ceilings.add("pg_copy", 100_000.0, "rows/s")
    fanout = Section("fanout")
    fanout.add("materialise time", 48.0, "s", target=Target(60.0))
    fanout.add("materialise rate", 12_000.0, "rows/s", "pg_copy", target=Target(0.15, False, True))
    fanout.add("p99", math.inf, "s", target=Target(0.25))
    fanout.add("not measured", math.nan, "s", target=Target(2.0))
    fanout.add("of an unmeasured ceiling", 1.0, "rows/s", "copy", target=Target(0.1, False, True))
    fanout.add("untargeted", 3.0, "s")
    return Report(ceilings, [fanout])


def test_a_target_is_met_by_the_value_or_by_the_ratio_to_its_ceiling() -> None:
    report = _targeted()
    verdicts = [report.verdict(f) for f in report.sections[0].figures]
    # 48 s ≤ 60 s; 12 % < 15 % of the ceiling; an infinite or unmeasured value fails; a
    # ratio to a ceiling this run did not measure cannot be judged; no target, no verdict.
    assert verdicts == [True, False, False, False, None, None]


def test_targets_are_a_column_of_the_table_and_members_of_the_json() -> None:
    report = _targeted()
    out = io.StringIO()
    report.print_table(out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["figure", "value", "ratio", "of", "target"]
    assert any("materialise time" in line and line.endswith("≤ 60.00 s  PASS") for line in lines)
    assert any("materialise rate" in line and line.endswith("≥ 15%  FAIL") for line in lines)
    assert any("of an unmeasured ceiling" in line and line.endswith("?") for line in lines)
    figures = report.as_json()["benches"][0]["figures"]
    assert figures[0]["target"] == {"max": 60.0, "of_ratio": False}
    assert figures[0]["met"] is True
    assert figures[1]["target"] == {"min": 0.15, "of_ratio": True}
    assert "target" not in figures[5]
    json.dumps(report.as_json())


def test_a_table_without_targets_has_no_target_column() -> None:
    out = io.StringIO()
    _report().print_table(out)
    assert out.getvalue().splitlines()[0].split() == ["figure", "value", "ratio", "of"]


def test_a_ceilings_section_of_a_bench_joins_the_ceilings() -> None:
    report = _report()
    own = Section("ceilings")
    own.add("copy_recipients", 50_000.0, "rows/s")
    own.notes.append("COPY into recipients")
    fanout = Section("fanout")
    fanout.add("materialise rate", 10_000.0, "rows/s", "copy_recipients")
    report.add(own)
    report.add(fanout)
    assert report.ceiling("copy_recipients") == 50_000.0
    assert report.ratio(fanout.figures[0]) == 0.2
    assert [part.bench for part in report.sections] == ["e2e", "ratelimit", "fanout"]
    assert report.ceilings is not None and "COPY into recipients" in report.ceilings.notes
