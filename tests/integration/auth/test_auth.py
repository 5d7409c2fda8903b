"""Authentication and namespace roles on real servers: weft-api and weft-executor with a
token file, real etcd, real gRPC calls.

Every RPC is found by enumerating the descriptors of every `weft.v1` module, so a method
added to the contract is checked here without anyone remembering to add it: it must be
UNAUTHENTICATED without a token and have a request in `requests_in`, or this file fails.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pkgutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

import weft.v1
from tests.integration.api.support import Clients, simple
from tests.integration.auth.conftest import Tokens
from tests.integration.conftest import InProcessApi
from weft.localstack import EtcdProcess
from weft.v1 import artifact_pb2, executor_pb2, pipeline_pb2, run_pb2, run_pb2_grpc, trace_pb2
from weft_api.access import API_RULES
from weft_api.app import ARTIFACT_SERVICE, PIPELINE_SERVICE, RUN_SERVICE
from weft_core.auth import Auth, Authenticator, TokenFile
from weft_core.blobs import digest_of
from weft_core.server import ServiceBinding, create_server
from weft_executor.config import ExecutorConfig
from weft_executor.executor import Executor
from weft_tracer.access import TRACER_RULES
from weft_tracer.app import TRACE_SERVICE, Tracer, create_tracer
from weft_tracer.config import TracerConfig
from weft_tracer.ingest import OTLP_TRACE_SERVICE

pytestmark = pytest.mark.timeout(60)

#: Which server of this file serves each service of the contract.
SERVED_BY = {
    PIPELINE_SERVICE: "api",
    RUN_SERVICE: "api",
    ARTIFACT_SERVICE: "api",
    "weft.v1.ExecutorService": "executor",
    TRACE_SERVICE: "tracer",
}
#: The OTLP collector service weft-tracer serves beside TraceService (spans come in there).
OTLP_DESCRIPTOR = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]
#: Reads of data that spans every namespace: they need viewer in every namespace (`*`).
CLUSTER_WIDE_READS = {"GetTracerStatus"}
#: Methods that change something; everything else is a read.
MUTATIONS = {
    "CreatePipeline": "admin",
    "DeletePipeline": "admin",
    "CreateRun": "runner",
    "CancelRun": "runner",
    "ResumeRun": "runner",
    "ReplayRun": "runner",
    "PutBlob": "runner",
}
BLOB = b"team data"


def contract_services() -> list[ServiceDescriptor]:
    """Every service of every generated `weft.v1` module."""
    services: dict[str, ServiceDescriptor] = {}
    for module in pkgutil.iter_modules(weft.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"weft.v1.{module.name}").DESCRIPTOR
            services.update({s.full_name: s for s in descriptor.services_by_name.values()})
    return list(services.values())


def contract_methods(server: str = "") -> list[MethodDescriptor]:
    methods: list[MethodDescriptor] = []
    for service in contract_services():
        assert service.full_name in SERVED_BY, (
            f"{service.full_name} is in the contract but no server in this test serves it: start its server here "
            "so its RPCs are checked for authentication"
        )
        if not server or SERVED_BY[service.full_name] == server:
            methods.extend(service.methods)
    return methods


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def requests_in(ns: str) -> dict[str, Message | list[Message]]:
    """A well-formed request of every RPC acting in namespace `ns`."""
    run, pipeline = f"namespaces/{ns}/runs/r1", f"namespaces/{ns}/pipelines/p1"
    header = artifact_pb2.BlobHeader(digest=digest_of(BLOB), size_bytes=len(BLOB), namespace=ns)
    return {
        "CreatePipeline": pipeline_pb2.CreatePipelineRequest(
            parent=f"namespaces/{ns}", pipeline=pipeline_pb2.Pipeline(name="p1", spec=simple())
        ),
        "GetPipeline": pipeline_pb2.GetPipelineRequest(name=pipeline),
        "ListPipelines": pipeline_pb2.ListPipelinesRequest(parent=f"namespaces/{ns}"),
        "ListPipelineVersions": pipeline_pb2.ListPipelineVersionsRequest(name=pipeline),
        "DeletePipeline": pipeline_pb2.DeletePipelineRequest(name=pipeline),
        "CreateRun": run_pb2.CreateRunRequest(parent=f"namespaces/{ns}", run=run_pb2.Run(pipeline="p1")),
        "GetRun": run_pb2.GetRunRequest(name=run),
        "ListRuns": run_pb2.ListRunsRequest(parent=f"namespaces/{ns}"),
        "WatchRun": run_pb2.WatchRunRequest(name=run),
        "CancelRun": run_pb2.CancelRunRequest(name=run),
        "ResumeRun": run_pb2.ResumeRunRequest(name=run),
        "ReplayRun": run_pb2.ReplayRunRequest(name=run),
        "ExplainStep": run_pb2.ExplainStepRequest(run=run, step="s0"),
        "DiffRuns": run_pb2.DiffRunsRequest(run_a=run, run_b=f"namespaces/{ns}/runs/r2"),
        "GetLineage": run_pb2.GetLineageRequest(run=run, step="s0"),
        "ReadLogs": run_pb2.ReadLogsRequest(run=run, step="s0"),
        "PutBlob": [artifact_pb2.PutBlobRequest(header=header), artifact_pb2.PutBlobRequest(data=BLOB)],
        "GetBlob": artifact_pb2.GetBlobRequest(digest=digest_of(BLOB), namespace=ns),
        "StatBlob": artifact_pb2.StatBlobRequest(digest=digest_of(BLOB), namespace=ns),
        "ReadAttemptLogs": executor_pb2.ReadAttemptLogsRequest(run=run, step="s0", attempt=1),
        "GetRunTrace": trace_pb2.GetRunTraceRequest(run=run),
        "ListRunEvents": trace_pb2.ListRunEventsRequest(run=run),
        "ReplayRunEvents": trace_pb2.ReplayRunEventsRequest(run=run, as_fast_as_possible=True),
        "GetTracerStatus": trace_pb2.GetTracerStatusRequest(),
    }


def method_named(name: str) -> MethodDescriptor:
    """The descriptor of weft-api's RPC `name`."""
    return next(m for m in contract_methods("api") if m.name == name)


