"""Fixtures that start a real weft-api: in-process on port 0, or as a subprocess to kill.

`api` runs the api inside the test's event loop (fast, and the test can read the same
etcd keyspace); `api_process` runs the `weft-api` console script exactly as a user or the
Helm chart would, so a test can SIGKILL it and start it again on the same port.
Both use the session etcd, a keyspace root of their own and a temporary blob directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.executor.support import Harness
from weft import localstack
from weft.localstack import ChildProcess, EtcdProcess
from weft_api.app import create_api_server
from weft_core.config import ApiConfig
from weft_core.keyspace import Keyspace
from weft_core.server import WeftServer
from weft_core.store import Store


@dataclass
class InProcessApi:
    """A weft-api served from the test's own event loop."""

    config: ApiConfig
    keyspace: Keyspace
    blob_dir: Path
    server: WeftServer
    port: int

    @property
    def address(self) -> str:
        """`host:port` to dial."""
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def running_api(
    etcd_endpoint: str, keyspace: Keyspace, blob_dir: Path, *, blob_store: str = "", **settings: Any
) -> AsyncIterator[InProcessApi]:
    """Serves a weft-api on a free port for the duration of the `async with` block.

    Use it directly for an api against another etcd than the session's (e.g. `private_etcd`),
    or with `blob_store` (a URL such as `s3://bucket/prefix`) instead of the directory;
    `settings` are further ApiConfig fields (auth, TLS).
    """
    config = ApiConfig(
        etcd_endpoints=etcd_endpoint,
        listen="127.0.0.1:0",
        blob_dir=blob_dir,
        etcd_root=keyspace.root,
        blob_store=blob_store,
        **settings,
    )
    server, port = create_api_server(config)
    await server.start()
    try:
        yield InProcessApi(config=config, keyspace=keyspace, blob_dir=blob_dir, server=server, port=port)
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
async def api(etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path) -> AsyncIterator[InProcessApi]:
    """An in-process weft-api on port 0 against the session etcd, with its own keyspace root."""
    async with running_api(etcd.endpoint, keyspace, tmp_path / "blobs") as server:
        yield server


@pytest.fixture
async def channel(api: InProcessApi) -> AsyncIterator[grpc.aio.Channel]:
    """A gRPC channel to the `api` fixture."""
    async with grpc.aio.insecure_channel(api.address) as ch:
        yield ch


class ApiProcess:
    """The `weft-api` console script as a child process that a test may kill and restart.

    The first `start()` binds a free port (`--listen 127.0.0.1:0`) and reads it from the
    `weft-api listening on HOST:PORT` line; later starts reuse that port, so clients
    reconnect to the same address.
    """

    def __init__(
        self,
        etcd_endpoint: str,
        keyspace: Keyspace,
        blob_dir: Path,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        self.etcd_endpoint = etcd_endpoint
        self.keyspace = keyspace
        self.blob_dir = blob_dir
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.port = 0
        self.child: ChildProcess | None = None

    @property
    def address(self) -> str:
        """`host:port` to dial (known after the first `start()`)."""
        assert self.port, "not started"
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Starts the process and waits until it says it listens."""
        service = localstack.api_process(
            self.etcd_endpoint,
            self.blob_dir,
            self.log_path,
            listen=f"127.0.0.1:{self.port}",
            etcd_root=self.keyspace.root,
            env=self.env,
        )
        self.child = service.child
        self.port = int(service.start(timeout).rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.child is not None:
            self.child.kill()

    def stop(self) -> None:
        """SIGTERM (graceful stop), then SIGKILL if it lingers."""
        if self.child is not None:
            self.child.stop()

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def tail(self, lines: int = 40) -> str:
        return self.child.tail(lines) if self.child else ""


@pytest.fixture
def api_process(etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path) -> Iterator[ApiProcess]:
    """A started `weft-api` subprocess against the session etcd; kill and restart it at will."""
    process = ApiProcess(etcd.endpoint, keyspace, tmp_path / "blobs", tmp_path / "weft-api.log")
    process.start()
    yield process
    process.stop()


@contextlib.asynccontextmanager
async def harness_on(
    etcd: EtcdProcess, api: InProcessApi, tmp_path: Path, channel: grpc.aio.Channel
) -> AsyncIterator[Harness]:
    """The executor tests' harness on `api`, calling it through `channel` (which may carry a
    principal's token); its executors and etcd store are closed at the end."""
    store = Store(etcd.endpoint)
    harness = Harness(
        etcd_endpoint=etcd.endpoint,
        api_address=api.address,
        keyspace=api.keyspace,
        blob_dir=api.blob_dir,
        tmp=tmp_path,
        channel=channel,
        store=store,
    )
    try:
        yield harness
    finally:
        await harness.close()
        await store.close()


@pytest.fixture
async def harness(etcd: EtcdProcess, api: InProcessApi, tmp_path: Path) -> AsyncIterator[Harness]:
    """An api on port 0 with its own keyspace, and no executor yet (start them in the test):
    the executor tests' harness, for executors of either runtime."""
    async with grpc.aio.insecure_channel(api.address) as channel, harness_on(etcd, api, tmp_path, channel) as harness:
        yield harness
