"""etcd stopped and restarted under a running weft-api: UNAVAILABLE while it is down, the
api keeps serving, and everything works again by itself (open watches included)."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.api.support import Clients, ExecutorWrites, create_pipeline, create_run, simple, step
from tests.integration.conftest import running_api
from tests.support import assert_eventually_async
from weft.localstack import EtcdProcess
from weft.v1 import pipeline_pb2, run_pb2
from weft.v1.pipeline_pb2 import PipelineSpec
from weft_core.errors import Unavailable
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


async def test_an_etcd_restart_under_open_watches_logs_one_warning_and_no_error(
    private_etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An expected outage is one WARNING of what is being retried; an ERROR means something a
    # person must look at. The api runs in this process, so its log is what caplog sees, and
    # the garbage collector can be run where it would otherwise run at some later moment
    # (a task left pending by a finished etcd watch is logged as an ERROR when it is collected).
    caplog.set_level(logging.INFO)
    store = Store(private_etcd.endpoint)
    try:
        async with (
            running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api,
            grpc.aio.insecure_channel(api.address) as channel,
        ):
            clients = Clients.of(channel)
            await create_pipeline(clients, "etl", simple(2))
            run = await create_run(clients, "etl")
            views = (run_pb2.RUN_VIEW_FULL, run_pb2.RUN_VIEW_BASIC, run_pb2.RUN_VIEW_FULL)
            watches = [clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, view=view)) for view in views]
            for watch, view in zip(watches, views, strict=True):
                for _ in range(3 if view == run_pb2.RUN_VIEW_FULL else 1):  # the snapshots
                    assert (await asyncio.wait_for(watch.read(), 10)).snapshot

            executor = ExecutorWrites(store, keyspace, run.name)
            outages = 2
            for _ in range(outages):
                private_etcd.kill()
                await asyncio.sleep(0.6)
                private_etcd.start()
                revision = await assert_eventually_async(
                    lambda: executor.set_run_state(run_pb2.Run.STATE_RUNNING),
                    timeout=15,
                    what="a write once etcd is back",
                    retry_on=(Unavailable,),
                )
                for watch in watches:  # each watch is back before the next outage
                    while (await asyncio.wait_for(watch.read(), 20)).revision != revision:
                        pass
            watches[0].cancel()  # a client that goes away while the stream waits for etcd
            # ...and one that goes away while the server is still sending (a snapshot of
            # 3,000 steps: the stream is suspended at a `yield` when it is torn down).
            await create_pipeline(clients, "wide", PipelineSpec(steps=[step(f"s{i}") for i in range(3000)]))
            wide = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=(await create_run(clients, "wide")).name))
            assert (await asyncio.wait_for(wide.read(), 10)).snapshot
            wide.cancel()
            await asyncio.sleep(0.3)
            gc.collect()
            await asyncio.sleep(0.1)
            await executor.set_run_state(run_pb2.Run.STATE_SUCCEEDED)  # the other watches end normally
            for watch in watches[1:]:
                while await asyncio.wait_for(watch.read(), 15) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                    pass
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        await store.close()
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, "\n".join(f"{r.name}: {r.getMessage()}" for r in problems)
    dropped = [r for r in caplog.records if r.levelno == logging.WARNING and "etcd watch of" in r.getMessage()]
    # One warning per etcd watch per outage at most: a FULL view watches the run's records
    # and its ready marks, a BASIC view the run record alone.
    etcd_watches = sum(2 if view == run_pb2.RUN_VIEW_FULL else 1 for view in views)
    assert 1 <= len(dropped) <= outages * etcd_watches, "\n".join(r.getMessage() for r in dropped)
