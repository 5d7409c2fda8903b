"""CancelRun stops running attempts within seconds; ResumeRun re-runs only what must run."""

from __future__ import annotations

import asyncio
import time

from tests.integration.executor.support import (
    Harness,
    duration,
    process_alive,
    state_name,
    states,
    steps_by_name,
    until,
)
from tests.support import assert_eventually_async
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.spec import parse_run_name
from weft_executor.progress import RunRef

Attempt = run_pb2.Attempt
Run = run_pb2.Run
Explanation = run_pb2.StepExplanation


async def test_cancel_stops_running_attempts_within_seconds(harness: Harness) -> None:
    h = harness
    await h.start_executor(kill_grace=2.0)
    pids = h.tmp / "pids"
    pids.mkdir()
    slow = f'echo $$ > {pids}/$WEFT_STEP; sleep 60; echo never > "$WEFT_OUTPUTS/out"'
    steps = [
        h.step("first"),
        h.step("slow-a", slow, reads={"in": ("first", "out")}),
        h.step("slow-b", slow, reads={"in": ("first", "out")}),
        h.step("after", reads={"a": ("slow-a", "out"), "b": ("slow-b", "out")}),
    ]
    pipeline = await h.apply("cancel-me", steps)
    run = await h.run(pipeline.name)

    async def both_running() -> bool:
        current = await h.get(run.name)
        return states(current).get("slow-a") == "RUNNING" and states(current).get("slow-b") == "RUNNING"

    await assert_eventually_async(both_running, timeout=20, what="both slow steps run")
    await until(lambda: len(list(pids.iterdir())) == 2, what="both slow steps wrote their pid")
    cancelled_at = time.monotonic()
    await h.cancel(run.name, reason="changed my mind")

    ended = await h.wait(run.name, timeout=10)

    assert time.monotonic() - cancelled_at < 3.0  # sleep dies on SIGTERM: no grace period needed
    assert ended.state == Run.STATE_CANCELLED
    assert ended.HasField("end_time")
    assert states(ended) == {"first": "SUCCEEDED", "slow-a": "CANCELLED", "slow-b": "CANCELLED", "after": "CANCELLED"}
    by_name = steps_by_name(ended)
    for name in ("slow-a", "slow-b"):
        assert [state_name(a.state, Attempt.State) for a in by_name[name].attempts] == ["CANCELLED"]
        assert by_name[name].attempts[0].message == "run cancelled: changed my mind"
        assert by_name[name].message == "run cancelled: changed my mind"
    started = [int(pid_file.read_text()) for pid_file in pids.iterdir()]
    await until(lambda: not any(process_alive(pid) for pid in started), timeout=3, what="the processes are gone")
    ns, run_id = "default", run.name.rsplit("/", 1)[1]
    assert await h.store.count(h.keyspace.ready_run_prefix(ns, run_id)) == 0
    assert await h.store.count(h.keyspace.claims_run_prefix(ns, run_id)) == 0
    assert "after" not in h.launches()


