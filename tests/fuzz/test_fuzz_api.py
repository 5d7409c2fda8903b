"""Every RPC of weft-api and weft-executor's ExecutorService, driven by hypothesis with
random well-formed and malformed requests against real servers on real etcd.

For each call: the server answers (no crash, it keeps serving), never INTERNAL or
UNKNOWN, a refused call leaves the etcd keyspace exactly as it was (no partial write),
and an INVALID_ARGUMENT names the field it is about. Two api servers are driven: one
without auth, one with auth on (calls carry a cluster-wide admin token, so they pass the
role checks and reach validation through the auth interceptor's own request parsing).

The suite runs a fixed, derandomized budget (`WEFT_FUZZ_EXAMPLES`, default 10 per RPC and
server, a few seconds); `./dev fuzz` runs a long random one.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import BLOB, NAMESPACE, RUN_ID, raw_request, seeds
from tests.integration.api.support import Clients, keyspace_snapshot, simple
from tests.integration.auth.test_auth import contract_methods, path_of
from weft._auth import open_channel
from weft._sync import EventLoopThread
from weft.localstack import EtcdProcess
from weft.v1 import artifact_pb2, executor_pb2_grpc, pipeline_pb2, run_pb2
from weft_api.app import create_api_server
from weft_core.auth import Auth, Authenticator, TokenFile, render_token_file
from weft_core.blobs import digest_of
from weft_core.config import ApiConfig
from weft_core.keyspace import Keyspace
from weft_core.server import ServiceBinding, WeftServer, create_server
from weft_core.store import Store
from weft_executor.service import EXECUTOR_RULES, ExecutorServicer

EXAMPLES = int(os.environ.get("WEFT_FUZZ_EXAMPLES", "10"))
#: The suite replays the same examples every time; `./dev fuzz` explores.
LONG_RUN = "WEFT_FUZZ_EXAMPLES" in os.environ
pytestmark = pytest.mark.timeout(max(300, EXAMPLES * 2))

#: Statuses that mean the server failed, not the request.
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
#: An INVALID_ARGUMENT message starts with the field it is about: `name: ...`,
#: `run.parameters["x"]: ...`, `parent (namespace): ...`, `pipeline.spec.steps[2].name: ...`.
FIELD_FIRST = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*|\[[^\]]*\])*( \([a-z ]+\))?: ", re.DOTALL)


@dataclass
class Target:
    """A server under fuzz, the etcd keyspace it writes and how to reach it."""

    name: str
    address: str
    keyspace: Keyspace
    token: str = ""


@dataclass
class Servers:
    loop: EventLoopThread
    store: Store
    targets: dict[str, Target]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def snapshot(self, keyspace: Keyspace) -> dict[bytes, tuple[bytes, int]]:
        return self.loop.run(keyspace_snapshot(self.store, keyspace))

    def channel(self, target: str) -> grpc.Channel:
        """One blocking channel per server for the whole module (connecting costs more than a call)."""
        if target not in self.channels:
            self.channels[target] = grpc.insecure_channel(
                self.targets[target].address,
                options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
            )
        return self.channels[target]


async def _seed(address: str, token: str) -> None:
    """A pipeline, a run and a blob in namespace `fuzz`, so well-formed names find records."""
    async with open_channel(address, token=token) as channel:
        clients = Clients.of(channel)
        await clients.pipelines.CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(
                parent=f"namespaces/{NAMESPACE}", pipeline=pipeline_pb2.Pipeline(name="seeded", spec=simple(2))
            )
        )
        await clients.runs.CreateRun(
            run_pb2.CreateRunRequest(
                parent=f"namespaces/{NAMESPACE}", run=run_pb2.Run(pipeline="seeded"), run_id=RUN_ID
            )
        )
        header = artifact_pb2.BlobHeader(digest=digest_of(BLOB), size_bytes=len(BLOB), namespace=NAMESPACE)
        await clients.artifacts.PutBlob(
            iter([artifact_pb2.PutBlobRequest(header=header), artifact_pb2.PutBlobRequest(data=BLOB)])
        )


@pytest.fixture(scope="module")
def servers(etcd: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """weft-api without auth, weft-api with auth, and an ExecutorService with auth, served
    from a thread of their own so hypothesis can drive them with blocking calls."""
    tmp = tmp_path_factory.mktemp("fuzz")
    token = secrets.token_urlsafe(24)
    tokens = tmp / "tokens.yaml"
    tokens.write_text(render_token_file([("fuzzer", token, {"*": "admin"})]))
    loop = EventLoopThread("fuzz-servers")
    started: list[WeftServer] = []

    async def start() -> dict[str, Target]:
        targets: dict[str, Target] = {}
        for name, auth in (("api", {}), ("api-auth", {"auth_tokens_file": tokens})):
            keyspace = Keyspace(f"/fuzz-{name}")
            config = ApiConfig(etcd.endpoint, "127.0.0.1:0", tmp / name / "blobs", keyspace.root, **auth)  # type: ignore[arg-type]
            server, port = create_api_server(config)
            await server.start()
            started.append(server)
            targets[name] = Target(name, f"127.0.0.1:{port}", keyspace, token if auth else "")
            await _seed(targets[name].address, targets[name].token)
        binding = ServiceBinding(
            "weft.v1.ExecutorService",
            ExecutorServicer("fuzz-executor", {}),
            executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
        )
        executor_auth = Auth(Authenticator(TokenFile(tokens)), EXECUTOR_RULES)
        server, port = create_server("127.0.0.1:0", [binding], auth=executor_auth)
        await server.start()
        started.append(server)
        targets["executor"] = Target("executor", f"127.0.0.1:{port}", Keyspace("/fuzz-executor"), token)
        return targets

    targets = loop.run(start())
    store = loop.run(_store(etcd.endpoint))
    fixture = Servers(loop, store, targets)
    yield fixture
    for channel in fixture.channels.values():
        channel.close()

    async def stop() -> None:
        for server in started:
            await server.stop(grace=0.5)
        await store.close()

    loop.run(stop())
    loop.close()


async def _store(endpoint: str) -> Store:
    return Store(endpoint)


def call(
    channel: grpc.Channel, method: MethodDescriptor, payload: list[bytes], metadata: list[tuple[str, str]]
) -> tuple[grpc.StatusCode, str]:
    """One call with raw request bytes; a response stream is read up to its first message."""
    path = path_of(method)
    raw: Any = channel  # raw bytes in and out: no (de)serializers, which the stubs insist on
    options = {"timeout": 10, "metadata": metadata or None}
    try:
        if method.client_streaming:
            raw.stream_unary(path)(iter(payload), **options)
        elif method.server_streaming:
            # A watch from a future revision rightly waits: give streams less time.
            responses = raw.unary_stream(path)(payload[0], **{**options, "timeout": 2})
            for _ in responses:
                responses.cancel()  # the server answered; a live watch would go on for ever
                break
        else:
            raw.unary_unary(path)(payload[0], **options)
    except grpc.RpcError as error:
        failed: Any = error
        if failed.code() == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK, ""
        return failed.code(), failed.details() or ""
    return grpc.StatusCode.OK, ""


class Payload(list[bytes]):
    """The request messages of one call, shown shortened (a failing example may be MiBs)."""

    def __repr__(self) -> str:
        return "[" + ", ".join(repr(m[:200]) + (f"...({len(m)} bytes)" if len(m) > 200 else "") for m in self) + "]"


def payloads(method: MethodDescriptor) -> st.SearchStrategy[Payload]:
    return _payloads(method).map(Payload)


def _payloads(method: MethodDescriptor) -> st.SearchStrategy[list[bytes]]:
    valid = seeds(method.name)
    if method.client_streaming:
        header, data = valid
        return st.one_of(
            st.lists(raw_request(method.input_type, valid), min_size=0, max_size=4),
            st.tuples(raw_request(method.input_type, [header]), raw_request(method.input_type, [data])).map(list),
        )
    return raw_request(method.input_type, valid).map(lambda data: [data])


def _served_by(target: str) -> list[MethodDescriptor]:
    return contract_methods("executor" if target == "executor" else "api")


CASES = [(target, method) for target in ("api", "api-auth", "executor") for method in _served_by(target)]


@pytest.mark.parametrize(("target", "method"), CASES, ids=[f"{t}:{m.name}" for t, m in CASES])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_every_rpc_survives_hostile_requests(
    servers: Servers, target: str, method: MethodDescriptor, data: st.DataObject
) -> None:
    server = servers.targets[target]
    payload = data.draw(payloads(method), label="request")
    before = servers.snapshot(server.keyspace)
    metadata = [("authorization", f"Bearer {server.token}")] if server.token else []
    channel = servers.channel(target)
    code, details = call(channel, method, payload, metadata)
    # Still serving: the health check answers after whatever that was.
    health: Any = channel
    assert health.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5) == b"\x08\x01"
    assert code not in SERVER_FAULTS, f"{path_of(method)} answered {code.name}: {details}"
    if code != grpc.StatusCode.OK:
        after = servers.snapshot(server.keyspace)
        assert after == before, f"{path_of(method)} failed ({code.name}: {details}) but changed etcd"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert FIELD_FIRST.match(details), f"{path_of(method)}: the rejection names no field: {details!r}"


def test_the_fuzzer_reaches_deep_validation(servers: Servers) -> None:
    # A guard on the strategies: well-formed names must find the seeded records, or the
    # fuzzer would only ever test the first check of each method.
    with grpc.insecure_channel(servers.targets["api"].address) as channel:
        raw: Any = channel
        answer = raw.unary_unary("/weft.v1.RunService/GetRun")(
            run_pb2.GetRunRequest(name=f"namespaces/{NAMESPACE}/runs/{RUN_ID}").SerializeToString(), timeout=5
        )
    run = run_pb2.Run.FromString(answer)
    assert run.pipeline == f"namespaces/{NAMESPACE}/pipelines/seeded"
