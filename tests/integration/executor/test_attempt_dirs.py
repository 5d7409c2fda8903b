"""Attempt directories (input copies, outputs, work files) never outlive their attempt.

The executor-level paths where an attempt ends abnormally: its run is cancelled, its
executor stops. The runtime-level paths (timeout, abandon,
release without a wait, a dead spawner) are in test_local_runtime.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.executor.support import Harness, until
from tests.support import assert_eventually_async
from weft.v1 import run_pb2

Run = run_pb2.Run


def leftovers(work: Path) -> list[Path]:
    """Attempt directories (…/<ns>/<run>/<step>/<attempt>) still on disk."""
    return [p for p in work.glob("*/*/*/*") if p.is_dir()] if work.exists() else []


async def running(h: Harness, run: str, step: str) -> None:
    async def check() -> bool:
        got = await h.clients.runs.GetRun(run_pb2.GetRunRequest(name=run))
        return any(s.step == step and s.state == run_pb2.StepRun.STATE_RUNNING for s in got.steps)

    await assert_eventually_async(check, timeout=20, what=f"{step} runs")


async def test_a_cancelled_run_leaves_no_attempt_directory(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor()
    pipeline = await h.apply("cancel-dirs", [h.step("slow", "sleep 60", literals={"data": "x" * 1000})])
    run = (await h.run(pipeline.name)).name
    await running(h, run, "slow")
    assert leftovers(executor.config.work_dir)

    await h.cancel(run)
    assert (await h.wait(run)).state == Run.STATE_CANCELLED
    await until(lambda: not leftovers(executor.config.work_dir), what="the attempt directory is removed")


async def test_a_stopped_executor_leaves_no_attempt_directory(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor()
    pipeline = await h.apply("stop-dirs", [h.step("slow", "sleep 60")])
    run = (await h.run(pipeline.name)).name
    await running(h, run, "slow")
    assert leftovers(executor.config.work_dir)

    await executor.stop()
    h.executors.remove(executor)
    assert not leftovers(executor.config.work_dir)