async def call(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message | list[Message], **kwargs: Any
) -> tuple[grpc.StatusCode, str]:
    """Calls any RPC with raw bytes; returns its status code and details."""
    path = path_of(method)
    data = [m.SerializeToString() for m in (request if isinstance(request, list) else [request])]
    raw: Any = channel  # raw bytes in and out: no (de)serializers, which the stubs insist on
    try:
        if method.client_streaming:
            assert not method.server_streaming, "no bidirectional RPC yet: add a branch"
            await raw.stream_unary(path)(iter(data), timeout=5, **kwargs)
        elif method.server_streaming:
            async for _ in raw.unary_stream(path)(data[0], timeout=5, **kwargs):
                pass
        else:
            await raw.unary_unary(path)(data[0], timeout=5, **kwargs)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
async def secure_executor(
    etcd: EtcdProcess, secure_api: InProcessApi, tokens: Tokens, tmp_path: Path
) -> AsyncIterator[Executor]:
    """A local-runtime executor whose ExecutorService has auth on and that reaches the
    api with the cluster admin's token."""
    config = ExecutorConfig(
        etcd_endpoints=etcd.endpoint,
        api=secure_api.address,
        work_dir=tmp_path / "work",
        etcd_root=secure_api.keyspace.root,
        executor_id="secure-exec",
        kill_grace=1.0,
        # No step runs here; the default step user of a root executor (nobody) could not
        # reach the test's private tmp dir, which the executor checks at start.
        step_user="root" if os.geteuid() == 0 else "",
        auth_tokens_file=tokens.path,
        peer_token=tokens.tokens["cluster-admin"],
    )
    executor = Executor(config)
    await executor.start()
    yield executor
    await executor.stop()


