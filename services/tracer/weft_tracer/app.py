"""Wiring of weft-tracer: the span store, ingestion, forwarding, the pruner, one gRPC server.

`create_tracer_server(config)` is what `weft-tracer` runs and what the tests start on
port 0. One port serves both the OTLP/gRPC collector service (what exporters call) and
`weft.v1.TraceService` (what the CLI calls), plus health and reflection. With the
security flags, both are authenticated and authorised by `weft_tracer.access`'s table
(token or TokenReview, like weft-api), the port speaks TLS, and etcd is reached over TLS.

The tracer exports no spans of its own: its exporter would send them to itself (weft up
points every service's OTEL_EXPORTER_OTLP_ENDPOINT at it), and each export would make
more spans. Stopping it drains the store queue (so an exporter's acknowledged spans are
written) and sends what the forward queue holds, within the grace time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from weft.v1 import trace_pb2, trace_pb2_grpc
from weft_core.auth import load_auth
from weft_core.keyspace import Keyspace
from weft_core.server import ServiceBinding, WeftServer, create_server
from weft_core.store import Store
from weft_core.tls import etcd_tls_of, server_tls_of
from weft_tracer.access import TRACER_RULES
from weft_tracer.config import TracerConfig
from weft_tracer.forward import Forwarder
from weft_tracer.ingest import OTLP_TRACE_SERVICE, Counters, Ingestor, OtlpReceiver
from weft_tracer.service import TraceService
from weft_tracer.store import SpanStore

log = logging.getLogger(__name__)

TRACE_SERVICE = trace_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


@dataclass
class Tracer:
    """The running parts of one weft-tracer, for tests that look inside."""

    server: WeftServer
    port: int
    store: SpanStore
    counters: Counters
    ingestor: Ingestor
    forwarder: Forwarder | None


async def _prune_forever(store: SpanStore, counters: Counters, config: TracerConfig) -> None:
    while True:
        await asyncio.sleep(config.prune_interval)
        try:
            removed = await asyncio.to_thread(
                store.prune, max_age_seconds=config.retention_seconds, max_bytes=config.retention_bytes
            )
        except Exception:
            log.exception("pruning %s failed; retrying in %.0fs", store.path, config.prune_interval)
            continue
        if removed:
            with counters.lock:
                counters.pruned += removed
            log.info("retention removed %d spans", removed)


async def _report_forever(counters: Counters, forwarder: Forwarder | None, every: float = 60.0) -> None:
    """One log line of counters a minute, when something changed (gRPC health has no details)."""
    last = None
    while True:
        await asyncio.sleep(every)
        with counters.lock:
            now = (
                counters.received,
                counters.stored,
                counters.duplicates,
                counters.dropped,
                counters.queued,
                counters.refused,
            )
        forwarded = forwarder.status() if forwarder is not None else {}
        if (now, forwarded) != last:
            log.info(
                "received=%d stored=%d duplicates=%d dropped=%d queued=%d refused=%d %s",
                *now,
                " ".join(f"{k}={v}" for k, v in forwarded.items()),
            )
            last = (now, forwarded)


async def create_tracer(config: TracerConfig) -> Tracer:
    """Builds weft-tracer bound to `config.listen` (call from a running event loop).

    The server is bound, not started: `await tracer.server.start()`. Stopping it drains
    the queues and closes the store and the etcd connection.

    Raises:
        ValueError: A token, roles or TLS file of the config is missing or malformed.
    """
    # Security first: a bad token or certificate file must stop the start, not the first call.
    auth = load_auth(
        config.auth_tokens_file, config.auth_kube_roles_file, config.auth_kubeconfig, config.span_token_key_file
    )
    tls = server_tls_of(config)
    store = await asyncio.to_thread(SpanStore, config.store)
    counters = Counters()
    ingestor = Ingestor(store, counters, queue_spans=config.queue_spans)
    forwarder = (
        Forwarder(config.forward, queue_spans=config.forward_queue_spans, retry_seconds=config.forward_retry_seconds)
        if config.forward
        else None
    )
    etcd = Store(config.etcd_endpoints, tls=etcd_tls_of(config)) if config.etcd_endpoints else None
    services = [
        ServiceBinding(
            OTLP_TRACE_SERVICE,
            OtlpReceiver(ingestor, forwarder),
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server,
        ),
        ServiceBinding(
            TRACE_SERVICE,
            TraceService(store, counters, etcd=etcd, keyspace=Keyspace(config.etcd_root), forwarder=forwarder),
            trace_pb2_grpc.add_TraceServiceServicer_to_server,
        ),
    ]
    server, port = create_server(
        config.listen, services, auth=auth.with_rules(TRACER_RULES) if auth is not None else None, tls=tls
    )
    ingestor.start()
    if forwarder is not None:
        await forwarder.start()
    background = [asyncio.create_task(_report_forever(counters, forwarder), name="weft-tracer-report")]
    if config.prune_interval > 0 and (config.retention_seconds > 0 or config.retention_bytes > 0):
        background.append(asyncio.create_task(_prune_forever(store, counters, config), name="weft-tracer-pruner"))

    async def stop_background() -> None:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain() -> None:
        # The server has stopped taking exports: write what was acknowledged, then close.
        if forwarder is not None:
            await forwarder.stop()
        await asyncio.to_thread(ingestor.stop)
        await asyncio.to_thread(store.close)

    # on_stop hooks run in reverse: background tasks stop first, etcd closes last.
    if etcd is not None:
        server.on_stop(etcd.close)
    server.on_stop(drain)
    server.on_stop(stop_background)
    return Tracer(server, port, store, counters, ingestor, forwarder)
