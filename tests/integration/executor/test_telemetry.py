"""Every attempt is a span in the run's trace, exported over OTLP (and free of secrets).

A real `weft-executor` process exports to a real OTLP/gRPC receiver served by the test
(the OpenTelemetry collector protocol), exactly as it would to weft-tracer or Jaeger.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.integration.executor.support import Harness, steps_by_name, until
from weft.v1 import run_pb2
from weft_core.telemetry import parse_traceparent

SECRET = "otel-must-not-see-this"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(None)


def attributes(span: Any) -> dict[str, Any]:
    values = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind) if kind else None
    return values


async def test_attempt_spans_continue_the_run_trace(harness: Harness, receiver: tuple[Receiver, int]) -> None:
    h = harness
    spans, port = receiver
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "WEFT_SECRET_VAULT_TOKEN": SECRET,
    }
    process = h.start_process(env=env)
    step = h.step(
        "traced",
        'printf %s "$TRACEPARENT" > "$WEFT_OUTPUTS/out"',
        literals={"data": "x"},
        secrets={"TOKEN": ("vault", "token")},
    )
    pipeline = await h.apply("traced", [step])
    run = await h.wait((await h.run(pipeline.name)).name)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run.message
    traced = steps_by_name(run)["traced"]
    # Stopping flushes the exporter; in a thread, so the receiver (served by this event
    # loop) can take that last export instead of the stop waiting on it until SIGKILL.
    await asyncio.to_thread(process.stop)
    await until(lambda: any(s.name == "weft.commit" for s in spans.spans), timeout=10, what="spans arrived")

    parsed = parse_traceparent(run.traceparent)
    assert parsed is not None
    trace_id = parsed[0].to_bytes(16, "big")
    by_name = {s.name: s for s in spans.spans}
    expected = {
        "weft.step",
        "weft.cache_lookup",
        "weft.attempt",
        "weft.input_fetch",
        "weft.launch",
        "weft.wait",
        "weft.output_upload",
        "weft.commit",
    }
    assert expected <= set(by_name)
    for name in expected:
        assert by_name[name].trace_id == trace_id, name
    step_span, attempt = by_name["weft.step"], by_name["weft.attempt"]
    assert step_span.parent_span_id == parsed[1].to_bytes(8, "big")
    assert attempt.parent_span_id == step_span.span_id
    assert by_name["weft.cache_lookup"].parent_span_id == step_span.span_id
    assert by_name["weft.commit"].parent_span_id == step_span.span_id
    for child in ("weft.input_fetch", "weft.launch", "weft.wait", "weft.output_upload"):
        assert by_name[child].parent_span_id == attempt.span_id, child
    # The wait is the process's life: after its launch, before its outputs are stored.
    wait = by_name["weft.wait"]
    assert attributes(wait)["process.exit_code"] == 0
    assert attributes(wait)["process.pid"] == attributes(by_name["weft.launch"])["process.pid"]
    assert by_name["weft.launch"].end_time_unix_nano <= wait.start_time_unix_nano
    assert wait.end_time_unix_nano <= by_name["weft.output_upload"].start_time_unix_nano
    assert (
        attributes(attempt).items()
        >= {
            "weft.run": run.name,
            "weft.step": "traced",
            "weft.attempt": 1,
            "weft.dna": traced.dna,
        }.items()
    )
    # The process got the attempt span as its parent.
    assert await h.output(run, "traced") == f"00-{trace_id.hex()}-{attempt.span_id.hex()}-01".encode()
    for span in spans.spans:
        assert SECRET not in str(span), span.name
    assert os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") is None  # the test process itself exports nothing