async def test_cancel_interrupts_a_retry_backoff(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    retry = pipeline_pb2.RetryPolicy(max_attempts=5, backoff=duration(60))
    pipeline = await h.apply("backoff", [h.step("fails", "exit 1", retry=retry)])
    run = await h.run(pipeline.name)

    async def failed_once() -> bool:
        fails = steps_by_name(await h.get(run.name)).get("fails")
        return fails is not None and any(a.state == Attempt.STATE_FAILED for a in fails.attempts)

    await assert_eventually_async(failed_once, timeout=20, what="the first attempt failed")
    await h.cancel(run.name)
    ended = await h.wait(run.name, timeout=5)
    assert ended.state == Run.STATE_CANCELLED
    assert states(ended) == {"fails": "CANCELLED"}
    assert h.launches() == {"fails": 1}


async def test_a_run_cancelled_before_it_started_launches_nothing(harness: Harness) -> None:
    h = harness
    pipeline = await h.apply("never", [h.step("a"), h.step("b", reads={"in": ("a", "out")})])
    run = await h.run(pipeline.name)
    cancelled = await h.cancel(run.name)
    assert cancelled.state == Run.STATE_CANCELLED
    await h.start_executor()
    await asyncio.sleep(0.5)
    assert (await h.get(run.name)).state == Run.STATE_CANCELLED
    assert h.launches() == {}


async def test_a_step_claimed_while_its_run_is_pending_waits_and_a_cancel_launches_nothing(harness: Harness) -> None:
    # The window between an executor creating a run's root ready marks and setting it
    # RUNNING (dozens of transactions for a wide fan-out) is held open here; CancelRun of
    # the still-PENDING run goes straight to CANCELLED, so the claimed root must not run.
    h = harness
    executor = await h.start_executor()
    pipeline = await h.apply("window", [h.step("a", "sleep 3"), h.step("b", reads={"in": ("a", "out")})])
    release = asyncio.Event()
    real_start = executor.progress.start_run

    async def start_run_held_open(ref: RunRef) -> bool:
        roots = [(h.keyspace.ready(ref.namespace, ref.run_id, step), b"") for step in ref.dag.roots()]
        await h.store.create_many_if_absent(roots)  # what start_run writes first
        await release.wait()
        return await real_start(ref)

    executor.progress.start_run = start_run_held_open  # type: ignore[method-assign]
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    claims = h.keyspace.claims_run_prefix(ns, run_id)
    await assert_eventually_async(lambda: h.store.count(claims), what="root claimed while PENDING")
    await asyncio.sleep(0.5)  # long enough for an unguarded executor to launch it

    assert (await h.cancel(run.name)).state == Run.STATE_CANCELLED
    release.set()

    async def let_go() -> bool:
        ready = await h.store.count(h.keyspace.ready_run_prefix(ns, run_id))
        return ready == 0 and await h.store.count(claims) == 0

    await assert_eventually_async(let_go, what="ready marks and claims dropped")
    await asyncio.sleep(0.3)
    assert h.launches() == {}
    assert executor.launches == 0
    assert await h.done_records(run.name) == {}
    assert (await h.get(run.name)).state == Run.STATE_CANCELLED


def resumable_steps(h: Harness, fixed: str, d_script: str = "") -> list[pipeline_pb2.Step]:
    """a → b (fails until the file `fixed` exists) → c, and a → d."""
    return [
        h.step("a", 'echo 5 > "$WEFT_OUTPUTS/out"'),
        h.step(
            "b",
            f'test -e {fixed} || {{ echo "not fixed" >&2; exit 1; }}; echo $(( $(cat "$WEFT_INPUTS/in") + 1 )) '
            '> "$WEFT_OUTPUTS/out"',
            reads={"in": ("a", "out")},
        ),
        h.step("c", 'echo "c got $(cat "$WEFT_INPUTS/in")" > "$WEFT_OUTPUTS/out"', reads={"in": ("b", "out")}),
        h.step(
            "d", d_script or 'echo "d got $(cat "$WEFT_INPUTS/in")" > "$WEFT_OUTPUTS/out"', reads={"in": ("a", "out")}
        ),
    ]


async def resume(h: Harness, run: str, latest_version: bool = False) -> Run:
    request = run_pb2.ResumeRunRequest(name=run, latest_version=latest_version)
    resumed = await h.clients.runs.ResumeRun(request)
    return await h.wait(resumed.name)


async def test_resume_reruns_only_the_failed_part(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    fixed = h.tmp / "fixed"
    pipeline = await h.apply("resumable", resumable_steps(h, str(fixed)))
    # Cache OFF: whatever the resumed run reuses, it reuses because of the resume.
    failed = await h.wait((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)).name)
    assert states(failed) == {"a": "SUCCEEDED", "b": "FAILED", "c": "SKIPPED", "d": "SUCCEEDED"}
    fixed.touch()
    h.clear_launches()

    resumed = await resume(h, failed.name)

    assert resumed.state == Run.STATE_SUCCEEDED, resumed.message
    assert resumed.resumed_from == failed.name
    assert states(resumed) == {"a": "CACHED", "b": "SUCCEEDED", "c": "SUCCEEDED", "d": "CACHED"}
    assert h.launches() == {"b": 1, "c": 1}
    assert await h.output(resumed, "c") == b"c got 6\n"
    by_name = steps_by_name(resumed)
    assert by_name["a"].reused_from_run == failed.name
    explanation = await h.explain(resumed.name, "d")
    assert explanation.decision == Explanation.DECISION_RESUMED
    assert explanation.reason.startswith(f"resumed: outcome of {failed.name} step d has the same DNA, produced ")
    b = await h.explain(resumed.name, "b")
    assert b.decision == Explanation.DECISION_MISS
    assert b.reason == f"miss: cache mode OFF (not resumed: step b was FAILED in {failed.name})"


async def test_resume_after_an_edit_reruns_the_failed_and_the_edited_steps(harness: Harness) -> None:
    h = harness
    await h.start_executor()
    fixed = h.tmp / "fixed"
    pipeline = await h.apply("resumable", resumable_steps(h, str(fixed)))
    failed = await h.wait((await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)).name)
    assert states(failed)["b"] == "FAILED"
    edited = await h.apply(
        "resumable",
        resumable_steps(h, str(fixed), d_script='echo "d now got $(cat "$WEFT_INPUTS/in")" > "$WEFT_OUTPUTS/out"'),
    )
    fixed.touch()
    h.clear_launches()

    resumed = await resume(h, failed.name, latest_version=True)

    assert resumed.pipeline_version == edited.version
    assert states(resumed) == {"a": "CACHED", "b": "SUCCEEDED", "c": "SUCCEEDED", "d": "SUCCEEDED"}
    assert h.launches() == {"b": 1, "c": 1, "d": 1}
    assert await h.output(resumed, "d") == b"d now got 5\n"
    d = await h.explain(resumed.name, "d")
    assert d.reason == f"miss: cache mode OFF (not resumed: the DNA of step d changed since {failed.name})"


