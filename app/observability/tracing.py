"""OpenTelemetry traces: one trace from the API request through dispatch to each provider call.

Tracing is off unless HERALD_OTLP_ENDPOINT names an OTLP/HTTP collector; then each process
sends its spans there in batches, sampled at HERALD_TRACE_SAMPLE_RATIO (a sampled request
keeps its whole trace). The accepting request's context is stored on the notification as a
W3C `traceparent`, so the dispatch job and every delivery attempt, in whichever worker
process and however late, continue the request's trace.

Off, every call here is a no-op: no span is recorded and no context is stored.
"""

from __future__ import annotations

import contextlib
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


class _Off(NoOpTracer):
    """Tracing off: a span is the invalid span, and the current context is left alone.

    OpenTelemetry's own no-op tracer still makes the invalid span current (a context
    attach and detach, some 10 µs); delivery opens a span per message, so that showed in
    a worker's profile, for nothing recorded."""

    def start_as_current_span(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> contextlib.nullcontext[Span]:
        return _INVALID


_INVALID: contextlib.nullcontext[Span] = contextlib.nullcontext(INVALID_SPAN)
_NO_TRACER = _Off()
_tracer: Tracer = _NO_TRACER


def start_tracing(endpoint: str | None, sample_ratio: float, service: str) -> TracerProvider | None:
    """Send this process's spans to the collector at `endpoint`; None when it is not set.

    The caller shuts the provider down with `stop_tracing` (flushing what is buffered)."""
    global _tracer
    if not endpoint:
        return None
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = provider.get_tracer("herald")
    return provider


def stop_tracing(provider: TracerProvider | None) -> None:
    global _tracer
    if provider is not None:
        _tracer = _NO_TRACER
        provider.shutdown()


def tracer() -> Tracer:
    return _tracer


def current_trace_context() -> str | None:
    """The current span as a `traceparent` value; None when nothing is being traced."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def parent_context(traceparent: str | None) -> Context | None:
    """The context to continue a stored trace in; None starts a trace of its own."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})
