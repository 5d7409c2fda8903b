"""Per-attempt span tokens on real servers: with auth on, a step (local runtime) exports its
own spans with the OpenTelemetry SDK through the environment its executor gave it, and
they land in its run's trace in weft-tracer; the token it got is good for nothing else.

The stack: a weft-api with auth, a weft-tracer with auth and the span token key, and an
in-process executor with the same key whose steps export to the tracer. The step records
the header variable it was given, so the test can try the very token the step held.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp_trace_pb2

from tests.integration.auth.conftest import Tokens
from tests.integration.auth.test_auth import OTLP_DESCRIPTOR, call, contract_methods, path_of, requests_in
from tests.integration.conftest import InProcessApi, harness_on
from tests.integration.executor.support import Harness, steps_by_name
from tests.integration.tracer.support import USER_STEP, TraceClient
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2, trace_pb2
from weft_core import span_tokens
from weft_core.auth import SpanTokenKey
from weft_core.telemetry import parse_traceparent
from weft_tracer.app import Tracer, create_tracer
from weft_tracer.config import TracerConfig

pytestmark = pytest.mark.timeout(90)

EXPORT = OTLP_DESCRIPTOR.methods_by_name["Export"]


@pytest.fixture
def span_key(tmp_path: Path) -> Path:
    path = tmp_path / "span-token.key"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
async def keyed_tracer(
    etcd: EtcdProcess, secure_api: InProcessApi, tokens: Tokens, span_key: Path, tmp_path: Path
) -> AsyncIterator[Tracer]:
    """A weft-tracer with auth on that verifies span tokens made with `span_key`."""
    config = TracerConfig(
        listen="127.0.0.1:0",
        store=tmp_path / "spans.db",
        etcd_endpoints=etcd.endpoint,
        etcd_root=secure_api.keyspace.root,
        auth_tokens_file=tokens.path,
        span_token_key_file=span_key,
    )
    tracer = await create_tracer(config)
    await tracer.server.start()
    yield tracer
    await tracer.server.stop(0)


@pytest.fixture
async def harness(
    etcd: EtcdProcess, secure_api: InProcessApi, tokens: Tokens, tmp_path: Path
) -> AsyncIterator[Harness]:
    async with (
        tokens.channel(secure_api.address, "cluster-admin") as channel,
        harness_on(etcd, secure_api, tmp_path, channel) as harness,
    ):
        yield harness


def exporting_env(tracer: Tracer) -> dict[str, str]:
    """An executor environment whose steps export to `tracer` (no headers: never the peer token)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{tracer.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }


def traced_step(h: Harness, headers_file: Path) -> Any:
    """USER_STEP (the SDK's exporter configured by the environment alone), after writing the
    header variable it was given to `headers_file`."""
    script = h.tmp / "user_step.py"
    script.write_text(USER_STEP)
    command = f'printf %s "${{OTEL_EXPORTER_OTLP_HEADERS:-}}" > {headers_file}; exec {sys.executable} {script}'
    return h.step("traced", command=["/bin/sh", "-c", command])


def token_of(headers_file: Path) -> str:
    value = headers_file.read_text()
    prefix = "authorization=Bearer%20"
    assert value.startswith(prefix), value
    return value.removeprefix(prefix)


def span(trace_id: int, span_id: int, name: str) -> otlp_trace_pb2.Span:
    now = time.time_ns()
    return otlp_trace_pb2.Span(
        trace_id=trace_id.to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        name=name,
        start_time_unix_nano=now,
        end_time_unix_nano=now + 1000,
    )


def export_request(*spans: otlp_trace_pb2.Span) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(spans)
    return request


async def export(tracer: Tracer, token: str, request: Any) -> trace_service_pb2.ExportTraceServiceResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tracer.port}") as channel:
        stub: Any = channel
        raw = await stub.unary_unary(f"/{EXPORT.containing_service.full_name}/Export")(
            request.SerializeToString(), metadata=[("authorization", f"Bearer {token}")], timeout=5
        )
        return trace_service_pb2.ExportTraceServiceResponse.FromString(raw)


