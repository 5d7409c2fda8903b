"""CreateRun latency and throughput of weft-api, beside raw etcd put/txn rates.

    .venv/bin/python bench/bench_create_run.py [--requests 600] [--rounds 3]

Starts its own etcd (default election settings, data in a temp dir) and a `weft-api`
subprocess, measures raw etcd rates through weft's Store in the same run (a single put,
and a transaction shaped like CreateRun's: 2 compares, 3 puts), then CreateRun at
concurrency 1, 8 and 32 from one asyncio client. Each figure is the median of the rounds;
beside it, the CPU that weft-api and etcd spent per call (from /proc, so it means something
even when other work shares the machine), and CreateRun's rate as a share of the raw
transaction rate at the same concurrency. Not part of the test suite; the client shares the
machine with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from weft.localstack import EtcdProcess, api_process
from weft.v1 import pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc
from weft_core.keyspace import Keyspace
from weft_core.store import Store, absent, op_put

CONCURRENCIES = (1, 8, 32)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(call: Callable[[int], Awaitable[object]], total: int, concurrency: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, calls per second) of `total` calls with `concurrency` in flight."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, total / elapsed


def median_of(rounds: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(statistics.median(r[i] for r in rounds) for i in range(len(rounds[0])))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_cpu(
    call: Callable[[int], Awaitable[object]], total: int, concurrency: int, pids: tuple[int, int]
) -> tuple[float, ...]:
    """`measure`, plus the CPU ms per call of each process in `pids` (weft-api, etcd)."""
    before = [cpu_seconds(pid) for pid in pids]
    figures = await measure(call, total, concurrency)
    return (*figures, *((cpu_seconds(pid) - b) * 1000 / total for pid, b in zip(pids, before, strict=True)))


async def bench(args: argparse.Namespace, etcd: EtcdProcess, address: str, api_pid: int) -> None:
    store = Store(etcd.endpoint)
    keyspace = Keyspace("/bench-raw")
    results: dict[str, tuple[float, ...]] = {}
    pids = (api_pid, etcd.child.pid)

    async def put(i: int) -> None:
        await store.put(keyspace.step("ns", "r", f"put-{i}-{time.perf_counter_ns()}"), b"x" * 300)

    async def txn(i: int) -> None:
        unique = f"{i}-{time.perf_counter_ns()}"
        run_key, index_key = keyspace.run("ns", unique), keyspace.run_index("ns", unique)
        request_key = keyspace.request("ns", unique)
        await store.txn(
            [absent(run_key), absent(request_key)],
            [op_put(run_key, b"x" * 300), op_put(index_key, b"x" * 300), op_put(request_key, b"n" * 30)],
        )

    for name, call in (("etcd put", put), ("etcd txn (CreateRun's shape)", txn)):
        for concurrency in CONCURRENCIES:
            rounds = [await measure_cpu(call, args.requests, concurrency, pids) for _ in range(args.rounds)]
            results[f"{name} @{concurrency}"] = median_of(rounds)

    async with grpc.aio.insecure_channel(address) as channel:
        pipelines = pipeline_pb2_grpc.PipelineServiceStub(channel)  # type: ignore[no-untyped-call]
        runs = run_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        spec = pipeline_pb2.PipelineSpec(
            parameters=[pipeline_pb2.Parameter(name="size", default_value="10"), pipeline_pb2.Parameter(name="label")],
            steps=[
                pipeline_pb2.Step(
                    name=f"s{i}",
                    container=pipeline_pb2.Container(image="busybox:1.36", command=["true"]),
                    outputs=[pipeline_pb2.Output(name="out")],
                    inputs=[pipeline_pb2.Input(name="size", parameter="size")],
                )
                for i in range(20)
            ],
        )
        await pipelines.CreatePipeline(
            pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="bench", spec=spec))
        )

        async def create_run(i: int) -> None:
            # A distinct label per run: every run stores one new parameter blob and one cached one.
            request = run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="bench", parameters={"label": f"r{i}"}))
            await runs.CreateRun(request)

        await measure(create_run, 50, 8)  # warm-up: connections, caches
        for concurrency in CONCURRENCIES:
            rounds = [await measure_cpu(create_run, args.requests, concurrency, pids) for _ in range(args.rounds)]
            results[f"CreateRun @{concurrency}"] = median_of(rounds)
    await store.close()

    header = f"{'operation @concurrency':<36} {'p50 ms':>8} {'p99 ms':>8} {'per second':>11}"
    print(f"\n{header} {'api CPU ms':>11} {'etcd CPU ms':>12}")
    for name, (p50, p99, rate, api_cpu, etcd_cpu) in results.items():
        print(f"{name:<36} {p50:8.2f} {p99:8.2f} {rate:11.0f} {api_cpu:11.3f} {etcd_cpu:12.3f}")
    for concurrency in CONCURRENCIES:
        share = results[f"CreateRun @{concurrency}"][2] / results[f"etcd txn (CreateRun's shape) @{concurrency}"][2]
        print(f"CreateRun / raw etcd txn rate @{concurrency}: {share:.0%}")
    print(f"\n{args.requests} calls per round, median of {args.rounds} rounds; one client process, one etcd member.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (the median is shown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as temp:
        work = Path(temp)
        etcd = EtcdProcess(work, fast=False)
        etcd.start()
        api = None
        try:
            api = api_process(etcd.endpoint, work / "blobs", work / "weft-api.log", etcd_root="/bench")
            address = api.start()
            asyncio.run(bench(args, etcd, address, api.child.pid))
        finally:
            if api is not None:
                api.stop()
            etcd.stop()


if __name__ == "__main__":
    main()