@pytest.fixture
async def secure_tracer(
    etcd: EtcdProcess, secure_api: InProcessApi, tokens: Tokens, tmp_path: Path
) -> AsyncIterator[Tracer]:
    """A weft-tracer with auth on, reading timelines from the secure api's etcd keyspace."""
    config = TracerConfig(
        listen="127.0.0.1:0",
        store=tmp_path / "spans.db",
        etcd_endpoints=etcd.endpoint,
        etcd_root=secure_api.keyspace.root,
        auth_tokens_file=tokens.path,
    )
    tracer = await create_tracer(config)
    await tracer.server.start()
    yield tracer
    await tracer.server.stop(0)


def test_every_rpc_of_the_contract_is_checked_and_has_an_access_rule() -> None:
    methods = contract_methods()
    assert {m.name for m in methods} == set(requests_in("x")), "give every RPC a request in requests_in"
    api_methods = {path_of(m) for m in contract_methods("api")}
    assert api_methods == set(API_RULES), "weft_api.access.API_RULES must have exactly one rule per api RPC"
    otlp = [f"/{OTLP_TRACE_SERVICE}/{m.name}" for m in OTLP_DESCRIPTOR.methods]
    tracer_methods = {path_of(m) for m in contract_methods("tracer")} | set(otlp)
    assert tracer_methods == set(TRACER_RULES), "weft_tracer.access.TRACER_RULES must have one rule per tracer RPC"


async def test_every_rpc_without_a_valid_token_is_unauthenticated(
    secure_api: InProcessApi, secure_executor: Executor, secure_tracer: Tracer, tokens: Tokens
) -> None:
    addresses = {
        "api": secure_api.address,
        "executor": secure_executor.address,
        "tracer": f"127.0.0.1:{secure_tracer.port}",
    }
    for server, address in addresses.items():
        methods = contract_methods(server)
        assert methods
        for metadata in (None, [("authorization", "Bearer not-a-token")], [("authorization", "Basic dXNlcg==")]):
            async with grpc.aio.insecure_channel(address) as channel:
                for method in methods:
                    code, details = await call(channel, method, requests_in("team-a")[method.name], metadata=metadata)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (path_of(method), metadata, code, details)
                    assert "not-a-token" not in details


#: Refused uploads (per caller) of the race test: without the fix ~5% of them read INTERNAL,
#: so 120 fail the test all but ~0.2% of the time.
REFUSED_UPLOADS = 120
#: Chunks of 1 MiB per upload: long enough that the client is still writing when it is refused,
#: within the server's drain budget (weft_core.server.DRAIN_BYTES).
UPLOAD_CHUNKS = 6


async def test_a_refused_upload_reads_as_its_status_not_as_internal(secure_api: InProcessApi, tokens: Tokens) -> None:
    """A PutBlob refused while its client still streams (no token: UNAUTHENTICATED before
    the first message is read; a viewer: PERMISSION_DENIED after it) must reach a grpc.aio
    client as that status. Without the server draining the refused stream, about one call
    in twenty read INTERNAL "Internal error from Core" (grpc/grpc#36066)."""
    chunk = b"x" * (1024 * 1024)  # the SDK's chunk size
    chunks = UPLOAD_CHUNKS
    header = artifact_pb2.BlobHeader(
        digest=digest_of(chunk * chunks), size_bytes=chunks * len(chunk), namespace="team-a"
    )
    upload: list[Message] = [artifact_pb2.PutBlobRequest(header=header)]
    upload += [artifact_pb2.PutBlobRequest(data=chunk)] * chunks
    put_blob = method_named("PutBlob")
    for subject, expected in (("", grpc.StatusCode.UNAUTHENTICATED), ("viewer-a", grpc.StatusCode.PERMISSION_DENIED)):
        async with tokens.channel(secure_api.address, subject) as channel:
            for attempt in range(REFUSED_UPLOADS):
                code, details = await call(channel, put_blob, upload)
                assert code == expected, (subject or "no token", attempt, code, details)


