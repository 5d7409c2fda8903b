"""Redundant steps on several real executors: replicas raced for a recorded winner.

Each test runs real `weft-executor` processes on one etcd. A replica's script reads
`$WEFT_REPLICA` to take longer or shorter, so which replica wins is known, and writes
its shell's pid so the test can check that losers were killed. The winner must be the
one the commit order in etcd names (`weft_core.replicas.decide`).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from tests.integration.executor.support import Harness, process_alive, states, steps_by_name, until
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.replicas import Redundancy, decide, parse_rounds
from weft_core.spec import parse_run_name

Attempt = run_pb2.Attempt
Run = run_pb2.Run
StepRun = run_pb2.StepRun
FIRST = pipeline_pb2.Redundancy.SELECT_FIRST
MAJORITY = pipeline_pb2.Redundancy.SELECT_MAJORITY


def redundant(
    h: Harness, name: str, script: str, replicas: int, select: int = FIRST, hedge_after: float = 0.0
) -> pipeline_pb2.Step:
    step = h.step(name, script)
    step.redundancy.replicas = replicas
    step.redundancy.select = select  # type: ignore[assignment]
    if hedge_after:
        hedge = Duration()
        hedge.FromNanoseconds(int(hedge_after * 1e9))
        step.redundancy.hedge_after.CopyFrom(hedge)
    return step


def recorded_pids(pids: Path) -> dict[int, int]:
    """replica → pid of its shell, as each replica wrote it."""
    return {int(p.name): int(p.read_text()) for p in pids.iterdir() if p.read_text().strip()}


async def replica_rounds(h: Harness, run: str, step: str) -> dict[int, object]:
    ns, run_id = parse_run_name(run)
    listed = await h.store.range_all(h.keyspace.replicas(ns, run_id, step))
    return dict(parse_rounds(listed.kvs, h.keyspace, ns, run_id, step))


async def test_first_commits_the_first_success_once_and_kills_the_losers(harness: Harness) -> None:
    h = harness
    for _ in range(3):
        h.start_process(max_parallel=2)
    pids = h.tmp / "pids"
    pids.mkdir()
    # Replica 2 is fast; 1 and 3 would run for a minute.
    script = (
        f'echo $$ > {pids}/$WEFT_REPLICA; if [ "$WEFT_REPLICA" = 2 ]; then sleep 0.3; else sleep 60; fi; '
        'printf %s "$WEFT_REPLICA" > "$WEFT_OUTPUTS/out"'
    )
    pipeline = await h.apply("first", [redundant(h, "race", script, 3), h.step("after", reads={"in": ("race", "out")})])

    run = await h.wait((await h.run(pipeline.name)).name, timeout=60)

    assert run.state == Run.STATE_SUCCEEDED, (run.message, states(run))
    race = steps_by_name(run)["race"]
    assert race.outcome.replica == 2
    assert await h.output(run, "race") == b"2"
    assert "first success at revision" in race.outcome.replica_decision
    assert sorted(a.replica for a in race.outcome.replicas) == [1, 2, 3]
    assert h.launches()["race"] == 3  # one launch per replica, never more
    done = await h.done_records(run.name)
    assert done["race"][1] == 1  # committed once, never rewritten
    # The losers' processes are gone and their results say they lost.
    started = recorded_pids(pids)
    assert set(started) == {1, 2, 3}
    await until(lambda: not any(process_alive(started[r]) for r in (1, 3)), timeout=15, what="the losers killed")
    rounds = await replica_rounds(h, run.name, "race")

    async def losers_recorded() -> bool:
        rounds.update(await replica_rounds(h, run.name, "race"))
        return len(rounds[1].results) == 3  # type: ignore[attr-defined]

    await until_async(losers_recorded, "every replica's result recorded")
    found = rounds[1]
    results = {a.replica: a for _, a in found.results}  # type: ignore[attr-defined]
    for loser in (1, 3):
        assert results[loser].state == Attempt.STATE_CANCELLED, results[loser]
        assert results[loser].message.startswith("lost the race and was stopped"), results[loser].message
    # The winner is the first success in etcd's commit order, re-derived from the records.
    decision = decide(Redundancy(3, False, None), found)  # type: ignore[arg-type]
    assert decision is not None
    assert decision.winner is not None
    assert decision.winner.replica == race.outcome.replica
    executors = {a.executor for a in results.values()}
    assert len(executors) >= 2, "the replicas did not spread over the executors"
    # ExplainStep shows the table from the replicas' own records: the losers as they ended.
    explanation = await h.explain(run.name, "race")
    assert explanation.replica_decision == race.outcome.replica_decision
    shown = {a.replica: a for a in explanation.replicas}
    assert shown[2].state == Attempt.STATE_SUCCEEDED
    assert shown[1].state == shown[3].state == Attempt.STATE_CANCELLED
    assert all(a.handle and a.executor and a.HasField("end_time") for a in shown.values())


async def test_majority_of_a_deterministic_step_commits_once_a_majority_agrees(harness: Harness) -> None:
    h = harness
    for _ in range(2):
        h.start_process(max_parallel=2)
    # Replica 3 is slow: the two others agree first and it is cancelled.
    script = '[ "$WEFT_REPLICA" = 3 ] && sleep 60; printf same > "$WEFT_OUTPUTS/out"'
    pipeline = await h.apply("majority", [redundant(h, "vote", script, 3, MAJORITY)])

    run = await h.wait((await h.run(pipeline.name)).name, timeout=60)

    assert run.state == Run.STATE_SUCCEEDED, (run.message, states(run))
    vote = steps_by_name(run)["vote"]
    assert await h.output(run, "vote") == b"same"
    assert vote.outcome.replica in (1, 2)
    assert vote.outcome.replica_decision.startswith("2 of 3 replicas agree on out=sha256:")
    assert (await h.done_records(run.name))["vote"][1] == 1


async def test_majority_of_a_step_writing_random_bytes_fails_with_every_digest(harness: Harness) -> None:
    h = harness
    for _ in range(3):
        h.start_process(max_parallel=2)
    script = 'head -c 16 /dev/urandom > "$WEFT_OUTPUTS/out"'
    steps = [redundant(h, "dice", script, 3, MAJORITY), h.step("after", reads={"in": ("dice", "out")})]
    pipeline = await h.apply("dice", steps)

    run = await h.wait((await h.run(pipeline.name)).name, timeout=60)

    assert run.state == Run.STATE_FAILED
    dice = steps_by_name(run)["dice"]
    assert dice.state == StepRun.STATE_FAILED
    assert dice.message.startswith("nondeterministic step: replicas disagree, no 2 of 3 agree")
    for replica in (1, 2, 3):
        assert f"replica {replica}: out=sha256:" in dice.message, dice.message
    assert len({a.output_digests["out"] for a in dice.replicas}) == 3
    assert steps_by_name(run)["after"].state == StepRun.STATE_SKIPPED
    assert h.launches()["dice"] == 3
    assert "after" not in h.launches()


async def test_a_hedge_beats_a_slow_first_attempt_and_is_no_retry(harness: Harness) -> None:
    h = harness
    for _ in range(2):
        h.start_process(max_parallel=2)
    pids = h.tmp / "pids"
    pids.mkdir()
    script = (
        f'echo $$ > {pids}/$WEFT_REPLICA; [ "$WEFT_REPLICA" = 1 ] && sleep 60; '
        'printf "%s" "$WEFT_REPLICA" > "$WEFT_OUTPUTS/out"'
    )
    pipeline = await h.apply("hedge", [redundant(h, "slow", script, 1, hedge_after=0.5)])

    run = await h.wait((await h.run(pipeline.name)).name, timeout=60)

    assert run.state == Run.STATE_SUCCEEDED, (run.message, states(run))
    slow = steps_by_name(run)["slow"]
    assert slow.outcome.replica == 2
    assert slow.outcome.attempt == 1  # a hedge is a replica of attempt 1, never a retry
    assert slow.outcome.replica_decision.startswith("hedge overtook attempt 1 after 0.5s")
    assert h.launches()["slow"] == 2
    started = recorded_pids(pids)
    await until(lambda: not process_alive(started[1]), timeout=15, what="the slow first attempt killed")


async def test_watch_run_sends_each_replica_start_finish_and_the_decision(harness: Harness) -> None:
    h = harness
    for _ in range(2):
        h.start_process(max_parallel=2)
    pipeline = await h.apply(
        "watched", [redundant(h, "vote", 'sleep 1; printf same > "$WEFT_OUTPUTS/out"', 3, MAJORITY)]
    )
    run = await h.run(pipeline.name)
    events: list[run_pb2.ReplicaEvent] = []
    stream = h.clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, view=run_pb2.RUN_VIEW_FULL))
    async for event in stream:
        if event.HasField("replica"):
            events.append(event.replica)
        if event.HasField("run") and event.run.state in (Run.STATE_SUCCEEDED, Run.STATE_FAILED):
            break
    kinds = [e.kind for e in events]
    assert kinds.count(run_pb2.ReplicaEvent.KIND_DECIDED) == 1
    assert {e.attempt.replica for e in events if e.kind == run_pb2.ReplicaEvent.KIND_STARTED} == {1, 2, 3}
    finished = [e for e in events if e.kind == run_pb2.ReplicaEvent.KIND_FINISHED]
    assert len([e for e in finished if e.attempt.state == Attempt.STATE_SUCCEEDED]) >= 2
    decided = next(e for e in events if e.kind == run_pb2.ReplicaEvent.KIND_DECIDED)
    assert decided.step == "vote"
    assert decided.decision.startswith("2 of 3 replicas agree")


async def test_cancelling_a_run_stops_every_replica_on_every_executor(harness: Harness) -> None:
    h = harness
    for _ in range(2):
        h.start_process(max_parallel=2)
    pids = h.tmp / "pids"
    pids.mkdir()
    script = f'echo $$ > {pids}/$WEFT_REPLICA; sleep 60; printf x > "$WEFT_OUTPUTS/out"'
    pipeline = await h.apply("cancelled", [redundant(h, "stuck", script, 3)])
    run = await h.run(pipeline.name)
    await until(lambda: len(recorded_pids(pids)) == 3, timeout=30, what="every replica running")

    await h.cancel(run.name)
    ended = await h.wait(run.name, timeout=30)

    assert ended.state == Run.STATE_CANCELLED
    assert steps_by_name(ended)["stuck"].state == StepRun.STATE_CANCELLED
    started = recorded_pids(pids)
    await until(lambda: not any(process_alive(pid) for pid in started.values()), timeout=15, what="replicas killed")
    found = (await replica_rounds(h, run.name, "stuck"))[1]
    assert {a.state for _, a in found.results} == {Attempt.STATE_CANCELLED}  # type: ignore[attr-defined]


async def until_async(predicate: object, what: str, timeout: float = 15.0) -> None:
    from tests.support import assert_eventually_async

    await assert_eventually_async(predicate, timeout=timeout, what=what)  # type: ignore[arg-type]