async def test_several_executors_finalize_a_cancel_once(harness: Harness) -> None:
    h = harness
    executors = [await h.start_executor(max_parallel=2) for _ in range(3)]
    slow = 'sleep 60; echo never > "$WEFT_OUTPUTS/out"'
    steps = [h.step(f"slow-{i}", slow) for i in range(6)] + [h.step("after", reads={"in": ("slow-0", "out")})]
    pipeline = await h.apply("cancel-many", steps)
    run = await h.run(pipeline.name)
    await until(lambda: sum(len(e.running_steps()) for e in executors) == 6, timeout=20, what="six steps run")
    assert all(e.running_steps() for e in executors)

    await h.cancel(run.name)
    ended = await h.wait(run.name, timeout=10)

    assert ended.state == Run.STATE_CANCELLED
    assert set(states(ended).values()) == {"CANCELLED"}
    done = await h.done_records(run.name)
    assert len(done) == 7
    assert {version for _, version in done.values()} == {1}  # one terminal record each, never rewritten


async def test_a_cancel_finishes_when_the_executor_holding_a_step_dies(harness: Harness) -> None:
    h = harness
    victim = h.start_process(lease_ttl=2)
    pid_file = h.tmp / "victim.pid"
    pipeline = await h.apply("orphaned", [h.step("slow", f"echo $$ > {pid_file}; sleep 60")])
    run = await h.run(pipeline.name)
    await until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=20, what="the step runs")
    victim.kill()
    survivor = await h.start_executor(lease_ttl=2)
    await h.cancel(run.name)

    # The victim's claim outlives it by up to a lease TTL; then the survivor finalizes.
    ended = await h.wait(run.name, timeout=15)

    assert ended.state == Run.STATE_CANCELLED
    assert states(ended) == {"slow": "CANCELLED"}
    assert not survivor.running_steps()
    assert not process_alive(int(pid_file.read_text()))
