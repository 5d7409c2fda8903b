"""Running one claimed step: inputs, DNA, the cache decision, attempts, the commit.

After this executor claims a step (`weft_executor.scheduler`), `StepRunner.run` does:

1. Read the run, the step's done record and its step record in one snapshot. A done
   record means the step was committed but its successors may not have been derived
   (a crash between commit and derivation): finish that and let go (invariant 3).
2. Resolve every input's content digest (parameters, literals, upstream outputs) and
   compute the DNA (`weft_core.dna`).
3. Decide: reuse the resumed run's outcome (RESUMED), reuse a verified cached outcome
   (HIT, nothing launched; invariant 7), or launch (MISS). The explanation, with the
   DNA components and the reason, goes into the step's records (ExplainStep reads it).
4. Launch attempts through the runtime, recording each in the step record before
   waiting on it; retry failed attempts with backoff up to RetryPolicy.max_attempts
   (attempts LOST with a dead executor do not count, but after MAX_LOST_ATTEMPTS of
   them the step fails: a step that kills its executor is not retried forever).
5. Commit: the done record is created only if absent, with the outcome (and the cache
   entry), in one transaction: the first commit wins and a later finisher is recorded as
   a loser, never overwriting (invariant 2). A final failure commits FAILED and marks
   the downstream steps SKIPPED.
6. Derive successors' readiness, check whether the run is complete, and only then delete
   the ready mark and claim together (`weft_executor.progress`).

Every write that is not create-if-absent is guarded by this executor still holding the
claim (its lease), so an executor that lost its lease never overwrites the executor that
took the step over. Secret values never reach this module: the runtime resolves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import Span, Status, StatusCode

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.blobs import BlobStore
from weft_core.dna import StepDNA, content_digest, step_dna
from weft_core.errors import NotFound, ServiceError, Unavailable
from weft_core.keyspace import Keyspace, ready_time_of
from weft_core.spec import parse_run_name
from weft_core.store import KeyValue, Store, TxnResult, absent, lease_is, op_get, op_put, unchanged_since
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
from weft_executor.progress import (
    COMMITTED_STEP_STATES,
    TERMINAL_RUN_STATES,
    RunEnded,
    RunProgress,
    RunRef,
    RunRefs,
    now,
    parse_run,
    parse_step_run,
)
from weft_executor.runtime import AttemptResult, AttemptSetupError, AttemptSpec, LaunchedAttempt, Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")
Run = run_pb2.Run
StepRun = run_pb2.StepRun
Attempt = run_pb2.Attempt
Explanation = run_pb2.StepExplanation

#: RetryPolicy defaults (see the proto's comments).
DEFAULT_BACKOFF = 1.0
DEFAULT_BACKOFF_FACTOR = 2.0
DEFAULT_MAX_BACKOFF = 300.0
#: How long a step claimed while its run is still PENDING (an executor is deriving the
#: run's root readiness) waits for RUNNING before giving its claim back, and how often it
#: looks. Waiting a little spares a claim/release round trip per step of a wide fan-out.
PENDING_WAIT_SECONDS = 2.0
#: Attempts LOST with their executor (it died or lost its lease while they ran) do not
#: count against RetryPolicy.max_attempts, but a step that kills every executor running
#: it must not be retried forever: after this many the step fails.
MAX_LOST_ATTEMPTS = 3
PENDING_POLL_SECONDS = 0.2
#: Runs whose record revision a runner remembers (a cache; see `StepRunner._saw_run`).
RUN_REVISIONS_KEPT = 1024


class _NotAdopted(Exception):
    """The orphaned attempt could not be re-attached and no new attempt may be launched."""


class ClaimLost(Exception):
    """This executor no longer holds the step's claim: stop without writing anything."""


@dataclass(frozen=True)
class Claim:
    """A step this executor claimed, and the lease its claim is bound to."""

    namespace: str
    run_id: str
    step: str
    lease: int


@dataclass
class StepTask:
    """The state of one claimed step while this executor works on it.

    Attributes:
        claim: What was claimed.
        cancel_reason: Set when the step's run is being cancelled.
        cancelled: Set together with `cancel_reason`; wakes a retry backoff.
        attempt: The attempt running now, if any (killed on cancel).
        snapshot: The step's records as the claim read them (used once; a retry re-reads).
    """

    claim: Claim
    cancel_reason: str = ""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    attempt: LaunchedAttempt | None = None
    snapshot: StepSnapshot | None = None


@dataclass(frozen=True)
class StepSnapshot:
    """The run record, the step's done record and its step record, read in one revision
    (by the claim transaction itself, which saves a round trip per step)."""

    run: KeyValue | None
    done: KeyValue | None
    step: KeyValue | None
    ready: KeyValue | None = None  # its value is when the step became ready


@dataclass(frozen=True)
class CacheDecision:
    """What to do with a step whose DNA is known: reuse `outcome`, or launch (None)."""

    explanation: Explanation
    outcome: run_pb2.Outcome | None = None
    reused_from_run: str = ""


@dataclass(frozen=True)
class Commit:
    """What a commit transaction found: the done record that won if it was not ours, else
    the run's done count at our commit (None when unknown)."""

    winner: StepRun | None = None
    done_count: int | None = None


