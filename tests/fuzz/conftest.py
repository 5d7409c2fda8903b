"""The servers the fuzz tests drive: weft-api without auth, weft-api with auth, and an
ExecutorService with auth, on the session etcd, served from a thread of their own so
hypothesis can drive them with blocking calls; seeded with a pipeline, a run and a blob
in namespace `fuzz`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from tests.fuzz.strategies import BLOB, NAMESPACE, RUN_ID
from tests.integration.api.support import Clients, keyspace_snapshot, simple
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
        """One blocking channel per server for the session (connecting costs more than a call)."""
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


@pytest.fixture(scope="session")
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
