"""Forwarding every received span to another OTLP/gRPC endpoint (Jaeger, a collector).

    forwarder = Forwarder("127.0.0.1:4317", queue_spans=50_000)
    await forwarder.start()
    forwarder.offer(request, count)      # from the receiver; never blocks
    await forwarder.stop()               # sends what is queued (bounded by a grace time)

The forwarder has its own bounded queue, so a slow or absent target never slows
ingestion or the store: a request that does not fit is counted as forward-dropped.
Queued requests are merged into batches of up to `batch_spans` and sent with retry and
exponential backoff on the statuses OTLP calls retryable; a batch still unsent after
`retry_seconds`, or refused for good, is forward-dropped. Spans the target reports as
rejected (OTLP partial success) are forward-dropped too, so that at any moment every span
offered is exactly one of forwarded, forward-dropped or forward-queued.

A span is sent again only when an attempt's answer was lost (a timeout after the target
took it): OTLP gives no way to tell, so delivery is at least once in that case. Nothing
here touches the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

log = logging.getLogger(__name__)

#: Statuses after which OTLP exporters retry (the OTLP specification's list).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def target_of(endpoint: str) -> str:
    """`host:port` of an OTLP endpoint given as `host:port` or `http://host:port`."""
    for scheme in ("http://", "https://", "grpc://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    return endpoint.rstrip("/")


class Forwarder:
    """Sends received spans on to `endpoint` (see the module docstring).

    Args:
        endpoint: The target, `host:port` or `http://host:port` (plaintext gRPC).
        queue_spans: Most spans waiting at once.
        batch_spans: Most spans per export call.
        retry_seconds: How long one batch is retried before it is dropped.
        call_timeout: Deadline of one export call.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        queue_spans: int = 50_000,
        batch_spans: int = 2_000,
        retry_seconds: float = 30.0,
        call_timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.queue_spans = queue_spans
        self.batch_spans = batch_spans
        self.retry_seconds = retry_seconds
        self.call_timeout = call_timeout
        self.forwarded = 0
        self.dropped = 0
        self.queued = 0  # offered and neither forwarded nor dropped yet (includes in flight)
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[trace_service_pb2.ExportTraceServiceRequest, int]] = collections.deque()
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stopping = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._channel = grpc.aio.insecure_channel(
            target_of(self.endpoint), options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )
        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._task = asyncio.create_task(self._send_loop(), name="weft-tracer-forwarder")

    def offer(self, request: trace_service_pb2.ExportTraceServiceRequest, count: int) -> bool:
        """Queues a request for forwarding if it fits; never blocks (event loop thread)."""
        with self._lock:
            if self.queued + count > self.queue_spans or self._stopping:
                self.dropped += count
                return False
            self.queued += count
            self._queue.append((request, count))
        self._ready.set()
        return True

    async def stop(self, grace: float = 5.0) -> None:
        """Sends what is queued for up to `grace` seconds, then drops the rest and stops."""
        deadline = time.monotonic() + grace
        while self.queued and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with self._lock:
            self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with self._lock:
            # Whatever is left (queued, or the batch whose send was cancelled) never went out.
            self.dropped += self.queued
            self.queued = 0
            self._queue.clear()
        if self._channel is not None:
            await self._channel.close(None)

    def _next_batch(self) -> tuple[trace_service_pb2.ExportTraceServiceRequest, int] | None:
        with self._lock:
            if not self._queue:
                return None
            batch = trace_service_pb2.ExportTraceServiceRequest()
            spans = 0
            while self._queue and (spans == 0 or spans + self._queue[0][1] <= self.batch_spans):
                request, count = self._queue.popleft()
                batch.resource_spans.extend(request.resource_spans)
                spans += count
            return batch, spans

    async def _send_loop(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            batch, count = taken
            delivered = await self._send(batch, count)
            with self._lock:
                self.queued -= count
                self.forwarded += delivered
                self.dropped += count - delivered

    async def _send(self, batch: trace_service_pb2.ExportTraceServiceRequest, count: int) -> int:
        """Sends one batch with retries; returns how many of its spans the target took."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                response = await self._stub.Export(batch, timeout=self.call_timeout)
                rejected = int(response.partial_success.rejected_spans)
                if rejected:
                    log.warning(
                        "forward target %s rejected %d of %d spans: %s",
                        self.endpoint,
                        rejected,
                        count,
                        response.partial_success.error_message,
                    )
                return count - min(rejected, count)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code not in RETRYABLE or time.monotonic() + delay > deadline:
                    log.warning(
                        "forwarding %d spans to %s failed (%s: %s); they are dropped",
                        count,
                        self.endpoint,
                        code.name,
                        error.details(),
                    )
                    return 0
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"forwarded": self.forwarded, "forward_dropped": self.dropped, "forward_queued": self.queued}
