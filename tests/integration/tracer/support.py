"""Helpers of the tracer tests: a weft-tracer in-process or as a process, traced stacks,
a step whose own code emits a span through the OpenTelemetry SDK, and tree checks.

The in-process tracer serves from the test's event loop, so anything that exports to it
from the test process itself must do so from a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tests.integration.executor.support import Harness
from weft.localstack import ServiceProcess, tracer_process
from weft.v1 import pipeline_pb2, trace_pb2, trace_pb2_grpc
from weft_core.keyspace import DEFAULT_ROOT
from weft_tracer.app import Tracer, create_tracer
from weft_tracer.config import TracerConfig

#: A step's own code: continues $TRACEPARENT with the OpenTelemetry SDK and exports one
#: span named `user.work` (with a child `user.inner`) to $STEP_OTLP_ENDPOINT (unset: to
#: where the standard OTEL_EXPORTER_OTLP_* variables say), then writes its output.
USER_STEP = """
import os, time
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

provider = TracerProvider(resource=Resource.create({"service.name": "user-code"}))
provider.add_span_processor(
    SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=os.environ["STEP_OTLP_ENDPOINT"], insecure=True)
        if "STEP_OTLP_ENDPOINT" in os.environ
        else OTLPSpanExporter()
    )
)
parent = TraceContextTextMapPropagator().extract({"traceparent": os.environ["TRACEPARENT"]})
tracer = provider.get_tracer("user")
with tracer.start_as_current_span("user.work", context=parent, attributes={"rows": 3}) as span:
    wait_for = os.environ.get("WAIT_FOR", "")
    if wait_for:
        open(os.environ["STARTED"] + "-" + os.environ["WEFT_ATTEMPT"], "w").close()
        while not os.path.exists(wait_for):
            time.sleep(0.05)
    with tracer.start_as_current_span("user.inner"):
        span.add_event("halfway", {"done": 1})
provider.shutdown()
with open(os.path.join(os.environ["WEFT_OUTPUTS"], "out"), "w") as out:
    out.write("traced")
"""


def tracer_config(
    store: Path, etcd_endpoint: str = "", etcd_root: str = DEFAULT_ROOT, **overrides: Any
) -> TracerConfig:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "store": store,
        "etcd_endpoints": etcd_endpoint,
        "etcd_root": etcd_root,
    }
    settings.update(overrides)
    return TracerConfig(**settings)


@contextlib.asynccontextmanager
async def running_tracer(config: TracerConfig) -> AsyncIterator[Tracer]:
    """A weft-tracer served from the test's event loop for the `async with` block."""
    tracer = await create_tracer(config)
    await tracer.server.start()
    try:
        yield tracer
    finally:
        await tracer.server.stop(grace=1.0)


class TracerProcess:
    """The `weft-tracer` console script as a child process, restartable on the same port."""

    def __init__(self, tmp: Path, etcd_endpoint: str = "", etcd_root: str = "", extra_args: Sequence[str] = ()) -> None:
        self.tmp = tmp
        self.etcd_endpoint = etcd_endpoint
        self.etcd_root = etcd_root
        self.extra_args = list(extra_args)
        self.port = 0
        self.service: ServiceProcess | None = None

    @property
    def address(self) -> str:
        assert self.port, "not started"
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.service = tracer_process(
            self.tmp / "spans.db",
            self.tmp / "weft-tracer.log",
            listen=f"127.0.0.1:{self.port}",
            etcd_endpoint=self.etcd_endpoint,
            etcd_root=self.etcd_root,
            extra_args=self.extra_args,
            health=True,
        )
        self.port = int(self.service.start().rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


@dataclass
class TraceClient:
    """weft.v1.TraceService over one channel."""

    channel: grpc.aio.Channel

    @property
    def stub(self) -> trace_pb2_grpc.TraceServiceStub:
        return trace_pb2_grpc.TraceServiceStub(self.channel)  # type: ignore[no-untyped-call]

    async def trace(self, run: str) -> trace_pb2.RunTrace:
        found: trace_pb2.RunTrace = await self.stub.GetRunTrace(trace_pb2.GetRunTraceRequest(run=run))
        return found

    async def events(self, run: str, page_size: int = 0) -> list[trace_pb2.TimelineEvent]:
        events: list[trace_pb2.TimelineEvent] = []
        token = ""
        while True:
            page = await self.stub.ListRunEvents(
                trace_pb2.ListRunEventsRequest(run=run, page_size=page_size, page_token=token)
            )
            events.extend(page.events)
            token = page.next_page_token
            if not token:
                return events

    async def status(self) -> trace_pb2.TracerStatus:
        found: trace_pb2.TracerStatus = await self.stub.GetTracerStatus(trace_pb2.GetTracerStatusRequest())
        return found


def user_step(
    h: Harness, name: str, tracer_address: str, *, wait_for: Path | None = None, **kwargs: Any
) -> pipeline_pb2.Step:
    """A step whose own Python code emits `user.work` through the OpenTelemetry SDK (to
    `tracer_address`; "": to the endpoint its environment names)."""
    script = h.tmp / "user_step.py"
    script.write_text(USER_STEP)
    env = {"STEP_OTLP_ENDPOINT": f"http://{tracer_address}"} if tracer_address else {}
    env.update(kwargs.pop("env", {}))
    if wait_for is not None:
        env.update({"WAIT_FOR": str(wait_for), "STARTED": str(h.tmp / f"started-{name}")})
    return h.step(name, command=[sys.executable, str(script)], env=env, **kwargs)


def by_name(trace: trace_pb2.RunTrace) -> dict[str, list[trace_pb2.Span]]:
    found: dict[str, list[trace_pb2.Span]] = {}
    for span in trace.spans:
        found.setdefault(span.name, []).append(span)
    return found


def ancestry(trace: trace_pb2.RunTrace, span: trace_pb2.Span) -> list[str]:
    """Names from `span` up to its root."""
    spans = {s.span_id: s for s in trace.spans}
    names = [span.name]
    current = span
    while current.parent_span_id in spans:
        current = spans[current.parent_span_id]
        names.append(current.name)
    return names


def assert_connected(trace: trace_pb2.RunTrace, *, root: str = "weft.CreateRun") -> None:
    """One tree: a single root named `root`, every other span's parent present."""
    roots = [s for s in trace.spans if s.span_id in set(trace.root_span_ids)]
    assert [r.name for r in roots] == [root], [(r.name, r.parent_span_id) for r in roots]
    ids = {s.span_id for s in trace.spans}
    for span in trace.spans:
        if span.name != root:
            assert span.parent_span_id in ids, span.name


def kinds(events: Sequence[trace_pb2.TimelineEvent]) -> list[tuple[str, str, int]]:
    """(kind without prefix, step, attempt) of each event."""
    return [(trace_pb2.TimelineEvent.Kind.Name(e.kind).removeprefix("KIND_"), e.step, e.attempt) for e in events]
