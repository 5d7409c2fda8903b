"""Running one claimed step: inputs, DNA, the cache decision, attempts, the commit.

After this executor claims a step (`weft_executor.scheduler`), `StepRunner.run` does:

1. Take the run's summary, the step's done record and its step record from the claim's
   own snapshot (the run's parameters are read once per run). A done record means the
   step was committed but its successors may not have been derived (a crash between
   commit and derivation): finish that and let go (invariant 3).
2. Resolve every input's content digest (parameters, literals, upstream outputs) and
   compute the DNA (`weft_core.dna`); an input that cannot be resolved fails the step.
   From here a `StepWork` carries the step through the rest.
3. Decide (`weft_executor.cache`): reuse the resumed run's outcome (RESUMED), reuse a
   verified cached outcome (HIT, nothing launched; invariant 7), or launch (MISS). The
   explanation goes into the step's records (its components in a blob when large).
4. Record each attempt in the step record, then launch it through the runtime, and wait;
   retry failed attempts with backoff up to RetryPolicy.max_attempts (attempts LOST with
   a dead executor do not count, but after MAX_LOST_ATTEMPTS of them the step fails: a
   step that kills its executor is not retried forever).
5. Commit: the done record is created only if absent, in one transaction with the
   outcome (and the cache entry), the step's `ok` marker, its successors' ready marks
   and, when the step cannot be the run's last, its release: the first commit wins and a
   later finisher is recorded as a loser, never overwriting (invariant 2). A commit too
   large for etcd is a final failure. A final failure commits FAILED and marks the
   downstream steps SKIPPED.
6. Otherwise derive successors' readiness, check whether the run is complete, and only
   then delete the ready mark and claim together (`weft_executor.progress`), after the
   step's slot was freed.

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
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode, get_current_span

from weft.v1 import pipeline_pb2, run_pb2
from weft_core import metrics
from weft_core.blobs import BlobStore
from weft_core.dna import (
    StepDNA,
    content_digest,
    spill_components,
    spill_input_outcomes,
    step_dna,
)
from weft_core.errors import NotFound, ResourceExhausted, ServiceError, Unavailable
from weft_core.keyspace import Keyspace, ready_mark, ready_time_of
from weft_core.lineage import index_outcome
from weft_core.logs import log_context, trace_id_of
from weft_core.replicas import Redundancy, parse_replica_item
from weft_core.runs import parse_run
from weft_core.store import (
    KeyValue,
    Store,
    TxnResult,
    absent,
    lease_is,
    op_delete,
    op_get,
    op_put,
    op_txn,
    present,
    unchanged_since,
)
from weft_core.telemetry import (
    ATTR_ATTEMPT,
    ATTR_CACHE,
    ATTR_DNA,
    ATTR_EXECUTOR,
    ATTR_HOST_NAME,
    ATTR_RUN,
    ATTR_STEP,
    child_traceparent,
    host_name,
    span_in_run_trace,
    traceparent_of,
    tracer,
)
from weft_executor.cache import (
    CacheDecider,
    CacheDecision,
    HeldElsewhere,
    SingleFlight,
    duration_seconds,
    shares_in_flight,
)
from weft_executor.progress import (
    COMMITTED_STEP_STATES,
    TERMINAL_RUN_STATES,
    RunEnded,
    RunProgress,
    RunRef,
    RunRefs,
    now,
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
#: How often a step waiting for an identical attempt in flight checks that the attempt's
#: step is not done already (a record its holder failed to delete).
IN_FLIGHT_RECHECK_SECONDS = 5.0
#: Largest commit a step may write: below etcd's default 1.5 MiB request limit, with room
#: for the transaction's other operations.
MAX_RECORD_BYTES = 1024 * 1024
#: Successors whose readiness a commit derives in its own transaction: at most this many
#: (one operation each), each with at most NESTED_UPSTREAMS other upstreams not known to be
#: committed (one compare each). Wider steps derive readiness after the commit.
NESTED_SUCCESSORS = 64
NESTED_UPSTREAMS = 32
#: Runs whose record revision a runner remembers (a cache; see `StepRunner._saw_run`).
RUN_REVISIONS_KEPT = 1024


class _NotAdopted(Exception):
    """The orphaned attempt could not be re-attached and no new attempt may be launched."""


class ClaimLost(Exception):
    """This executor no longer holds the step's claim: stop without writing anything."""


