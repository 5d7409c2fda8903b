"""Running a redundant step: replicas raced on several executors, hedges, the decision.

The rule that picks the winner is `weft_core.replicas` (a pure function of the order in
which etcd committed the replicas' results). This module runs it:

- The holder of the step's claim runs each attempt (`ReplicaRaces.run_attempts`): one
  transaction, guarded by its claim, records how many replicas the attempt has
  (`planned`), the step record, and a ready mark per replica item (`step#attempt.replica`,
  replicas 2 and up), which any executor claims like a step; an executor prefers items
  of steps it does not already hold (`scheduler.ReadyQueue.pick`). The holder runs
  replica 1 itself, and with `hedge_after` raises `planned` to 2 and marks the hedge when
  its replica runs too long. It then waits (its slot parked, not counted against
  `--max-parallel`) until the attempt is decided; a failed attempt is retried as any.
- The holder of a replica item (`ReplicaRaces.run_item`) runs that one replica.
- Every replica records its running state (guarded by its claim), then its result
  (create-if-absent); whoever records a result reads the attempt's records and, when
  they decide a winner, commits the step (create-if-absent done record, as for any step)
  in one transaction with the `decided` record and the deletion of the replica items not
  yet started. Replicas still running see `decided` in their watch and are killed; their
  result says they lost. Only the step's holder commits a failure (it owns the retries).

A replica whose running record exists is never launched again (invariant 1 per replica):
whoever takes its claim over after a crash records it LOST (stopping a pod it may have
left). Nothing here overwrites a result or a done record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import UTC, datetime

from weft.v1 import pipeline_pb2, run_pb2
from weft_core import metrics
from weft_core.dna import spill_input_outcomes, step_dna
from weft_core.lineage import index_outcome
from weft_core.logs import log_context, trace_id_of
from weft_core.replicas import Decision, Redundancy, Round, decide, parse_rounds, replica_item
from weft_core.runs import parse_run
from weft_core.store import absent, lease_is, op_delete, op_get, op_put
from weft_core.telemetry import (
    ATTR_ATTEMPT,
    ATTR_DNA,
    ATTR_RUN,
    ATTR_STEP,
    child_traceparent,
    span_in_run_trace,
    traceparent_of,
    tracer,
)
from weft_executor.progress import TERMINAL_RUN_STATES, RunEnded, RunRef, now, parse_step_run
from weft_executor.runtime import AttemptResult, AttemptSetupError, AttemptSpec, LaunchedAttempt
from weft_executor.steps import (
    MAX_LOST_ATTEMPTS,
    Claim,
    ClaimLost,
    StepRunner,
    StepTask,
    StepWork,
    backoff_seconds,
    outcome_of,
    record_result,
    timestamp_of,
)

log = logging.getLogger(__name__)

Attempt = run_pb2.Attempt
Run = run_pb2.Run
StepRun = run_pb2.StepRun

#: How often a holder waiting for a decision looks again without being told (a safety
#: net: the watch of the attempt's records wakes it as soon as anything changes).
DECISION_RECHECK_SECONDS = 5.0
#: How long a replica runs before it watches for another replica's win (see `_wait_replica`).
WATCH_AFTER_SECONDS = 0.2


class ReplicaRaces:
    """Runs redundant steps for a `StepRunner` (see the module docstring)."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner

    # Reading ------------------------------------------------------------------------

    async def read_rounds(self, ns: str, run_id: str, step: str) -> tuple[dict[int, Round], int]:
        """Every attempt's replica records of a step, and the revision they were read at."""
        ks = self.runner.keyspace
        listed = await self.runner.store.range_all(ks.replicas(ns, run_id, step))
        return parse_rounds(listed.kvs, ks, ns, run_id, step), listed.revision

    async def _watch_round(self, ns: str, run_id: str, step: str, attempt: int, after: int, *, decided: bool) -> str:
        """Waits for a change of the attempt's records after revision `after` (with
        `decided`: for its decision, whose reason is returned)."""
        ks = self.runner.keyspace
        prefix = ks.replica_round(ns, run_id, step, attempt)
        decided_key = ks.replica_decided(ns, run_id, step, attempt)
        async with contextlib.aclosing(self.runner.store.watch(prefix, after + 1)) as batches:
            async for batch in batches:
                for event in batch:
                    if not decided or (event.key == decided_key and not event.deleted):
                        return event.value.decode() if event.key == decided_key else ""
        return ""

    # The step's holder --------------------------------------------------------------

    async def run_attempts(self, work: StepWork, explanation: run_pb2.StepExplanation) -> None:
        """Runs the step's attempts as replicas until one attempt is decided, the retry
        budget is spent or the run is cancelled (the holder's part, module docstring)."""
        runner = self.runner
        task, ref, step, record, claim = work.task, work.ref, work.step, work.record, work.claim
        policy = Redundancy.of(step)
        assert policy is not None
        record.dna = work.dna.digest
        record.explanation.CopyFrom(explanation)
        record.executor = runner.executor_id
        for value in work.inputs.values.values():
            await runner.blobs.put(value)
        max_attempts = max(1, step.retry.max_attempts)
        rounds, _ = await self.read_rounds(ref.namespace, ref.run_id, step.name)
        failed = lost = 0
        number = 1
        for n in sorted(rounds):
            decision = decide(policy, rounds[n])
            number = n
            if decision is not None and decision.outcome != "won":
                failed += decision.outcome == "failed"
                lost += decision.outcome == "lost"
                number = n + 1
        while True:
            if task.cancel_reason:
                await runner._commit_cancelled(ref, record, claim, task.cancel_reason)
                return
            if lost >= MAX_LOST_ATTEMPTS:
                await runner._commit_lost_too_often(work, failed, max_attempts, lost)
                return
            decision = await self._run_round(work, policy, number)
            if decision is None:
                return  # committed (by us or by a replica's holder), or cancelled
            record.attempts.extend(decision.table)
            del record.replicas[:]
            record.replicas.extend(decision.table)
            record.replica_decision = decision.reason
            if decision.outcome == "lost":
                lost += 1
            else:
                failed += 1
                if failed >= max_attempts:
                    message = (
                        decision.reason
                        if max_attempts == 1
                        else f"failed {failed} of {max_attempts} attempts, the last with: {decision.reason}"
                    )
                    await runner._commit_failure(ref, record, claim, failed, max_attempts, message=message)
                    return
                delay = backoff_seconds(step.retry, failed)
                log.info(
                    "step %s of %s: attempt %d failed (%s); retrying in %.1fs",
                    step.name,
                    ref.name,
                    number,
                    decision.reason,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(task.cancelled.wait(), delay)
            number += 1

    async def _start_round(self, work: StepWork, policy: Redundancy, number: int) -> None:
        """Plans attempt `number`'s replicas, records the step RUNNING and marks replicas
        2.. ready, in one transaction guarded by the claim; nothing if already planned."""
        runner = self.runner
        ks, ref, claim, record = runner.keyspace, work.ref, work.claim, work.record
        ns, run_id, step = ref.namespace, ref.run_id, record.step
        planned_key = ks.replica_planned(ns, run_id, step, number)
        claim_key = ks.claim(ns, run_id, step)
        record.state = StepRun.STATE_RUNNING
        planned = policy.launched_at_once
        writes: list[object] = [
            op_put(planned_key, str(planned).encode()),
            op_put(ks.step(ns, run_id, step), record.SerializeToString()),
        ]
        writes += [op_put(ks.ready(ns, run_id, replica_item(step, number, r)), b"") for r in range(2, planned + 1)]
        result = await runner.store.txn(
            [lease_is(claim_key, claim.lease), absent(planned_key)], writes, [op_get(claim_key)]
        )
        if not result.succeeded:
            holder = result.range_kvs(0)
            if not holder or holder[0].lease != claim.lease:
                raise ClaimLost(f"lost the claim of step {step} of {ref.name}")

    async def _launch_hedge(self, work: StepWork, number: int) -> None:
        runner = self.runner
        ks, ref, claim = runner.keyspace, work.ref, work.claim
        ns, run_id, step = ref.namespace, ref.run_id, work.step.name
        result = await runner.store.txn(
            [lease_is(ks.claim(ns, run_id, step), claim.lease), absent(ks.replica_decided(ns, run_id, step, number))],
            [
                op_put(ks.replica_planned(ns, run_id, step, number), b"2"),
                op_put(ks.ready(ns, run_id, replica_item(step, number, 2)), b""),
            ],
        )
        if result.succeeded:
            log.info("step %s of %s: attempt %d still runs; hedging it with a backup replica", step, ref.name, number)

    async def _run_round(self, work: StepWork, policy: Redundancy, number: int) -> Decision | None:
        """Runs attempt `number`: replica 1 here, the others wherever they are claimed.
        Returns its decision when it failed or was lost, None once the step is committed."""
        runner = self.runner
        task, ref, step, claim = work.task, work.ref, work.step, work.claim
        ns, run_id = ref.namespace, ref.run_id
        await self._start_round(work, policy, number)
        rounds, _ = await self.read_rounds(ns, run_id, step.name)
        found = rounds.get(number)
        if found is not None and found.result_of(1) is None:
            running = found.running.get(1)
            if running is not None:
                # Launched by the step's previous holder, which died or lost its claim.
                await self._record_lost(work, number, running)
            else:
                await self._run_replica(work, number, 1, claim, hedge=policy.hedge_after)
        while True:
            rounds, revision = await self.read_rounds(ns, run_id, step.name)
            found = rounds.get(number) or Round(number)
            done_kv = await runner.store.get(runner.keyspace.done(ns, run_id, step.name))
            if done_kv is not None:
                await runner.after_done(ref, parse_step_run(done_kv), claim)
                return None
            decision = decide(policy, found)
            if decision is not None and decision.outcome == "won":
                await self._commit_decision(work, found, decision, holder=True)
                return None
            if task.cancel_reason:
                await runner._commit_cancelled(ref, work.record, claim, task.cancel_reason)
                return None
            if decision is not None:
                return decision
            await self._park_until_change(work, number, revision)
            summary = await runner.store.get(runner.keyspace.run_index(ns, run_id))
            if summary is None or parse_run(summary).state in TERMINAL_RUN_STATES:
                raise RunEnded(f"run {ref.name} ended while step {step.name}'s replicas ran")

    async def _park_until_change(self, work: StepWork, number: int, revision: int) -> None:
        """Waits for the attempt's records to change, with this task's slot free."""
        task, ref = work.task, work.ref
        task.parked = True
        self.runner.on_slot_freed()
        watching = asyncio.ensure_future(
            self._watch_round(ref.namespace, ref.run_id, work.step.name, number, revision, decided=False)
        )
        cancelled = asyncio.ensure_future(task.cancelled.wait())
        try:
            await asyncio.wait(
                {watching, cancelled}, timeout=DECISION_RECHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            task.parked = False
            for pending in (watching, cancelled):
                pending.cancel()
            await asyncio.gather(watching, cancelled, return_exceptions=True)

    # A replica item's holder ----------------------------------------------------------

    async def run_item(self, task: StepTask, step_name: str, number: int, replica: int) -> None:
        """Runs replica `replica` of attempt `number` of a redundant step, records its
        result, decides if it can, and lets the item go."""
        runner = self.runner
        claim = task.claim
        ns, run_id = claim.namespace, claim.run_id
        ks = runner.keyspace
        # The item is let go only once its replica has a result (or needs none): an item
        # dropped without one would leave its attempt undecided. On an error (etcd away)
        # the claim stays and the replica is taken up again.
        try:
            summary = await runner.store.get(ks.run_index(ns, run_id))
            run = await runner._full_run(ns, run_id, parse_run(summary)) if summary is not None else None
            if run is not None and run.state == Run.STATE_RUNNING:
                ref = await runner.run_refs.of(ns, run_id, run)
                step = ref.step(step_name) if step_name in ref.steps else None
                policy = Redundancy.of(step) if step is not None else None
                if step is not None and policy is not None:
                    attributes = {ATTR_RUN: ref.name, ATTR_STEP: step_name}
                    with (
                        span_in_run_trace("weft.replica", run.traceparent, attributes),
                        log_context(run=ref.name, step=step_name, trace_id=trace_id_of(run.traceparent)),
                    ):
                        await self._run_item(task, ref, run, step, policy, number, replica)
        except RunEnded as ended:
            log.info("%s; letting replica %d of %s go", ended, replica, step_name)
        await runner.progress.release(ns, run_id, claim.step, claim.lease)

    async def _run_item(
        self,
        task: StepTask,
        ref: RunRef,
        run: Run,
        step_pb: pipeline_pb2.Step,
        policy: Redundancy,
        number: int,
        replica: int,
    ) -> None:
        runner = self.runner
        if await runner.store.get(runner.keyspace.done(ref.namespace, ref.run_id, step_pb.name)) is not None:
            return
        rounds, _ = await self.read_rounds(ref.namespace, ref.run_id, step_pb.name)
        found = rounds.get(number)
        if found is None or replica > found.planned or found.decided:
            return  # stale: the attempt was decided, or never planned this replica
        inputs = await runner._resolve_inputs(ref, run, step_pb)
        if isinstance(inputs, str):
            # The step's holder resolved them; should they have changed, this replica fails.
            failed = Attempt(
                number=number, replica=replica, executor=runner.executor_id, state=Attempt.STATE_FAILED, message=inputs
            )
            failed.end_time.CopyFrom(now())
            key = runner.keyspace.replica_result(ref.namespace, ref.run_id, step_pb.name, number, replica)
            await runner.store.txn([absent(key)], [op_put(key, failed.SerializeToString())])
            return
        work = StepWork(task, ref, run, step_pb, StepRun(step=step_pb.name), step_dna(step_pb, inputs.digests), inputs)
        if found.result_of(replica) is None:
            running = found.running.get(replica)
            if running is not None:
                await self._record_lost(work, number, running)
            else:
                for value in inputs.values.values():
                    await runner.blobs.put(value)
                await self._run_replica(work, number, replica, task.claim, hedge=None)
        rounds, _ = await self.read_rounds(ref.namespace, ref.run_id, step_pb.name)
        decision = decide(policy, rounds.get(number) or Round(number))
        if decision is not None and decision.outcome == "won":
            await self._commit_decision(work, rounds[number], decision, holder=False)

    # One replica ----------------------------------------------------------------------

    async def _record_lost(self, work: StepWork, number: int, running: Attempt) -> None:
        """Records a replica whose launcher died or lost its claim (its process died with
        it; a pod it left is stopped), so that it is never launched again."""
        runner = self.runner
        lost = Attempt()
        lost.CopyFrom(running)
        if running.handle and running.executor != runner.executor_id:
            spec = AttemptSpec.to_stop(
                work.ref.namespace, work.ref.run_id, work.step.name, number, work.step.container.image, running.replica
            )
            with contextlib.suppress(Exception):
                await runner.runtime.stop_orphan(spec, running.handle, "its replica was taken over")
        lost.state = Attempt.STATE_LOST if running.state == Attempt.STATE_RUNNING else Attempt.STATE_UNCONFIRMED
        lost.message = (
            f"abandoned: executor {running.executor or '?'} died or lost its claim while replica "
            f"{running.replica} ran; executor {runner.executor_id} took it over"
        )
        lost.end_time.CopyFrom(now())
        key = runner.keyspace.replica_result(
            work.ref.namespace, work.ref.run_id, work.step.name, number, running.replica
        )
        await runner.store.txn([absent(key)], [op_put(key, lost.SerializeToString())])

    async def _run_replica(
        self, work: StepWork, number: int, replica: int, claim: Claim, *, hedge: float | None
    ) -> Attempt | None:
        """Launches replica `replica` of attempt `number`, waits for it (killing it when
        another replica wins first; hedging it after `hedge` seconds) and records its
        result. None when its result was recorded already."""
        runner = self.runner
        task, ref, step = work.task, work.ref, work.step
        ks = runner.keyspace
        ns, run_id = ref.namespace, ref.run_id
        running_key = ks.replica_running(ns, run_id, step.name, number, replica)
        result_key = ks.replica_result(ns, run_id, step.name, number, replica)
        claim_key = ks.claim(ns, run_id, claim.step)
        attributes: dict[str, str | int] = {
            ATTR_RUN: ref.name,
            ATTR_STEP: step.name,
            ATTR_ATTEMPT: number,
            ATTR_DNA: work.dna.digest,
            "weft.replica": replica,
        }
        with (
            tracer().start_as_current_span("weft.attempt", attributes=attributes) as span,
            log_context(attempt=number),
        ):
            traceparent = traceparent_of(span) if span.is_recording() else child_traceparent(work.run.traceparent)
            base = runner._attempt_spec(work, number, traceparent)
            env = dict(base.env)
            env["WEFT_REPLICA"] = str(replica)
            spec = dataclasses.replace(base, env=env, replica=replica, spread=True)
            attempt = Attempt(number=number, replica=replica, executor=runner.executor_id)
            attempt.start_time.CopyFrom(now())
            attempt.handle = runner.runtime.planned_handle(spec)
            attempt.state = Attempt.STATE_RUNNING if attempt.handle else Attempt.STATE_UNCONFIRMED
            # Recorded before the launch, guarded by the claim, the result's absence and the
            # decision's: whoever takes the replica over finds it and never launches it again.
            decided_key = ks.replica_decided(ns, run_id, step.name, number)
            written = await runner.store.txn(
                [lease_is(claim_key, claim.lease), absent(result_key), absent(decided_key)],
                [op_put(running_key, attempt.SerializeToString())],
                [op_get(result_key, count_only=True), op_get(decided_key, count_only=True)],
            )
            if not written.succeeded:
                if written.responses[0].response_range.count or written.responses[1].response_range.count:
                    return None
                raise ClaimLost(f"lost the claim of replica {replica} of step {step.name} of {ref.name}")
            try:
                launched: LaunchedAttempt | None = await runner.runtime.launch(spec)
            except AttemptSetupError as error:
                launched = None
                result = AttemptResult(Attempt.STATE_FAILED, str(error), 0, {}, "", "", datetime.now(UTC))
            if launched is not None:
                runner.launches += 1
                result = await self._wait_replica(
                    work, number, replica, claim_key, claim, attempt, launched, written.revision, hedge
                )
            record_result(attempt, result)
            if launched is not None and not task.lost_race and result.state == Attempt.STATE_CANCELLED:
                # Stopped before the decision's watch event arrived (the run ended first):
                # the decision, if any, says why.
                decided = await runner.store.get(ks.replica_decided(ns, run_id, step.name, number))
                task.lost_race = decided.value.decode() if decided is not None else ""
            if task.lost_race and result.state != Attempt.STATE_SUCCEEDED:
                attempt.state = Attempt.STATE_CANCELLED
                attempt.message = f"lost the race and was stopped: {task.lost_race}"
            recorded = await runner.store.txn([absent(result_key)], [op_put(result_key, attempt.SerializeToString())])
            if launched is not None:
                await runner.runtime.release(launched)
            state = Attempt.State.Name(attempt.state).removeprefix("STATE_")
            log.info(
                "step %s of %s: replica %d of attempt %d ended %s%s",
                step.name,
                ref.name,
                replica,
                number,
                state,
                "" if recorded.succeeded else " (a result was recorded already)",
            )
            return attempt

    async def _wait_replica(
        self,
        work: StepWork,
        number: int,
        replica: int,
        claim_key: bytes,
        claim: Claim,
        attempt: Attempt,
        launched: LaunchedAttempt,
        revision: int,
        hedge: float | None,
    ) -> AttemptResult:
        runner = self.runner
        task, ref, step = work.task, work.ref, work.step
        ns, run_id = ref.namespace, ref.run_id
        task.attempt = launched
        task.lost_race = ""
        if replica == 1:
            runner.live_attempts[(ref.name, step.name, number)] = (runner.runtime, launched)
        metrics.attempt_started(runner.runtime.name)
        started = time.monotonic()
        attempt.state = Attempt.STATE_RUNNING
        attempt.handle = launched.handle
        attempt.start_time.CopyFrom(timestamp_of(launched.start_time))
        running_key = runner.keyspace.replica_running(ns, run_id, step.name, number, replica)
        # A held local launch runs its command only once the replica is recorded with its
        # process id (`Runtime.launch`): never a process that its record does not name.
        try:
            recorded = await runner.store.txn(
                [lease_is(claim_key, claim.lease)], [op_put(running_key, attempt.SerializeToString())]
            )
            if not recorded.succeeded:
                raise ClaimLost(f"lost the claim of replica {replica} of step {step.name} of {ref.name}")
        except BaseException:
            runner.runtime.abandon(launched)
            task.attempt = None
            runner.live_attempts.pop((ref.name, step.name, number), None)
            metrics.attempt_ended(runner.runtime.name, None, 0.0)
            raise
        launched.start()
        waiting = asyncio.ensure_future(runner.runtime.wait(launched))
        # The decision's watch starts only if the replica is still running after a moment
        # (most short steps end first); from the revision of the running record, so that a
        # decision made meanwhile is still seen.
        decided: asyncio.Future[str] | None = None
        pending: set[asyncio.Future[object]] = {waiting}  # type: ignore[arg-type]
        deadline = time.monotonic() + hedge if hedge else None
        try:
            if task.cancel_reason:
                await runner.runtime.kill(launched, task.cancel_reason)
            while not waiting.done():
                moment = time.monotonic()
                if deadline is not None and moment >= deadline:
                    deadline = None
                    await self._launch_hedge(work, number)
                    continue
                limits = [deadline - moment] if deadline is not None else []
                if decided is None:
                    limits.append(WATCH_AFTER_SECONDS)
                finished, _ = await asyncio.wait(
                    pending, timeout=min(limits) if limits else None, return_when=asyncio.FIRST_COMPLETED
                )
                if not finished:
                    if decided is None:
                        decided = asyncio.ensure_future(
                            self._watch_round(ns, run_id, step.name, number, revision, decided=True)
                        )
                        pending.add(decided)  # type: ignore[arg-type]
                    continue
                if decided is not None and decided in finished:
                    pending.discard(decided)
                    task.lost_race = str(decided.result()) or "another replica won"
                    await runner.runtime.kill(launched, f"lost the race: {task.lost_race}")
            result = waiting.result()
        except BaseException:
            runner.runtime.abandon(launched)
            metrics.attempt_ended(runner.runtime.name, None, 0.0)
            raise
        finally:
            task.attempt = None
            runner.live_attempts.pop((ref.name, step.name, number), None)
            for future in (waiting, decided):
                if future is not None and not future.done():
                    future.cancel()
            if decided is not None:
                await asyncio.gather(decided, return_exceptions=True)
        metrics.attempt_ended(
            runner.runtime.name, Attempt.State.Name(result.state).removeprefix("STATE_"), time.monotonic() - started
        )
        return result

    # The decision -----------------------------------------------------------------------

    async def _commit_decision(self, work: StepWork, found: Round, decision: Decision, *, holder: bool) -> None:
        """Commits the step from the winning replica: the done record (create-if-absent),
        the cache entry, the `decided` record and the deletion of replica items not yet
        launched, in one transaction; the holder then finishes as after any commit."""
        runner = self.runner
        ks, ref, claim = runner.keyspace, work.ref, work.claim
        ns, run_id, name = ref.namespace, ref.run_id, work.step.name
        winner = decision.winner
        assert winner is not None
        record = work.record
        if not holder:
            kv = await runner.store.get(ks.step(ns, run_id, name))
            record = parse_step_run(kv) if kv is not None else StepRun(step=name, dna=work.dna.digest)
        # A Kubernetes winner's image digest travels too (the plain commit's rule).
        outcome = outcome_of(work, winner, executor=winner.executor)
        outcome.replica = winner.replica
        outcome.replicas.extend(decision.table)
        outcome.replica_decision = decision.reason
        spilled = spill_input_outcomes(outcome)
        if spilled is not None:
            await runner.blobs.put(spilled)
        done = StepRun()
        done.CopyFrom(record)
        done.state = StepRun.STATE_SUCCEEDED
        done.attempts.extend(decision.table)
        del done.replicas[:]
        done.replicas.extend(decision.table)
        done.replica_decision = decision.reason
        done.outcome.CopyFrom(outcome)
        done.end_time.CopyFrom(winner.end_time)
        extra: list[object] = [op_put(ks.replica_decided(ns, run_id, name, found.attempt), decision.reason.encode())]
        extra += [
            op_delete(ks.ready(ns, run_id, replica_item(name, found.attempt, r))) for r in range(2, found.planned + 1)
        ]
        if work.run.options.cache_mode != run_pb2.CACHE_MODE_OFF:
            extra.append(op_put(ks.outcome(ns, work.dna.hex), outcome.SerializeToString()))
        if holder and work.task.in_flight:
            extra.append(op_delete(ks.in_flight(ns, work.task.in_flight)))  # single flight: see cache.py
        commit = await runner._commit_done(ref, done, extra, claim if holder else None)
        if commit.winner is None:
            if holder:
                work.task.in_flight = ""
            log.info("step %s of %s: %s", name, ref.name, decision.reason)
            await index_outcome(runner.store, ks, ns, outcome, work.inputs.digests, work.inputs.input_outcomes)
            if not holder and commit.underived:
                await runner.progress.derive_successors(ref, name)
        if holder:
            await runner.after_commit(ref, done, claim, commit)