async def test_span_export_needs_a_cluster_wide_runner_like_the_services_peer_token(
    secure_tracer: Tracer, tokens: Tokens
) -> None:
    address = f"127.0.0.1:{secure_tracer.port}"
    export = OTLP_DESCRIPTOR.methods_by_name["Export"]
    request = trace_service_pb2.ExportTraceServiceRequest()
    assert [m.name for m in OTLP_DESCRIPTOR.methods] == ["Export"], "a new OTLP method: check it here"
    for subject, expected, says in (
        ("", grpc.StatusCode.UNAUTHENTICATED, "no credentials"),
        ("admin-a", grpc.StatusCode.PERMISSION_DENIED, "needs the role runner in every namespace"),
        ("cluster-admin", grpc.StatusCode.OK, ""),
    ):
        async with tokens.channel(address, subject) as channel:
            code, details = await call(channel, export, request)
            assert code == expected, (subject, code, details)
            assert says in details


async def test_health_and_reflection_stay_open_without_a_token(
    secure_api: InProcessApi, secure_executor: Executor
) -> None:
    for address in (secure_api.address, secure_executor.address):
        async with grpc.aio.insecure_channel(address) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for response in reflection.ServerReflectionInfo(iter([request]), timeout=5):
                names = {s.name for s in response.list_services_response.service}
                assert names & set(SERVED_BY)
                break


async def test_a_viewer_of_one_namespace_is_denied_every_mutation_and_every_read_of_another(
    secure_api: InProcessApi, secure_executor: Executor, secure_tracer: Tracer, tokens: Tokens
) -> None:
    addresses = {
        "api": secure_api.address,
        "executor": secure_executor.address,
        "tracer": f"127.0.0.1:{secure_tracer.port}",
    }
    for server, address in addresses.items():
        async with tokens.channel(address, "viewer-a") as channel:
            for method in contract_methods(server):
                if method.name in CLUSTER_WIDE_READS:
                    code, details = await call(channel, method, requests_in("team-a")[method.name])
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (path_of(method), code, details)
                    assert "needs the role viewer in every namespace" in details, details
                    continue
                code, details = await call(channel, method, requests_in("team-b")[method.name])
                assert code == grpc.StatusCode.PERMISSION_DENIED, (path_of(method), code, details)
                assert 'in namespace "team-b"' in details, details
                assert "viewer-a has team-a=viewer" in details, details
                if method.name in MUTATIONS:
                    code, details = await call(channel, method, requests_in("team-a")[method.name])
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (path_of(method), code, details)
                    assert f'needs the role {MUTATIONS[method.name]} in namespace "team-a"' in details, details
                else:
                    code, details = await call(channel, method, requests_in("team-a")[method.name])
                    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (
                        path_of(method),
                        details,
                    )


