"""What `herald bench receipts` posts and how it reads the answers: SendGrid-shaped batches in
the run's mix, signed as SendGrid signs and read by Herald's SendGrid scheme as meant, posted
on schedule or back to back (to a local receiver here), the statuses their events lead to,
and the report's figures and ratios."""

from __future__ import annotations

import base64
import json
import math
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from app.receipts.events import Inbound
from app.receipts.sendgrid import receive_sendgrid
from bench.common import free_port
from bench.receipts import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Answer,
    Batch,
    Batches,
    Check,
    Options,
    Signer,
    expected_statuses,
    flood,
    kinds,
    message_rows,
    offered,
    signed_content,
    summarise,
)
from bench.report import Report, Section

MESSAGES = [uuid.UUID(int=n + 1) for n in range(50)]


def _options(**changes: object) -> Options:
    values: dict[str, object] = {
        "messages": len(MESSAGES),
        "batch": 1_000,
        "rate": 1.0,
        "seconds": 10,
        "flood": False,
        "connections": 4,
    }
    values.update(changes)
    return Options(**values)  # type: ignore[arg-type]


def test_a_batch_of_1000_is_600_delivered_250_open_100_click_50_bounce() -> None:
    assert Counter(kinds(1_000)) == {"delivered": 600, "open": 250, "click": 100, "bounce": 50}


@pytest.mark.parametrize("size", [1, 2, 7, 19, 999, 1_001])
def test_any_batch_size_is_filled_exactly_nearest_the_mix(size: int) -> None:
    found = Counter(kinds(size))
    assert sum(found.values()) == size
    for kind, share in (("delivered", 0.6), ("open", 0.25), ("click", 0.1), ("bounce", 0.05)):
        assert abs(found[kind] - share * size) < 1


def test_batches_are_sendgrid_event_arrays_naming_seeded_messages_each_event_new() -> None:
    batches = Batches(MESSAGES, 200)
    first, second = batches.next(1_700_000_000), batches.next(1_700_000_001)
    assert first.body.endswith(b"]\r\n")  # SendGrid's body ends in CRLF
    events = json.loads(first.body) + json.loads(second.body)
    assert len(events) == 400
    assert len({e["sg_event_id"] for e in events}) == 400  # every event new, across batches
    for event, (n, kind) in zip(events, first.events + second.events, strict=True):
        assert event["event"] == kind
        assert event["herald_message_id"] == str(MESSAGES[n])
        assert event["email"] == f"user-{n}@example.com"
        assert isinstance(event["sg_message_id"], str) and event["sg_message_id"]
    assert {e["timestamp"] for e in events} == {1_700_000_000, 1_700_000_001}
    assert all("url" in e for e in events if e["event"] == "click")
    assert all(e["type"] == "bounce" for e in events if e["event"] == "bounce")
    # Spread over the seeded messages, and shuffled: not all of one kind first.
    assert len({n for n, _ in first.events}) > 40
    assert [k for _, k in first.events] != sorted(k for _, k in first.events)


def test_the_seeded_rows_are_sent_messages_to_numbered_addresses() -> None:
    tenant, notifications = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    rows = message_rows(tenant, notifications, MESSAGES[:3], 999)
    assert [row[0] for row in rows] == MESSAGES[:3]
    assert [row[1] for row in rows] == [notifications[0], notifications[1], notifications[1]]
    assert [row[6] for row in rows] == [f"user-{n}@example.com" for n in (999, 1_000, 1_001)]
    assert {row[3] for row in rows} == {"live"} and {row[7] for row in rows} == {"sent"}


