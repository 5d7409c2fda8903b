"""The span store: deduplication, retention by age and by size, and the background pruner.

A real SQLite file in WAL mode; rows are made from real OTLP span messages.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from tests.integration.tracer.support import running_tracer, tracer_config
from tests.support import assert_eventually_async
from weft_tracer.spans import SpanRow, rows_of_request
from weft_tracer.store import SpanStore


def rows(count: int, *, start_ns: int, trace: int = 1, payload: int = 200) -> list[SpanRow]:
    resource_spans = otlp.ResourceSpans()
    scope = resource_spans.scope_spans.add()
    for i in range(count):
        span = scope.spans.add(
            trace_id=trace.to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"span-{i}",
            start_time_unix_nano=start_ns + i,
            end_time_unix_nano=start_ns + i + 1000,
        )
        span.attributes.add(key="weft.run", value={"string_value": "namespaces/default/runs/r"})
        span.attributes.add(key="blob", value={"string_value": os.urandom(payload // 2).hex()})
    return rows_of_request([resource_spans])


def test_a_span_written_twice_is_stored_once(tmp_path: Path) -> None:
    store = SpanStore(tmp_path / "spans.db")
    batch = rows(10, start_ns=time.time_ns())
    assert store.write(batch) == 10
    assert store.write(batch) == 0
    assert store.count() == 10
    assert store.run_trace_ids("namespaces/default/runs/r") == [(1).to_bytes(16, "big")]
    store.close()
    reopened = SpanStore(tmp_path / "spans.db")
    assert reopened.count() == 10  # committed batches survive the process
    reopened.close()


def test_retention_removes_old_spans_then_the_oldest_until_under_the_size(tmp_path: Path) -> None:
    store = SpanStore(tmp_path / "spans.db")
    now = time.time_ns()
    store.write(rows(100, start_ns=now - 3600 * 10**9, trace=1))  # an hour old
    store.write(rows(3000, start_ns=now, trace=2, payload=400))
    assert store.prune(max_age_seconds=1800, max_bytes=0, now_ns=now) == 100
    assert store.count() == 3000
    used = store.used_bytes()
    removed = store.prune(max_age_seconds=0, max_bytes=used // 2)
    assert removed > 0
    assert store.used_bytes() <= used // 2
    # Oldest arrivals went first: what is left is the newest part of trace 2.
    left = store.trace_rows([(2).to_bytes(16, "big")])
    assert len(left) == 3000 - removed
    # The count the store keeps (GetTracerStatus's stored_spans) is the file's.
    assert store.count() == 3000 - removed
    reopened = SpanStore(tmp_path / "spans.db")
    assert reopened.count() == 3000 - removed
    reopened.close()
    assert store.file_bytes() < used + 4 * 1024**2  # the freed pages went back (incremental vacuum)
    store.close()


async def test_the_background_pruner_applies_retention_and_counts_it(tmp_path: Path) -> None:
    config = tracer_config(tmp_path / "spans.db", retention_seconds=60.0, prune_interval=0.1)
    async with running_tracer(config) as tracer:
        await asyncio.to_thread(tracer.store.write, rows(50, start_ns=time.time_ns() - 120 * 10**9))
        await asyncio.to_thread(tracer.store.write, rows(5, start_ns=time.time_ns(), trace=3))

        async def pruned() -> bool:
            assert tracer.counters.pruned == 50, tracer.counters
            return True

        await assert_eventually_async(pruned, timeout=10, what="the pruner ran")
        assert await asyncio.to_thread(tracer.store.count) == 5
