"""etcd stopped and restarted under a running weft-api: UNAVAILABLE while it is down, the
api keeps serving, and everything works again by itself (open watches included)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.api.support import Clients, ExecutorWrites, create_pipeline, create_run, simple
from tests.integration.conftest import running_api
from tests.support import assert_eventually_async
from weft.localstack import EtcdProcess
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.keyspace import Keyspace
from weft_core.store import Store


async def test_the_api_survives_an_etcd_restart(private_etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path) -> None:
    async with (
        running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api,
        grpc.aio.insecure_channel(api.address) as channel,
    ):
        clients = Clients.of(channel)
        await create_pipeline(clients, "etl", simple(2))
        run = await create_run(clients, "etl")
        watch = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name))
        for _ in range(3):  # the snapshot: run and two steps
            await asyncio.wait_for(watch.read(), 10)

        private_etcd.stop()
        for call in (
            clients.pipelines.GetPipeline(pipeline_pb2.GetPipelineRequest(name="namespaces/default/pipelines/etl")),
            clients.runs.CreateRun(run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"))),
            clients.runs.ListRuns(run_pb2.ListRunsRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert (caught.value.details() or "").startswith(f"etcd at {private_etcd.endpoint} is unavailable")
            assert "recovers by itself once etcd is reachable again" in (caught.value.details() or "")
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # the process is fine

        private_etcd.start()

        async def works() -> bool:
            try:
                await create_run(clients, "etl")
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False
            return True

        await assert_eventually_async(works, timeout=15, what="CreateRun after etcd came back")

        # The watch opened before the outage carries on from where it was.
        store = Store(private_etcd.endpoint)
        try:
            executor = ExecutorWrites(store, keyspace, run.name)
            revision = await executor.done_record("s0", run_pb2.StepRun.STATE_SUCCEEDED)
            event = await asyncio.wait_for(watch.read(), 15)
            assert event.revision == revision
            assert event.step.step == "s0"
        finally:
            watch.cancel()
            await store.close()
