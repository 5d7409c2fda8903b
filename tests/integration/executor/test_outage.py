"""Invariant 5 for the executor: etcd going away and coming back loses nothing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

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


async def test_an_etcd_restart_shorter_than_the_lease_costs_no_attempt(
    private_etcd: EtcdProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    keyspace = Keyspace("/blip")
    async with running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api:
        store = Store(private_etcd.endpoint)
        async with grpc.aio.insecure_channel(api.address) as channel:
            h = Harness(private_etcd.endpoint, api.address, keyspace, api.blob_dir, tmp_path, channel, store)
            try:
                # TTL 5 s, margin 1 s: an outage of 2 s is well inside what the lease allows.
                executor = await h.start_executor(lease_ttl=5, max_parallel=8)
                release = tmp_path / "release"
                wait = f"while [ ! -e {release} ]; do sleep 0.05; done"
                steps = [h.step(f"s{i}", f'{wait}; echo {i} > "$WEFT_OUTPUTS/out"') for i in range(4)]
                steps.append(h.step("after", reads={f"in{i}": (f"s{i}", "out") for i in range(4)}))
                pipeline = await h.apply("blip", steps)
                run = await h.run(pipeline.name)
                await until(lambda: len(h.launches()) == 4, timeout=20, what="four steps run")
                # The worst moment: just before a refresh is due (every TTL/6 = 0.83 s), so
                # the deadline runs from the refresh before, 0.7 s before etcd goes away.
                refreshed = executor.registration.last_ok
                await until(lambda: executor.registration.last_ok > refreshed, what="a refresh")
                await asyncio.sleep(0.7)

                private_etcd.stop()
                await asyncio.sleep(2.0)
                private_etcd.start()
                release.touch()

                ended = await h.wait(run.name, timeout=30)
                assert ended.state == run_pb2.Run.STATE_SUCCEEDED, ended.message
                assert executor.registration.lost_at == 0.0  # the lease was never declared lost
                for step in ended.steps:
                    # Zero attempts abandoned (no LOST attempt), zero re-executions.
                    assert [a.state for a in step.attempts] == [run_pb2.Attempt.STATE_SUCCEEDED], step.step
                assert h.launches() == {"s0": 1, "s1": 1, "s2": 1, "s3": 1, "after": 1}
            finally:
                await h.close()
                await store.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("weft")]
    assert errors == [], f"an expected etcd outage was logged as an error: {errors[0].getMessage()}"
