"""`weft.v1.TraceService`: a run's span tree, its forensic timeline and its replay.

The span tree comes from the store alone (the trace id is the run's, from its etcd
record when etcd is configured, else from the spans that carry `weft.run`). The timeline
needs etcd (`weft_tracer.timeline`). Store reads run in a thread so a large trace never
stalls the event loop that receives spans. Nothing here writes anything.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from weft.v1 import run_pb2, trace_pb2, trace_pb2_grpc
from weft_core.errors import FailedPrecondition, InvalidArgument, NotFound
from weft_core.keyspace import Keyspace
from weft_core.spec import parse_run_name, run_name
from weft_core.store import Store
from weft_core.telemetry import parse_traceparent
from weft_tracer.forward import Forwarder
from weft_tracer.ingest import Counters
from weft_tracer.spans import order_tree, span_message
from weft_tracer.store import SpanStore
from weft_tracer.timeline import build_timeline, read_run_history

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000
#: Longest pause ReplayRunEvents makes between two events, whatever was recorded: a run
#: that sat in a queue for an hour should not hold a replay for an hour at speed 1.
MAX_REPLAY_GAP_SECONDS = 60.0


class TraceService(trace_pb2_grpc.TraceServiceServicer):
    """The tracer's read side (see the module docstring)."""

    def __init__(
        self,
        spans: SpanStore,
        counters: Counters,
        *,
        etcd: Store | None,
        keyspace: Keyspace,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.spans = spans
        self.counters = counters
        self.etcd = etcd
        self.keyspace = keyspace
        self.forwarder = forwarder

    # Span tree ------------------------------------------------------------------------

    async def _run_trace_ids(self, ns: str, run_id: str) -> list[bytes]:
        trace_ids, _ = await self._run_trace(ns, run_id)
        return trace_ids

    async def _run_trace(self, ns: str, run_id: str) -> tuple[list[bytes], str]:
        """The run's trace ids (its own first) and its root span id ("" when unknown)."""
        name = run_name(ns, run_id)
        root = ""
        found = await asyncio.to_thread(self.spans.run_trace_ids, name)
        if self.etcd is not None:
            kv = await self.etcd.get(self.keyspace.run(ns, run_id))
            if kv is None:
                raise NotFound(f'run "{name}" does not exist; list runs with `weft runs list`')
            run = run_pb2.Run()
            try:
                run.ParseFromString(kv.value)
            except DecodeError:
                run = run_pb2.Run()
            parsed = parse_traceparent(run.traceparent)
            if parsed is not None:
                trace_id = parsed[0].to_bytes(16, "big")
                root = f"{parsed[1]:016x}"
                # The run's own trace first; other traces that name the run follow.
                found = [trace_id, *(t for t in found if t != trace_id)]
        elif not found:
            raise NotFound(
                f'no span of run "{name}" is stored (this tracer has no etcd to look the run up: '
                "start it with --etcd-endpoints)"
            )
        return found, root

    async def _spans_of(self, trace_ids: list[bytes]) -> list[trace_pb2.Span]:
        stored = await asyncio.to_thread(self.spans.trace_rows, trace_ids)
        return [span_message(s.body, s.service) for s in stored]

    async def GetRunTrace(
        self, request: trace_pb2.GetRunTraceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_pb2.RunTrace:
        ns, run_id = parse_run_name(request.run, "run")
        trace_ids, root = await self._run_trace(ns, run_id)
        spans = await self._spans_of(trace_ids)
        if root:
            spans.extend(placeholders(spans, trace_ids[0].hex(), root))
        ordered, roots = order_tree(spans)
        return trace_pb2.RunTrace(
            run=run_name(ns, run_id),
            trace_id=trace_ids[0].hex() if trace_ids else "",
            spans=ordered,
            root_span_ids=roots,
        )

    # Timeline -------------------------------------------------------------------------

    async def timeline(self, run: str, step_filter: str = "") -> tuple[list[trace_pb2.TimelineEvent], bool]:
        """The run's events (of one step and the run's own, if `step_filter`), and whether
        etcd's history was compacted."""
        ns, run_id = parse_run_name(run, "run")
        if self.etcd is None:
            raise FailedPrecondition(
                "run timelines need the run's etcd records: start weft-tracer with --etcd-endpoints"
            )
        history = await read_run_history(self.etcd, self.keyspace, ns, run_id)
        trace_ids = await self._run_trace_ids(ns, run_id)
        spans = await self._spans_of(trace_ids)
        events = build_timeline(history, spans)
        if step_filter:
            if step_filter not in history.records and not any(e.step == step_filter for e in events):
                known = ", ".join(history.step_order[:10]) or "none yet"
                raise InvalidArgument(
                    f'filter: run "{run}" has no step "{step_filter}" with events; its steps so far: {known}',
                    field="filter",
                )
            events = [e for e in events if e.step in ("", step_filter)]
        return events, history.compacted

    async def ListRunEvents(
        self, request: trace_pb2.ListRunEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_pb2.ListRunEventsResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size: {request.page_size} is out of range; "
                f"use 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE}",
                field="page_size",
            )
        size = request.page_size or DEFAULT_PAGE_SIZE
        offset = _decode_page_token(request.page_token)
        events, compacted = await self.timeline(request.run, request.filter)
        page = events[offset : offset + size]
        following = offset + size
        return trace_pb2.ListRunEventsResponse(
            events=page,
            next_page_token=_encode_page_token(following) if following < len(events) else "",
            history_compacted=compacted,
        )

    async def ReplayRunEvents(
        self, request: trace_pb2.ReplayRunEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[trace_pb2.TimelineEvent]:
        if request.speed < 0 or request.speed != request.speed:  # NaN too
            raise InvalidArgument(
                f"speed: {request.speed} is not a speed; use 1 for real time, 10 for ten times faster, "
                "or as_fast_as_possible",
                field="speed",
            )
        speed = request.speed or 1.0
        events, _ = await self.timeline(request.run, request.filter)
        if not events:
            return
        due = time.monotonic()
        previous = events[0].time.ToNanoseconds()
        for event in events:
            recorded = event.time.ToNanoseconds()
            if not request.as_fast_as_possible:
                gap = min(max(recorded - previous, 0) / 1e9, MAX_REPLAY_GAP_SECONDS)
                # Sleep to an absolute schedule (not gap by gap), so small delays in
                # sending do not add up over a long replay.
                due += gap / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            previous = recorded
            yield event

    # Status ---------------------------------------------------------------------------

    async def GetTracerStatus(
        self, request: trace_pb2.GetTracerStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_pb2.TracerStatus:
        return await status_of(self.spans, self.counters, self.forwarder)


async def status_of(spans: SpanStore, counters: Counters, forwarder: Forwarder | None) -> trace_pb2.TracerStatus:
    """The tracer's counters and store size now."""
    stored_spans, store_bytes = await asyncio.to_thread(lambda: (spans.count(), spans.file_bytes()))
    with counters.lock:
        status = trace_pb2.TracerStatus(
            received=counters.received,
            stored=counters.stored,
            duplicates=counters.duplicates,
            dropped=counters.dropped,
            queued=counters.queued,
            pruned=counters.pruned,
            refused=counters.refused,
        )
    status.stored_spans = stored_spans
    status.store_bytes = store_bytes
    if forwarder is not None:
        forwarded = forwarder.status()
        status.forwarded = forwarded["forwarded"]
        status.forward_dropped = forwarded["forward_dropped"]
        status.forward_queued = forwarded["forward_queued"]
        status.forward_endpoint = forwarder.endpoint
    return status


def placeholders(spans: list[trace_pb2.Span], trace_id: str, root_span_id: str) -> list[trace_pb2.Span]:
    """Stand-ins for the parents that stored spans of the run's trace name but that were
    never received, hung under the run's root span (see `weft.v1.Span.placeholder`)."""
    stored = {s.span_id for s in spans}
    missing: dict[str, list[trace_pb2.Span]] = {}
    for span in spans:
        parent = span.parent_span_id
        if span.trace_id == trace_id and parent and parent not in stored and parent != root_span_id:
            missing.setdefault(parent, []).append(span)
    made = []
    for span_id, children in missing.items():
        made.append(
            trace_pb2.Span(
                trace_id=children[0].trace_id,
                span_id=span_id,
                parent_span_id=root_span_id,
                name="(not received)",
                start_time=min((c.start_time for c in children), key=lambda t: t.ToNanoseconds()),
                end_time=max((c.end_time for c in children), key=lambda t: t.ToNanoseconds()),
                placeholder=True,
            )
        )
    return made


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"events:{offset}".encode()).decode()


def _decode_page_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, number = text.partition(":")
        if prefix != "events" or not number.isdigit():
            raise ValueError(text)
        return int(number)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token: not a token this service gave out; pass the previous page's next_page_token, "
            "or leave it empty for the first page",
            field="page_token",
        ) from None