async def test_roles_include_the_lower_ones_and_a_cluster_admin_acts_everywhere(
    secure_api: InProcessApi, tokens: Tokens
) -> None:
    async with (
        tokens.channel(secure_api.address, "runner-a") as runner,
        tokens.channel(secure_api.address, "admin-a") as admin,
        tokens.channel(secure_api.address, "cluster-admin") as cluster,
    ):
        create = pipeline_pb2.CreatePipelineRequest(
            parent="namespaces/team-a", pipeline=pipeline_pb2.Pipeline(name="p1", spec=simple())
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await Clients.of(runner).pipelines.CreatePipeline(create)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert 'needs the role admin in namespace "team-a"' in (denied.value.details() or "")
        await Clients.of(admin).pipelines.CreatePipeline(create)
        run = await Clients.of(runner).runs.CreateRun(
            run_pb2.CreateRunRequest(parent="namespaces/team-a", run=run_pb2.Run(pipeline="p1"))
        )
        assert run.created_by == "runner-a"
        listed = await Clients.of(runner).runs.ListRuns(run_pb2.ListRunsRequest(parent="namespaces/team-a"))
        assert [r.name for r in listed.runs] == [run.name]
        create.parent = "namespaces/team-z"
        created = await Clients.of(cluster).pipelines.CreatePipeline(create)
        assert created.name == "namespaces/team-z/pipelines/p1"


async def test_diffing_runs_of_two_namespaces_needs_a_cluster_wide_viewer(
    secure_api: InProcessApi, tokens: Tokens
) -> None:
    # A viewer of team-a only must not learn about a team-b run by diffing it against its own.
    across = run_pb2.DiffRunsRequest(run_a="namespaces/team-a/runs/r1", run_b="namespaces/team-b/runs/r1")
    async with (
        tokens.channel(secure_api.address, "viewer-a") as viewer,
        tokens.channel(secure_api.address, "cluster-admin") as cluster,
    ):
        code, details = await call(viewer, method_named("DiffRuns"), across)
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert "every namespace (a cluster-wide binding)" in details, details
        code, details = await call(cluster, method_named("DiffRuns"), across)
        assert code == grpc.StatusCode.NOT_FOUND, details  # admitted: the runs do not exist


async def test_runs_record_who_created_and_who_cancelled_them(secure_api: InProcessApi, tokens: Tokens) -> None:
    async with (
        tokens.channel(secure_api.address, "admin-a") as admin,
        tokens.channel(secure_api.address, "runner-a") as runner,
    ):
        await Clients.of(admin).pipelines.CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(
                parent="namespaces/team-a", pipeline=pipeline_pb2.Pipeline(name="p1", spec=simple())
            )
        )
        run = await Clients.of(admin).runs.CreateRun(
            run_pb2.CreateRunRequest(parent="namespaces/team-a", run=run_pb2.Run(pipeline="p1"))
        )
        assert run.created_by == "admin-a"
        cancelled = await Clients.of(runner).runs.CancelRun(run_pb2.CancelRunRequest(name=run.name))
        assert cancelled.cancelled_by == "runner-a"
        got = await Clients.of(runner).runs.GetRun(run_pb2.GetRunRequest(name=run.name))
        assert (got.created_by, got.cancelled_by) == ("admin-a", "runner-a")
        events = Clients.of(runner).runs.WatchRun(run_pb2.WatchRunRequest(name=run.name))
        first = await anext(aiter(events))
        assert first.run.cancelled_by == "runner-a"
        events.cancel()


async def test_pipeline_versions_record_who_created_them(secure_api: InProcessApi, tokens: Tokens) -> None:
    async with (
        tokens.channel(secure_api.address, "admin-a") as admin,
        tokens.channel(secure_api.address, "cluster-admin") as cluster,
    ):
        request = pipeline_pb2.CreatePipelineRequest(
            parent="namespaces/team-a", pipeline=pipeline_pb2.Pipeline(name="p1", spec=simple())
        )
        first = await Clients.of(admin).pipelines.CreatePipeline(request)
        request.pipeline.spec.CopyFrom(simple(2))
        second = await Clients.of(cluster).pipelines.CreatePipeline(request)
        assert (first.created_by, second.created_by) == ("admin-a", "cluster-admin")
        got = await Clients.of(admin).pipelines.GetPipeline(
            pipeline_pb2.GetPipelineRequest(name=first.name, version=first.version)
        )
        assert got.created_by == "admin-a"
        versions = await Clients.of(admin).pipelines.ListPipelineVersions(
            pipeline_pb2.ListPipelineVersionsRequest(name=first.name)
        )
        assert [v.created_by for v in versions.versions] == ["cluster-admin", "admin-a"]


