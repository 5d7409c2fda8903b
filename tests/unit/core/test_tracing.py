"""weft's tracer records what the SDK's would: the same spans, tree, attributes, events,
statuses and sampling, for the ways weft's code makes spans.

`weft_core.tracing.WeftTracer` replaces the SDK's tracer for weft's own spans (for speed);
each scenario runs once with each tracer, both ending in the SDK's processor, and the
encoded OTLP must match once span ids and times (random and clock-dependent) are
replaced by their order of appearance.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from weft_core import telemetry
from weft_core.otlp import encode_request
from weft_core.tracing import WeftSpan, WeftTracer

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NOT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def _both(scenario: Callable[[trace.Tracer], None], sampler: Sampler | None = None) -> tuple[list[bytes], list[bytes]]:
    """Runs `scenario` with the SDK's tracer and with WeftTracer; returns each one's spans,
    encoded and normalised."""
    results = []
    for make in ("sdk", "weft"):
        memory = InMemorySpanExporter()
        processor = SimpleSpanProcessor(memory)
        provider = TracerProvider(resource=Resource.create({"service.name": "weft-executor"}), sampler=sampler)
        provider.add_span_processor(processor)
        tracer: trace.Tracer = provider.get_tracer("weft")
        if make == "weft":
            tracer = WeftTracer(provider.resource, provider.sampler, processor)
        scenario(tracer)
        results.append(_normalised(memory.get_finished_spans()))
        provider.shutdown()
    return results[0], results[1]


def _normalised(spans: tuple[object, ...]) -> list[bytes]:
    request = encode_request(spans)  # type: ignore[arg-type]
    names: dict[bytes, bytes] = {}

    def label(span_id: bytes) -> bytes:
        # Ids by order of appearance; the traceparent's own span id keeps its value.
        if not span_id or span_id == bytes.fromhex("b7ad6b7169203331"):
            return span_id
        return names.setdefault(span_id, len(names).to_bytes(8, "big"))

    out = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.span_id = label(span.span_id)
                span.parent_span_id = label(span.parent_span_id)
                if span.trace_id != bytes.fromhex("0af7651916cd43dd8448eb211c80319c"):
                    span.trace_id = b"random trace id!"
                for link in span.links:
                    link.span_id = label(link.span_id)
                span.start_time_unix_nano = span.end_time_unix_nano = 1
                for event in span.events:
                    event.time_unix_nano = 1
                    for item in event.attributes:
                        if item.key == "exception.stacktrace":
                            item.value.string_value = _without_sdk_frames(item.value.string_value)
                out.append(span.SerializeToString())
    return sorted(out)


def _without_sdk_frames(stacktrace: str) -> str:
    # The SDK's context managers are generators, so a traceback through them includes
    # their frames (use_span, start_as_current_span); weft's are classes and add none.
    lines = stacktrace.splitlines(keepends=True)
    kept, skip = [], False
    for line in lines:
        if line.startswith("  File "):
            skip = "site-packages/opentelemetry/" in line
        if not skip:
            kept.append(line)
    return "".join(kept)


def _step(tracer: trace.Tracer) -> None:
    """A step as the executor traces it: a span continuing the run's traceparent, children,
    attributes set later, a failed commit, an exception caught outside, a status."""
    parent = telemetry.context_from_traceparent(SAMPLED)
    attributes = {"weft.run": "namespaces/default/runs/r1", "weft.step": "train", "weft.executor": "e1"}
    with tracer.start_as_current_span("weft.step", context=parent, attributes=attributes) as step:
        step.set_attribute("weft.dna", "sha256:abc")
        with tracer.start_as_current_span("weft.cache_lookup", attributes={"weft.dna": "sha256:abc"}) as lookup:
            lookup.set_attribute("weft.cache", "miss")
        attempt: dict[str, Any] = {
            "weft.attempt": 1,
            "host.name": "h",
            "ratio": 0.5,
            "adopted": False,
            "tags": ["a", "b"],
        }
        with tracer.start_as_current_span("weft.attempt", attributes=attempt) as span:
            assert telemetry.traceparent_of(span).startswith("00-0af7651916cd43dd8448eb211c80319c-")
            assert trace.get_current_span() is span
            with tracer.start_as_current_span("weft.launch", kind=SpanKind.CLIENT) as launch:
                launch.set_attributes({"process.pid": 4242, "sizes": (1, 2)})
                launch.add_event("spawned", {"process.pid": 4242})
            with pytest.raises(ValueError), tracer.start_as_current_span("weft.commit"):
                raise ValueError("etcd said no")
            span.set_status(Status(StatusCode.ERROR, "exit 3"))
            span.set_status(StatusCode.UNSET)  # never overwrites
        with tracer.start_span("weft.detached", links=[Link(step.get_span_context(), {"why": "x"})]) as detached:
            detached.set_status(StatusCode.OK)
            detached.set_status(StatusCode.ERROR, "ignored: OK is final")
        with pytest.raises(KeyError), tracer.start_span("weft.manual"):
            raise KeyError("k")
        ended = tracer.start_span("weft.ended")
        ended.end()
        ended.set_attribute("late", "ignored")  # after end: not recorded
        ended.end()  # twice: one span
        # A child of a span that has ended (a task outliving its step) is still recorded.
        with tracer.start_as_current_span("weft.late", context=trace.set_span_in_context(ended)) as late:
            assert late.is_recording()
    fresh = telemetry.context_from_traceparent("")  # a malformed one: a new trace
    with tracer.start_as_current_span("weft.root", kind=SpanKind.SERVER, context=fresh):
        pass


def test_a_step_traced_by_weft_matches_the_sdk() -> None:
    sdk, weft = _both(_step)
    assert len(sdk) == 10
    assert weft == sdk


def test_an_unsampled_run_records_nothing() -> None:
    def unsampled(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("weft.step", context=telemetry.context_from_traceparent(NOT_SAMPLED)) as s:
            assert not s.is_recording()
            with tracer.start_as_current_span("weft.attempt") as child:
                assert not child.is_recording()
                assert telemetry.traceparent_of(child).endswith("-00")

    assert _both(unsampled) == ([], [])


def test_the_providers_sampler_decides_for_roots() -> None:
    def roots(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("weft.CreateRun") as root:
            assert not root.is_recording()

    assert _both(roots, sampler=ParentBased(ALWAYS_OFF)) == ([], [])


def test_an_exception_escaping_is_recorded_but_not_base_exceptions() -> None:
    def cancelled(tracer: trace.Tracer) -> None:
        async def main() -> None:
            with tracer.start_as_current_span("weft.wait"):
                raise asyncio.CancelledError  # a BaseException: not an error of the span

        with pytest.raises(asyncio.CancelledError):
            asyncio.run(main())

    sdk, weft = _both(cancelled)
    assert len(sdk) == 1
    assert weft == sdk


def test_invalid_attribute_values_are_dropped_as_the_sdk_drops_them() -> None:
    def odd(tracer: trace.Tracer) -> None:
        odd: Any = {"ok": "yes", "bad": object()}
        with tracer.start_as_current_span("weft.odd", attributes=odd) as span:
            span.set_attribute("mixed", [1, "a"])
            span.set_attribute("none", None)

    sdk, weft = _both(odd)
    assert weft == sdk


def test_with_export_off_spans_are_the_apis_no_ops() -> None:
    assert not isinstance(telemetry.tracer().start_span("x"), WeftSpan)  # export off: the API's


def test_setup_tracing_makes_weft_spans_and_exports_them_with_weft_s_encoder() -> None:
    # In a process of its own: the global tracer provider can be set once per process.
    program = """
from opentelemetry import trace
from weft_core import otlp, telemetry, tracing
assert telemetry.setup_tracing("weft-test", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
span = telemetry.tracer().start_span("weft.step")
assert isinstance(span, tracing.WeftSpan), type(span)
exporter = telemetry.tracer().processor.span_exporter
assert type(exporter) is otlp.SpanExporter, type(exporter)
assert type(exporter)._translate_data is not otlp.OTLPSpanExporter._translate_data
# Libraries and user code in the process keep the SDK's own tracer.
assert type(trace.get_tracer("lib").start_span("x")).__module__ == "opentelemetry.sdk.trace"
span.end()
telemetry.shutdown_tracing()
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
