"""Traces and metrics: one OpenTelemetry trace from the API request through dispatch to the
provider call, exported over OTLP/HTTP to a local collector; Prometheus metrics summed over
the processes of `herald api --workers N`."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import Notification
from app.runtime import ServiceUrls
from tests.fakes import FakeProvider
from tests.send_path import drain, notify, put_recipient, put_template, workers
from tests.support import TenantKey, free_port, make_tenant, ready_client, settings_for

MAIL = {"email": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"}}


@pytest.fixture
def collector() -> Iterator[FakeProvider]:
    """An OpenTelemetry collector's OTLP/HTTP trace endpoint: keeps what it is sent."""
    fake = FakeProvider().start()
    fake.answer(200, b"", {"content-type": "application/x-protobuf"})
    yield fake
    fake.stop()


def exported_spans(collector: FakeProvider) -> list[dict[str, Any]]:
    spans = []
    for _, path, _, body in collector.requests:
        assert path == "/v1/traces"
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        {
                            "service": service["service.name"],
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "attributes": {
                                a.key: a.value.string_value or a.value.int_value
                                for a in span.attributes
                            },
                            "error": span.status.code == span.status.STATUS_CODE_ERROR,
                        }
                    )
    return spans


async def test_one_trace_from_the_request_to_the_provider(
    session: AsyncSession, service_urls: ServiceUrls, collector: FakeProvider
) -> None:
    settings = settings_for(
        service_urls.database_url, service_urls.redis_url, HERALD_OTLP_ENDPOINT=collector.url
    )
    sandbox = await make_tenant(session, "Traced", mode="test")
    async with ready_client(settings) as client:
        await put_template(client, sandbox, "hello", MAIL)
        await put_recipient(client, sandbox, "ok", email="ok@example.com")
        await put_recipient(client, sandbox, "gone", email="bounce@sandbox.herald")
        accepted = await notify(
            client, sandbox, template="hello", to=["ok", "gone"], data={"name": "A"}
        )
        async with workers(settings) as ctx:
            await drain(ctx, service_urls.redis_url)
    # Both providers are shut down by now: every span is flushed to the collector.

    spans = exported_spans(collector)
    [request] = [s for s in spans if s["name"] == "POST /v1/notifications"]
    trace = [s for s in spans if s["trace_id"] == request["trace_id"]]
    [dispatch] = [s for s in trace if s["name"] == "herald.dispatch"]
    sends = [s for s in trace if s["name"] == "herald.send email"]
    assert request["service"] == "herald-api"
    assert dispatch["service"] == "herald-worker"
    assert dispatch["parent_id"] == request["span_id"]
    assert dispatch["attributes"]["herald.notification_id"] == accepted["id"]
    assert dispatch["attributes"]["herald.messages"] == 2
    assert len(sends) == 2 and {s["parent_id"] for s in sends} == {request["span_id"]}
    assert {s["attributes"]["herald.provider"] for s in sends} == {"sandbox"}
    assert sorted(s["error"] for s in sends) == [False, True]  # the hard bounce
    [bounced] = [s for s in sends if s["error"]]
    assert bounced["attributes"]["herald.error_class"] == "permanent"
    assert bounced["attributes"]["herald.status_code"] == 550
    # Probes and scrapes make no traces.
    assert not [s for s in spans if "readyz" in s["name"]]


async def test_without_a_collector_nothing_is_traced(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await put_template(client, tenant, "quiet", MAIL)
    await put_recipient(client, tenant, "q", email="q@example.com")
    accepted = await notify(client, tenant, template="quiet", to=["q"], data={"name": "Q"})
    stored = await session.scalar(
        select(Notification.trace_context).where(Notification.id == uuid.UUID(accepted["id"]))
    )
    assert stored is None


def _counter(metrics: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    total = 0.0
    for line in metrics.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            total += float(match.group(2))
    return total


async def test_api_processes_add_up_their_metrics(
    service_urls: ServiceUrls, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
        "HERALD_ENV": "test",
        "HERALD_DATA_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "app.cli", "api", "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if (await asyncio.to_thread(httpx.get, f"{url}/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        # A connection of its own each: the kernel spreads them over both processes.
        for _ in range(40):
            assert (await asyncio.to_thread(httpx.get, f"{url}/healthz")).status_code == 200
        metrics = (await asyncio.to_thread(httpx.get, f"{url}/metrics")).text
        served = _counter(
            metrics, "herald_http_requests_total", method="GET", route="/healthz", status="200"
        )
        assert served == 41  # the readiness poll's one, and the forty
        # Counted by both processes: each keeps its own file in the shared folder.
        [folder] = (tmp_path / "metrics").iterdir()
        assert len({path.name for path in folder.glob("counter_*.db")}) == 2
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
