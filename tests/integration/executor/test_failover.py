"""Several executors on one etcd: no double launches, no lost work (invariants 1-4).

The multi-executor tests run real `weft-executor` processes, so a test can SIGKILL one
as a crash would; the join-race tests run two executors in-process to force two
upstream steps to finish at the same moment on different executors.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.integration.executor.support import (
    Harness,
    process_alive,
    state_name,
    states,
    steps_by_name,
    until,
)
from tests.support import assert_eventually_async
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.logs import ContextFilter
from weft_core.spec import Dag, parse_run_name
from weft_executor.progress import RunProgress, RunRef
from weft_executor.runtime import AttemptSpec
from weft_executor.runtime.local import LocalAttempt, LocalRuntime

Attempt = run_pb2.Attempt
Run = run_pb2.Run
StepRun = run_pb2.StepRun


def wide_steps(h: Harness, width: int, script: str = "") -> list[pipeline_pb2.Step]:
    """root → `width` parallel steps → join: `width` + 2 steps."""
    steps = [h.step("root")]
    steps += [h.step(f"m{i:03d}", script, reads={"in": ("root", "out")}) for i in range(width)]
    steps.append(h.step("join", reads={f"m{i:03d}": (f"m{i:03d}", "out") for i in range(width)}))
    return steps


async def test_three_executors_launch_every_step_of_a_200_step_pipeline_exactly_once(harness: Harness) -> None:
    h = harness
    for _ in range(3):
        h.start_process(max_parallel=4)
    pipeline = await h.apply("two-hundred", wide_steps(h, 198))

    run = await h.wait((await h.run(pipeline.name)).name, timeout=90)

    assert run.state == Run.STATE_SUCCEEDED, run.message
    assert len(run.steps) == 200
    launches = h.launches()
    assert len(launches) == 200
    assert set(launches.values()) == {1}, {s: n for s, n in launches.items() if n != 1}
    done = await h.done_records(run.name)
    assert len(done) == 200
    assert {version for _, version in done.values()} == {1}  # each committed once, never rewritten
    executors = {record.outcome.executor for record, _ in done.values()}
    assert len(executors) >= 2, "the work was not shared"


async def test_sigkill_of_an_executor_mid_run_loses_nothing(harness: Harness) -> None:
    h = harness
    ttl = 2
    victim = h.start_process(max_parallel=4, lease_ttl=ttl)
    survivors = [h.start_process(max_parallel=4, lease_ttl=ttl) for _ in range(2)]
    pids = h.tmp / "pids"
    pids.mkdir()
    # Long enough that the steps seen running on the victim are still running when it dies.
    script = f'echo $$ > {pids}/$WEFT_STEP-$WEFT_ATTEMPT; sleep 0.5; printf %s "$WEFT_STEP" > "$WEFT_OUTPUTS/out"'
    pipeline = await h.apply("crash", wide_steps(h, 198, script))
    run = await h.run(pipeline.name)

    async def victim_busy() -> bool:
        current = await h.get(run.name)
        running = [s for s in current.steps if s.state == StepRun.STATE_RUNNING and s.executor == victim.executor_id]
        finished = sum(1 for s in current.steps if s.state == StepRun.STATE_SUCCEEDED)
        return len(running) >= 2 and finished >= 20

    await assert_eventually_async(victim_busy, timeout=60, what="the victim runs steps mid-run")
    victim.kill()
    killed_at = time.time()
    # What the victim was running when it died: nobody updates those records until the
    # takeover, so this read shows them whatever the machine's load.
    at_kill = await h.get(run.name)
    orphaned = {
        s.step
        for s in at_kill.steps
        if s.state == StepRun.STATE_RUNNING and s.executor == victim.executor_id and s.attempts
    }
    assert orphaned, "the victim ran nothing when it was killed"

    ended = await h.wait(run.name, timeout=90)

    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    done = await h.done_records(run.name)
    assert len(done) == 200
    assert {version for _, version in done.values()} == {1}  # every outcome committed exactly once
    assert await h.output(ended, "m042") == b"m042"
    taken_over = [s for s in ended.steps if any(a.state == Attempt.STATE_LOST for a in s.attempts)]
    assert {s.step for s in taken_over} == orphaned, "every attempt running on the killed executor is taken over"
    for step in taken_over:
        lost = [a for a in step.attempts if a.state == Attempt.STATE_LOST]
        assert all(a.executor == victim.executor_id for a in lost)
        assert step.attempts[-1].state == Attempt.STATE_SUCCEEDED
        assert step.attempts[-1].executor in {s.executor_id for s in survivors}
        assert step.outcome.attempt == step.attempts[-1].number
        # Taken over within two lease TTLs of the crash (plus etcd's expiry tick).
        restarted = step.attempts[-1].start_time.ToNanoseconds() / 1e9
        assert restarted - killed_at < 2 * ttl + 1.0
        # The killed executor's process died with it (PDEATHSIG), before its outputs. The
        # attempt's handle is its pid; the pid file exists only if the shell got to run.
        pid = int(lost[0].handle)
        pid_file = pids / f"{step.step}-{lost[0].number}"
        if pid_file.exists():
            assert int(pid_file.read_text()) == pid
        assert not process_alive(pid)
    # Re-running a LOST attempt did not use up the retry budget (max_attempts is 1).
    assert {state_name(s.state) for s in ended.steps} == {"SUCCEEDED"}


@pytest.mark.parametrize("repeat", range(4))
async def test_a_join_whose_upstreams_finish_at_once_on_two_executors_runs_once(harness: Harness, repeat: int) -> None:
    h = harness
    first = await h.start_executor(max_parallel=1)
    second = await h.start_executor(max_parallel=1)
    barrier = h.tmp / "barrier"
    # Both upstream steps block until the barrier exists, then finish in the same instant.
    wait = f'while [ ! -e {barrier} ]; do sleep 0.005; done; printf %s "$WEFT_STEP" > "$WEFT_OUTPUTS/out"'
    steps = [
        h.step("left", wait),
        h.step("right", wait),
        h.step(
            "join",
            'cat "$WEFT_INPUTS/a" "$WEFT_INPUTS/b" > "$WEFT_OUTPUTS/out"',
            reads={"a": ("left", "out"), "b": ("right", "out")},
        ),
    ]
    pipeline = await h.apply("join-race", steps)
    run = await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)

    async def both_running() -> bool:
        current = states(await h.get(run.name))
        return current.get("left") == "RUNNING" and current.get("right") == "RUNNING"

    await assert_eventually_async(both_running, timeout=20, what="both upstream steps run")
    assert {k[2] for k in first.running_steps()} | {k[2] for k in second.running_steps()} == {"left", "right"}
    barrier.touch()

    ended = await h.wait(run.name, timeout=30)

    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    assert h.launches() == {"left": 1, "right": 1, "join": 1}
    assert await h.output(ended, "join") == b"leftright"
    by_name = steps_by_name(ended)
    assert by_name["left"].outcome.executor != by_name["right"].outcome.executor


async def test_join_readiness_is_derived_once_in_every_interleaving(harness: Harness) -> None:
    """Commit/derive interleavings of two upstream steps, replayed on the real progress code."""
    h = harness
    pipeline = await h.apply(
        "join", [h.step("a"), h.step("b"), h.step("j", reads={"x": ("a", "out"), "y": ("b", "out")})]
    )
    orders = [
        ("commit a", "commit b", "derive a", "derive b"),  # both see both: mark created once
        ("commit a", "derive a", "commit b", "derive b"),  # the second one sees both
        ("commit b", "commit a", "derive b", "derive a"),
    ]
    for order in orders:
        run = await h.run(pipeline.name)
        ns, run_id = parse_run_name(run.name)
        spec = pipeline.spec
        ref = RunRef(ns, run_id, spec, Dag.from_spec(spec), {step.name: step for step in spec.steps})
        # Two executors: separate progress objects, nothing shared but etcd.
        progress = {"a": RunProgress(h.store, h.keyspace), "b": RunProgress(h.store, h.keyspace)}
        found: dict[str, list[str]] = {}
        for action in order:
            verb, step = action.split()
            if verb == "commit":
                record = StepRun(
                    step=step, state=StepRun.STATE_SUCCEEDED, outcome=run_pb2.Outcome(dna=f"sha256:{step}")
                )
                assert await h.store.create_if_absent(h.keyspace.done(ns, run_id, step), record.SerializeToString())
            else:
                found[step] = await progress[step].derive_successors(ref, step)
        assert ["j"] in found.values(), (order, found)
        mark = await h.store.get(h.keyspace.ready(ns, run_id, "j"))
        assert mark is not None
        assert mark.version == 1, order


async def test_a_crash_between_commit_and_derivation_heals(harness: Harness) -> None:
    """An executor committed `a` and died before deriving `b`: the ready mark of `a` is
    still there, so the next executor finishes the job instead of stranding `b`."""
    h = harness
    pipeline = await h.apply(
        "heal", [h.step("a"), h.step("b", 'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("a", "out")})]
    )
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    # What the dead executor left: the run RUNNING, a's outcome committed, a's ready mark.
    blob = await h.clients.artifacts.PutBlob(iter_put(b"from a"))
    record = StepRun(step="a", state=StepRun.STATE_SUCCEEDED)
    record.outcome.dna = "sha256:" + "0" * 64
    record.outcome.outputs["out"] = blob.digest
    run.state = Run.STATE_RUNNING
    data = run.SerializeToString()
    await h.store.put(h.keyspace.run(ns, run_id), data)
    await h.store.put(h.keyspace.run_index(ns, run_id), data)
    await h.store.put(h.keyspace.done(ns, run_id, "a"), record.SerializeToString())
    await h.store.put(h.keyspace.ready(ns, run_id, "a"), b"")

    await h.start_executor()
    ended = await h.wait(run.name, timeout=20)

    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    assert h.launches() == {"b": 1}
    assert await h.output(ended, "b") == b"from a"
    assert await h.store.get(h.keyspace.ready(ns, run_id, "a")) is None


async def test_a_crash_after_the_last_commit_still_ends_the_run(harness: Harness) -> None:
    """The last step was committed and its executor died before ending the run: its ready
    mark is still there, so the next executor ends the run (and launches nothing)."""
    h = harness
    pipeline = await h.apply("last", [h.step("only")])
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    run.state = Run.STATE_RUNNING
    data = run.SerializeToString()
    await h.store.put(h.keyspace.run(ns, run_id), data)
    await h.store.put(h.keyspace.run_index(ns, run_id), data)
    done = StepRun(step="only", state=StepRun.STATE_SUCCEEDED, outcome=run_pb2.Outcome(dna="sha256:" + "1" * 64))
    await h.store.put(h.keyspace.done(ns, run_id, "only"), done.SerializeToString())
    await h.store.put(h.keyspace.ready(ns, run_id, "only"), b"")

    await h.start_executor()
    ended = await h.wait(run.name, timeout=20)

    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    assert h.launches() == {}


async def test_an_executor_that_loses_its_lease_stops_its_attempts_and_comes_back(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor(lease_ttl=2)
    pid_file = h.tmp / "first.pid"
    script = (
        f'if [ "$WEFT_ATTEMPT" = 1 ]; then echo $$ > {pid_file}; sleep 60; fi; '
        'echo "attempt $WEFT_ATTEMPT" > "$WEFT_OUTPUTS/out"'
    )
    pipeline = await h.apply("lease", [h.step("long", script)])
    run = await h.run(pipeline.name)
    await until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=20, what="attempt 1 runs")
    first_pid = int(pid_file.read_text())
    old_lease = executor.registration.lease

    # As if etcd expired the lease during a partition: claims and record vanish.
    await h.store.revoke_lease(old_lease)

    ended = await h.wait(run.name, timeout=20)
    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    long = steps_by_name(ended)["long"]
    assert [state_name(a.state, Attempt.State) for a in long.attempts] == ["LOST", "SUCCEEDED"]
    assert await h.output(ended, "long") == b"attempt 2\n"
    assert not process_alive(first_pid)
    assert executor.registration.lease != old_lease
    record = await h.store.get(h.keyspace.executor(executor.executor_id))
    assert record is not None
    assert record.lease == executor.registration.lease


async def iter_put(data: bytes):  # type: ignore[no-untyped-def]
    from weft.v1 import artifact_pb2
    from weft_core.dna import content_digest

    yield artifact_pb2.PutBlobRequest(header=artifact_pb2.BlobHeader(digest=content_digest(data), size_bytes=len(data)))
    yield artifact_pb2.PutBlobRequest(data=data)
    await asyncio.sleep(0)


async def test_a_stopped_executor_hands_its_steps_over_at_once(harness: Harness) -> None:
    h = harness
    first = await h.start_executor(lease_ttl=10)
    pid_file = h.tmp / "first.pid"
    script = (
        f'if [ "$WEFT_ATTEMPT" = 1 ]; then echo $$ > {pid_file}; sleep 60; fi; '
        'echo "attempt $WEFT_ATTEMPT" > "$WEFT_OUTPUTS/out"'
    )
    pipeline = await h.apply("handover", [h.step("long", script)])
    run = await h.run(pipeline.name)
    await until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=20, what="attempt 1 runs")
    await h.start_executor(lease_ttl=10)
    stopped_at = time.monotonic()

    await first.stop()  # graceful: revokes the lease instead of letting it expire
    h.executors.remove(first)
    ended = await h.wait(run.name, timeout=20)

    assert time.monotonic() - stopped_at < 5  # far less than the 10 s lease TTL
    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    long = steps_by_name(ended)["long"]
    assert [(state_name(a.state, Attempt.State), a.executor) for a in long.attempts] == [
        ("LOST", "exec-0"),
        ("SUCCEEDED", "exec-1"),
    ]
    assert not process_alive(int(pid_file.read_text()))


async def test_a_later_finisher_is_recorded_as_a_loser_and_never_overwrites(harness: Harness) -> None:
    """Invariant 2: while our attempt runs, another commit of the step lands first (as a
    zombie or a replica would); our finished attempt must not replace it."""
    h = harness
    await h.start_executor()
    release = h.tmp / "release"
    steps = [
        h.step("racer", f'while [ ! -e {release} ]; do sleep 0.02; done; echo mine > "$WEFT_OUTPUTS/out"'),
        h.step("after", 'cat "$WEFT_INPUTS/in" > "$WEFT_OUTPUTS/out"', reads={"in": ("racer", "out")}),
    ]
    pipeline = await h.apply("loser", steps)
    run = await h.run(pipeline.name)
    await until(lambda: "racer" in h.launches(), timeout=20, what="the racer runs")
    ns, run_id = parse_run_name(run.name)
    blob = await h.clients.artifacts.PutBlob(iter_put(b"theirs\n"))
    theirs = StepRun(step="racer", state=StepRun.STATE_SUCCEEDED)
    theirs.outcome.dna = "sha256:" + "2" * 64
    theirs.outcome.outputs["out"] = blob.digest
    theirs.outcome.executor = "another-executor"
    theirs.outcome.attempt = 1
    assert await h.store.create_if_absent(h.keyspace.done(ns, run_id, "racer"), theirs.SerializeToString())

    release.touch()
    ended = await h.wait(run.name, timeout=20)

    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    done = await h.done_records(run.name)
    assert done["racer"] == (theirs, 1)  # untouched
    assert await h.output(ended, "after") == b"theirs\n"
    step_kv = await h.store.get(h.keyspace.step(ns, run_id, "racer"))
    assert step_kv is not None
    record = StepRun()
    record.ParseFromString(step_kv.value)
    loser = record.attempts[-1]
    assert loser.executor == "exec-0"
    assert loser.message == (
        "lost the commit: step racer was already committed (SUCCEEDED by attempt 1 on executor another-executor); "
        "this attempt's outputs were not used"
    )


async def test_a_re_attached_attempt_logs_under_its_own_number(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An adopted attempt keeps its number in the step record and in its executor's log
    lines (attempt 1, not the next attempt's 2). A local process dies with its executor, so
    the runtime's adopt is played by launching the attempt again (a pod is found again)."""
    h = harness
    pipeline = await h.apply("adopted", [h.step("only")])
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    left = StepRun(step="only", state=StepRun.STATE_RUNNING, executor="a-dead-executor")
    left.attempts.add(number=1, state=Attempt.STATE_RUNNING, executor="a-dead-executor", handle="its-pod")
    await h.store.put(h.keyspace.step(ns, run_id, "only"), left.SerializeToString())

    async def re_attach(runtime: LocalRuntime, spec: AttemptSpec, handle: str) -> LocalAttempt:
        assert (handle, spec.attempt) == ("its-pod", 1)
        launched = await runtime.launch(spec)
        launched.start()
        return launched

    monkeypatch.setattr(LocalRuntime, "adopt", re_attach)
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO, logger="weft_executor")
    await h.start_executor()
    ended = await h.wait(run.name, timeout=30)

    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    attempts = steps_by_name(ended)["only"].attempts
    assert [(a.number, state_name(a.state, Attempt.State)) for a in attempts] == [(1, "SUCCEEDED")]
    re_attached = [r for r in caplog.records if "re-attached to attempt 1" in r.getMessage()]
    assert [getattr(r, "attempt", None) for r in re_attached] == [1]
