"""Benchmark of weft-executor's local runtime: what scheduling through etcd costs per step.

Prints, for a 2,000-wide fan-out of `true` and a 100-step chain, and for a fully cached
re-run of each: the end-to-end time (CreateRun until the run is SUCCEEDED) and the time
per step, beside the floor measured in the same run on the same machine:

- spawning `true` that many times (own session, nothing else: the raw spawn floor;
  bench/bench_spawn.py compares it with the runtime's spawner), one at a time and
  `--max-parallel` at a time;
- the etcd transaction rate (one guarded put per transaction), one at a time and 50
  in flight.

A real etcd and a real `weft-api` process are started in a temporary directory; the
executor runs in this process so its launch count can be read. Not a test: it asserts
only that the runs succeeded and that cached re-runs launched nothing.

    .venv/bin/python bench/bench_local_runtime.py [--width 2000] [--chain 100] [--max-parallel 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from weft.localstack import EtcdProcess, api_process
from weft.v1 import pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc
from weft_core.keyspace import Keyspace
from weft_core.store import Store, absent, op_put
from weft_executor.config import ExecutorConfig
from weft_executor.executor import Executor


@dataclass
class Figure:
    what: str
    steps: int
    seconds: float
    launches: int | None = None

    def row(self, floor: float | None = None) -> str:
        per_step = self.seconds / self.steps * 1000
        text = f"  {self.what:<34} {self.steps:>6} steps {self.seconds:>8.2f} s {per_step:>8.2f} ms/step"
        text += f" {self.steps / self.seconds:>8.0f} steps/s"
        if self.launches is not None:
            text += f"   launched {self.launches}"
        if floor is not None:
            text += f"   overhead over floor {per_step - floor:>6.2f} ms/step"
        return text


# Floors --------------------------------------------------------------------------------


def spawn_true(count: int, parallel: int) -> float:
    """Seconds to spawn and reap `true` `count` times, `parallel` at a time."""
    argv = ["true"]
    started = time.perf_counter()
    running: list[subprocess.Popen[bytes]] = []
    for _ in range(count):
        running.append(subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL))
        if len(running) >= parallel:
            running.pop(0).wait()
    for process in running:
        process.wait()
    return time.perf_counter() - started


async def etcd_txn_rate(store: Store, keyspace: Keyspace, count: int, in_flight: int) -> float:
    """Guarded-put transactions per second."""
    semaphore = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        key = f"{keyspace.root}/bench/{in_flight}/{i}".encode()
        async with semaphore:
            await store.txn([absent(key)], [op_put(key, b"x")])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


# The stack -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stack(work: Path, max_parallel: int) -> AsyncIterator[tuple[str, Executor, Store, Keyspace]]:
    etcd = EtcdProcess(work / "etcd")
    etcd.start()
    keyspace = Keyspace("/bench")
    api = api_process(etcd.endpoint, work / "blobs", work / "api.log", etcd_root=keyspace.root)
    address = api.start()
    config = ExecutorConfig(
        etcd_endpoints=etcd.endpoint,
        api=address,
        work_dir=work / "attempts",
        etcd_root=keyspace.root,
        max_parallel=max_parallel,
    )
    executor = Executor(config)
    await executor.start()
    store = Store(etcd.endpoint)
    try:
        yield address, executor, store, keyspace
    finally:
        await executor.stop()
        await store.close()
        api.stop()
        etcd.stop()


def true_step(name: str, upstream: str = "") -> pipeline_pb2.Step:
    step = pipeline_pb2.Step(name=name, container=pipeline_pb2.Container(image="busybox:1.36", command=["true"]))
    if upstream:
        step.depends_on.append(upstream)
    return step


async def timed_run(runs: Any, pipeline: str, executor: Executor) -> tuple[float, int]:
    """Seconds from CreateRun to a terminal state, and processes launched meanwhile."""
    before = executor.launches
    started = time.perf_counter()
    run = await runs.CreateRun(run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline=pipeline)))
    request = run_pb2.GetRunRequest(name=run.name, view=run_pb2.RUN_VIEW_BASIC)
    while True:
        current = await runs.GetRun(request)
        if current.state in (run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED):
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    if current.state != run_pb2.Run.STATE_SUCCEEDED:
        raise RuntimeError(f"run {run.name} ended {run_pb2.Run.State.Name(current.state)}: {current.message}")
    return elapsed, executor.launches - before


async def bench(width: int, chain: int, max_parallel: int) -> None:
    print(f"weft local runtime benchmark: {os.cpu_count()} CPUs, --max-parallel {max_parallel}")
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        async with stack(Path(tmp), max_parallel) as (address, executor, store, keyspace):
            print("\nfloor")
            spawn_one = spawn_true(width, 1)
            spawn_parallel = spawn_true(width, max_parallel)
            for label, seconds in (("one at a time", spawn_one), (f"{max_parallel} at a time", spawn_parallel)):
                text = f"spawn `true` {label}"
                print(f"  {text:<34}{width:>6}x  {seconds:>8.2f} s {seconds / width * 1000:>8.2f} ms each")
            sequential = await etcd_txn_rate(store, keyspace, 1000, 1)
            concurrent = await etcd_txn_rate(store, keyspace, 4000, 50)
            print(f"  etcd txn, 1 in flight             {sequential:>8.0f} txn/s ({1000 / sequential:.2f} ms each)")
            print(f"  etcd txn, 50 in flight            {concurrent:>8.0f} txn/s")

            async with grpc.aio.insecure_channel(address) as channel:
                pipelines: Any = pipeline_pb2_grpc.PipelineServiceStub(channel)  # type: ignore[no-untyped-call]
                runs: Any = run_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]

                async def apply(name: str, steps: list[pipeline_pb2.Step]) -> str:
                    spec = pipeline_pb2.PipelineSpec(steps=steps)
                    request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name=name, spec=spec))
                    return str((await pipelines.CreatePipeline(request)).name)

                fan_out_steps = [true_step("root")] + [true_step(f"s{i}", "root") for i in range(width)]
                fan_out = await apply("fan-out", fan_out_steps)
                chain_steps = [true_step("c0")] + [true_step(f"c{i}", f"c{i - 1}") for i in range(1, chain)]
                chain_name = await apply("chain", chain_steps)

                figures: list[tuple[Figure, float | None]] = []
                cases = (
                    (f"fan-out of {width} `true`", fan_out, width + 1, spawn_parallel / width * 1000),
                    (f"chain of {chain} `true`", chain_name, chain, spawn_one / width * 1000),
                )
                for what, pipeline, steps, floor in cases:
                    seconds, launched = await timed_run(runs, pipeline, executor)
                    figures.append((Figure(what, steps, seconds, launched), floor))
                    seconds, launched = await timed_run(runs, pipeline, executor)
                    assert launched == 0, f"the cached re-run launched {launched} processes"
                    figures.append((Figure("  cached re-run", steps, seconds, launched), None))

            print("\nruns (CreateRun until SUCCEEDED)")
            for figure, floor_ms in figures:
                print(figure.row(floor_ms))
            print(
                "\n  floor per step: fan-out = spawn `true` "
                f"{max_parallel} at a time; chain = spawn `true` one at a time"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2000, help="steps of the fan-out (default 2000)")
    parser.add_argument("--chain", type=int, default=100, help="steps of the chain (default 100)")
    parser.add_argument("--max-parallel", type=int, default=8, help="executor --max-parallel (default 8)")
    args = parser.parse_args()
    asyncio.run(bench(args.width, args.chain, args.max_parallel))


if __name__ == "__main__":
    main()
