"""Ingestion and forwarding with the real OpenTelemetry SDK exporter on both ends.

Spans are exported by the SDK's own BatchSpanProcessor and OTLPSpanExporter (batches as
the SDK sends them) into one weft-tracer, which forwards them to a second weft-tracer
standing in for Jaeger. The counters must add up exactly, whether the target is up or
down. The exporter runs in a thread: both tracers serve from the test's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.integration.tracer.support import running_tracer, tracer_config
from tests.support import assert_eventually_async
from weft.localstack import free_port
from weft_tracer.app import Tracer
from weft_tracer.spans import SpanRow
from weft_tracer.store import SpanStore


def export_spans(target: str, count: int, batch: int = 256) -> set[str]:
    """Exports `count` spans (in traces of 10) through the SDK; returns their span ids."""
    exporter = OTLPSpanExporter(endpoint=f"http://{target}", insecure=True)
    provider = TracerProvider(resource=Resource.create({"service.name": "load"}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=count + 1, max_export_batch_size=batch, schedule_delay_millis=50)
    )
    tracer = provider.get_tracer("test")
    ids: set[str] = set()
    for _ in range(count // 10):
        with tracer.start_as_current_span("root") as root:
            ids.add(f"{root.get_span_context().span_id:016x}")
            for i in range(9):
                with tracer.start_as_current_span(f"child-{i}") as child:
                    ids.add(f"{child.get_span_context().span_id:016x}")
    provider.force_flush()
    provider.shutdown()
    return ids


def stored_ids(tracer: Tracer) -> list[str]:
    connection = tracer.store._connection()
    return [row[0].hex() for row in connection.execute("SELECT span_id FROM spans")]


async def test_every_span_is_stored_and_forwarded_exactly_once(tmp_path: Path) -> None:
    async with running_tracer(tracer_config(tmp_path / "jaeger.db")) as jaeger:
        config = tracer_config(tmp_path / "spans.db", forward=f"127.0.0.1:{jaeger.port}")
        async with running_tracer(config) as tracer:
            sent = await asyncio.to_thread(export_spans, f"127.0.0.1:{tracer.port}", 2000)
            assert len(sent) == 2000

            async def forwarded() -> bool:
                assert tracer.forwarder is not None
                status = tracer.forwarder.status()
                assert status["forwarded"] == 2000, status
                assert jaeger.counters.stored == 2000, jaeger.counters
                return True

            await assert_eventually_async(forwarded, timeout=30, what="every span reached the target")
            assert tracer.counters.received == tracer.counters.stored == 2000
            assert tracer.counters.dropped == tracer.counters.duplicates == 0
            assert jaeger.counters.received == 2000  # nothing was sent twice
            assert jaeger.counters.duplicates == 0
            assert tracer.forwarder is not None
            assert tracer.forwarder.status() == {"forwarded": 2000, "forward_dropped": 0, "forward_queued": 0}
            in_target = stored_ids(jaeger)
            assert sorted(in_target) == sorted(sent)
            assert sorted(stored_ids(tracer)) == sorted(sent)


async def test_with_the_target_down_ingestion_goes_on_and_forward_drops_are_counted_exactly(
    tmp_path: Path,
) -> None:
    config = tracer_config(
        tmp_path / "spans.db",
        forward=f"127.0.0.1:{free_port()}",  # nothing listens there
        forward_queue_spans=300,
        forward_retry_seconds=0.5,
    )
    async with running_tracer(config) as tracer:
        forwarder = tracer.forwarder
        assert forwarder is not None
        sent = await asyncio.to_thread(export_spans, f"127.0.0.1:{tracer.port}", 1000, 100)

        # Ingestion did not wait for the target: every span is stored.
        async def stored() -> bool:
            assert tracer.counters.stored == 1000, tracer.counters
            return True

        await assert_eventually_async(stored, timeout=20, what="every span stored")
        assert sorted(stored_ids(tracer)) == sorted(sent)
        assert tracer.counters.dropped == 0
        # At every moment each span offered is forwarded, dropped or still queued.
        status = forwarder.status()
        assert sum(status.values()) == 1000, status
        assert status["forward_queued"] <= 300

        async def all_dropped() -> bool:
            assert forwarder.status() == {"forwarded": 0, "forward_dropped": 1000, "forward_queued": 0}
            return True

        await assert_eventually_async(all_dropped, timeout=20, what="every span given up on")


class HeldStore:
    """Delays every write of a real SpanStore until released: a store slower than the
    exporters, which a healthy SQLite on this machine never is for long."""

    def __init__(self, store: SpanStore) -> None:
        self.store = store
        self.released = threading.Event()

    def write(self, rows: Sequence[SpanRow]) -> int:
        self.released.wait(20)
        return self.store.write(rows)


async def test_a_full_store_queue_refuses_whole_requests_and_counts_them(tmp_path: Path) -> None:
    async with running_tracer(tracer_config(tmp_path / "spans.db", queue_spans=100)) as tracer:
        held = HeldStore(tracer.store)
        tracer.ingestor.store = held  # type: ignore[assignment]
        await asyncio.to_thread(export_spans, f"127.0.0.1:{tracer.port}", 500, 50)
        counters = tracer.counters
        accepted = counters.queued
        assert counters.received == 500
        assert 0 < accepted <= 100
        assert counters.dropped == 500 - accepted
        assert counters.stored == 0
        held.released.set()

        async def written() -> bool:
            assert counters.stored == accepted, counters
            assert counters.queued == 0, counters
            return True

        await assert_eventually_async(written, timeout=10, what="the queued spans are written")
        assert counters.dropped == 500 - accepted