def test_a_signed_batch_verifies_under_the_public_key_the_config_is_given() -> None:
    signer = Signer()
    body = Batches(MESSAGES, 10).next(1_700_000_000).body
    headers = signer.headers(body, 1_700_000_123)
    assert headers[TIMESTAMP_HEADER] == "1700000123"
    key = load_der_public_key(base64.b64decode(signer.public_key))
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    signature = base64.b64decode(headers[SIGNATURE_HEADER])
    key.verify(signature, b"1700000123" + body, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(signature, b"1700000124" + body, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(signature, b"1700000123" + body[:-2], ec.ECDSA(hashes.SHA256()))


def test_the_signed_content_is_sendgrids_own_vector() -> None:
    """SendGrid's SDK test vector verifies over what the bench signs (docs PROVIDERS.md)."""
    public_key = (
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GR"
        "qe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
    )
    signature = (
        "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15"
        "TluLtEZtM="
    )
    event = {
        "email": "hello@world.com",
        "event": "dropped",
        "reason": "Bounced Address",
        "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
        "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-"
        "5F5FC76C-9.0",
        "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
        "timestamp": 1600112492,
    }
    payload = json.dumps([event], separators=(",", ":")).encode() + b"\r\n"
    key = load_der_public_key(base64.b64decode(public_key))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        base64.b64decode(signature),
        signed_content("1600112502", payload),
        ec.ECDSA(hashes.SHA256()),
    )


def _answer(events: list[tuple[int, str]], status: int = 200, seconds: float = 0.1) -> Answer:
    batch = Batch(b"[]", events)
    new = len(events) if status == 200 else 0
    return Answer(status, seconds, 1.0, batch, received=new, new=new)


def test_messages_end_at_their_highest_ranked_event_whatever_the_order() -> None:
    answers = [
        _answer([(0, "open"), (1, "delivered"), (2, "click"), (3, "bounce")]),
        _answer([(0, "delivered"), (2, "open"), (3, "click"), (4, "delivered")]),
        _answer([(5, "click")], status=500),  # not taken: message 5 stays sent
    ]
    assert expected_statuses(answers, MESSAGES) == {
        MESSAGES[0]: "opened",
        MESSAGES[1]: "delivered",
        MESSAGES[2]: "clicked",
        MESSAGES[3]: "bounced",  # a bounce is final: a later click does not undo it
        MESSAGES[4]: "delivered",
    }


def _check(events: int, distinct: int | None = None, misplaced: int = 0) -> Check:
    distinct = events if distinct is None else distinct
    return Check(events, distinct, 0, {"sent": 40, "delivered": 10}, misplaced)


def _report(section: Section) -> Report:
    ceilings = Section("ceilings")
    ceilings.add("pg_copy", 100_000.0, "rows/s")
    ceilings.add("healthz", 10_000.0, "requests/s")
    return Report(ceilings, [section])


def _figures(report: Report) -> dict[str, tuple[float, float | None]]:
    return {f.name: (f.value, report.ratio(f)) for f in report.sections[0].figures}


def test_offered_load_kept_up_with_is_reported_against_the_ceilings_and_the_offer() -> None:
    options = _options(batch=4, rate=2.0, seconds=10)
    answers = [
        _answer([(i % 50, "delivered")] * 4, seconds=(i + 1) / 100) for i in range(20)
    ]  # 20 batches of 4 events, answered within the 10 s offered
    section = summarise(
        answers, options, _check(80), span=9.6, offered_seconds=10.0, replay=_answer([])
    )
    figures = _figures(_report(section))
    assert figures["events accepted"] == (8.0, 8.0 / 100_000)
    assert figures["events accepted, of offered"] == (8.0, 1.0)  # all of 2 batches/s of 4 events
    assert figures["batches accepted"] == (2.0, 2.0 / 10_000)
    assert figures["batch latency p50"][0] == pytest.approx(110.0)
    assert figures["batch latency p95"][0] == pytest.approx(200.0)
    assert figures["batch latency p99"][0] == pytest.approx(200.0)
    assert figures["batches not answered 200"][0] == 0
    assert figures["events lost or taken twice"][0] == 0
    assert figures["messages at a wrong status"][0] == 0
    assert all(_report(section).verdict(f) is not False for f in section.figures)
    assert any("posted again: 200" in note for note in section.notes)


def test_falling_behind_lowers_the_share_and_failures_are_counted() -> None:
    options = _options(batch=10, rate=1.0, seconds=10)
    answers = [_answer([(1, "open")] * 10) for _ in range(9)] + [_answer([(2, "open")] * 10, 503)]
    # The last answer came 18 s after the first post: 90 events over 18 s, of 10 events/s.
    section = summarise(
        answers,
        options,
        _check(95, distinct=93, misplaced=2),
        span=18.0,
        offered_seconds=10.0,
        replay=None,
    )
    report = _report(section)
    figures = _figures(report)
    assert figures["events accepted"][0] == 5.0
    assert figures["events accepted, of offered"] == (5.0, 0.5)
    assert figures["batches not answered 200"][0] == 1
    # 5 rows more than the 90 events answered 200, of which 2 are the same event twice.
    assert figures["events lost or taken twice"][0] == 7
    assert figures["messages at a wrong status"][0] == 2
    failed = [f.name for f in section.figures if report.verdict(f) is False]
    assert failed == [
        "batches not answered 200",
        "events lost or taken twice",
        "messages at a wrong status",
    ]


def test_a_flood_has_no_offer_to_be_compared_with() -> None:
    options = _options(flood=True, seconds=5)
    answers = [_answer([(0, "delivered")] * 1_000) for _ in range(10)]
    section = summarise(
        answers, options, _check(10_000), span=5.0, offered_seconds=None, replay=None
    )
    figures = _figures(_report(section))
    assert "events accepted, of offered" not in figures
    assert figures["events accepted"] == (2_000.0, 0.02)
    assert any("flood: 4 connections" in note for note in section.notes)


def test_no_answer_at_all_leaves_the_figures_unmeasured() -> None:
    section = summarise(
        [_answer([(0, "open")], status=0)],
        _options(),
        _check(0),
        span=0.0,
        offered_seconds=None,
        replay=None,
    )
    figures = _figures(_report(section))
    assert math.isnan(figures["events accepted"][0]) and figures["events accepted"][1] is None
    assert math.isnan(figures["batch latency p50"][0])
    json.dumps(_report(section).as_json())


def test_herald_reads_a_bench_batch_as_the_events_it_was_built_from() -> None:
    signer = Signer()
    batch = Batches(MESSAGES, 100).next(1_700_000_000)
    arrival = datetime.fromtimestamp(1_700_000_005, UTC)
    inbound = Inbound(
        url="http://127.0.0.1/webhooks/providers/x",
        headers={
            name.lower(): value for name, value in signer.headers(batch.body, 1_700_000_001).items()
        },
        body=batch.body,
        received_at=arrival,
    )
    parsed = receive_sendgrid(inbound, signer.public_key, tolerance=timedelta(seconds=300))
    assert parsed.verdict == "verified"
    assert [(e.message_id, e.kind) for e in parsed.events] == [
        (
            MESSAGES[n],
            {"delivered": "delivered", "open": "opened", "click": "clicked", "bounce": "bounced"}[
                kind
            ],
        )
        for n, kind in batch.events
    ]
    assert {e.suppress for e in parsed.events if e.kind == "bounced"} == {"hard_bounce"}
    assert len({e.provider_event_id for e in parsed.events}) == 100


class _Receiver(ThreadingHTTPServer):
    """A stand-in for the route: checks each batch's signature, answers SendGrid's counts."""

    daemon_threads = True
    signer: Signer
    bodies: list[bytes]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        key = self.server.signer.key.public_key()
        try:
            key.verify(
                base64.b64decode(self.headers[SIGNATURE_HEADER]),
                signed_content(self.headers[TIMESTAMP_HEADER], body),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            self._answer(401, b"{}")
            return
        self.server.bodies.append(body)
        count = len(json.loads(body))
        self._answer(200, json.dumps({"received": count, "new": count, "other": "x"}).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.signer, server.bodies = Signer(), []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: _Receiver) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


async def test_offered_batches_go_on_schedule_and_every_answer_is_read(
    receiver: _Receiver,
) -> None:
    options = _options(batch=20, rate=10.0, seconds=1)
    async with httpx.AsyncClient(base_url=_url(receiver)) as client:
        batches = Batches(MESSAGES, 20)
        answers, seconds = await offered(client, "/hook", batches, receiver.signer, options)
    assert seconds == 1.0 and len(answers) == 10 and len(receiver.bodies) == 10
    assert [(a.status, a.received, a.new) for a in answers] == [(200, 20, 20)] * 10
    # Posted a tenth of a second apart: the last went out 0.9 s after the first.
    assert 0.9 <= max(a.answered for a in answers) < 5.0
    assert sorted(receiver.bodies) == sorted(a.batch.body for a in answers)


async def test_a_flood_keeps_every_connection_busy_and_a_wrong_key_is_counted(
    receiver: _Receiver,
) -> None:
    options = _options(batch=10, flood=True, connections=3, seconds=1)
    async with httpx.AsyncClient(base_url=_url(receiver)) as client:
        answers = await flood(client, "/hook", Batches(MESSAGES, 10), receiver.signer, options)
        refused = await flood(client, "/hook", Batches(MESSAGES, 10), Signer(), options)
    assert len(answers) >= 6 and {a.status for a in answers} == {200}
    assert sum(a.new for a in answers) == 10 * len(answers)
    assert refused and {a.status for a in refused} == {401}
    assert sum(a.new for a in refused) == 0


async def test_no_server_is_an_answer_of_status_0() -> None:
    options = _options(batch=5, rate=5.0, seconds=1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{free_port()}") as client:
        answers, _ = await offered(client, "/hook", Batches(MESSAGES, 5), Signer(), options)
    assert len(answers) == 5 and {a.status for a in answers} == {0}