class RecordTooLarge(Exception):
    """A step's commit would be larger than etcd accepts: a final error of the step."""

    def __init__(self, step: str, size: int) -> None:
        super().__init__(
            f"step {step}: its commit is {size / 1024:.0f} KiB, over the {MAX_RECORD_BYTES // 1024} KiB "
            "etcd accepts in one request (too many declared outputs or too large a message); "
            "declare fewer outputs, or write one output that bundles them"
        )
        self.step = step
        self.size = size


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
        parked: Waiting for other executors' replicas of a redundant step: its slot does
            not count against `--max-parallel` meanwhile (`weft_executor.races`).
        lost_race: Why the replica running now was stopped: another replica won.
        in_flight: The DNA (hex) this task computes for every run of the namespace
            (`cache.SingleFlight`), while it holds that record.
        takes_in_flight: The step shares its work in flight and takes the DNA's record
            with its next launch's RUNNING record, in the same transaction (no write of
            its own), unless it holds it already.
    """

    claim: Claim
    cancel_reason: str = ""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    attempt: LaunchedAttempt | None = None
    snapshot: StepSnapshot | None = None
    parked: bool = False
    lost_race: str = ""
    in_flight: str = ""
    takes_in_flight: bool = False


@dataclass(frozen=True)
class StepWork:
    """A claimed step whose DNA is known: what its cache decision, attempts and commit need.

    Attributes:
        task: The claim and its cancellation state.
        ref: The run with its pipeline version.
        run: The run record.
        step: The step as the pipeline version specifies it.
        record: The step record being built (attempts, explanation); mutable.
        dna: The step's DNA.
        inputs: Its resolved inputs.
    """

    task: StepTask
    ref: RunRef
    run: Run
    step: pipeline_pb2.Step
    record: StepRun
    dna: StepDNA
    inputs: ResolvedInputs

    @property
    def claim(self) -> Claim:
        return self.task.claim


@dataclass(frozen=True)
class StepSnapshot:
    """The run's runindex summary, the step's done record and its step record, read in one
    revision (by the claim transaction itself, which saves a round trip per step)."""

    run: KeyValue | None
    done: KeyValue | None
    step: KeyValue | None
    ready: KeyValue | None = None  # its value is when the step became ready


@dataclass(frozen=True)
class Commit:
    """What a commit transaction found: the done record that won if it was not ours, else
    the run's done count at our commit (None when unknown), whether the successors'
    readiness was derived in it (but for `underived`) and whether it released the step."""

    winner: StepRun | None = None
    done_count: int | None = None
    derived: bool = False
    released: bool = False
    underived: tuple[str, ...] = ()


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


def backoff_seconds(retry: pipeline_pb2.RetryPolicy, failed_attempts: int) -> float:
    """The wait before the attempt after `failed_attempts` failures (RetryPolicy defaults)."""
    base = duration_seconds(retry.backoff, DEFAULT_BACKOFF) if retry.HasField("backoff") else DEFAULT_BACKOFF
    factor = retry.backoff_factor or DEFAULT_BACKOFF_FACTOR
    ceiling = DEFAULT_MAX_BACKOFF
    if retry.HasField("max_backoff"):
        ceiling = duration_seconds(retry.max_backoff, DEFAULT_MAX_BACKOFF)
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


def timestamp_of(moment: datetime) -> Timestamp:
    stamp = now()
    stamp.FromDatetime(moment)
    return stamp


def record_result(attempt: run_pb2.Attempt, result: AttemptResult) -> None:
    """Writes what the runtime reported of an ended attempt (or replica) onto its record."""
    attempt.state = result.state
    attempt.message = result.message
    attempt.exit_code = result.exit_code
    attempt.stdout_digest = result.stdout_digest
    attempt.stderr_digest = result.stderr_digest
    attempt.output_digests.update(result.output_digests)
    attempt.image_id = result.image_id
    attempt.end_time.CopyFrom(timestamp_of(result.end_time))


def _child_span(name: str, attributes: Mapping[str, str]) -> contextlib.AbstractContextManager[Span]:
    """A child span of the current one, or nothing when that one is not recorded (export
    off): a step's hot path must not pay for spans nobody receives."""
    if not get_current_span().is_recording():
        return contextlib.nullcontext(INVALID_SPAN)
    return tracer().start_as_current_span(name, attributes=dict(attributes))


