"""Benchmark of weft on the local runtime, as `weft up` runs it: what a step costs.

Starts the stack the way `weft up` does (`weft.localstack.LocalStack`: etcd, weft-api and
one weft-executor as separate processes, `weft up`'s defaults unless flags say
otherwise) in a temporary directory, then times, from CreateRun to the run's terminal
state:

- a fan-out of `--width` `true` steps (one root, `--width` children), and its fully
  cached re-run (asserted to launch nothing);
- a chain of `--chain` `true` steps, and its cached re-run;
- with `--wide`, a fan-out of `--wide` steps (linearity: its time per step beside the
  first fan-out's).

Beside each run it prints the CPU time per step of every process (etcd, weft-api,
weft-executor, and the step processes the executor reaped) read from /proc, and the
floor measured in the same invocation on the same machine:

- spawning `true` that many times at the executor's parallelism (plain `posix_spawn`
  through subprocess; bench/bench_spawn.py compares it with the runtime's spawner);
- the raw etcd transaction rate (one create-if-absent put per transaction), one in
  flight and 64 in flight. The design's floor for a step is the spawn plus two etcd
  writes (claim, commit) at that rate; the ratio of each run to that floor is printed.

Not a test: it asserts only that the runs succeeded and that cached re-runs launched
nothing.

    .venv/bin/python bench/bench_local_runtime.py [--width 2000] [--chain 100] [--wide 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from floors import spawn_true

from weft.localstack import LocalStack
from weft.v1 import pipeline_pb2, pipeline_pb2_grpc, run_pb2, run_pb2_grpc
from weft_core.keyspace import Keyspace
from weft_core.store import Store, absent, op_put
from weft_executor.config import default_max_parallel

TERMINAL = (run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own CPU, CPU of reaped children) of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / TICKS, (cutime + cstime) / TICKS


def spawner_of(executor: int) -> int:
    """The pid of the executor's step spawner (0 when it has none running)."""
    for task in Path(f"/proc/{executor}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "weft-spawner":
                    return int(child)
            except OSError:
                continue
    return 0


# Floors --------------------------------------------------------------------------------


async def etcd_txn_rate(store: Store, keyspace: Keyspace, count: int, in_flight: int) -> float:
    """Create-if-absent put transactions per second."""
    semaphore = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        key = f"{keyspace.root}/bench/{in_flight}/{i}".encode()
        async with semaphore:
            await store.txn([absent(key)], [op_put(key, b"x")])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


# Runs ------------------------------------------------------------------------------------


@dataclass
class Figure:
    what: str
    steps: int
    seconds: float
    cpu: dict[str, float]
    launched: int

    def row(self, floor: float | None) -> str:
        per_step = self.seconds / self.steps * 1000
        text = f"  {self.what:<28} {self.steps:>6} steps {self.seconds:>7.2f} s {per_step:>6.2f} ms/step"
        text += f"  launched {self.launched:>5}"
        if floor:
            text += f"  {self.seconds / floor:>5.1f}x floor ({floor:.2f} s)"
        cpu = "  ".join(f"{name} {seconds / self.steps * 1000:.2f}" for name, seconds in self.cpu.items())
        return text + f"\n  {'':<28} CPU ms/step: {cpu}"


def true_step(name: str, upstream: str = "") -> pipeline_pb2.Step:
    step = pipeline_pb2.Step(name=name, container=pipeline_pb2.Container(image="busybox:1.36", command=["true"]))
    if upstream:
        step.depends_on.append(upstream)
    return step


class Bench:
    def __init__(self, stack: LocalStack, runs: Any, store: Store) -> None:
        self.stack = stack
        self.runs = runs
        self.store = store
        self.keyspace = Keyspace("/bench")
        self.pids = {name: child.pid for name, child in stack.children()}

    def cpu(self) -> dict[str, float]:
        readings = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        # The step processes are the spawner's children: its own CPU and theirs, apart.
        spawner = spawner_of(self.pids.get("weft-executor", 0))
        if spawner:
            readings["weft-spawner"] = cpu_seconds(spawner)
        found = {name: own for name, (own, _) in readings.items()}
        found["steps"] = sum(children for _, children in readings.values())
        return found

    async def timed_run(self, what: str, pipeline: str, steps: int) -> Figure:
        before = self.cpu()
        started = time.perf_counter()
        run = await self.runs.CreateRun(run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline=pipeline)))
        # Polled in etcd (one small key), not through GetRun: the bench must not load the
        # api and etcd with reads of every step while it measures them.
        ns, _, run_id = run.name.removeprefix("namespaces/").partition("/runs/")
        index_key = self.keyspace.run_index(ns, run_id)
        while True:
            kv = await self.store.get(index_key)
            if kv is not None and run_pb2.Run.FromString(kv.value).state in TERMINAL:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        after = self.cpu()
        current = await self.runs.GetRun(run_pb2.GetRunRequest(name=run.name, view=run_pb2.RUN_VIEW_BASIC))
        if current.state != run_pb2.Run.STATE_SUCCEEDED:
            raise RuntimeError(f"run {run.name} ended {run_pb2.Run.State.Name(current.state)}: {current.message}")
        launched = current.step_counts.get("SUCCEEDED", 0)
        cpu = {name: after[name] - before[name] for name in after}
        return Figure(what, steps, elapsed, cpu, launched)


