"""The cache decision of a step whose DNA is known: resume, reuse, or launch.

`CacheDecider.decide` reuses the resumed run's outcome when the DNA matches (RESUMED),
else a cached outcome of the namespace with that DNA whose blobs all exist (HIT,
invariant 7), else says why not (MISS). The explanation, with the DNA components and the
reason, is what ExplainStep shows. It only reads: etcd (done records, outcomes) and the
artifact store (blob existence); it never writes and never launches anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.blobs import BlobStore
from weft_core.dna import StepDNA, image_for_dna
from weft_core.errors import ServiceError
from weft_core.keyspace import Keyspace
from weft_core.spec import parse_run_name
from weft_core.store import Store
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