async def test_a_blob_is_readable_only_in_a_namespace_it_was_uploaded_for(
    secure_api: InProcessApi, tokens: Tokens
) -> None:
    upload = requests_in("team-a")["PutBlob"]
    assert isinstance(upload, list)
    async with (
        tokens.channel(secure_api.address, "runner-a") as runner,
        tokens.channel(secure_api.address, "viewer-a") as viewer_a,
        tokens.channel(secure_api.address, "viewer-b") as viewer_b,
    ):
        blob = await Clients.of(runner).artifacts.PutBlob(iter(upload))
        chunks = Clients.of(viewer_a).artifacts.GetBlob(
            artifact_pb2.GetBlobRequest(digest=blob.digest, namespace="team-a")
        )
        assert b"".join([c.data async for c in chunks]) == BLOB
        # viewer-b knows the digest, but nothing of team-b references the blob: not found,
        # with the same message as a blob that does not exist.
        for method in ("GetBlob", "StatBlob"):
            descriptor = artifact_pb2.DESCRIPTOR.services_by_name["ArtifactService"].methods_by_name[method]
            code, details = await call(viewer_b, descriptor, requests_in("team-b")[method])
            assert code == grpc.StatusCode.NOT_FOUND, (method, details)
            assert details.startswith(f"blob {blob.digest} is not stored")
            code, _ = await call(viewer_b, descriptor, requests_in("team-a")[method])
            assert code == grpc.StatusCode.PERMISSION_DENIED
            # An empty namespace means every namespace: only cluster-wide viewers may ask.
            request = requests_in("team-a")[method]
            assert isinstance(request, artifact_pb2.GetBlobRequest | artifact_pb2.StatBlobRequest)
            request.namespace = ""
            code, details = await call(viewer_a, descriptor, request)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "every namespace" in details


async def test_a_malformed_namespace_is_invalid_argument_naming_the_field(
    secure_api: InProcessApi, tokens: Tokens
) -> None:
    async with tokens.channel(secure_api.address, "viewer-a") as channel:
        clients = Clients.of(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await clients.runs.GetRun(run_pb2.GetRunRequest(name="namespaces/Team A/runs/r"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (bad.value.details() or "").startswith("name")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await clients.artifacts.StatBlob(artifact_pb2.StatBlobRequest(digest=digest_of(b"x"), namespace="A\0"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (bad.value.details() or "").startswith("namespace")


async def test_tokens_rotate_without_a_restart(secure_api: InProcessApi, tokens: Tokens) -> None:
    request = run_pb2.ListRunsRequest(parent="namespaces/team-a")
    async with tokens.channel(secure_api.address, "viewer-a") as old:
        await Clients.of(old).runs.ListRuns(request)
        tokens.rotate("viewer-a")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await Clients.of(old).runs.ListRuns(request)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with tokens.channel(secure_api.address, "viewer-a") as new:
        await Clients.of(new).runs.ListRuns(request)


async def test_a_broken_token_file_keeps_the_previous_tokens(
    secure_api: InProcessApi, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "weft_core.auth")
    tokens.path.write_text("tokens: [{subject: x, sha256: not-hex, roles: {a: viewer}}]\n")
    async with tokens.channel(secure_api.address, "viewer-a") as channel:
        await Clients.of(channel).runs.ListRuns(run_pb2.ListRunsRequest(parent="namespaces/team-a"))
    assert any("keeping the previous version" in r.getMessage() for r in caplog.records)


async def test_tokens_appear_in_clear_in_no_file_log_or_answer(
    secure_api: InProcessApi, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with tokens.channel(secure_api.address, "viewer-a") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await Clients.of(channel).runs.ListRuns(run_pb2.ListRunsRequest(parent="namespaces/team-b"))
    text = tokens.path.read_text() + caplog.text + (denied.value.details() or "")
    for token in tokens.tokens.values():
        assert token not in text


async def test_a_server_with_auth_refuses_to_start_when_a_method_has_no_rule(tokens: Tokens) -> None:
    auth = Auth(Authenticator(TokenFile(tokens.path)), {k: v for k, v in API_RULES.items() if "GetRun" not in k})
    binding = ServiceBinding(RUN_SERVICE, object(), run_pb2_grpc.add_RunServiceServicer_to_server)
    with pytest.raises(ValueError, match=r"no access rule for /weft\.v1\.RunService/GetRun"):
        create_server("127.0.0.1:0", [binding], auth=auth)
    await asyncio.sleep(0)
