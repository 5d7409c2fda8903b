"""weft's span encoder says exactly what the SDK's does, for spans of every shape.

`weft_core.otlp.encode_request` replaces the SDK's `encode_spans` on weft's exporters for
speed; anything it encoded differently would change what Jaeger and weft-tracer show.
The spans are made by the real SDK and compared message for message and byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from weft_core.otlp import encode_request


def _provider(resource: Resource, memory: InMemorySpanExporter, limits: SpanLimits | None = None) -> TracerProvider:
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider


@pytest.fixture
def spans() -> Iterator[list[ReadableSpan]]:
    """Spans of every shape the SDK makes, from two resources and three scopes."""
    memory = InMemorySpanExporter()
    first = _provider(Resource.create({"service.name": "weft-executor", "host.name": "h1"}), memory)
    second = _provider(
        Resource({"service.name": "user-step", "pi": 3.14}, schema_url="https://opentelemetry.io/schemas/1.21.0"),
        memory,
        SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1),
    )
    weft = first.get_tracer("weft")
    scoped = first.get_tracer("lib", "1.2.3", schema_url="https://example.com/s", attributes={"lib.mode": "fast"})
    user = second.get_tracer("user")

    remote = SpanContext(
        0xAB * (2**120 // 0xFF),
        0x1234,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
    )
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    with weft.start_as_current_span(
        "weft.step",
        context=parent,
        attributes={
            "weft.run": "namespaces/default/runs/r1",
            "weft.attempt": 2,
            "weft.adopted": True,
            "ratio": 0.5,
            "tags": ["a", "b"],
            "counts": (1, 2, 3),
            "flags": [True, False],
            "scores": [1.5, 2.5],
            "empty": [],
        },
    ) as step:
        step.add_event("retried", {"weft.attempt": 1, "why": "lost"})
        step.add_event("plain")
        with weft.start_as_current_span("weft.launch", kind=SpanKind.CLIENT) as launch:
            launch.set_attribute("process.pid", 4242)
            launch.set_status(Status(StatusCode.ERROR, "exit 3"))
        with pytest.raises(RuntimeError), weft.start_as_current_span("weft.commit", kind=SpanKind.SERVER):
            raise RuntimeError("etcd went away")  # an exception event with its stack trace
        with scoped.start_as_current_span("lib.call", kind=SpanKind.PRODUCER, links=[Link(remote, {"why": "x"})]):
            pass
        with scoped.start_as_current_span("lib.consume", kind=SpanKind.CONSUMER) as ok:
            ok.set_status(Status(StatusCode.OK))
    # The second provider's limits make the SDK drop attributes, events and links.
    with user.start_as_current_span(
        "user.work", attributes={"a": "1", "b": 2, "c": 3.0}, links=[Link(remote), Link(remote)]
    ) as work:
        work.add_event("one", {"x": 1, "y": 2})
        work.add_event("two")
    with weft.start_as_current_span("root, no parent"):
        pass
    yield list(memory.get_finished_spans())
    first.shutdown()
    second.shutdown()


def test_encodes_every_span_as_the_sdk_does(spans: list[ReadableSpan]) -> None:
    ours, sdk = encode_request(spans), encode_spans(spans)
    assert len(sdk.resource_spans) == 2
    assert sum(len(r.scope_spans) for r in sdk.resource_spans) == 3
    dropped = [s for r in sdk.resource_spans for ss in r.scope_spans for s in ss.spans if s.dropped_attributes_count]
    assert dropped, "the fixture must make the SDK drop something"
    assert ours == sdk
    assert ours.SerializeToString() == sdk.SerializeToString()


def test_encodes_each_batch_as_the_sdk_does(spans: list[ReadableSpan]) -> None:
    # The batch processor hands over slices: spans of one resource, or one span alone.
    for chunk in ([spans[0]], spans[1:4], spans[::-1]):
        assert encode_request(chunk).SerializeToString() == encode_spans(chunk).SerializeToString()
    assert encode_request([]) == encode_spans([])


def test_a_value_otlp_cannot_carry_is_left_out_not_the_batch(spans: list[ReadableSpan]) -> None:
    # A span made without a tracer (no scope) and with a value no tracer validated: the
    # SDK's encoder logs and leaves the value out, and so must weft's, keeping the batch.
    unvalidated: Any = {"ok": "yes", "bad": object(), "after": 1}
    odd = ReadableSpan(
        name="odd",
        context=spans[0].get_span_context(),
        resource=spans[0].resource,
        attributes=unvalidated,
    )
    batch = [odd, *spans]
    assert encode_request(batch).SerializeToString() == encode_spans(batch).SerializeToString()
