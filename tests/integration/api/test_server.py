"""The gRPC server every weft service runs: health, reflection, error translation, graceful
stop, the health probe command, and OTLP export of weft-api's spans."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.integration.api.support import Clients, create_pipeline, create_run, simple
from tests.integration.conftest import ApiProcess, InProcessApi
from tests.support import assert_eventually
from weft.localstack import EtcdProcess
from weft.v1 import artifact_pb2, artifact_pb2_grpc
from weft_core.errors import NotFound
from weft_core.keyspace import Keyspace
from weft_core.server import ServiceBinding, create_server


async def test_health_and_reflection_cover_every_service(api: InProcessApi, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "weft.v1.PipelineService", "weft.v1.RunService", "weft.v1.ArtifactService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="weft.v1.Nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name async for r in responses for s in r.list_services_response.service}
    assert services == {
        "weft.v1.PipelineService",
        "weft.v1.RunService",
        "weft.v1.ArtifactService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


class Faulty(artifact_pb2_grpc.ArtifactServiceServicer):
    """Raises what a buggy or refusing service would, to exercise the error interceptor."""

    async def StatBlob(self, request: artifact_pb2.StatBlobRequest, context: Any) -> artifact_pb2.Blob:
        if request.digest == "bug":
            raise KeyError("surprise")
        if request.digest == "abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        raise NotFound(f"blob {request.digest} is not stored")

    async def GetBlob(self, request: artifact_pb2.GetBlobRequest, context: Any) -> AsyncIterator[Any]:
        yield artifact_pb2.GetBlobResponse(data=b"first")
        raise ValueError("mid-stream")


async def test_errors_become_statuses_and_bugs_do_not_stop_the_server(caplog: pytest.LogCaptureFixture) -> None:
    name = artifact_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name
    server, port = create_server(
        "127.0.0.1:0", [ServiceBinding(name, Faulty(), artifact_pb2_grpc.add_ArtifactServiceServicer_to_server)]
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = artifact_pb2_grpc.ArtifactServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.StatBlob(artifact_pb2.StatBlobRequest(digest="x"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == "blob x is not stored"  # the message, unchanged

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.StatBlob(artifact_pb2.StatBlobRequest(digest="bug"))
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert caught.value.details() == (
                "internal error in /weft.v1.ArtifactService/StatBlob: KeyError: 'surprise'; "
                "this is a weft bug, the service log has the traceback"
            )
            assert any(r.exc_info for r in caplog.records if r.levelname == "ERROR")  # the traceback is logged
            assert any(
                r.levelname == "WARNING" and "/weft.v1.ArtifactService/StatBlob INTERNAL" in r.getMessage()
                for r in caplog.records
            )

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.StatBlob(artifact_pb2.StatBlobRequest(digest="abort"))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.details() == "not yours"

            stream = stub.GetBlob(artifact_pb2.GetBlobRequest(digest="x"))
            assert (await stream.read()).data == b"first"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stream.read()
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "ValueError: mid-stream" in (caught.value.details() or "")

            # Still serving after all that.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.StatBlob(artifact_pb2.StatBlobRequest(digest="y"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)


async def test_binding_a_port_in_use_fails_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"):
            create_server(f"127.0.0.1:{port}", [])


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weft_core.healthcheck", *args], capture_output=True, text=True, timeout=30
    )


def test_the_health_probe_command_and_a_graceful_sigterm(api_process: ApiProcess) -> None:
    serving = healthcheck("--addr", api_process.address)
    assert serving.returncode == 0, serving.stdout + serving.stderr
    assert serving.stdout.strip() == f"{api_process.address} (server): SERVING"
    assert healthcheck("--addr", api_process.address, "--service", "weft.v1.RunService").returncode == 0
    unknown = healthcheck("--addr", api_process.address, "--service", "weft.v1.Nope")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stdout

    api_process.stop()  # SIGTERM
    assert api_process.child is not None
    assert api_process.child.process is not None
    assert api_process.child.process.returncode == 0
    log = api_process.log_path.read_text()
    assert f"starting with etcd_endpoints={api_process.etcd_endpoint} listen=127.0.0.1:0" in log
    assert "stopping (grace" in log
    assert log.rstrip().endswith("stopped")
    down = healthcheck("--addr", api_process.address, "--timeout", "1")
    assert down.returncode == 1
    assert "UNAVAILABLE" in down.stdout


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get("service.name")
            for scope in resource_spans.scope_spans:
                self.spans += [(service, span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_the_api_exports_its_spans_over_otlp_when_configured(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path
) -> None:
    receiver = TraceReceiver()
    collector = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)  # type: ignore[no-untyped-call]
    collector_port = collector.add_insecure_port("127.0.0.1:0")
    await collector.start()
    process = ApiProcess(
        etcd.endpoint,
        keyspace,
        tmp_path / "blobs",
        tmp_path / "api.log",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    await asyncio.to_thread(process.start)
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            clients = Clients.of(channel)
            await create_pipeline(clients, "etl", simple(1))
            run = await create_run(clients, "etl")
        trace_id = bytes.fromhex(run.traceparent.split("-")[1])

        def exported() -> bool:
            names = {span.name for _, span in receiver.spans}
            return "weft.CreateRun" in names and "weft.v1.RunService/CreateRun" in names

        await asyncio.to_thread(assert_eventually, exported, timeout=20, what="spans at the OTLP receiver")
        root = next(span for _, span in receiver.spans if span.name == "weft.CreateRun")
        attributes = {a.key: a.value.string_value for a in root.attributes}
        assert attributes["weft.run"] == run.name
        assert root.trace_id == trace_id  # the run's stored traceparent names this span's trace
        assert root.parent_span_id == b""  # a trace root: one trace per run
        assert {service for service, _ in receiver.spans} == {"weft-api"}
    finally:
        await asyncio.to_thread(process.stop)
        await collector.stop(0)
