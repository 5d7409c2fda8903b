"""OTLP ingestion: the receiver, the bounded store queue, the writer thread and the counters.

    counters = Counters()
    ingestor = Ingestor(store, counters, queue_spans=100_000)
    ingestor.start()                              # the writer thread
    receiver = OtlpReceiver(ingestor, forwarder)  # opentelemetry...TraceService
    ...
    await asyncio.to_thread(ingestor.stop)        # drains the queue, then stops

An export is answered as soon as its spans are queued: ingestion never waits for SQLite
or for the forward target. When the queue cannot take a whole request it is refused
whole, counted as dropped, and the exporter is told through OTLP's partial success
(`rejected_spans`). One thread writes the queue to the store in batches of up to
`batch_spans`, so a burst becomes a few large transactions.

An export authenticated by a step's span token (`weft_core.span_tokens`) keeps only the
spans of the trace the token grants; the others are refused through partial success and
counted as refused (never stored, never forwarded). Refused is not dropped: dropped means
the tracer lost spans it was allowed to keep, refused that a caller sent spans it may not.

The counters are exact: every span received is, at any moment, exactly one of stored,
duplicate, dropped, refused or queued (a batch being written counts as queued until its commit).
The writer must never raise out of its loop: a failing batch is logged and counted as
dropped, and the loop goes on.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from weft_core.auth import current_principal
from weft_core.span_tokens import SpanGrant
from weft_tracer.spans import count_spans, rows_of_request
from weft_tracer.store import SpanStore

if TYPE_CHECKING:
    from weft_tracer.forward import Forwarder

log = logging.getLogger(__name__)

OTLP_TRACE_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


@dataclass
class Counters:
    """The tracer's counters (see `weft.v1.TracerStatus`); updated under `lock`."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dropped: int = 0
    queued: int = 0
    pruned: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Ingestor:
    """The bounded queue between the receiver and the store, and the thread that drains it.

    Args:
        store: Where spans go.
        counters: Updated as spans arrive and are written.
        queue_spans: Most spans waiting at once; a request that does not fit is dropped.
        batch_spans: Most spans written in one transaction.
        flush_seconds: Longest a queued span waits for its batch to fill.
    """

    def __init__(
        self,
        store: SpanStore,
        counters: Counters,
        *,
        queue_spans: int = 100_000,
        batch_spans: int = 5_000,
        flush_seconds: float = 0.05,
    ) -> None:
        self.store = store
        self.counters = counters
        self.queue_spans = queue_spans
        self.batch_spans = batch_spans
        self.flush_seconds = flush_seconds
        # Each item is the `resource_spans` of one request and its span count: parsing
        # into rows happens on the writer thread, not in the event loop.
        self._queue: collections.deque[tuple[Any, int]] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._write_loop, name="weft-tracer-writer", daemon=True)
        self._thread.start()

    def offer(self, resource_spans: Any, count: int) -> bool:
        """Queues a request's spans if they all fit; never blocks. Returns whether they did."""
        counters = self.counters
        with counters.lock:
            counters.received += count
            if counters.queued + count > self.queue_spans:
                counters.dropped += count
                return False
            counters.queued += count
        with self._wakeup:
            self._idle.clear()
            self._queue.append((resource_spans, count))
            self._wakeup.notify()
        return True

    def refuse(self, count: int) -> None:
        """Counts spans received and refused (outside the caller's grant)."""
        with self.counters.lock:
            self.counters.received += count
            self.counters.refused += count

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until everything queued so far is written (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Writes what is queued, then stops the thread."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[tuple[Any, int]]:
        with self._wakeup:
            if not self._queue and not self._stopping:
                self._idle.set()
                self._wakeup.wait()
            if self._queue and not self._stopping:
                # Let a batch fill a little: one large transaction beats many small ones.
                pending = sum(count for _, count in self._queue)
                if pending < self.batch_spans:
                    self._wakeup.wait(self.flush_seconds)
            taken: list[tuple[Any, int]] = []
            spans = 0
            while self._queue and (not taken or spans + self._queue[0][1] <= self.batch_spans):
                item = self._queue.popleft()
                taken.append(item)
                spans += item[1]
            return taken

    def _write_loop(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                if self._stopping:
                    self._idle.set()
                    return
                continue
            count = sum(n for _, n in taken)
            try:
                rows = [row for resource_spans, _ in taken for row in rows_of_request(resource_spans)]
                new = self.store.write(rows)
                outcome = {"stored": new, "duplicates": count - new}
            except Exception:
                log.exception("writing %d spans to %s failed; they are dropped", count, self.store.path)
                outcome = {"dropped": count}
            counters = self.counters
            with counters.lock:
                counters.queued -= count
                counters.stored += outcome.get("stored", 0)
                counters.duplicates += outcome.get("duplicates", 0)
                counters.dropped += outcome.get("dropped", 0)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """`opentelemetry.proto.collector.trace.v1.TraceService`: what every OTLP exporter calls."""

    def __init__(self, ingestor: Ingestor, forwarder: Forwarder | None = None) -> None:
        self.ingestor = ingestor
        self.forwarder = forwarder

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        count = count_spans(request.resource_spans)
        response = trace_service_pb2.ExportTraceServiceResponse()
        if count == 0:
            return response
        principal = current_principal()
        grant = principal.span_grant if principal is not None else None
        refused = 0
        if grant is not None:
            request, kept = spans_of_trace(request, grant)
            refused, count = count - kept, kept
            if refused:
                self.ingestor.refuse(refused)
                response.partial_success.rejected_spans = refused
                response.partial_success.error_message = (
                    f"{refused} spans refused: this exporter's span token allows only spans of the trace "
                    f"{grant.trace_id:032x} of {grant.run}"
                )
            if count == 0:
                return response
        if self.forwarder is not None:
            # Forwarding does not depend on the store: a span the store's queue refused is
            # still forwarded if the forward queue has room, and the other way round.
            self.forwarder.offer(request, count)
        if not self.ingestor.offer(request.resource_spans, count):
            full = (
                f"weft-tracer's queue is full ({self.ingestor.queue_spans} spans); "
                "spans are dropped until the store catches up"
            )
            partial = response.partial_success
            partial.error_message = f"{partial.error_message}; {full}" if refused else full
            partial.rejected_spans = refused + count
        return response


def spans_of_trace(
    request: trace_service_pb2.ExportTraceServiceRequest, grant: SpanGrant
) -> tuple[trace_service_pb2.ExportTraceServiceRequest, int]:
    """The request with only the spans of the grant's trace, and how many those are.

    The request itself when every span is of that trace (the usual case: a step's exporter
    sends only its own spans); otherwise a copy without the others, so that neither the
    store nor the forward target ever sees a span outside the grant.
    """
    trace_id = grant.trace_id_bytes
    spans = [span for rs in request.resource_spans for scope in rs.scope_spans for span in scope.spans]
    kept = sum(1 for span in spans if span.trace_id == trace_id)
    if kept == len(spans):
        return request, kept
    filtered = trace_service_pb2.ExportTraceServiceRequest()
    for rs in request.resource_spans:
        scopes = [(scope, [s for s in scope.spans if s.trace_id == trace_id]) for scope in rs.scope_spans]
        if not any(mine for _, mine in scopes):
            continue
        out = filtered.resource_spans.add(resource=rs.resource, schema_url=rs.schema_url)
        for scope, mine in scopes:
            if mine:
                out.scope_spans.add(scope=scope.scope, schema_url=scope.schema_url).spans.extend(mine)
    return filtered, kept
