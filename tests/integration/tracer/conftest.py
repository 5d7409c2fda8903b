"""Fixtures of the tracer tests: a weft-tracer in-process, and a traced stack around it.

`traced` is the executor tests' `Harness` with the api as a real `weft-api` process whose
spans (CreateRun's among them) are exported to an in-process weft-tracer, so a test sees
one run's trace from the api down to the step's own code. Executors are started by the
test with `traced.executor_env` so they export to the same tracer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import ApiProcess
from tests.integration.executor.support import Harness
from tests.integration.tracer.support import TraceClient, running_tracer, tracer_config
from weft.localstack import EtcdProcess, otlp_env
from weft_core.keyspace import Keyspace
from weft_core.store import Store
from weft_tracer.app import Tracer

#: Exporters flush every 50 ms in tests instead of every 5 s.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


@pytest.fixture
async def tracer(etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path) -> AsyncIterator[Tracer]:
    """An in-process weft-tracer on port 0 with its store in tmp_path, reading the session etcd."""
    async with running_tracer(tracer_config(tmp_path / "spans.db", etcd.endpoint, keyspace.root)) as running:
        yield running


@dataclass
class Traced:
    """A harness whose api and executors export to `tracer`."""

    harness: Harness
    tracer: Tracer | None  # None when the tracer is a process of the test's own
    client: TraceClient
    api: ApiProcess
    tracer_address: str

    @property
    def executor_env(self) -> dict[str, str]:
        return {**otlp_env(self.tracer_address), **FAST_EXPORT}


@contextlib.asynccontextmanager
async def traced_stack(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, tracer: Tracer | None, tracer_address: str
) -> AsyncIterator[Traced]:
    """A weft-api process exporting to `tracer_address`, and a harness around it."""
    api = ApiProcess(
        etcd.endpoint,
        keyspace,
        tmp_path / "blobs",
        tmp_path / "weft-api.log",
        env={**otlp_env(tracer_address), **FAST_EXPORT},
    )
    api.start()
    store = Store(etcd.endpoint)
    try:
        async with (
            grpc.aio.insecure_channel(api.address) as channel,
            grpc.aio.insecure_channel(tracer_address) as tracer_channel,
        ):
            harness = Harness(
                etcd_endpoint=etcd.endpoint,
                api_address=api.address,
                keyspace=keyspace,
                blob_dir=tmp_path / "blobs",
                tmp=tmp_path,
                channel=channel,
                store=store,
            )
            try:
                yield Traced(harness, tracer, TraceClient(tracer_channel), api, tracer_address)
            finally:
                # Stopped from threads: on SIGTERM they flush their spans to the tracer,
                # which may serve from this event loop.
                for process in harness.processes:
                    await asyncio.to_thread(process.stop)
                await harness.close()
    finally:
        await asyncio.to_thread(api.stop)
        await store.close()


@pytest.fixture
async def traced(etcd: EtcdProcess, keyspace: Keyspace, tracer: Tracer, tmp_path: Path) -> AsyncIterator[Traced]:
    """A harness whose api and executors export to the in-process `tracer`."""
    async with traced_stack(etcd, keyspace, tmp_path, tracer, f"127.0.0.1:{tracer.port}") as stack:
        yield stack
