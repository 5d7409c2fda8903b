"""Identical concurrent work computed once: two runs reaching the same DNA while one of
them computes it launch it once (single flight per namespace and DNA, `cache.SingleFlight`).

Launches are counted from the launch file every step appends to (tests/integration/executor/
support.py); the steps of two runs of one pipeline have the same DNA.
"""

from __future__ import annotations

import asyncio

from tests.integration.executor.support import Harness, states, steps_by_name
from tests.support import assert_eventually_async
from weft.v1 import pipeline_pb2, run_pb2

Run = run_pb2.Run
StepRun = run_pb2.StepRun


def chain(h: Harness, script: str = "", cache: pipeline_pb2.CachePolicy | None = None) -> list[pipeline_pb2.Step]:
    return [h.step("a", script, cache=cache), h.step("b", script, reads={"in": ("a", "out")}, cache=cache)]


async def test_two_runs_started_together_launch_each_step_once(harness: Harness) -> None:
    h = harness
    for _ in range(2):
        await h.start_executor(max_parallel=4)
    pipeline = await h.apply("twice", chain(h, 'sleep 0.5; printf "$WEFT_STEP" > "$WEFT_OUTPUTS/out"'))

    first, second = await asyncio.gather(h.run(pipeline.name), h.run(pipeline.name))
    runs = [await h.wait(r.name, timeout=60) for r in (first, second)]

    assert [r.state for r in runs] == [Run.STATE_SUCCEEDED] * 2, [states(r) for r in runs]
    assert h.launches() == {"a": 1, "b": 1}
    shared = [s for r in runs for s in r.steps if s.state == StepRun.STATE_CACHED]
    assert shared, [states(r) for r in runs]
    for step in shared:
        assert step.explanation.reason.startswith("hit: computed once, by the attempt of namespaces/"), step
        assert step.reused_from_run in {first.name, second.name}
        assert step.reused_from_run != next(r.name for r in runs if step in r.steps)


async def test_a_step_can_opt_out_of_sharing_an_attempt_in_flight(harness: Harness) -> None:
    h = harness
    await h.start_executor(max_parallel=4)
    own = pipeline_pb2.CachePolicy(share_in_flight=False)
    pipeline = await h.apply("apart", [h.step("a", 'sleep 0.5; printf a > "$WEFT_OUTPUTS/out"', cache=own)])

    first, second = await asyncio.gather(h.run(pipeline.name), h.run(pipeline.name))
    runs = [await h.wait(r.name, timeout=60) for r in (first, second)]

    assert [r.state for r in runs] == [Run.STATE_SUCCEEDED] * 2
    assert h.launches() == {"a": 2}


async def test_when_the_shared_attempt_fails_the_waiting_step_runs_itself(harness: Harness) -> None:
    h = harness
    await h.start_executor(max_parallel=4)
    # The first launch fails after a while; any later one succeeds.
    flag = h.tmp / "first"
    script = f'if mkdir {flag} 2>/dev/null; then sleep 1; exit 3; fi; printf ok > "$WEFT_OUTPUTS/out"'
    pipeline = await h.apply("fails-once", [h.step("a", script)])

    first, second = await asyncio.gather(h.run(pipeline.name), h.run(pipeline.name))
    runs = [await h.wait(r.name, timeout=60) for r in (first, second)]

    assert sorted(r.state for r in runs) == [Run.STATE_SUCCEEDED, Run.STATE_FAILED]
    succeeded = next(r for r in runs if r.state == Run.STATE_SUCCEEDED)
    assert steps_by_name(succeeded)["a"].state == StepRun.STATE_SUCCEEDED
    assert h.launches() == {"a": 2}


async def test_sharing_survives_sigkill_of_the_executor_running_the_shared_attempt(harness: Harness) -> None:
    h = harness
    processes = [h.start_process(max_parallel=4, lease_ttl=2) for _ in range(2)]
    pipeline = await h.apply("crash", [h.step("slow", 'sleep 3; printf done > "$WEFT_OUTPUTS/out"')])
    first, second = await asyncio.gather(h.run(pipeline.name), h.run(pipeline.name))

    async def running() -> str:
        for name in (first.name, second.name):
            step = steps_by_name(await h.get(name)).get("slow")
            launched = h.launches()["slow"] == 1  # the process itself started
            if launched and step is not None and step.state == StepRun.STATE_RUNNING and step.executor:
                return step.executor
        return ""

    holder = await assert_eventually_async(running, timeout=30, what="the shared attempt running")
    victim = next(p for p in processes if p.executor_id == holder)
    victim.kill()
    runs = [await h.wait(r.name, timeout=60) for r in (first, second)]

    assert [r.state for r in runs] == [Run.STATE_SUCCEEDED] * 2, [states(r) for r in runs]
    # The killed attempt, then exactly one more for both runs.
    assert h.launches() == {"slow": 2}


async def test_an_in_flight_record_left_behind_is_cleared_once_its_step_is_done(harness: Harness) -> None:
    h = harness
    await h.start_executor(max_parallel=4)
    pipeline = await h.apply("left-behind", [h.step("a")])
    first = await h.wait((await h.run(pipeline.name)).name, timeout=30)
    dna_hex = steps_by_name(first)["a"].dna.removeprefix("sha256:")
    ns = first.name.split("/")[1]
    # As if the first run's executor could not delete it (etcd away as it let go), and the
    # outcome is not reusable (so the next run must compute it again).
    await h.store.put(h.keyspace.in_flight(ns, dna_hex), f"{first.name} step a".encode())
    await h.store.delete(h.keyspace.outcome(ns, dna_hex))

    second = await h.wait((await h.run(pipeline.name)).name, timeout=30)

    assert second.state == Run.STATE_SUCCEEDED
    assert steps_by_name(second)["a"].state == StepRun.STATE_SUCCEEDED
    assert h.launches() == {"a": 2}