async def bench(width: int, chain: int, wide: int, max_parallel: int | None) -> None:
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        stack = LocalStack(Path(tmp), port=0, max_parallel=max_parallel, etcd_root="/bench")
        stack.start()
        try:
            await measure(stack, width, chain, wide)
        finally:
            stack.stop()


async def measure(stack: LocalStack, width: int, chain: int, wide: int) -> None:
    # What the executor runs with: the flag when given, else its own default.
    parallel = stack.max_parallel or default_max_parallel()
    print(f"weft local runtime benchmark: {os.cpu_count()} CPUs, weft-executor --max-parallel {parallel}")
    print("\nfloor (same machine, same invocation)")
    spawn_plain = spawn_true(width, parallel)
    spawn_one = spawn_true(chain, 1)
    for label, seconds, count in (
        (f"spawn `true`, {parallel} at a time", spawn_plain, width),
        ("spawn `true`, one at a time", spawn_one, chain),
    ):
        print(f"  {label:<40}{count:>6}x {seconds:>7.2f} s {seconds / count * 1000:>6.2f} ms each")
    store = Store(stack.etcd_endpoint)
    try:
        await measure_with(stack, store, width, chain, wide, spawn_plain, spawn_one)
    finally:
        await store.close()


async def measure_with(
    stack: LocalStack, store: Store, width: int, chain: int, wide: int, spawn_plain: float, spawn_one: float
) -> None:
    keyspace = Keyspace("/bench-floor")
    sequential = await etcd_txn_rate(store, keyspace, 1000, 1)
    concurrent = await etcd_txn_rate(store, keyspace, 4000, 64)
    print(f"  etcd txn, 1 in flight                   {sequential:>8.0f} txn/s ({1000 / sequential:.2f} ms each)")
    print(f"  etcd txn, 64 in flight                  {concurrent:>8.0f} txn/s ({1000 / concurrent:.2f} ms each)")

    def floor(steps: int, spawn_seconds_each: float, writes_per_second: float) -> float:
        return steps * (spawn_seconds_each + 2 / writes_per_second)

    async with grpc.aio.insecure_channel(stack.api_target) as channel:
        pipelines: Any = pipeline_pb2_grpc.PipelineServiceStub(channel)  # type: ignore[no-untyped-call]
        runs: Any = run_pb2_grpc.RunServiceStub(channel)  # type: ignore[no-untyped-call]
        b = Bench(stack, runs, store)

        async def apply(name: str, steps: list[pipeline_pb2.Step]) -> str:
            spec = pipeline_pb2.PipelineSpec(steps=steps)
            request = pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name=name, spec=spec))
            return str((await pipelines.CreatePipeline(request)).name)

        fan_out = await apply("fan-out", [true_step("root")] + [true_step(f"s{i}", "root") for i in range(width)])
        chain_steps = [true_step("c0")] + [true_step(f"c{i}", f"c{i - 1}") for i in range(1, chain)]
        chain_name = await apply("chain", chain_steps)

        rows: list[tuple[Figure, float | None]] = []
        spawn_each = spawn_plain / width
        first = await b.timed_run(f"fan-out of {width} `true`", fan_out, width + 1)
        rows.append((first, floor(width + 1, spawn_each, concurrent)))
        cached = await b.timed_run("  cached re-run", fan_out, width + 1)
        assert cached.launched == 0, f"the cached re-run launched {cached.launched} steps"
        rows.append((cached, None))
        ran = await b.timed_run(f"chain of {chain} `true`", chain_name, chain)
        rows.append((ran, floor(chain, spawn_one / chain, sequential)))
        cached = await b.timed_run("  cached re-run", chain_name, chain)
        assert cached.launched == 0, f"the cached re-run launched {cached.launched} steps"
        rows.append((cached, None))
        if wide:
            wide_name = await apply("wide", [true_step("root")] + [true_step(f"s{i}", "root") for i in range(wide)])
            big = await b.timed_run(f"fan-out of {wide} `true`", wide_name, wide + 1)
            rows.append((big, floor(wide + 1, spawn_each, concurrent)))

    print("\nruns (CreateRun until SUCCEEDED; floor = spawn `true` + 2 etcd writes per step)")
    for figure, floor_seconds in rows:
        print(figure.row(floor_seconds))
    if wide:
        ratio = rows[-1][0].seconds / rows[0][0].seconds
        print(f"\n  {wide}-wide time / {width}-wide time: {ratio:.1f} (linear would be {wide / width:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2000, help="steps of the fan-out (default 2000)")
    parser.add_argument("--chain", type=int, default=100, help="steps of the chain (default 100)")
    parser.add_argument("--wide", type=int, default=0, help="also run a fan-out this wide (e.g. 10000)")
    parser.add_argument(
        "--max-parallel", type=int, default=None, help="weft-executor --max-parallel (default: weft up's)"
    )
    args = parser.parse_args()
    asyncio.run(bench(args.width, args.chain, args.wide, args.max_parallel))


if __name__ == "__main__":
    main()
