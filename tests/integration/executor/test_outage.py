"""Invariant 5 for the executor: etcd going away and coming back loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from tests.integration.conftest import ApiProcess, running_api
from tests.integration.executor.support import Harness, states, until
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_core.keyspace import Keyspace
from weft_core.store import Store


async def test_a_running_executor_survives_an_etcd_restart(private_etcd: EtcdProcess, tmp_path: Path) -> None:
    keyspace = Keyspace("/outage")
    async with running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api:
        store = Store(private_etcd.endpoint)
        async with grpc.aio.insecure_channel(api.address) as channel:
            h = Harness(private_etcd.endpoint, api.address, keyspace, api.blob_dir, tmp_path, channel, store)
            try:
                await h.start_executor()
                release = tmp_path / "release"
                steps = [
                    h.step("a", f'while [ ! -e {release} ]; do sleep 0.05; done; echo a > "$WEFT_OUTPUTS/out"'),
                    h.step("b", 'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("a", "out")}),
                ]
                pipeline = await h.apply("outage", steps)
                run = await h.run(pipeline.name)
                await until(lambda: "a" in h.launches(), timeout=20, what="step a runs")

                private_etcd.stop()
                await asyncio.sleep(1.5)  # the executor's calls fail meanwhile; it must not give up
                private_etcd.start()
                release.touch()

                ended = await h.wait(run.name, timeout=30)
                assert ended.state == run_pb2.Run.STATE_SUCCEEDED, ended.message
                assert states(ended) == {"a": "SUCCEEDED", "b": "SUCCEEDED"}
                assert h.launches() == {"a": 1, "b": 1}
                assert await h.output(ended, "b") == b"a\n"
            finally:
                await h.close()
                await store.close()


async def test_a_finished_attempt_waits_for_a_restarting_api(
    etcd: EtcdProcess, api_process: ApiProcess, keyspace: Keyspace, tmp_path: Path
) -> None:
    store = Store(etcd.endpoint)
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        h = Harness(etcd.endpoint, api_process.address, keyspace, api_process.blob_dir, tmp_path, channel, store)
        try:
            await h.start_executor()
            release = tmp_path / "release"
            script = f'while [ ! -e {release} ]; do sleep 0.05; done; echo "output" > "$WEFT_OUTPUTS/out"'
            pipeline = await h.apply("api-restart", [h.step("a", script)])
            run = await h.run(pipeline.name)
            await until(lambda: "a" in h.launches(), timeout=20, what="step a runs")

            api_process.kill()
            release.touch()  # the attempt ends while its outputs cannot be stored
            await asyncio.sleep(1.0)
            api_process.start()

            ended = await h.wait(run.name, timeout=30)
            assert ended.state == run_pb2.Run.STATE_SUCCEEDED, ended.message
            assert h.launches() == {"a": 1}
            assert await h.output(ended, "a") == b"output\n"
        finally:
            await h.close()
            await store.close()
