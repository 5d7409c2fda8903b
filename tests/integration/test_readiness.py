"""Honest health: readiness follows etcd (and, for the executor, its lease); liveness does not.

Each service's own health status (readiness: `weft.v1.RunService`, `weft.v1.ExecutorService`)
goes NOT_SERVING within seconds of etcd going away and back to SERVING once it returns,
while the server-wide status "" (liveness) stays SERVING throughout: restarting a
process does not bring etcd back.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import running_api
from tests.integration.executor.support import Harness
from tests.support import assert_eventually_async
from weft.localstack import EtcdProcess
from weft_core.keyspace import Keyspace
from weft_core.store import Store

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=3
        )
        return int(answer.status)


async def becomes(address: str, service: str, wanted: int, timeout: float) -> float:
    """Seconds until `service` at `address` reports `wanted` (fails after `timeout`)."""
    started = time.monotonic()

    async def reached() -> bool:
        return await status(address, service) == wanted

    name = health_pb2.HealthCheckResponse.ServingStatus.Name(wanted)
    await assert_eventually_async(reached, timeout=timeout, what=f"{service} {name}")
    return time.monotonic() - started


async def test_api_and_executor_readiness_follow_etcd(private_etcd: EtcdProcess, tmp_path: Path) -> None:
    keyspace = Keyspace("/ready")
    async with running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api:
        store = Store(private_etcd.endpoint)
        async with grpc.aio.insecure_channel(api.address) as channel:
            h = Harness(private_etcd.endpoint, api.address, keyspace, api.blob_dir, tmp_path, channel, store)
            try:
                executor = await h.start_executor(lease_ttl=3)
                await becomes(api.address, "weft.v1.RunService", SERVING, 5)
                await becomes(executor.address, "weft.v1.ExecutorService", SERVING, 5)

                private_etcd.stop()
                assert await becomes(api.address, "weft.v1.RunService", NOT_SERVING, 8) < 5
                assert await becomes(executor.address, "weft.v1.ExecutorService", NOT_SERVING, 8) < 5
                # Liveness is about the process, which is fine.
                assert await status(api.address, "") == SERVING
                assert await status(executor.address, "") == SERVING

                private_etcd.start()
                assert await becomes(api.address, "weft.v1.RunService", SERVING, 10) < 5
                # The executor is ready again once it holds a lease again (re-registered).
                await becomes(executor.address, "weft.v1.ExecutorService", SERVING, 15)
                assert executor.registration.valid.is_set()
            finally:
                await h.close()
                await store.close()


async def test_an_executor_without_a_lease_is_not_ready(private_etcd: EtcdProcess, tmp_path: Path) -> None:
    keyspace = Keyspace("/lease-ready")
    async with running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api:
        store = Store(private_etcd.endpoint)
        async with grpc.aio.insecure_channel(api.address) as channel:
            h = Harness(private_etcd.endpoint, api.address, keyspace, api.blob_dir, tmp_path, channel, store)
            try:
                executor = await h.start_executor()
                await becomes(executor.address, "weft.v1.ExecutorService", SERVING, 5)
                # etcd is fine, but the executor has no valid lease (as after a loss).
                executor.registration.valid.clear()
                await becomes(executor.address, "weft.v1.ExecutorService", NOT_SERVING, 5)
                executor.registration.valid.set()
                await becomes(executor.address, "weft.v1.ExecutorService", SERVING, 5)
            finally:
                await h.close()
                await store.close()
