"""Benchmark of redundant steps: what `replicas: 3` costs over `replicas: 1`.

Starts the stack as `weft up` does (etcd, weft-api and weft-executor as separate
processes, through bench_local_runtime's harness) and times, from CreateRun to SUCCEEDED,
a fan-out of `--width` `true` steps (one root, `--width` children) three ways in the same
invocation: plain (one replica), `replicas: 3, select: FIRST` and `replicas: 3, select:
MAJORITY` (at least two replicas of each step must run and agree). Each variant runs
`--repeat` times with a fresh DNA (nothing is cached); the median is printed with the
ratio to the plain run and the CPU per step of each process.

Not a test: it asserts only that the runs succeeded.

    .venv/bin/python bench/bench_races.py [--width 200] [--repeat 3] [--max-parallel N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import grpc
from bench_local_runtime import Bench, Figure, true_step

from weft.localstack import LocalStack
from weft.v1 import pipeline_pb2, pipeline_pb2_grpc, run_pb2_grpc
from weft_core.store import Store
from weft_executor.config import default_max_parallel

VARIANTS: dict[str, tuple[int, int]] = {
    "replicas: 1 (plain)": (1, pipeline_pb2.Redundancy.SELECT_FIRST),
    "replicas: 3, FIRST": (3, pipeline_pb2.Redundancy.SELECT_FIRST),
    "replicas: 3, MAJORITY": (3, pipeline_pb2.Redundancy.SELECT_MAJORITY),
}


def fan_out(width: int, replicas: int, select: int, salt: str) -> list[pipeline_pb2.Step]:
    steps = [true_step("root")] + [true_step(f"s{i}", "root") for i in range(width)]
    for step in steps:
        step.container.env.add(name="BENCH_SALT", value=salt)  # a fresh DNA: nothing cached
        if step.name != "root" and replicas > 1:
            step.redundancy.replicas = replicas
            step.redundancy.select = select  # type: ignore[assignment]
    return steps


async def bench(width: int, repeat: int, max_parallel: int | None) -> None:
    with tempfile.TemporaryDirectory(prefix="weft-bench-races-") as tmp:
        stack = LocalStack(Path(tmp), port=0, max_parallel=max_parallel, etcd_root="/bench")
        stack.start()
        store = Store(stack.etcd_endpoint)
        try:
            await measure(stack, store, width, repeat)
        finally:
            await store.close()
            stack.stop()


async def measure(stack: LocalStack, store: Store, width: int, repeat: int) -> None:
    parallel = stack.max_parallel or default_max_parallel()
    print(f"weft races benchmark: {os.cpu_count()} CPUs, weft-executor --max-parallel {parallel}, {repeat} runs each")
    async with grpc.aio.insecure_channel(stack.api_target) as channel:
        pipelines: Any = pipeline_pb2_grpc.PipelineServiceStub(channel)  # type: ignore[no-untyped-call]
        runs: Any = run_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        b = Bench(stack, runs, store)
        figures: dict[str, list[Figure]] = {what: [] for what in VARIANTS}
        # Interleaved, so that a slow moment of the machine does not fall on one variant.
        for rep in range(repeat):
            for what, (replicas, select) in VARIANTS.items():
                spec = pipeline_pb2.PipelineSpec(steps=fan_out(width, replicas, select, f"{rep}-{what}"))
                name = f"races-{replicas}-{select}"
                request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name=name, spec=spec))
                pipeline = str((await pipelines.CreatePipeline(request)).name)
                figures[what].append(await b.timed_run(f"{what}", pipeline, width + 1))
    plain = statistics.median(f.seconds for f in figures["replicas: 1 (plain)"])
    print(f"\nfan-out of {width} `true` (CreateRun until SUCCEEDED; median of {repeat})")
    for runs_of in figures.values():
        median = sorted(runs_of, key=lambda f: f.seconds)[len(runs_of) // 2]
        print(median.row(None))
        print(
            f"  {'':<28} {median.seconds / plain:.2f}x the plain run; runs: "
            + ", ".join(f"{f.seconds:.2f} s" for f in runs_of)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=200, help="steps of the fan-out (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (default 3)")
    parser.add_argument(
        "--max-parallel", type=int, default=None, help="weft-executor --max-parallel (default: weft up's)"
    )
    args = parser.parse_args()
    asyncio.run(bench(args.width, args.repeat, args.max_parallel))


if __name__ == "__main__":
    main()
