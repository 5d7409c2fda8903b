"""The cache decision of a step whose DNA is known: resume, reuse, or launch.

`CacheDecider.decide` reuses the resumed run's outcome when the DNA matches (RESUMED),
else a cached outcome of the namespace with that DNA whose blobs all exist (HIT,
invariant 7), else says why not (MISS). The explanation, with the DNA components and the
reason, is what ExplainStep shows. It only reads: etcd (done records, outcomes) and the
artifact store (blob existence); it never writes and never launches anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.blobs import BlobStore
from weft_core.dna import StepDNA, image_for_dna
from weft_core.errors import ServiceError
from weft_core.keyspace import Keyspace
from weft_core.spec import parse_run_name
from weft_core.store import KeyValue, Store, TxnResult, absent, op_delete, op_get, op_put, unchanged_since
from weft_executor.progress import COMMITTED_STEP_STATES, RunRef, parse_step_run

Run = run_pb2.Run
StepRun = run_pb2.StepRun
Explanation = run_pb2.StepExplanation


@dataclass(frozen=True)
class CacheDecision:
    """What to do with a step whose DNA is known: reuse `outcome`, or launch (None)."""

    explanation: Explanation
    outcome: run_pb2.Outcome | None = None
    reused_from_run: str = ""


def shares_in_flight(run: Run, step: pipeline_pb2.Step) -> bool:
    """Whether the step waits for an identical attempt in flight instead of launching its
    own: only when it could reuse that attempt's outcome (cache on, mode USE) and does not
    opt out with `cache.share_in_flight: false`."""
    cache = step.cache
    if run.options.cache_mode in (run_pb2.CACHE_MODE_REFRESH, run_pb2.CACHE_MODE_OFF) or run.resumed_from:
        return False
    if cache.HasField("enabled") and not cache.enabled:
        return False
    return not cache.HasField("share_in_flight") or cache.share_in_flight


class HeldElsewhere(Exception):
    """Another step holds the DNA's in-flight record: the write that would have taken it
    (a launch's RUNNING record, see `SingleFlight.take_ops`) wrote nothing."""

    def __init__(self, held: KeyValue, revision: int) -> None:
        super().__init__(f"in flight in {held.value.decode()}")
        self.held = held
        self.revision = revision


class SingleFlight:
    """Who computes each namespace's DNA right now (see the module docstring)."""

    def __init__(self, store: Store, keyspace: Keyspace) -> None:
        self.store = store
        self.keyspace = keyspace

    async def lead(self, namespace: str, dna_hex: str, holder: str, lease: int) -> tuple[KeyValue | None, int]:
        """Takes the DNA for `holder` unless another step holds it: (None, revision) when
        `holder` leads now, else (the holder's record, the revision it was read at)."""
        key = self.keyspace.in_flight(namespace, dna_hex)
        result = await self.store.txn([absent(key)], [op_put(key, holder.encode(), lease)], [op_get(key)])
        if result.succeeded:
            return None, result.revision
        found = result.range_kvs(0)
        if not found or (found[0].value == holder.encode() and found[0].lease == lease):
            return None, result.revision  # ours, from an earlier try whose answer was lost
        return found[0], result.revision

    def take_ops(self, namespace: str, dna_hex: str, holder: str, lease: int) -> tuple[object, object, object]:
        """(compare, put, get) that take the DNA for `holder` inside another transaction:
        the compare (the record is absent) joins its compares, the put (bound to `lease`)
        its success branch, the get its failure branch, where `held_in` reads it. Folded
        into a launch's RUNNING record, single flight costs no etcd write of its own."""
        key = self.keyspace.in_flight(namespace, dna_hex)
        return absent(key), op_put(key, holder.encode(), lease), op_get(key)

    @staticmethod
    def held_in(result: TxnResult, index: int, holder: str, lease: int) -> KeyValue | None:
        """The record another step holds, read by `take_ops`'s get at `index` of a failed
        transaction; None when it is absent or `holder`'s own (an earlier try of the same
        write landed and its answer was lost)."""
        found = result.range_kvs(index)
        if not found or (found[0].value == holder.encode() and found[0].lease == lease):
            return None
        return found[0]

    async def gone(self, namespace: str, dna_hex: str, after: int) -> None:
        """Returns once the DNA's in-flight record is deleted after revision `after`."""
        key = self.keyspace.in_flight(namespace, dna_hex)
        async with contextlib.aclosing(self.store.watch(key, after + 1)) as batches:
            async for batch in batches:
                if any(event.key == key and event.deleted for event in batch):
                    return

    async def clear_if_stale(self, namespace: str, dna_hex: str, held: KeyValue) -> bool:
        """Deletes the in-flight record `held` if the step it names is done already (its
        holder could not delete it: etcd was away as it let go) and returns True."""
        run_name, _, step = held.value.decode().partition(" step ")
        try:
            ns, run_id = parse_run_name(run_name, "holder")
        except ServiceError:
            return False
        if await self.store.get(self.keyspace.done(ns, run_id, step)) is None:
            return False
        key = self.keyspace.in_flight(namespace, dna_hex)
        result = await self.store.txn([unchanged_since(key, held.mod_revision)], [op_delete(key)])
        return result.succeeded

    async def release(self, namespace: str, dna_hex: str, holder: str, lease: int) -> None:
        """Lets go of the DNA if `holder` holds it. A successful commit deletes the record
        in its own transaction; this is for the other ends (failure, cancel, lost claim)."""
        key = self.keyspace.in_flight(namespace, dna_hex)
        found = await self.store.get(key)
        if found is not None and found.value == holder.encode() and found.lease == lease:
            await self.store.txn([unchanged_since(key, found.mod_revision)], [op_delete(key)])


def duration_seconds(duration: object, default: float) -> float:
    """A protobuf Duration in seconds, or `default` when it is unset or not positive."""
    seconds = getattr(duration, "seconds", 0) + getattr(duration, "nanos", 0) / 1e9
    return seconds if seconds > 0 else default


def describe_duration(seconds: float) -> str:
    """`3600` → "1h", `90` → "90s": a duration as a person wrote it."""
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


class CacheDecider:
    """Decides whether a step is resumed, reused or launched (see the module docstring)."""

    def __init__(self, store: Store, keyspace: Keyspace, blobs: BlobStore) -> None:
        self.store = store
        self.keyspace = keyspace
        self.blobs = blobs

    async def missing_blob(self, outputs: Mapping[str, str]) -> str:
        """The first output digest that the artifact store no longer has, or ""."""
        digests = sorted(set(outputs.values()))
        found = await asyncio.gather(*(self.blobs.stat(d) for d in digests))
        return next((d for d, info in zip(digests, found, strict=True) if info is None), "")

    async def decide(self, ref: RunRef, run: Run, step: pipeline_pb2.Step, dna: StepDNA) -> CacheDecision:
        """RESUMED, HIT or MISS for `step` of `run`, with its explanation."""

        def explanation(
            decision: Explanation.Decision, reason: str, outcome: run_pb2.Outcome | None = None
        ) -> Explanation:
            result = Explanation(
                dna=dna.digest,
                components=dna.as_pb(),
                decision=decision,
                reason=reason,
                image_hashed_as=image_for_dna(step.container.image)[1],
            )
            if outcome is not None:
                result.outcome.CopyFrom(outcome)
            return result

        resume_note = ""
        if run.resumed_from and step.name not in run.options.rerun_steps:
            reused = await self.resumable_outcome(run.resumed_from, step.name, dna)
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
            max_age = duration_seconds(step.cache.max_age, 0.0)
            age = (datetime.now(UTC) - outcome.commit_time.ToDatetime(tzinfo=UTC)).total_seconds()
            if max_age > 0 and age > max_age:
                reason = f"miss: outcome older than max_age {describe_duration(max_age)}"
                return CacheDecision(explanation(Explanation.DECISION_MISS, reason + resume_note, outcome))
        missing = await self.missing_blob(outcome.outputs)
        if missing:
            reason = f"miss: outcome blob {missing} is gone"
            return CacheDecision(explanation(Explanation.DECISION_MISS, reason + resume_note, outcome))
        reason = f"hit: outcome of {outcome.run} step {outcome.step}"
        return CacheDecision(explanation(Explanation.DECISION_HIT, reason, outcome), outcome, outcome.run)

    async def resumable_outcome(self, resumed_from: str, step: str, dna: StepDNA) -> run_pb2.Outcome | str:
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
        missing = await self.missing_blob(old.outcome.outputs)
        if missing:
            return f"outcome blob {missing} is gone"
        return old.outcome