def outcome_of(work: StepWork, attempt: run_pb2.Attempt, *, executor: str) -> run_pb2.Outcome:
    """The outcome a successful attempt commits: by a plain commit, or by a replica
    decision (`weft_executor.races`, which adds the replicas and the reason)."""
    outcome = run_pb2.Outcome(
        dna=work.dna.digest,
        outputs=dict(attempt.output_digests),
        run=work.ref.name,
        step=work.step.name,
        attempt=attempt.number,
        executor=executor,
        handle=attempt.handle,
        input_outcomes=dict(work.inputs.input_outcomes),
        image_id=attempt.image_id,
    )
    outcome.start_time.CopyFrom(attempt.start_time)
    outcome.end_time.CopyFrom(attempt.end_time)
    outcome.commit_time.CopyFrom(now())
    return outcome


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
        on_slot_freed: Called when a task parks (its slot is free for other work).
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
        on_slot_freed: Callable[[], None] = lambda: None,
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
        self.cache = CacheDecider(store, keyspace, blobs)
        self.single_flight = SingleFlight(store, keyspace)
        self.on_slot_freed = on_slot_freed
        # Imported here: `races` builds on this module (StepWork, the commit).
        from weft_executor.races import ReplicaRaces

        self.races = ReplicaRaces(self)
        #: Processes launched by this runner, for tests and the benchmark.
        self.launches = 0
        # The run record's last mod revision seen, per run: commits are guarded on it so
        # that nothing is committed into a run that turned terminal. A stale value costs
        # one more round trip, never a wrong commit.
        self._run_revisions: OrderedDict[tuple[str, str], tuple[int, bool]] = OrderedDict()
        # What never changes in a run record after CreateRun, per run (see `_full_run`).
        self._run_inputs: OrderedDict[tuple[str, str], Run] = OrderedDict()
        # Post-commit work (derivation, completion, release) of steps whose slot is free
        # already; asyncio keeps only weak references to tasks.
        self._finishing: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stops the post-commit work still running (the next holder of each step redoes it)."""
        for task in self._finishing:
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)

    # Entry point ----------------------------------------------------------------------

    async def run(self, task: StepTask) -> None:
        """Works on a claimed step until it is committed, failed, cancelled or let go.

        Raises:
            ClaimLost: The claim vanished; nothing more was written.
        """
        claim = task.claim
        item = parse_replica_item(claim.step)
        if item is not None:
            # A replica of a redundant step (not a step): `weft_executor.races`.
            task.snapshot = None
            await self.races.run_item(task, *item)
            return
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
        found = await self._full_run(claim.namespace, claim.run_id, parse_run(snapshot.run))
        if found is None:
            log.warning("ready mark of %s/%s/%s has no run record; dropping it", *claim_parts(claim))
            await self._drop_mark(claim)
            return
        run = found
        if run.state in TERMINAL_RUN_STATES:
            await self._drop_mark(claim)
            self.progress.forget(claim.namespace, claim.run_id)
            return
        self._saw_run(claim.namespace, claim.run_id, snapshot.run, run)
        try:
            await self._run_claimed(task, snapshot, run)
        except RunEnded as ended:
            # A cancel of a PENDING run (or a failure) ended the run meanwhile: launch and
            # derive nothing more, and let go of the step.
            log.info("%s; dropping the step", ended)
            await self._drop_mark(claim)
            self.progress.forget(claim.namespace, claim.run_id)

    async def _full_run(self, namespace: str, run_id: str, summary: Run) -> Run | None:
        """The run record: the claim read the small runindex summary (its state is current),
        and what the summary leaves out never changes after CreateRun (parameters, their
        digests, the trace context), so it is read once per run, not once per step (a run
        may carry 256 KiB of parameters)."""
        key = (namespace, run_id)
        fixed = self._run_inputs.get(key)
        if fixed is None:
            kv = await self.store.get(self.keyspace.run(namespace, run_id))
            if kv is None:
                return None
            fixed = parse_run(kv)
            self._run_inputs[key] = fixed
            while len(self._run_inputs) > RUN_REVISIONS_KEPT:
                self._run_inputs.popitem(last=False)
        self._run_inputs.move_to_end(key)
        run = Run()
        run.CopyFrom(summary)
        run.parameters.update(fixed.parameters)
        run.parameter_digests.update(fixed.parameter_digests)
        run.traceparent = fixed.traceparent
        return run

    def _saw_run(self, namespace: str, run_id: str, kv: KeyValue, run: Run, *, current: bool = False) -> None:
        """Remembers the run record's revision (`current`: `kv` is the run key itself, just
        read; else the runindex summary, written in the same transaction as the run key)."""
        key = (namespace, run_id)
        if current or kv.mod_revision > self._run_revisions.get(key, (0, False))[0]:
            # "Quiet": RUNNING with no failed step. Then no step of the run is skipped or
            # cancelled, so a step with successors cannot be the run's last one to finish.
            quiet = run.state == Run.STATE_RUNNING and not run.failed_step
            self._run_revisions[key] = (kv.mod_revision, quiet)
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
        attributes = {ATTR_RUN: ref.name, ATTR_STEP: claim.step, ATTR_EXECUTOR: self.executor_id}
        with (
            span_in_run_trace("weft.step", run.traceparent, attributes) as span,
            log_context(run=ref.name, step=claim.step, trace_id=trace_id_of(run.traceparent)),
        ):
            await self._run_step(task, ref, run, step, record, span)

    def snapshot_reads(self, claim: Claim) -> list[object]:
        """The reads of a StepSnapshot, to put into a transaction (the claim's)."""
        ks = self.keyspace
        return [
            # The small summary, not the run record: see `_full_run`.
            op_get(ks.run_index(claim.namespace, claim.run_id)),
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
        # A pod outlives its executor: the attempt it runs may be re-attached (adopted)
        # below instead of being lost; `_run_attempts` tries before launching anew.
        orphan = next((a for a in reversed(record.attempts) if a.state == Attempt.STATE_RUNNING), None)
        self._abandon_running_attempts(record)
        inputs = await self._resolve_inputs(ref, run, step)
        if isinstance(inputs, str):
            # Dropping the mark would leave the run RUNNING forever: the step fails instead.
            log.error("step %s of %s: %s; failing it", step.name, ref.name, inputs)
            await self._stop_orphan(ref, step, orphan, "its step failed")
            await self._commit_failure(ref, record, claim, 0, 1, message=inputs)
            return
        dna = step_dna(step, inputs.digests)
        work = StepWork(task, ref, run, step, record, dna, inputs)
        span.set_attribute(ATTR_DNA, dna.digest)
        with _child_span("weft.cache_lookup", {ATTR_DNA: dna.digest}) as lookup:
            decision = await self.cache.decide(ref, run, step, dna)
            metrics.cache_decision(Explanation.Decision.Name(decision.explanation.decision))
            lookup.set_attribute("weft.cache.decision", Explanation.Decision.Name(decision.explanation.decision))
            cache = Explanation.Decision.Name(decision.explanation.decision).removeprefix("DECISION_").lower()
            lookup.set_attribute(ATTR_CACHE, cache)  # hit, miss or resumed
            span.set_attribute(ATTR_CACHE, cache)
        spilled = spill_components(decision.explanation)
        if spilled is not None:
            await self.blobs.put(spilled)
        if decision.outcome is not None:
            # The orphan's work is not needed: a pod left by a dead executor must not run on.
            await self._stop_orphan(ref, step, orphan, f"step reused ({decision.explanation.reason})")
            await self._commit_reuse(work, decision)
            return
        redundant = Redundancy.of(step) is not None
        # A plain launch takes the DNA with its RUNNING record (`_put_step_record`); replicas
        # and a re-attached orphan take it first, in a transaction of their own.
        task.takes_in_flight = shares_in_flight(run, step) and not redundant and orphan is None
        if shares_in_flight(run, step) and not task.takes_in_flight and await self._reuse_in_flight(work):
            await self._stop_orphan(ref, step, orphan, "step reused (its DNA was computed by another run)")
            return
        try:
            while True:
                try:
                    if redundant:
                        await self.races.run_attempts(work, decision.explanation)
                    else:
                        await self._run_attempts(work, decision.explanation, orphan)
                    break
                except HeldElsewhere as elsewhere:
                    # Another run's attempt computes this DNA: the launch was not recorded
                    # (its held process never ran); wait for that attempt and reuse it.
                    if await self._wait_in_flight(work, elsewhere.held, elsewhere.revision):
                        return
        finally:
            if task.in_flight:
                # Best effort: should etcd be away, a waiter finds the record stale (its step
                # is done) and deletes it; with this executor's lease it goes anyway.
                with contextlib.suppress(ServiceError):
                    await self.single_flight.release(
                        ref.namespace, task.in_flight, self._in_flight_holder(work), claim.lease
                    )
                task.in_flight = ""

    @staticmethod
    def _in_flight_holder(work: StepWork) -> str:
        return f"{work.ref.name} step {work.step.name}"

    async def _reuse_in_flight(self, work: StepWork) -> bool:
        """Single flight (`cache.SingleFlight`): takes the step's DNA for this step (False:
        launch), or waits, its slot parked, for the step of another run that computes it,
        and reuses its outcome (True). When that attempt ends without an outcome (it
        failed, or its executor died), tries again to take the DNA and launch."""
        task, ref, claim, dna = work.task, work.ref, work.claim, work.dna
        holder = self._in_flight_holder(work)
        while True:
            held, revision = await self.single_flight.lead(ref.namespace, dna.hex, holder, claim.lease)
            if held is None:
                task.in_flight = dna.hex
                return False
            if await self._wait_in_flight(work, held, revision):
                return True

    async def _wait_in_flight(self, work: StepWork, held: KeyValue, revision: int) -> bool:
        """Waits, its slot parked, until the in-flight record `held` (read at `revision`)
        goes, then reuses the outcome of the attempt it named (True), or returns False:
        that attempt ended without one (failed, or its executor died), or the run is
        being cancelled; the caller then takes the DNA and launches, or commits the cancel."""
        task, ref, dna = work.task, work.ref, work.dna
        if task.cancel_reason:
            return False  # the attempt loop commits the cancel
        log.info(
            "step %s of %s: waiting for %s, which computes the same DNA",
            work.step.name,
            ref.name,
            held.value.decode(),
        )
        task.parked = True
        self.on_slot_freed()
        gone = asyncio.ensure_future(self.single_flight.gone(ref.namespace, dna.hex, revision))
        cancelled = asyncio.ensure_future(task.cancelled.wait())
        try:
            while not (gone.done() or cancelled.done()):
                await asyncio.wait(
                    {gone, cancelled}, timeout=IN_FLIGHT_RECHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if not (gone.done() or cancelled.done()) and await self.single_flight.clear_if_stale(
                    ref.namespace, dna.hex, held
                ):
                    break
        finally:
            task.parked = False
            for waiter in (gone, cancelled):
                waiter.cancel()
            await asyncio.gather(gone, cancelled, return_exceptions=True)
        decision = await self.cache.decide(ref, work.run, work.step, dna)
        if decision.outcome is not None:
            source = f"{decision.outcome.run} step {decision.outcome.step}"
            decision.explanation.reason = f"hit: computed once, by the attempt of {source} that was in flight"
            await self._commit_reuse(work, decision)
            return True
        return False

    async def stop_orphan(self, ref: RunRef, step: str, orphan: Attempt, reason: str) -> None:
        """Asks the runtime to stop an attempt another executor left running (a pod whose
        executor died): its run was cancelled or its step is done without it."""
        await self._stop_orphan(ref, ref.step(step), orphan, reason)

    async def _stop_orphan(self, ref: RunRef, step: pipeline_pb2.Step, orphan: Attempt | None, reason: str) -> None:
        if orphan is None or not orphan.handle or orphan.executor == self.executor_id:
            return  # our own attempts are stopped through the task that runs them
        spec = AttemptSpec.to_stop(ref.namespace, ref.run_id, step.name, orphan.number, step.container.image)
        try:
            if await self.runtime.stop_orphan(spec, orphan.handle, reason):
                orphan.message = f"stopped: {reason}"
        except ServiceError as error:
            log.warning("cannot stop attempt %d of %s (%s): %s", orphan.number, step.name, orphan.handle, error.message)

    # Inputs and DNA -------------------------------------------------------------------

    async def _resolve_inputs(self, ref: RunRef, run: Run, step: pipeline_pb2.Step) -> ResolvedInputs | str:
        """Every input's digest, or why an input cannot be resolved (the step then fails)."""
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
                    seen = "no record" if upstream_record is None else StepRun.State.Name(upstream_record.state)
                    return (
                        f"input {item.name}: upstream step {ref_out.step} has no committed outcome "
                        f"({seen.removeprefix('STATE_')}) although step {step.name} was marked ready"
                    )
                digest = upstream_record.outcome.outputs.get(ref_out.output)
                if not digest:
                    return (
                        f"input {item.name}: upstream step {ref_out.step} committed no output "
                        f"{ref_out.output!r} (it has: {', '.join(sorted(upstream_record.outcome.outputs)) or 'none'})"
                    )
                digests[item.name] = digest
                input_outcomes[item.name] = upstream_record.outcome.dna
        return ResolvedInputs(digests, input_outcomes, values)

    # Commits --------------------------------------------------------------------------

    def _derivation_ops(self, ref: RunRef, step: str) -> tuple[list[object], list[tuple[str, list[str]]]] | None:
        """Nested transactions that create the ready marks of `step`'s successors inside its
        commit, or None when they do not fit (then readiness is derived after the commit).

        A successor is marked if, when etcd applies the commit, each of its other upstreams
        not known to be committed has its `ok` marker, and it has neither a ready mark nor a
        done record. etcd applies transactions one at a time, so of two upstreams of a join
        committing at once the second always sees the first (invariant 3), and the commit,
        the marks and the release are one atomic step: no crash can fall between them.
        """
        ks = self.keyspace
        ns, run_id = ref.namespace, ref.run_id
        successors = ref.dag.successors(step)
        if len(successors) > NESTED_SUCCESSORS:
            return None
        committed = self.progress.committed_in(ns, run_id)
        ops: list[object] = []
        checked: list[tuple[str, list[str]]] = []
        for successor in successors:
            unknown = [u for u in ref.dag.upstream_of(successor) if u != step and u not in committed]
            if len(unknown) > NESTED_UPSTREAMS:
                return None
            ready, done = ks.ready(ns, run_id, successor), ks.done(ns, run_id, successor)
            compares = [present(ks.committed(ns, run_id, u)) for u in unknown] + [absent(ready), absent(done)]
            # Answered when the mark was not created: which upstreams have done records.
            failure = [op_get(ks.done(ns, run_id, u), count_only=True) for u in unknown]
            ops.append(op_txn(compares, [op_put(ready, ready_mark())], failure))
            checked.append((successor, unknown))
        return ops, checked

    async def _commit_done(
        self, ref: RunRef, record: StepRun, extra: list[object] | None = None, claim: Claim | None = None
    ) -> Commit:
        """Creates the done record (and deletes the step record, writes `extra`) if absent.

        The same transaction counts the run's done records, so the completion check needs
        no read of its own. A committed step (SUCCEEDED, CACHED) also gets its `ok` marker
        and, when they fit, its successors' ready marks; and when the run is quiet and the
        step has successors (so it cannot be the run's last step), the commit also releases
        the step (`claim`). Otherwise the ready mark and claim stay until the successors are
        derived and the completion is checked: a crash before that must leave the mark for
        another executor to finish the job.
        """
        ks = self.keyspace
        ns, run_id = ref.namespace, ref.run_id
        done_key = ks.done(ns, run_id, record.step)
        run_key = ks.run(ns, run_id)
        data = record.SerializeToString()
        # The done record replaces the step record: each record is written once, and readers
        # (GetRun, WatchRun, ExplainStep) prefer the done record anyway.
        base = [op_put(done_key, data), op_delete(ks.step(ns, run_id, record.step)), *(extra or [])]
        size = sum(op.ByteSize() for op in base)
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(record.step, size)
        derivation = None
        if record.state in COMMITTED_STEP_STATES:
            base.append(op_put(ks.committed(ns, run_id, record.step), b""))
            derivation = self._derivation_ops(ref, record.step)
        state, started = StepRun.State.Name(record.state).removeprefix("STATE_"), time.monotonic()
        while True:
            revision, quiet = self._run_revisions.get((ns, run_id), (0, False))
            writes = list(base)
            derived_at = len(writes)
            if derivation is not None:
                writes.extend(derivation[0])
            releases = derivation is not None and quiet and bool(derivation[1]) and claim is not None
            if releases:
                assert claim is not None
                claim_key = ks.claim(ns, run_id, record.step)
                release = [op_delete(ks.ready(ns, run_id, record.step)), op_delete(claim_key)]
                writes.append(op_txn([lease_is(claim_key, claim.lease)], release))
            counted = len(writes)
            writes.append(op_get(ks.done_prefix(ns, run_id), prefix=True, count_only=True))
            compares = [absent(done_key), unchanged_since(run_key, revision)]
            try:
                result = await until_written(
                    functools.partial(self.store.txn, compares, writes, [op_get(done_key), op_get(run_key)]),
                    f"committing step {record.step} of {ref.name}",
                )
            except ResourceExhausted as error:
                # Refused as too large: the same commit fails the same way on every retry.
                log.error("step %s of %s: etcd refused its commit: %s", record.step, ref.name, error.message)
                raise RecordTooLarge(record.step, size) from error
            if result.succeeded:
                metrics.commit_finished(time.monotonic() - started, state, self.runtime.name, won=True)
                if record.state in COMMITTED_STEP_STATES:
                    self.progress.committed_in(ns, run_id).add(record.step)
                underived: list[str] = []
                if derivation is not None:
                    for i, (successor, unknown) in enumerate(derivation[1]):
                        nested = result.responses[derived_at + i].response_txn
                        counts = [r.response_range.count for r in nested.responses]
                        if not nested.succeeded and unknown and all(counts):
                            # Every upstream is done but one has no `ok` marker (committed
                            # before markers existed, or failed): derive it by reading.
                            underived.append(successor)
                return Commit(
                    done_count=int(result.responses[counted].response_range.count),
                    derived=derivation is not None,
                    released=releases,
                    underived=tuple(underived),
                )
            found = result.range_kvs(0)
            if found:
                winner = parse_step_run(found[0])
                metrics.commit_finished(time.monotonic() - started, state, self.runtime.name, won=winner == record)
                if winner == record:
                    # Our own commit, applied by an earlier try whose answer was lost.
                    return Commit()
                return Commit(winner=winner)
            # The run record changed since we read it (a failed step, a cancel): commit into
            # it only while it is not terminal.
            runs = result.range_kvs(1)
            if not runs or parse_run(runs[0]).state in TERMINAL_RUN_STATES:
                raise RunEnded(f"run {ref.name} ended before step {record.step} could commit")
            self._saw_run(ns, run_id, runs[0], parse_run(runs[0]), current=True)

    async def _commit_reuse(self, work: StepWork, decision: CacheDecision) -> None:
        ref, record, claim, dna = work.ref, work.record, work.claim, work.dna
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
        with _child_span("weft.commit", {"weft.state": "CACHED"}):
            try:
                commit = await self._commit_done(ref, done, claim=claim)
            except RecordTooLarge as error:
                await self._commit_too_large(ref, record, claim, error)
                return
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

    async def _put_step_record(self, ref: RunRef, record: StepRun, claim: Claim, work: StepWork | None = None) -> None:
        """Writes the step record if this executor still holds the claim, else ClaimLost.

        With `work` (a launch whose task takes the DNA in flight), the same transaction
        takes the DNA's in-flight record (create-if-absent, bound to the claim's lease);
        when another step holds it, nothing is written and HeldElsewhere says who."""
        key = self.keyspace.step(ref.namespace, ref.run_id, record.step)
        claim_key = self.keyspace.claim(ref.namespace, ref.run_id, record.step)
        data = record.SerializeToString()
        compares, success, failure = [lease_is(claim_key, claim.lease)], [op_put(key, data)], []
        holder = ""
        if work is not None:
            holder = self._in_flight_holder(work)
            take, put, get = self.single_flight.take_ops(ref.namespace, work.dna.hex, holder, claim.lease)
            compares.append(take)
            success.append(put)
            failure = [op_get(claim_key), get]
        result = await until_written(
            lambda: self.store.txn(compares, success, failure),
            f"recording step {record.step} of {ref.name}",
        )
        if result.succeeded:
            if work is not None:
                work.task.in_flight = work.dna.hex
            return
        if work is not None:
            claimed = result.range_kvs(0)
            if claimed and claimed[0].lease == claim.lease:
                held = self.single_flight.held_in(result, 1, holder, claim.lease)
                if held is not None:
                    raise HeldElsewhere(held, result.revision)
                # Ours: an earlier try took it and its answer was lost. Write the record again.
                work.task.in_flight = work.dna.hex
                await self._put_step_record(ref, record, claim)
                return
        raise ClaimLost(f"lost the claim of step {record.step} of {ref.name}")

    async def after_commit(self, ref: RunRef, done: StepRun, claim: Claim, commit: Commit) -> None:
        """What follows a commit attempt, with the done count the commit read if it won.

        The step's slot is free once its outcome is committed: what follows (readiness,
        completion, release) runs on in the background, and its etcd writes join the next
        steps' transactions. A crash meanwhile leaves the ready mark and the claim, and
        whoever holds the step next (another executor, or the claim sweep) finishes it.
        """
        if commit.winner is not None:
            await self.after_done(ref, commit.winner, claim)
            return
        finishing = asyncio.ensure_future(self._after_own_commit(ref, done, claim, commit))
        self._finishing.add(finishing)
        finishing.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._finishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The claim stays ours and unattended: the claim sweep takes the step up again.
            log.warning("finishing a committed step failed: %s", task.exception())

    async def _after_own_commit(self, ref: RunRef, done: StepRun, claim: Claim, commit: Commit) -> None:
        if not commit.released:
            await self.after_done(ref, done, claim, done_count=commit.done_count, derived=commit.derived)
            return
        if commit.underived:
            await self.progress.derive_successors(ref, done.step)
        if self.is_cancelling(ref.namespace, ref.run_id):
            await self.progress.finalize_cancel(ref)

    async def after_done(
        self, ref: RunRef, done: StepRun, claim: Claim, *, done_count: int | None = None, derived: bool = False
    ) -> None:
        """What follows a step's terminal record: successors or skips, completion, release.

        `derived`: the commit created the successors' ready marks already.
        """
        if done.state in COMMITTED_STEP_STATES:
            if not derived:
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
            attempt.end_time.CopyFrom(timestamp_of(result.end_time))
            log.info("step %s of %s: stopped attempt %d left by a dead executor", step.name, ref.name, attempt.number)

    def _abandon_running_attempts(self, record: StepRun) -> None:
        # We hold the claim, so whoever launched a still-RUNNING attempt lost it: its
        # process died with its executor (local) or was not re-attached. It does not
        # count against the retry budget.
        for attempt in record.attempts:
            if attempt.state == Attempt.STATE_UNCONFIRMED and not attempt.HasField("end_time"):
                attempt.message = (
                    f"launch not confirmed: executor {attempt.executor or '?'} died or lost its claim as it "
                    "launched this attempt; a process it may have started was stopped with it"
                )
                attempt.end_time.CopyFrom(now())
            if attempt.state == Attempt.STATE_RUNNING:
                attempt.state = Attempt.STATE_LOST
                attempt.message = (
                    f"abandoned: executor {attempt.executor or '?'} died or lost its claim; "
                    f"executor {self.executor_id} took the step over"
                )
                attempt.end_time.CopyFrom(now())

    def _attempt_spec(self, work: StepWork, number: int, traceparent: str) -> AttemptSpec:
        ref, run, step = work.ref, work.run, work.step
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
        timeout = duration_seconds(step.timeout, 0.0) if step.HasField("timeout") else 0.0
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
            inputs=dict(work.inputs.digests),
            outputs=tuple(o.name for o in step.outputs),
            timeout=timeout or None,
            dna=work.dna.digest,
            resources=container.resources,
            security=container.security,
        )

    async def _run_attempts(self, work: StepWork, explanation: Explanation, orphan: Attempt | None = None) -> None:
        """Runs attempts until one succeeds, the retry budget is spent, or the run is
        cancelled, and commits the outcome."""
        task, ref, step, record, claim = work.task, work.ref, work.step, work.record, work.claim
        dna, inputs = work.dna, work.inputs
        record.dna = dna.digest
        record.explanation.CopyFrom(explanation)
        record.executor = self.executor_id
        max_attempts = max(1, step.retry.max_attempts)
        failed = sum(1 for a in record.attempts if a.state == Attempt.STATE_FAILED)
        lost = sum(1 for a in record.attempts if a.state in (Attempt.STATE_LOST, Attempt.STATE_UNCONFIRMED))
        # Past the cap only re-attaching to the orphan (a pod outlives its executor) is allowed.
        adopt_only = lost >= MAX_LOST_ATTEMPTS
        if adopt_only and orphan is None:
            await self._commit_lost_too_often(work, failed, max_attempts, lost)
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
                attempt, result, launched = await self._run_attempt(work, number, orphan, adopt_only=adopt_only)
            except _NotAdopted:
                await self._commit_lost_too_often(work, failed, max_attempts, lost)
                return
            adopt_only = False
            orphan = None  # only the attempt found running when the step was taken over
            number = attempt.number  # an adopted attempt keeps the number it was launched with
            if result.state == Attempt.STATE_SUCCEEDED:
                await self._commit_success(work, attempt)
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
        self, work: StepWork, number: int, orphan: Attempt | None = None, *, adopt_only: bool = False
    ) -> tuple[Attempt, AttemptResult, LaunchedAttempt | None]:
        """Launches attempt `number`, records it, waits for it; returns it with its result.

        With `orphan` (an attempt a dead executor left RUNNING), first asks the runtime to
        re-attach to it (a pod keeps running without its executor, invariant 4); the attempt
        keeps its number and is waited on as if launched here. Otherwise `number` is launched.
        """
        task, ref, run, step, record, dna = work.task, work.ref, work.run, work.step, work.record, work.dna
        attributes: dict[str, str | int] = {
            ATTR_RUN: ref.name,
            ATTR_STEP: step.name,
            ATTR_ATTEMPT: number,
            ATTR_DNA: dna.digest,
            ATTR_EXECUTOR: self.executor_id,
            ATTR_HOST_NAME: host_name(),  # where the executor runs (a pod's node is the runtime's)
        }
        # Every line logged during the attempt names it (weft_core.logs): the adopted one's
        # own number once it is re-attached, else the one launched.
        with (
            tracer().start_as_current_span("weft.attempt", attributes=attributes) as span,
            contextlib.ExitStack() as named,
        ):
            traceparent = traceparent_of(span) if span.is_recording() else child_traceparent(run.traceparent)
            launched: LaunchedAttempt | None = None
            if orphan is not None:
                spec = self._attempt_spec(work, orphan.number, traceparent)
                with log_context(attempt=orphan.number):
                    launched = await self.runtime.adopt(spec, orphan.handle)
            if orphan is not None and launched is not None:
                number, attempt = orphan.number, orphan
                named.enter_context(log_context(attempt=number))
                span.set_attribute(ATTR_ATTEMPT, number)
                span.set_attribute("weft.adopted", True)
                attempt.ClearField("message")
                attempt.ClearField("end_time")
                attempt.executor = self.executor_id  # its live logs are served here now
                log.info("step %s of %s: re-attached to attempt %d (%s)", step.name, ref.name, number, orphan.handle)
            else:
                named.enter_context(log_context(attempt=number))
                if adopt_only:
                    raise _NotAdopted
                spec = self._attempt_spec(work, number, traceparent)
                attempt = record.attempts.add(number=number, executor=self.executor_id)
                attempt.start_time.CopyFrom(now())
                attempt.handle = self.runtime.planned_handle(spec)
                # A launch always leaves a trace, in one write. With a planned handle (a
                # pod's name) the attempt is recorded RUNNING before the launch, and whoever
                # takes the step over adopts or loses it. Without one (a process id), the
                # runtime returns the launch held: the process exists but runs its command
                # only at `start`, after the record with its handle landed; if the write
                # fails or this executor dies first, it exits without running anything.
                planned = bool(attempt.handle)
                # Single flight rides on this write (`_put_step_record`): no write of its own.
                taking = work if task.takes_in_flight and not task.in_flight else None
                state_before = record.state
                if planned:
                    attempt.state = Attempt.STATE_RUNNING
                    record.state = StepRun.STATE_RUNNING
                    try:
                        await self._put_step_record(ref, record, task.claim, taking)
                    except HeldElsewhere:
                        del record.attempts[-1]  # never launched
                        record.state = state_before
                        raise
                try:
                    launched = await self.runtime.launch(spec)
                except AttemptSetupError as error:
                    attempt.state = Attempt.STATE_FAILED
                    attempt.message = str(error)
                    attempt.end_time.CopyFrom(now())
                    span.set_status(Status(StatusCode.ERROR, attempt.message))
                    result = AttemptResult(Attempt.STATE_FAILED, str(error), 0, {}, "", "", datetime.now(UTC))
                    return attempt, result, None
                if not planned:
                    attempt.state = Attempt.STATE_RUNNING
                    attempt.handle = launched.handle
                    record.state = StepRun.STATE_RUNNING
                    try:
                        await self._put_step_record(ref, record, task.claim, taking)
                    except BaseException as error:
                        self.runtime.abandon(launched)  # held: its command never runs
                        if isinstance(error, HeldElsewhere):
                            del record.attempts[-1]  # it never ran: not an attempt
                            record.state = state_before
                        raise
                launched.start()
                self.launches += 1
            task.attempt = launched
            self.live_attempts[(ref.name, step.name, number)] = (self.runtime, launched)
            # An adopted attempt runs under this executor now, and a process id is known only
            # after the launch: the record says so while the attempt runs.
            rerecord = orphan is not None or attempt.handle != launched.handle
            attempt.state = Attempt.STATE_RUNNING
            attempt.handle = launched.handle
            attempt.start_time.CopyFrom(timestamp_of(launched.start_time))
            record.state = StepRun.STATE_RUNNING
            metrics.attempt_started(self.runtime.name)
            attempt_started = time.monotonic()
            try:
                if task.cancel_reason:
                    await self.runtime.kill(launched, task.cancel_reason)
                if rerecord:
                    result = await self._record_while_waiting(ref, record, task.claim, launched)
                else:
                    result = await self.runtime.wait(launched)
            except BaseException:
                # Lost claim, cancelled task, etcd error: the attempt has no recorded end, and
                # whoever works on the step next marks it LOST and starts another.
                self.runtime.abandon(launched)
                self.live_attempts.pop((ref.name, step.name, number), None)
                task.attempt = None
                metrics.attempt_ended(self.runtime.name, None, 0.0)
                raise
            task.attempt = None
            metrics.attempt_ended(
                self.runtime.name,
                Attempt.State.Name(result.state).removeprefix("STATE_"),
                time.monotonic() - attempt_started,
            )
            record_result(attempt, result)
            if result.state != Attempt.STATE_SUCCEEDED:
                span.set_status(Status(StatusCode.ERROR, result.message.splitlines()[0] if result.message else ""))
            return attempt, result, launched

    async def _record_while_waiting(
        self, ref: RunRef, record: StepRun, claim: Claim, launched: LaunchedAttempt
    ) -> AttemptResult:
        """Writes the step record while the attempt runs (a short step may end before the
        write is answered); the result is returned only once the record is written."""
        recording = asyncio.ensure_future(self._put_step_record(ref, record, claim))
        waiting = asyncio.ensure_future(self.runtime.wait(launched))
        try:
            await asyncio.wait({recording, waiting}, return_when=asyncio.FIRST_EXCEPTION)
            await recording  # ClaimLost or an etcd error ends the wait below (abandoned)
            return await waiting
        finally:
            for pending in (recording, waiting):
                if not pending.done():
                    pending.cancel()
            # Retrieve a second exception so asyncio does not report it as never retrieved.
            for ended in (recording, waiting):
                if ended.done() and not ended.cancelled():
                    ended.exception()

    async def _forget_attempt(self, ref: RunRef, step: str, number: int, launched: LaunchedAttempt | None) -> None:
        # Only once the step record holds the log digests: until then ReadLogs needs us.
        self.live_attempts.pop((ref.name, step, number), None)
        if launched is not None:
            await self.runtime.release(launched)

    async def _commit_success(self, work: StepWork, attempt: Attempt) -> None:
        ref, run, record, dna, claim = work.ref, work.run, work.record, work.dna, work.claim
        outcome = outcome_of(work, attempt, executor=self.executor_id)
        spilled = spill_input_outcomes(outcome)
        if spilled is not None:
            await self.blobs.put(spilled)
        done = StepRun()
        done.CopyFrom(record)
        done.state = StepRun.STATE_SUCCEEDED
        done.outcome.CopyFrom(outcome)
        done.end_time.CopyFrom(attempt.end_time)
        extra: list[object] = []
        if run.options.cache_mode != run_pb2.CACHE_MODE_OFF:
            extra.append(op_put(self.keyspace.outcome(ref.namespace, dna.hex), outcome.SerializeToString()))
        if work.task.in_flight:
            # Those waiting for this DNA wake when it goes: the outcome is there by then.
            extra.append(op_delete(self.keyspace.in_flight(ref.namespace, work.task.in_flight)))
        with _child_span("weft.commit", {"weft.state": "SUCCEEDED"}):
            try:
                commit = await self._commit_done(ref, done, extra, claim)
            except RecordTooLarge as error:
                await self._commit_too_large(ref, record, claim, error)
                return
        if commit.winner is None:
            work.task.in_flight = ""  # deleted by the commit
            # Lineage (weft_core/lineage.py): idempotent puts of a new outcome's edges, in
            # batches of their own; never inside the commit, which a wide join would overflow.
            await until_written(
                # Every input outcome, also those a wide join spilled to a blob.
                lambda: index_outcome(
                    self.store,
                    self.keyspace,
                    ref.namespace,
                    outcome,
                    work.inputs.digests,
                    work.inputs.input_outcomes,
                ),
                f"indexing the lineage of step {record.step} of {ref.name}",
            )
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
        key = self.keyspace.step(ref.namespace, ref.run_id, winner.step)
        while True:
            # Guarded read-modify-write: two losers (replicas, zombies) keep each other's records.
            kv = await self.store.get(key)
            loser = StepRun()
            loser.CopyFrom(winner)
            if kv is not None:
                earlier = [a for a in parse_step_run(kv).attempts if a.message.startswith("lost the commit")]
                if any(a.number == attempt.number and a.executor == attempt.executor for a in earlier):
                    break  # recorded by an earlier try whose answer was lost
                loser.attempts.extend(earlier)
            loser.attempts.append(attempt)
            guard = unchanged_since(key, kv.mod_revision) if kv is not None else absent(key)
            result = await self.store.txn([guard], [op_put(key, loser.SerializeToString())])
            if result.succeeded:
                break
        log.info("step %s of %s: %s", winner.step, ref.name, attempt.message)

    async def _commit_too_large(self, ref: RunRef, record: StepRun, claim: Claim, error: RecordTooLarge) -> None:
        """Fails a step whose commit etcd cannot take, with a record small enough to commit:
        the attempts without their output digests (what made it large)."""
        slim = StepRun(step=record.step, dna=record.dna, executor=record.executor)
        if record.HasField("ready_time"):
            slim.ready_time.CopyFrom(record.ready_time)
        for attempt in record.attempts:
            kept = slim.attempts.add()
            kept.CopyFrom(attempt)
            kept.ClearField("output_digests")
        await self._commit_failure(ref, slim, claim, 0, 1, message=str(error))

    async def _commit_lost_too_often(self, work: StepWork, failed: int, max_attempts: int, lost: int) -> None:
        message = f"executor died {lost} times running this step (its attempts were lost with their executor)"
        log.warning("step %s of %s: %s; failing it", work.step.name, work.ref.name, message)
        await self._commit_failure(work.ref, work.record, work.claim, failed, max_attempts, message=message)

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
        with _child_span("weft.commit", {"weft.state": "FAILED"}):
            winner = await until_written(
                lambda: self.progress.commit_failure(ref, done), f"committing the failure of {record.step}"
            )
            if winner == done:
                winner = None  # our own commit, applied by an earlier try whose answer was lost
        if winner is not None and last is not None:
            await self._record_loser(ref, winner, last)
        await self.after_done(ref, winner or done, claim)
