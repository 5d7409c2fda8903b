"""Benchmark of the local runtime's process spawn against the raw spawn floor.

Prints, measured in the same run on the same machine, the cost per spawn of `true`:

- floor: `os.posix_spawn` + `waitpid` from this process (nothing else);
- spawner: through the local runtime's spawner process (`runtime/spawner.py`: a request
  over its socket, posix_spawn there with a new session and the step user's ids, the
  exit reported back);
- spawner, held: the same with the spawn gate (fork, wait at the gate, exec once it
  opens), which is how every local step starts;
- setpriv: the previous way, `subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--",
  "true"], start_new_session=True)` (two execs), when setpriv is installed;
- runtime: a whole `LocalRuntime.launch` + `wait` of `true` (attempt directory, unnamed
  log files, spawn, exit, log check, clean-up) with a local directory store;

one at a time and `--parallel` in flight, as the median of `--rounds` rounds of
`--count` spawns, with each figure's ratio to the floor. Not a test.

    .venv/bin/python bench/bench_spawn.py [--count 200] [--rounds 3] [--parallel 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from floors import TRUE, posix_spawn_true, spawn_true

from weft_core.blobs import DirectoryBlobStore
from weft_executor.runtime import AttemptSpec
from weft_executor.runtime.local import LocalRuntime
from weft_executor.runtime.spawner import Spawner, SpawnRequest


def setpriv(count: int, parallel: int) -> float:
    """The spawn before the spawner: `setpriv --pdeathsig KILL` before every step (two execs)."""
    return spawn_true(count, parallel, ["setpriv", "--pdeathsig", "KILL", "--"])


async def in_flight(count: int, parallel: int, one: Callable[[int], Awaitable[None]]) -> float:
    started = time.perf_counter()
    slots = asyncio.Semaphore(parallel)

    async def run(index: int) -> None:
        async with slots:
            await one(index)

    await asyncio.gather(*(run(i) for i in range(count)))
    return time.perf_counter() - started


async def bench(count: int, rounds: int, parallel: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="weft-bench-spawn-"))
    os.chmod(work, 0o755)
    runtime = LocalRuntime(work / "work", DirectoryBlobStore(work / "blobs"), environ={"PATH": os.defpath})
    user = runtime.step_user
    spawner = Spawner(user.uid if user else None, user.gid if user else None)
    log = os.open(work, os.O_TMPFILE | os.O_RDWR | os.O_APPEND, 0o600)
    request = SpawnRequest(executable=TRUE, argv=["true"], env={}, cwd="/")

    async def spawn_one(_: int) -> None:
        child = await spawner.spawn(request, log, log)
        await child.exited

    async def spawn_one_held(_: int) -> None:
        child = await spawner.spawn(request, log, log, held=True)
        child.release()
        await child.exited

    async def attempt_one(index: int) -> None:
        spec = AttemptSpec("ns", "bench", "s", index + 1, "x", ("true",), "", {}, {}, {}, (), None, "sha256:0")
        attempt = await runtime.launch(spec)
        attempt.start()
        await runtime.wait(attempt)

    try:
        spawner.start()
        await spawn_one(0)  # started and warm
        figures: dict[str, dict[int, list[float]]] = {}
        for _ in range(rounds):
            for at_once in sorted({1, parallel}):
                measured = {
                    "floor: posix_spawn": posix_spawn_true(count, at_once),
                    "spawner, posix_spawn": await in_flight(count, at_once, spawn_one),
                    "spawner, held (fork + gate)": await in_flight(count, at_once, spawn_one_held),
                    "runtime launch + wait": await in_flight(count, at_once, attempt_one),
                }
                if shutil.which("setpriv"):
                    measured["setpriv --pdeathsig (before)"] = setpriv(count, at_once)
                for what, seconds in measured.items():
                    figures.setdefault(what, {}).setdefault(at_once, []).append(seconds)
        print(
            f"weft spawn benchmark: {os.cpu_count()} CPUs, {count} spawns of true, median of {rounds} rounds; "
            f"steps run as {user or 'the executor user'}"
        )
        for at_once in sorted({1, parallel}):
            base = statistics.median(figures["floor: posix_spawn"][at_once]) / count * 1000
            print(f"  {at_once} at a time:")
            for what, by_parallel in figures.items():
                per_spawn = statistics.median(by_parallel[at_once]) / count * 1000
                print(f"    {what:<30} {per_spawn:>7.3f} ms/spawn   {per_spawn / base:>5.2f}x the floor")
    finally:
        os.close(log)
        await spawner.close()
        await runtime.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="spawns per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (default %(default)s)")
    parser.add_argument("--parallel", type=int, default=8, help="spawns in flight (default %(default)s)")
    args = parser.parse_args()
    asyncio.run(bench(args.count, args.rounds, args.parallel))


if __name__ == "__main__":
    main()