async def test_a_steps_own_spans_land_in_its_runs_trace_with_its_attempt_token_and_nothing_else_does(
    harness: Harness,
    keyed_tracer: Tracer,
    secure_api: InProcessApi,
    tokens: Tokens,
    span_key: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h, tracer = harness, keyed_tracer
    caplog.set_level(logging.DEBUG)
    executor = await h.start_executor(
        environ=exporting_env(tracer),
        auth_tokens_file=tokens.path,
        peer_token=tokens.tokens["cluster-admin"],
        span_token_key_file=span_key,
    )
    headers_file = h.tmp / "headers"
    await h.apply("traced", [traced_step(h, headers_file)])
    run = await h.wait((await h.run("traced")).name)
    assert run.state == run_pb2.Run.STATE_SUCCEEDED, run
    trace_id = parse_traceparent(run.traceparent)
    assert trace_id is not None
    assert await asyncio.to_thread(tracer.ingestor.wait_idle, 10)

    async with tokens.channel(f"127.0.0.1:{tracer.port}", "cluster-admin") as admin_channel:
        client = TraceClient(admin_channel)
        trace = await client.trace(run.name)
        names = {s.name for s in trace.spans if not s.placeholder}
        assert {"user.work", "user.inner"} <= names, names
        assert trace.trace_id == f"{trace_id[0]:032x}"
        status = await client.status()
        assert (status.refused, status.dropped) == (0, 0)

        # The step's token: good for the spans of its run's trace only.
        token = token_of(headers_file)
        grant = span_tokens.verify(SpanTokenKey(span_key).keys, token, time.time())
        assert grant is not None
        assert grant.trace_id == trace_id[0]
        assert grant.expires_at > time.time() + span_tokens.DEFAULT_LIFETIME_SECONDS  # no step timeout: a day
        before = await client.status()
        other_trace = trace_id[0] ^ 1
        response = await export(
            tracer, token, export_request(span(trace_id[0], 0x1111, "user.late"), span(other_trace, 0x2222, "intruder"))
        )
        assert response.partial_success.rejected_spans == 1
        assert "only spans of the trace" in response.partial_success.error_message
        assert await asyncio.to_thread(tracer.ingestor.wait_idle, 10)
        after = await client.status()
        assert after.received - before.received == 2
        assert after.refused - before.refused == 1
        assert after.stored - before.stored == 1
        assert after.received == after.stored + after.duplicates + after.dropped + after.queued + after.refused
        names = {s.name for s in (await client.trace(run.name)).spans}
        assert "user.late" in names
        assert "intruder" not in names
        assert tracer.store.count() == after.stored_spans
        stored = await client.trace(run.name)

    # Useless for every other RPC: the tracer's own reads, the api, the executor.
    token_metadata = [("authorization", f"Bearer {token}")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tracer.port}") as channel:
        for method in contract_methods("tracer"):
            request = trace_pb2.GetRunTraceRequest(run=run.name) if method.name == "GetRunTrace" else None
            message = request or requests_in("default")[method.name]
            code, details = await call(channel, method, message, metadata=token_metadata)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (path_of(method), code, details)
            assert "a span token may only export spans of its run's trace" in details, details
            assert token not in details
    for server, address in (("api", secure_api.address), ("executor", executor.address)):
        async with grpc.aio.insecure_channel(address) as channel:
            for method in contract_methods(server):
                code, details = await call(
                    channel, method, requests_in("default")[method.name], metadata=token_metadata
                )
                assert code == grpc.StatusCode.UNAUTHENTICATED, (path_of(method), code, details)
                assert "accepted only by weft-tracer" in details, details

    # Never in a record, a stored span or a log line.
    full = await h.get(run.name)
    assert token.encode() not in full.SerializeToString()
    assert token.encode() not in stored.SerializeToString()
    assert token not in caplog.text


async def test_forged_tampered_and_expired_span_tokens_are_unauthenticated(
    keyed_tracer: Tracer, span_key: Path, tmp_path: Path
) -> None:
    key = SpanTokenKey(span_key)
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    good = key.mint("namespaces/default/runs/r1", trace_id, int(time.time()) + 600)
    other_key = tmp_path / "other.key"
    other_key.write_text(secrets.token_hex(32))
    signed, _, mac = good.rpartition(".")
    tampered_mac = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    cases = {
        "forged": SpanTokenKey(other_key).mint("namespaces/default/runs/r1", trace_id, int(time.time()) + 600),
        "tampered": f"{signed}.{tampered_mac}",
        "expired": key.mint("namespaces/default/runs/r1", trace_id, int(time.time()) - 1),
    }
    request = export_request(span(trace_id, 0x3333, "x"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed_tracer.port}") as channel:
        for case, token in cases.items():
            code, details = await call(channel, EXPORT, request, metadata=[("authorization", f"Bearer {token}")])
            assert code == grpc.StatusCode.UNAUTHENTICATED, (case, code, details)
            assert "span token is not valid" in details, (case, details)
            assert token not in details
        code, details = await call(channel, EXPORT, request, metadata=[("authorization", f"Bearer {good}")])
        assert code == grpc.StatusCode.OK, details
    assert keyed_tracer.counters.received == 1


async def test_the_span_token_does_not_change_the_steps_dna(
    harness: Harness, keyed_tracer: Tracer, tokens: Tokens, span_key: Path
) -> None:
    """Without a key the step gets no token (its export is refused, the run goes on); with
    one it does, and the DNA, hence the cache, is the same."""
    h, tracer = harness, keyed_tracer
    credentials: dict[str, Any] = {"auth_tokens_file": tokens.path, "peer_token": tokens.tokens["cluster-admin"]}
    headers_file = h.tmp / "headers"
    await h.apply("traced", [traced_step(h, headers_file)])
    without = await h.start_executor(environ=exporting_env(tracer), **credentials)
    first = await h.wait((await h.run("traced")).name)
    assert first.state == run_pb2.Run.STATE_SUCCEEDED, first
    assert headers_file.read_text() == ""  # no key: no token, and never the peer token
    await without.stop()
    h.executors.remove(without)

    await h.start_executor(environ=exporting_env(tracer), span_token_key_file=span_key, **credentials)
    cached = await h.wait((await h.run("traced")).name)
    assert steps_by_name(cached)["traced"].dna == steps_by_name(first)["traced"].dna
    assert steps_by_name(cached)["traced"].explanation.decision == run_pb2.StepExplanation.DECISION_HIT
    rerun = await h.wait((await h.run("traced", cache_mode=run_pb2.CACHE_MODE_REFRESH)).name)
    assert rerun.state == run_pb2.Run.STATE_SUCCEEDED, rerun
    assert steps_by_name(rerun)["traced"].dna == steps_by_name(first)["traced"].dna
    assert token_of(headers_file).startswith(span_tokens.PREFIX)
