"""A randomized trial of redundant steps under crashes: SIGKILL one executor at a random
moment of each repetition and check that the races still end well.

Each repetition runs a pipeline of redundant steps (FIRST, MAJORITY and a hedge) on three
real `weft-executor` processes, kills one of them at a random moment, starts a fresh one,
and asserts: the run ends; no step has two outcomes (each done record written once); no
replica of an attempt was launched twice (invariant 1 per replica); every committed
redundant step has its decision recorded, and the winner is the one the replicas' records
in etcd decide (`weft_core.replicas.decide`), so no decision was lost or made twice.

The suite runs WEFT_RACE_TRIALS (default 3) repetitions; `./dev races` runs 50.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random

import pytest
from google.protobuf.duration_pb2 import Duration

from tests.integration.executor.support import ExecutorProcess, Harness, states
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.replicas import Redundancy, decide, parse_rounds
from weft_core.spec import parse_run_name

Run = run_pb2.Run
StepRun = run_pb2.StepRun
TRIALS = int(os.environ.get("WEFT_RACE_TRIALS", "3"))
LEASE_TTL = 2
#: A repetition takes 5-10 s on 2 busy cores (a take-over waits for the victim's lease).
pytestmark = pytest.mark.timeout(60 + 20 * TRIALS)


def trial_steps(h: Harness, launches: str) -> list[pipeline_pb2.Step]:
    record = f'echo "$WEFT_STEP $WEFT_ATTEMPT $WEFT_REPLICA" >> {launches}; '
    quick = record + 'sleep 0.$((RANDOM % 5)); printf same > "$WEFT_OUTPUTS/out"'
    steps = []
    for name, replicas, select in (("first", 3, 1), ("majority", 3, 2), ("pair", 2, 1)):
        step = h.step(name, quick)
        step.redundancy.replicas = replicas
        step.redundancy.select = select  # type: ignore[assignment]
        steps.append(step)
    hedged = h.step("hedged", record + '[ "$WEFT_REPLICA" = 1 ] && sleep 2; printf h > "$WEFT_OUTPUTS/out"')
    hedge = Duration()
    hedge.FromMilliseconds(300)
    hedged.redundancy.hedge_after.CopyFrom(hedge)
    steps.append(hedged)
    join = h.step("join", reads={s.name: (s.name, "out") for s in steps})
    return [*steps, join]


async def check_decisions(h: Harness, run: Run) -> None:
    ns, run_id = parse_run_name(run.name)
    done = await h.done_records(run.name)
    assert {version for _, version in done.values()} == {1}, "a done record was written twice"
    for record, _ in done.values():
        if record.state != StepRun.STATE_SUCCEEDED or not record.outcome.replica:
            continue
        step = next(s for s in trial_steps(h, "") if s.name == record.step)
        policy = Redundancy.of(step)
        assert policy is not None
        listed = await h.store.range_all(h.keyspace.replicas(ns, run_id, record.step))
        rounds = parse_rounds(listed.kvs, h.keyspace, ns, run_id, record.step)
        found = rounds[record.outcome.attempt]
        assert found.decided == record.outcome.replica_decision, "the decision record is missing or differs"
        decision = decide(policy, found)
        assert decision is not None
        assert decision.outcome == "won"
        assert decision.winner is not None
        assert decision.winner.replica == record.outcome.replica, (record.step, found, record.outcome)
        assert len(found.results) <= found.planned


async def test_sigkill_at_a_random_moment_never_doubles_an_outcome_nor_loses_a_decision(harness: Harness) -> None:
    h = harness
    chance = random.Random(int(os.environ.get("WEFT_RACE_SEED", "0")) or None)
    processes: list[ExecutorProcess] = [h.start_process(max_parallel=3, lease_ttl=LEASE_TTL) for _ in range(3)]
    for trial in range(TRIALS):
        launches = h.tmp / f"replica-launches-{trial}"
        launches.touch()
        launches.chmod(0o666)
        pipeline = await h.apply(f"trial-{trial}", trial_steps(h, str(launches)))
        run = await h.run(pipeline.name, cache_mode=run_pb2.CACHE_MODE_OFF)
        await asyncio.sleep(chance.uniform(0.0, 1.5))
        victim = chance.choice(processes)
        victim.kill()
        processes.remove(victim)
        processes.append(h.start_process(max_parallel=3, lease_ttl=LEASE_TTL))

        ended = await h.wait(run.name, timeout=90)

        assert ended.state == Run.STATE_SUCCEEDED, (trial, ended.message, states(ended))
        counted = collections.Counter(launches.read_text().splitlines())
        assert all(n == 1 for n in counted.values()), f"a replica was launched twice: {counted}"
        await check_decisions(h, ended)
