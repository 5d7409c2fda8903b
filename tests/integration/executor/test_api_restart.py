"""A weft-api restart never fails a run (invariant 5, issue #15).

weft-api is SIGKILLed and started again on the same port, ten times at randomized
moments (half of them while an input is being fetched), while runs whose steps fetch
large inputs keep going: every run succeeds, every step ran exactly once with exactly one
attempt, and the executor logged the outage as a WARNING, never as an ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import ApiProcess
from tests.integration.executor.support import Harness, state_name, states, until
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_core.keyspace import Keyspace
from weft_core.store import Store

Run = run_pb2.Run

RESTARTS = 10
READERS = 6
INPUT_BYTES = 8 * 1024 * 1024


def _fetch_in_flight(work_dir: Path) -> bool:
    """An input file of a local attempt exists but is not complete yet."""
    try:
        return any(0 < path.stat().st_size < INPUT_BYTES for path in work_dir.rglob("inputs/*"))
    except FileNotFoundError:
        return False  # an attempt directory vanished (released) while it was walked


@pytest.mark.slow  # ten api restarts: about 40 s
async def test_runs_succeed_through_ten_sigkills_of_the_api(
    etcd: EtcdProcess, api_process: ApiProcess, keyspace: Keyspace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seed = int(time.time())
    chance = random.Random(seed)
    store = Store(etcd.endpoint)
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        h = Harness(etcd.endpoint, api_process.address, keyspace, api_process.blob_dir, tmp_path, channel, store)
        try:
            executor = await h.start_executor(max_parallel=4)
            work_dir = executor.config.work_dir
            source = h.step("src", f'head -c {INPUT_BYTES} /dev/zero > "$WEFT_OUTPUTS/out"')
            readers = [
                h.step(f"read{i}", 'wc -c < "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("src", "out")})
                for i in range(READERS)
            ]
            join = h.step(
                "join",
                'cat "$WEFT_INPUTS"/* > "$WEFT_OUTPUTS/out"',
                reads={f"in{i}": (f"read{i}", "out") for i in range(READERS)},
            )
            pipeline = await h.apply("api-restarts", [source, *readers, join])

            runs: list[str] = []
            for restart in range(RESTARTS):
                runs.append((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)).name)
                if restart % 2:
                    await asyncio.sleep(chance.uniform(0.05, 1.0))
                else:
                    # Kill while an input is being fetched (or at a random moment if none is seen).
                    with_fetch = chance.uniform(0.0, 0.3)
                    await asyncio.sleep(with_fetch)
                    with_timeout = time.monotonic() + 5.0
                    while not _fetch_in_flight(work_dir) and time.monotonic() < with_timeout:
                        await asyncio.sleep(0.005)
                api_process.kill()
                await asyncio.sleep(chance.uniform(0.1, 1.5))
                await asyncio.to_thread(api_process.start)

            ended = [await h.wait(run, timeout=120) for run in runs]
            for run in ended:
                assert run.state == Run.STATE_SUCCEEDED, f"seed {seed}: {run.name}: {run.message}; {states(run)}"
                for step in run.steps:
                    attempts = [(a.number, state_name(a.state, run_pb2.Attempt.State)) for a in step.attempts]
                    assert attempts == [(1, "SUCCEEDED")], f"seed {seed}: {run.name} {step.step}: {attempts}"
                assert await h.output(run, "join") == f"{INPUT_BYTES}\n".encode() * READERS
            # One launch per step per run: no attempt was spent on the outages.
            assert h.launches() == {name: RESTARTS for name in ["src", "join", *(f"read{i}" for i in range(READERS))]}
            await until(lambda: not executor.running_steps(), what="the executor is idle")
        finally:
            await h.close()
            await store.close()

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("weft")]
    assert errors == [], f"seed {seed}: an expected api outage was logged as an error: {errors[0].getMessage()}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("weft")]
    assert any("artifact store" in w and "is unreachable" in w for w in warnings), warnings