@dataclass(frozen=True)
class ResolvedInputs:
    """Every input's content digest, the upstream outcomes they came from, and the
    values (parameters, literals) that must be in the artifact store before a launch."""

    digests: Mapping[str, str]
    input_outcomes: Mapping[str, str]
    values: Mapping[str, bytes]


def env_suffix(name: str) -> str:
    """`input-path` → `INPUT_PATH`: a name as the tail of an environment variable."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def _duration_seconds(duration: object, default: float) -> float:
    seconds = getattr(duration, "seconds", 0) + getattr(duration, "nanos", 0) / 1e9
    return seconds if seconds > 0 else default


def backoff_seconds(retry: pipeline_pb2.RetryPolicy, failed_attempts: int) -> float:
    """The wait before the attempt after `failed_attempts` failures (RetryPolicy defaults)."""
    base = _duration_seconds(retry.backoff, DEFAULT_BACKOFF) if retry.HasField("backoff") else DEFAULT_BACKOFF
    factor = retry.backoff_factor or DEFAULT_BACKOFF_FACTOR
    ceiling = DEFAULT_MAX_BACKOFF
    if retry.HasField("max_backoff"):
        ceiling = _duration_seconds(retry.max_backoff, DEFAULT_MAX_BACKOFF)
    return float(min(ceiling, base * factor ** max(0, failed_attempts - 1)))


async def until_written(write: Callable[[], Awaitable[T]], what: str) -> T:
    """Runs an etcd write until etcd answers, however long it is away.

    A finished attempt must not be thrown away because etcd restarted at the wrong moment
    (the step would run again). Waiting is bounded by the lease: if etcd stays away longer
    than the TTL, the keep-alive abandons this step and cancels the wait.
    """
    delay = 0.1
    while True:
        try:
            return await write()
        except Unavailable as error:
            log.warning("%s: %s; retrying in %.1fs", what, error.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _describe_duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _timestamp(moment: datetime) -> Timestamp:
    stamp = now()
    stamp.FromDatetime(moment)
    return stamp


def claim_parts(claim: Claim) -> tuple[str, str, str]:
    return claim.namespace, claim.run_id, claim.step


class StepRunner:
    """Executes claimed steps for one executor (see the module docstring).

    Args:
        executor_id: This executor's id, recorded in attempts and outcomes.
        store: etcd.
        keyspace: Where weft's keys live.
        blobs: The artifact store (cache verification, literal and parameter blobs).
        run_refs: Reads the pipeline version a run names (cached by digest).
        progress: Run-level transitions.
        runtime: Launches attempts.
        is_cancelling: Whether this executor has seen the run enter CANCELLING.
        live_attempts: Attempts running now, by (run name, step, attempt), for live logs.
    """

    def __init__(
        self,
        *,
        executor_id: str,
        store: Store,
        keyspace: Keyspace,
        blobs: BlobStore,
        run_refs: RunRefs,
        progress: RunProgress,
        runtime: Runtime,
        is_cancelling: Callable[[str, str], bool],
        live_attempts: dict[tuple[str, str, int], tuple[Runtime, LaunchedAttempt]],
    ) -> None:
        self.executor_id = executor_id
        self.store = store
        self.keyspace = keyspace
        self.blobs = blobs
        self.run_refs = run_refs
        self.progress = progress
        self.runtime = runtime
        self.is_cancelling = is_cancelling
        self.live_attempts = live_attempts
        #: Processes launched by this runner, for tests and the benchmark.
        self.launches = 0
        # The run record's last mod revision seen, per run: commits are guarded on it so
        # that nothing is committed into a run that turned terminal. A stale value costs
        # one more round trip, never a wrong commit.
        self._run_revisions: OrderedDict[tuple[str, str], int] = OrderedDict()

    # Entry point ----------------------------------------------------------------------

    async def run(self, task: StepTask) -> None:
        """Works on a claimed step until it is committed, failed, cancelled or let go.

        Raises:
            ClaimLost: The claim vanished; nothing more was written.
        """
        claim = task.claim
        snapshot, task.snapshot = task.snapshot or await self.read_snapshot(claim), None
        waited = 0.0
        while snapshot.run is not None and parse_run(snapshot.run).state == Run.STATE_PENDING:
            # Its roots are being marked ready and it may still be cancelled straight to
            # CANCELLED: nothing may run before it is RUNNING. Keep the ready mark.
            if waited >= PENDING_WAIT_SECONDS:
                await self.progress.release_claim(claim.namespace, claim.run_id, claim.step, claim.lease)
                return
            await asyncio.sleep(PENDING_POLL_SECONDS)
            waited += PENDING_POLL_SECONDS
            snapshot = await self.read_snapshot(claim)
        if snapshot.run is None:
            log.warning("ready mark of %s/%s/%s has no run record; dropping it", *claim_parts(claim))
            await self._drop_mark(claim)
            return
        run = parse_run(snapshot.run)
        if run.state in TERMINAL_RUN_STATES:
            await self._drop_mark(claim)
            self.progress.forget(claim.namespace, claim.run_id)
            return
        self._saw_run(claim.namespace, claim.run_id, snapshot.run.mod_revision)
        try:
            await self._run_claimed(task, snapshot, run)
        except RunEnded as ended:
            # A cancel of a PENDING run (or a failure) ended the run meanwhile: launch and
            # derive nothing more, and let go of the step.
            log.info("%s; dropping the step", ended)
            await self._drop_mark(claim)
            self.progress.forget(claim.namespace, claim.run_id)

    def _saw_run(self, namespace: str, run_id: str, revision: int) -> None:
        key = (namespace, run_id)
        if revision > self._run_revisions.get(key, 0):
            self._run_revisions[key] = revision
        self._run_revisions.move_to_end(key)
        while len(self._run_revisions) > RUN_REVISIONS_KEPT:
            self._run_revisions.popitem(last=False)

    async def _run_claimed(self, task: StepTask, snapshot: StepSnapshot, run: Run) -> None:
        claim = task.claim
        try:
            ref = await self.run_refs.of(claim.namespace, claim.run_id, run)
        except NotFound as error:
            await self.progress.fail_run(claim.namespace, claim.run_id, f"cannot run: {error.message}")
            await self._drop_mark(claim)
            return
        if claim.step not in ref.steps:
            log.error("run %s has no step %r in its pipeline version; dropping its ready mark", ref.name, claim.step)
            await self._drop_mark(claim)
            return
        if snapshot.done is not None:
            await self.after_done(ref, parse_step_run(snapshot.done), claim)
            return
        record = parse_step_run(snapshot.step) if snapshot.step is not None else StepRun(step=claim.step)
        if not record.HasField("ready_time") and snapshot.ready is not None:
            record.ready_time.CopyFrom(ready_time_of(snapshot.ready.value))
        if run.state == Run.STATE_CANCELLING:
            await self._end_orphaned_attempts(ref, run, record, run.message)
            await self._commit_cancelled(ref, record, claim, run.message)
            return
        step = ref.step(claim.step)
        attributes = {ATTR_RUN: ref.name, ATTR_STEP: claim.step}
        with span_in_run_trace("weft.step", run.traceparent, attributes) as span:
            await self._run_step(task, ref, run, step, record, span)

    def snapshot_reads(self, claim: Claim) -> list[object]:
        """The reads of a StepSnapshot, to put into a transaction (the claim's)."""
        ks = self.keyspace
        return [
            op_get(ks.run(claim.namespace, claim.run_id)),
            op_get(ks.done(claim.namespace, claim.run_id, claim.step)),
            op_get(ks.step(claim.namespace, claim.run_id, claim.step)),
            op_get(ks.ready(claim.namespace, claim.run_id, claim.step)),
        ]

    @staticmethod
    def snapshot_of(result: TxnResult, first: int) -> StepSnapshot:
        """The StepSnapshot read by `snapshot_reads` placed at index `first` of a transaction."""
        found = [result.range_kvs(first + i) for i in range(4)]
        run, done, step, ready = (kvs[0] if kvs else None for kvs in found)
        return StepSnapshot(run, done, step, ready)

    async def read_snapshot(self, claim: Claim) -> StepSnapshot:
        return self.snapshot_of(await self.store.txn([], self.snapshot_reads(claim)), 0)

    async def _drop_mark(self, claim: Claim) -> None:
        await self.progress.release(claim.namespace, claim.run_id, claim.step, claim.lease)

    async def _run_step(
        self, task: StepTask, ref: RunRef, run: Run, step: pipeline_pb2.Step, record: StepRun, span: Span
    ) -> None:
        claim = task.claim
        inputs = await self._resolve_inputs(ref, run, step)
        if inputs is None:
            await self._drop_mark(claim)
            return
        dna = step_dna(step, inputs.digests)
        span.set_attribute(ATTR_DNA, dna.digest)
        # A pod outlives its executor: the attempt it runs may be re-attached (adopted)
        # below instead of being lost; `_run_attempts` tries before launching anew.
        orphan = next((a for a in reversed(record.attempts) if a.state == Attempt.STATE_RUNNING), None)
        self._abandon_running_attempts(record)
        with tracer().start_as_current_span("weft.cache_lookup", attributes={ATTR_DNA: dna.digest}) as lookup:
            decision = await self._decide(ref, run, step, dna)
            lookup.set_attribute("weft.cache.decision", Explanation.Decision.Name(decision.explanation.decision))
        if decision.outcome is not None:
            await self._commit_reuse(ref, record, claim, dna, decision)
            return
        await self._run_attempts(task, ref, run, step, record, dna, inputs, decision.explanation, orphan)

    # Inputs and DNA -------------------------------------------------------------------

    async def _resolve_inputs(self, ref: RunRef, run: Run, step: pipeline_pb2.Step) -> ResolvedInputs | None:
        upstream = sorted({i.step_output.step for i in step.inputs if i.WhichOneof("source") == "step_output"})
        keys = {name: self.keyspace.done(ref.namespace, ref.run_id, name) for name in upstream}
        found = await self.store.get_many(list(keys.values())) if keys else {}
        done = {name: parse_step_run(found[key]) for name, key in keys.items() if key in found}
        digests: dict[str, str] = {}
        input_outcomes: dict[str, str] = {}
        values: dict[str, bytes] = {}
        for item in step.inputs:
            source = item.WhichOneof("source")
            if source == "parameter":
                value = run.parameters.get(item.parameter, "").encode()
                digests[item.name] = run.parameter_digests.get(item.parameter) or content_digest(value)
                values[digests[item.name]] = value
            elif source == "literal":
                value = item.literal.encode()
                digests[item.name] = content_digest(value)
                values[digests[item.name]] = value
            elif source == "step_output":
                ref_out = item.step_output
                upstream_record = done.get(ref_out.step)
                if upstream_record is None or upstream_record.state not in COMMITTED_STEP_STATES:
                    log.error(
                        "step %s of %s is ready but upstream %s has no committed outcome; dropping the mark",
                        step.name,
                        ref.name,
                        ref_out.step,
                    )
                    return None
                digest = upstream_record.outcome.outputs.get(ref_out.output)
                if not digest:
                    log.error("upstream %s of %s committed no output %r", ref_out.step, ref.name, ref_out.output)
                    return None
                digests[item.name] = digest
                input_outcomes[item.name] = upstream_record.outcome.dna
        return ResolvedInputs(digests, input_outcomes, values)

    # The cache decision ---------------------------------------------------------------

    async def _missing_blob(self, outputs: Mapping[str, str]) -> str:
        """The first output digest that the artifact store no longer has, or ""."""
        digests = sorted(set(outputs.values()))
        found = await asyncio.gather(*(self.blobs.stat(d) for d in digests))
        return next((d for d, info in zip(digests, found, strict=True) if info is None), "")

    async def _decide(self, ref: RunRef, run: Run, step: pipeline_pb2.Step, dna: StepDNA) -> CacheDecision:
        def explanation(
            decision: Explanation.Decision, reason: str, outcome: run_pb2.Outcome | None = None
        ) -> Explanation:
            result = Explanation(dna=dna.digest, components=dna.as_pb(), decision=decision, reason=reason)
            if outcome is not None:
                result.outcome.CopyFrom(outcome)
            return result

        resume_note = ""
        if run.resumed_from:
            reused = await self._resumable_outcome(run.resumed_from, step.name, dna)
            if isinstance(reused, run_pb2.Outcome):
                reason = f"resumed: outcome of {run.resumed_from} step {step.name} has the same DNA"
                resumed = explanation(Explanation.DECISION_RESUMED, reason, reused)
                return CacheDecision(resumed, reused, run.resumed_from)
            resume_note = f" (not resumed: {reused})"

        mode = run.options.cache_mode
        enabled = not step.cache.HasField("enabled") or step.cache.enabled
        if mode == run_pb2.CACHE_MODE_REFRESH:
            return CacheDecision(explanation(Explanation.DECISION_MISS, "miss: cache mode REFRESH" + resume_note))
        if mode == run_pb2.CACHE_MODE_OFF:
            return CacheDecision(explanation(Explanation.DECISION_MISS, "miss: cache mode OFF" + resume_note))
        if not enabled:
            return CacheDecision(explanation(Explanation.DECISION_MISS, "miss: cache disabled for step" + resume_note))
        kv = await self.store.get(self.keyspace.outcome(ref.namespace, dna.hex))
        if kv is None:
            return CacheDecision(explanation(Explanation.DECISION_MISS, "miss: no outcome with this DNA" + resume_note))
        outcome = run_pb2.Outcome()
        outcome.ParseFromString(kv.value)
        if step.cache.HasField("max_age"):
            max_age = _duration_seconds(step.cache.max_age, 0.0)
            age = (datetime.now(UTC) - outcome.commit_time.ToDatetime(tzinfo=UTC)).total_seconds()
            if max_age > 0 and age > max_age:
                reason = f"miss: outcome older than max_age {_describe_duration(max_age)}"
                return CacheDecision(explanation(Explanation.DECISION_MISS, reason + resume_note, outcome))
        missing = await self._missing_blob(outcome.outputs)
        if missing:
            reason = f"miss: outcome blob {missing} is gone"
            return CacheDecision(explanation(Explanation.DECISION_MISS, reason + resume_note, outcome))
        reason = f"hit: outcome of {outcome.run} step {outcome.step}"
        return CacheDecision(explanation(Explanation.DECISION_HIT, reason, outcome), outcome, outcome.run)

    async def _resumable_outcome(self, resumed_from: str, step: str, dna: StepDNA) -> run_pb2.Outcome | str:
        """The resumed run's committed outcome of `step` if its DNA matches and its blobs
        exist, else why not."""
        try:
            old_ns, old_run = parse_run_name(resumed_from, "run.resumed_from")
        except ServiceError as error:
            return error.message
        kv = await self.store.get(self.keyspace.done(old_ns, old_run, step))
        if kv is None:
            return f"{resumed_from} has no outcome of step {step}"
        old = parse_step_run(kv)
        if old.state not in COMMITTED_STEP_STATES:
            return f"step {step} was {StepRun.State.Name(old.state).removeprefix('STATE_')} in {resumed_from}"
        if old.outcome.dna != dna.digest:
            return f"the DNA of step {step} changed since {resumed_from}"
        missing = await self._missing_blob(old.outcome.outputs)
        if missing:
            return f"outcome blob {missing} is gone"
        return old.outcome

    # Commits --------------------------------------------------------------------------

    async def _commit_done(self, ref: RunRef, record: StepRun, extra: list[object] | None = None) -> Commit:
        """Creates the done record (and writes the step record and `extra`) if absent.

        The same transaction counts the run's done records, so the completion check needs
        no read of its own. (The ready mark and claim are not deleted here even for a step
        without successors: a crash before the completion check must leave the mark for
        another executor to finish the run.)
        """
        ks = self.keyspace
        done_key = ks.done(ref.namespace, ref.run_id, record.step)
        run_key = ks.run(ref.namespace, ref.run_id)
        data = record.SerializeToString()
        writes = [op_put(done_key, data), op_put(ks.step(ref.namespace, ref.run_id, record.step), data), *(extra or [])]
        counted = len(writes)
        writes.append(op_get(ks.done_prefix(ref.namespace, ref.run_id), prefix=True, count_only=True))
        while True:
            revision = self._run_revisions.get((ref.namespace, ref.run_id), 0)
            compares = [absent(done_key), unchanged_since(run_key, revision)]
            result = await until_written(
                functools.partial(self.store.txn, compares, writes, [op_get(done_key), op_get(run_key)]),
                f"committing step {record.step} of {ref.name}",
            )
            if result.succeeded:
                return Commit(done_count=int(result.responses[counted].response_range.count))
            found = result.range_kvs(0)
            if found:
                winner = parse_step_run(found[0])
                if winner == record:
                    # Our own commit, applied by an earlier try whose answer was lost.
                    return Commit()
                return Commit(winner=winner)
            # The run record changed since we read it (a failed step, a cancel): commit into
            # it only while it is not terminal.
            runs = result.range_kvs(1)
            if not runs or parse_run(runs[0]).state in TERMINAL_RUN_STATES:
                raise RunEnded(f"run {ref.name} ended before step {record.step} could commit")
            self._saw_run(ref.namespace, ref.run_id, runs[0].mod_revision)

    async def _commit_reuse(
        self, ref: RunRef, record: StepRun, claim: Claim, dna: StepDNA, decision: CacheDecision
    ) -> None:
        assert decision.outcome is not None
        done = StepRun()
        done.CopyFrom(record)
        done.state = StepRun.STATE_CACHED
        done.dna = dna.digest
        done.outcome.CopyFrom(decision.outcome)
        done.explanation.CopyFrom(decision.explanation)
        done.reused_from_run = decision.reused_from_run
        done.executor = self.executor_id
        done.end_time.CopyFrom(now())
        with tracer().start_as_current_span("weft.commit", attributes={"weft.state": "CACHED"}):
            commit = await self._commit_done(ref, done)
        await self.after_commit(ref, done, claim, commit)

    async def _commit_cancelled(self, ref: RunRef, record: StepRun, claim: Claim, reason: str) -> None:
        done = StepRun()
        done.CopyFrom(record)
        done.state = StepRun.STATE_CANCELLED
        done.message = f"run cancelled{': ' + reason if reason else ''}"
        done.end_time.CopyFrom(now())
        await self._commit_done(ref, done)
        await self.progress.release(ref.namespace, ref.run_id, claim.step, claim.lease)
        await self.progress.finalize_cancel(ref)

    async def _put_step_record(self, ref: RunRef, record: StepRun, claim: Claim) -> None:
        """Writes the step record if this executor still holds the claim, else ClaimLost."""
        key = self.keyspace.step(ref.namespace, ref.run_id, record.step)
        claim_key = self.keyspace.claim(ref.namespace, ref.run_id, record.step)
        data = record.SerializeToString()
        result = await until_written(
            lambda: self.store.txn([lease_is(claim_key, claim.lease)], [op_put(key, data)]),
            f"recording step {record.step} of {ref.name}",
        )
        if not result.succeeded:
            raise ClaimLost(f"lost the claim of step {record.step} of {ref.name}")

    async def after_commit(self, ref: RunRef, done: StepRun, claim: Claim, commit: Commit) -> None:
        """What follows a commit attempt, with the done count the commit read if it won."""
        if commit.winner is not None:
            await self.after_done(ref, commit.winner, claim)
        else:
            await self.after_done(ref, done, claim, done_count=commit.done_count)

    async def after_done(self, ref: RunRef, done: StepRun, claim: Claim, *, done_count: int | None = None) -> None:
        """What follows a step's terminal record: successors or skips, completion, release."""
        if done.state in COMMITTED_STEP_STATES:
            await self.progress.derive_successors(ref, done.step)
        elif done.state == StepRun.STATE_FAILED:
            await self.progress.skip_downstream(ref, done.step)
            done_count = None  # the skips added done records after the count
        finished = await self.progress.check_completion(ref, done_count)
        # The ready mark goes last: until here a crash leaves it for another executor to redo.
        await self.progress.release(ref.namespace, ref.run_id, done.step, claim.lease)
        if finished:
            self.progress.forget(ref.namespace, ref.run_id)
        if self.is_cancelling(ref.namespace, ref.run_id):
            await self.progress.finalize_cancel(ref)

    # Attempts -------------------------------------------------------------------------

    async def _end_orphaned_attempts(self, ref: RunRef, run: Run, record: StepRun, reason: str) -> None:
        """Ends the attempts a dead executor left RUNNING in a step being cancelled.

        A pod outlives its executor: it is re-attached and stopped, so its log is stored
        and the pod deleted; an attempt nothing can re-attach to (a local process died with
        its executor) is recorded LOST. Either way no attempt stays RUNNING in the
        cancelled step, and ReadLogs answers from what was stored.
        """
        message = f"run cancelled{': ' + reason if reason else ''}"
        step = ref.step(record.step)
        for attempt in record.attempts:
            if attempt.state != Attempt.STATE_RUNNING:
                continue
            spec = AttemptSpec(
                namespace=ref.namespace,
                run=ref.run_id,
                step=step.name,
                attempt=attempt.number,
                image=step.container.image,
                command=(*step.container.command, *step.container.args),
                working_dir=step.container.working_dir,
                env={},
                secret_env={},
                inputs={},
                outputs=tuple(o.name for o in step.outputs),
                timeout=None,
                dna=record.dna,
            )
            launched = await self.runtime.adopt(spec, attempt.handle) if attempt.handle else None
            if launched is None:
                attempt.state = Attempt.STATE_LOST
                attempt.message = f"abandoned: executor {attempt.executor or '?'} died; {message}"
                attempt.end_time.CopyFrom(now())
                continue
            await self.runtime.kill(launched, message)
            result = await self.runtime.wait(launched)
            await self.runtime.release(launched)
            attempt.state = result.state
            attempt.message = result.message
            attempt.exit_code = result.exit_code
            attempt.stdout_digest = result.stdout_digest
            attempt.stderr_digest = result.stderr_digest
            attempt.end_time.CopyFrom(_timestamp(result.end_time))
            log.info("step %s of %s: stopped attempt %d left by a dead executor", step.name, ref.name, attempt.number)

    def _abandon_running_attempts(self, record: StepRun) -> None:
        # We hold the claim, so whoever launched a still-RUNNING attempt lost it: its
        # process died with its executor (local) or was not re-attached. It does not
        # count against the retry budget.
        for attempt in record.attempts:
            if attempt.state == Attempt.STATE_RUNNING:
                attempt.state = Attempt.STATE_LOST
                attempt.message = (
                    f"abandoned: executor {attempt.executor or '?'} died or lost its claim; "
                    f"executor {self.executor_id} took the step over"
                )
                attempt.end_time.CopyFrom(now())

    def _attempt_spec(
        self,
        ref: RunRef,
        run: Run,
        step: pipeline_pb2.Step,
        number: int,
        dna: StepDNA,
        inputs: ResolvedInputs,
        traceparent: str,
    ) -> AttemptSpec:
        container = step.container
        env: dict[str, str] = {}
        secret_env: dict[str, tuple[str, str]] = {}
        for var in container.env:
            if var.WhichOneof("source") == "secret":
                secret_env[var.name] = (var.secret.name, var.secret.key)
            else:
                env[var.name] = var.value
        # weft's own variables win over the step's: the step must not redirect them.
        # Only parameters the step reads as inputs: their digests are in its DNA, so a new
        # value is a cache miss. Any other parameter could change its result unseen.
        for item in step.inputs:
            if item.WhichOneof("source") == "parameter":
                env[f"WEFT_PARAM_{env_suffix(item.parameter)}"] = run.parameters.get(item.parameter, "")
        env.update(
            {
                "WEFT_NAMESPACE": ref.namespace,
                "WEFT_RUN": ref.run_id,
                "WEFT_STEP": step.name,
                "WEFT_ATTEMPT": str(number),
                "TRACEPARENT": traceparent,
            }
        )
        timeout = _duration_seconds(step.timeout, 0.0) if step.HasField("timeout") else 0.0
        return AttemptSpec(
            namespace=ref.namespace,
            run=ref.run_id,
            step=step.name,
            attempt=number,
            image=container.image,
            command=(*container.command, *container.args),
            working_dir=container.working_dir,
            env=env,
            secret_env=secret_env,
            inputs=dict(inputs.digests),
            outputs=tuple(o.name for o in step.outputs),
            timeout=timeout or None,
            dna=dna.digest,
            resources=container.resources,
            security=container.security,
        )

    async def _run_attempts(
        self,
        task: StepTask,
        ref: RunRef,
        run: Run,
        step: pipeline_pb2.Step,
        record: StepRun,
        dna: StepDNA,
        inputs: ResolvedInputs,
        explanation: Explanation,
        orphan: Attempt | None = None,
    ) -> None:
        claim = task.claim
        record.dna = dna.digest
        record.explanation.CopyFrom(explanation)
        record.executor = self.executor_id
        max_attempts = max(1, step.retry.max_attempts)
        failed = sum(1 for a in record.attempts if a.state == Attempt.STATE_FAILED)
        lost = sum(1 for a in record.attempts if a.state == Attempt.STATE_LOST)
        # Past the cap only re-attaching to the orphan (a pod outlives its executor) is allowed.
        adopt_only = lost >= MAX_LOST_ATTEMPTS
        if adopt_only and orphan is None:
            await self._commit_lost_too_often(ref, record, claim, failed, max_attempts, lost)
            return
        if inputs.values:
            for value in inputs.values.values():
                await self.blobs.put(value)
        launched: LaunchedAttempt | None = None
        while failed < max_attempts:
            if task.cancel_reason:
                await self._commit_cancelled(ref, record, claim, task.cancel_reason)
                return
            number = len(record.attempts) + 1
            try:
                attempt, result, launched = await self._run_attempt(
                    task, ref, run, step, record, number, dna, inputs, orphan, adopt_only=adopt_only
                )
            except _NotAdopted:
                await self._commit_lost_too_often(ref, record, claim, failed, max_attempts, lost)
                return
            adopt_only = False
            orphan = None  # only the attempt found running when the step was taken over
            if result.state == Attempt.STATE_SUCCEEDED:
                await self._commit_success(ref, run, record, attempt, dna, inputs, claim)
                await self._forget_attempt(ref, step.name, number, launched)
                return
            if result.state == Attempt.STATE_CANCELLED:
                await self._commit_cancelled(ref, record, claim, task.cancel_reason)
                await self._forget_attempt(ref, step.name, number, launched)
                return
            failed += 1
            if failed >= max_attempts:
                break
            record.state = StepRun.STATE_RUNNING
            await self._put_step_record(ref, record, claim)
            await self._forget_attempt(ref, step.name, number, launched)
            launched = None
            delay = backoff_seconds(step.retry, failed)
            first_line = result.message.splitlines()[0] if result.message else "failed"
            log.info(
                "step %s of %s: attempt %d failed (%s); retrying in %.1fs",
                step.name,
                ref.name,
                number,
                first_line,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task.cancelled.wait(), delay)
        await self._commit_failure(ref, record, claim, failed, max_attempts)
        if launched is not None:
            await self._forget_attempt(ref, step.name, launched.spec.attempt, launched)

    async def _run_attempt(
        self,
        task: StepTask,
        ref: RunRef,
        run: Run,
        step: pipeline_pb2.Step,
        record: StepRun,
        number: int,
        dna: StepDNA,
        inputs: ResolvedInputs,
        orphan: Attempt | None = None,
        *,
        adopt_only: bool = False,
    ) -> tuple[Attempt, AttemptResult, LaunchedAttempt | None]:
        """Launches attempt `number`, records it, waits for it; returns it with its result.

        With `orphan` (an attempt a dead executor left RUNNING), first asks the runtime to
        re-attach to it (a pod keeps running without its executor, invariant 4); the attempt
        keeps its number and is waited on as if launched here. Otherwise `number` is launched.
        """
        attributes: dict[str, str | int] = {
            ATTR_RUN: ref.name,
            ATTR_STEP: step.name,
            ATTR_ATTEMPT: number,
            ATTR_DNA: dna.digest,
        }
        with tracer().start_as_current_span("weft.attempt", attributes=attributes) as span:
            traceparent = traceparent_of(span) if span.is_recording() else child_traceparent(run.traceparent)
            launched: LaunchedAttempt | None = None
            if orphan is not None:
                spec = self._attempt_spec(ref, run, step, orphan.number, dna, inputs, traceparent)
                launched = await self.runtime.adopt(spec, orphan.handle)
            if orphan is not None and launched is not None:
                number, attempt = orphan.number, orphan
                span.set_attribute(ATTR_ATTEMPT, number)
                span.set_attribute("weft.adopted", True)
                attempt.ClearField("message")
                attempt.ClearField("end_time")
                attempt.executor = self.executor_id  # its live logs are served here now
                log.info("step %s of %s: re-attached to attempt %d (%s)", step.name, ref.name, number, orphan.handle)
            else:
                if adopt_only:
                    raise _NotAdopted
                spec = self._attempt_spec(ref, run, step, number, dna, inputs, traceparent)
                attempt = record.attempts.add(number=number, executor=self.executor_id)
                attempt.start_time.CopyFrom(now())
                try:
                    launched = await self.runtime.launch(spec)
                except AttemptSetupError as error:
                    attempt.state = Attempt.STATE_FAILED
                    attempt.message = str(error)
                    attempt.end_time.CopyFrom(now())
                    span.set_status(Status(StatusCode.ERROR, attempt.message))
                    result = AttemptResult(Attempt.STATE_FAILED, str(error), 0, {}, "", "", datetime.now(UTC))
                    return attempt, result, None
                self.launches += 1
            task.attempt = launched
            self.live_attempts[(ref.name, step.name, number)] = (self.runtime, launched)
            attempt.state = Attempt.STATE_RUNNING
            attempt.handle = launched.handle
            attempt.start_time.CopyFrom(_timestamp(launched.start_time))
            record.state = StepRun.STATE_RUNNING
            try:
                if task.cancel_reason:
                    await self.runtime.kill(launched, task.cancel_reason)
                await self._put_step_record(ref, record, task.claim)
                result = await self.runtime.wait(launched)
            except BaseException:
                # Lost claim, cancelled task, etcd error: the attempt has no recorded end, and
                # whoever works on the step next marks it LOST and starts another.
                self.runtime.abandon(launched)
                self.live_attempts.pop((ref.name, step.name, number), None)
                task.attempt = None
                raise
            task.attempt = None
            attempt.state = result.state
            attempt.message = result.message
            attempt.exit_code = result.exit_code
            attempt.stdout_digest = result.stdout_digest
            attempt.stderr_digest = result.stderr_digest
            attempt.output_digests.update(result.output_digests)
            attempt.end_time.CopyFrom(_timestamp(result.end_time))
            if result.state != Attempt.STATE_SUCCEEDED:
                span.set_status(Status(StatusCode.ERROR, result.message.splitlines()[0] if result.message else ""))
            return attempt, result, launched

    async def _forget_attempt(self, ref: RunRef, step: str, number: int, launched: LaunchedAttempt | None) -> None:
        # Only once the step record holds the log digests: until then ReadLogs needs us.
        self.live_attempts.pop((ref.name, step, number), None)
        if launched is not None:
            await self.runtime.release(launched)

    async def _commit_success(
        self,
        ref: RunRef,
        run: Run,
        record: StepRun,
        attempt: Attempt,
        dna: StepDNA,
        inputs: ResolvedInputs,
        claim: Claim,
    ) -> None:
        outcome = run_pb2.Outcome(
            dna=dna.digest,
            outputs=dict(attempt.output_digests),
            run=ref.name,
            step=record.step,
            attempt=attempt.number,
            executor=self.executor_id,
            handle=attempt.handle,
            input_outcomes=dict(inputs.input_outcomes),
        )
        outcome.start_time.CopyFrom(attempt.start_time)
        outcome.end_time.CopyFrom(attempt.end_time)
        outcome.commit_time.CopyFrom(now())
        done = StepRun()
        done.CopyFrom(record)
        done.state = StepRun.STATE_SUCCEEDED
        done.outcome.CopyFrom(outcome)
        done.end_time.CopyFrom(attempt.end_time)
        extra: list[object] = []
        if run.options.cache_mode != run_pb2.CACHE_MODE_OFF:
            extra.append(op_put(self.keyspace.outcome(ref.namespace, dna.hex), outcome.SerializeToString()))
        with tracer().start_as_current_span("weft.commit", attributes={"weft.state": "SUCCEEDED"}):
            commit = await self._commit_done(ref, done, extra)
        if commit.winner is not None:
            await self._record_loser(ref, commit.winner, attempt)
        await self.after_commit(ref, done, claim, commit)

    async def _record_loser(self, ref: RunRef, winner: StepRun, attempt: Attempt) -> None:
        """Keeps a finished attempt that lost the commit race in the step record."""
        by = f" by attempt {winner.outcome.attempt} on executor {winner.outcome.executor}" if winner.outcome.dna else ""
        state = StepRun.State.Name(winner.state).removeprefix("STATE_")
        attempt.message = (
            f"lost the commit: step {winner.step} was already committed ({state}{by}); "
            "this attempt's outputs were not used"
        )
        loser = StepRun()
        loser.CopyFrom(winner)
        loser.attempts.append(attempt)
        await self.store.put(self.keyspace.step(ref.namespace, ref.run_id, winner.step), loser.SerializeToString())
        log.info("step %s of %s: %s", winner.step, ref.name, attempt.message)

    async def _commit_lost_too_often(
        self, ref: RunRef, record: StepRun, claim: Claim, failed: int, max_attempts: int, lost: int
    ) -> None:
        message = f"executor died {lost} times running this step (its attempts were lost with their executor)"
        log.warning("step %s of %s: %s; failing it", record.step, ref.name, message)
        await self._commit_failure(ref, record, claim, failed, max_attempts, message=message)

    async def _commit_failure(
        self, ref: RunRef, record: StepRun, claim: Claim, failed: int, max_attempts: int, *, message: str = ""
    ) -> None:
        last = next((a for a in reversed(record.attempts) if a.state == Attempt.STATE_FAILED), None)
        reason = last.message if last is not None else "failed"
        done = StepRun()
        done.CopyFrom(record)
        done.state = StepRun.STATE_FAILED
        done.message = message or (
            reason if max_attempts == 1 else f"failed {failed} of {max_attempts} attempts, the last with: {reason}"
        )
        done.end_time.CopyFrom(now())
        with tracer().start_as_current_span("weft.commit", attributes={"weft.state": "FAILED"}):
            winner = await until_written(
                lambda: self.progress.commit_failure(ref, done), f"committing the failure of {record.step}"
            )
            if winner == done:
                winner = None  # our own commit, applied by an earlier try whose answer was lost
        if winner is not None and last is not None:
            await self._record_loser(ref, winner, last)
        await self.after_done(ref, winner or done, claim)
