"""Provenance queries of weft-api: every miss explained against its nearest previous outcome,
and two runs diffed step by step by DNA.

Both are computed at query time from committed records (done records carry each step's
DNA components and outcome), so the executor's commit path pays nothing for them:

- A miss is compared with the nearest previous outcome of the same step: runs of the
  namespace older than the step's run are read newest first through the runorder index
  (a limited range read per page plus one batched get), preferring a run of the same
  pipeline and falling back to any run with a step of the same name. The look-back is
  bounded (`LOOKBACK_RUNS`): an older outcome is not found, and the miss keeps its plain
  reason. A changed input is traced to its cause: a parameter's old and new value, or
  the upstream step that re-ran and its own change, recursively up to `TRACE_DEPTH`.
- DiffRuns reads both runs' done records (one paged range read each) and classifies each
  step: root cause (own spec or parameter changed), input changed (naming the upstream),
  nondeterministic (same DNA, different outputs), added, removed, incomparable, same.

This module only reads; it must never write to etcd, and never show a secret's value
(components carry secret references only).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.errors import Internal, InvalidArgument, NotFound
from weft_core.keyspace import Keyspace
from weft_core.pipelines import PipelineReader
from weft_core.provenance import (
    COMMITTED_STEP_STATES,
    INPUT_PREFIX,
    BlobReader,
    component_changes,
    describe_changes,
    dna_components,
    has_components,
    image_resolution_change,
    input_sources,
    is_own_change,
    is_spilled,
    restore_spilled,
    run_scope,
    shorten,
)
from weft_core.spec import parse_pipeline_name, parse_run_name, run_name
from weft_core.store import Store

StepRun = run_pb2.StepRun
Explanation = run_pb2.StepExplanation
StepDiff = run_pb2.StepDiff

#: Most earlier runs of the namespace a miss looks through for a previous outcome.
LOOKBACK_RUNS = 1000
#: Runs read per page of that look-back.
LOOKBACK_PAGE = 50
#: How many upstream steps deep an input change is traced in an explanation.
TRACE_DEPTH = 4
#: Steps per DiffRuns page when the request leaves page_size 0, and the most allowed.
DEFAULT_DIFF_PAGE_SIZE, MAX_DIFF_PAGE_SIZE = 100, 1000
#: The reason the executor gives a miss that no stored outcome matched.
_NO_OUTCOME_REASON = "miss: no outcome with this DNA"
#: The order DiffRuns lists its steps in.
_KIND_ORDER = [
    StepDiff.KIND_ROOT_CAUSE,
    StepDiff.KIND_INPUT_CHANGED,
    StepDiff.KIND_NONDETERMINISTIC,
    StepDiff.KIND_ADDED,
    StepDiff.KIND_REMOVED,
    StepDiff.KIND_INCOMPARABLE,
    StepDiff.KIND_SAME,
]


def _decode_step(value: bytes, key: bytes) -> run_pb2.StepRun:
    record = StepRun()
    try:
        record.ParseFromString(value)
    except Exception as error:  # protobuf raises DecodeError (or others) on garbage
        raise Internal(f"the record at {key.decode()} does not parse as StepRun; it is corrupt") from error
    return record


def _state(record: run_pb2.StepRun | None) -> str:
    return StepRun.State.Name(record.state).removeprefix("STATE_") if record is not None else "WAITING"


@dataclass
class RunRecords:
    """One run's record, its pipeline spec and its done records, read on demand."""

    namespace: str
    run_id: str
    run: run_pb2.Run
    spec: pipeline_pb2.PipelineSpec | None
    done: dict[str, run_pb2.StepRun | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return run_name(self.namespace, self.run_id)

    def step_spec(self, step: str) -> pipeline_pb2.Step | None:
        if self.spec is None:
            return None
        return next((s for s in self.spec.steps if s.name == step), None)


class Provenance:
    """ExplainStep's miss analysis and DiffRuns, over the committed records in etcd."""

    def __init__(self, store: Store, keyspace: Keyspace, reader: PipelineReader, blobs: BlobReader) -> None:
        self.store = store
        self.keyspace = keyspace
        self.reader = reader
        self.blobs = blobs

    async def components(self, record: run_pb2.StepRun) -> list[tuple[str, str]]:
        """The record's DNA components, read from their blob first when a wide join spilled them."""
        if is_spilled(record):
            await restore_spilled(record, self.blobs)
        return dna_components(record)

    # Reading --------------------------------------------------------------------------

    async def run_records(self, ns: str, run_id: str, *, all_done: bool = False) -> RunRecords:
        """The run, its spec (None when the pipeline was deleted) and, with `all_done`, every
        done record; NOT_FOUND when the run does not exist."""
        kv = await self.store.get(self.keyspace.run(ns, run_id))
        if kv is None:
            raise NotFound(f'run "{run_name(ns, run_id)}" does not exist; see `weft runs list`')
        run = run_pb2.Run()
        run.ParseFromString(kv.value)
        p_ns, p = parse_pipeline_name(run.pipeline, "run.pipeline")
        try:
            spec: pipeline_pb2.PipelineSpec | None = run_scope(
                (await self.reader.spec(p_ns, p, run.pipeline_version))[0], run.options.only_steps
            )
        except NotFound:
            spec = None
        records = RunRecords(ns, run_id, run, spec)
        if all_done:
            prefix = self.keyspace.done_prefix(ns, run_id)
            listed = await self.store.range_all(prefix)
            for done_kv in listed.kvs:
                records.done[self.keyspace.tail(done_kv.key, prefix)] = _decode_step(done_kv.value, done_kv.key)
        return records

    async def done_record(self, records: RunRecords, step: str) -> run_pb2.StepRun | None:
        """A step's done record in `records`' run (cached), or None if it has none."""
        if step not in records.done:
            kv = await self.store.get(self.keyspace.done(records.namespace, records.run_id, step))
            records.done[step] = _decode_step(kv.value, kv.key) if kv is not None else None
        return records.done[step]

    async def nearest_previous(self, current: RunRecords, step: str) -> tuple[RunRecords, run_pb2.StepRun] | None:
        """The nearest earlier committed record of `step`: a run of the same pipeline first,
        else any run with a step of that name; None within `LOOKBACK_RUNS` runs."""
        ks, ns = self.keyspace, current.namespace
        created = current.run.create_time.seconds * 1_000_000_000 + current.run.create_time.nanos
        order_prefix = ks.run_order_prefix(ns)
        start = ks.run_order(ns, created, current.run_id) + b"\0"  # strictly older runs
        fallback: tuple[str, run_pb2.StepRun] | None = None
        scanned = 0
        while scanned < LOOKBACK_RUNS:
            page = await self.store.range(order_prefix, start=start, limit=LOOKBACK_PAGE, keys_only=True)
            if not page.kvs:
                break
            ids = [ks.parse_run_order(kv.key, ns)[1] for kv in page.kvs]
            wanted = [ks.done(ns, run_id, step) for run_id in ids] + [ks.run_index(ns, run_id) for run_id in ids]
            found = await self.store.get_many(wanted)
            for run_id in ids:
                done_kv = found.get(ks.done(ns, run_id, step))
                index_kv = found.get(ks.run_index(ns, run_id))
                if done_kv is None or index_kv is None:
                    continue
                record = _decode_step(done_kv.value, done_kv.key)
                if record.state not in COMMITTED_STEP_STATES or not has_components(record):
                    continue
                summary = run_pb2.Run()
                summary.ParseFromString(index_kv.value)
                if summary.pipeline == current.run.pipeline:
                    return await self._with_run(ns, run_id, step, record)
                if fallback is None:
                    fallback = (run_id, record)
            scanned += len(page.kvs)
            if not page.more:
                break
            start = page.kvs[-1].key + b"\0"
        if fallback is None:
            return None
        return await self._with_run(ns, fallback[0], step, fallback[1])

    async def _with_run(
        self, ns: str, run_id: str, step: str, record: run_pb2.StepRun
    ) -> tuple[RunRecords, run_pb2.StepRun] | None:
        try:
            records = await self.run_records(ns, run_id)
        except NotFound:
            return None  # deleted between the index read and now
        records.done[step] = record
        return records, record

    # Tracing changes ------------------------------------------------------------------

    async def trace_changes(
        self,
        new: RunRecords,
        old: RunRecords,
        step: str,
        changes: Sequence[run_pb2.ComponentChange],
        depth: int,
    ) -> None:
        """Fills in `cause` and `upstream_step` of each input change of `step` (new vs old).

        A parameter input names the parameter and both values; a step-output input names
        the upstream step and, `depth` levels up, that step's own change.
        """
        spec_step = new.step_spec(step)
        if spec_step is None:
            return
        sources = input_sources(spec_step)
        for change in changes:
            if not change.name.startswith(INPUT_PREFIX):
                continue
            source = sources.get(change.name.removeprefix(INPUT_PREFIX))
            if source is None:
                continue
            if source.kind == "parameter":
                before = old.run.parameters.get(source.parameter)
                after = new.run.parameters.get(source.parameter, "")
                was = shorten(before) if before is not None else f"not set in {old.name}"
                change.cause = f"parameter {source.parameter} was {was}, now {shorten(after)}"
            elif source.kind == "literal":
                change.cause = "its literal value changed"
            elif source.kind == "step_output":
                change.upstream_step = source.upstream_step
                change.cause = await self._upstream_cause(new, old, source.upstream_step, source.output, depth)

    async def _upstream_cause(self, new: RunRecords, old: RunRecords, upstream: str, output: str, depth: int) -> str:
        after = await self.done_record(new, upstream)
        before = await self.done_record(old, upstream)
        if after is None or before is None or after.state not in COMMITTED_STEP_STATES:
            return f"upstream {upstream} produced a different {output}"
        if after.outcome.dna == before.outcome.dna:
            return f"upstream {upstream} has the same DNA but produced a different {output}: it is nondeterministic"
        changes = component_changes(await self.components(before), await self.components(after))
        if depth <= 0 or not changes:
            return f"upstream {upstream} re-ran"
        await self.trace_changes(new, old, upstream, changes, depth - 1)
        return f"upstream {upstream} re-ran: {describe_changes(changes)}"

    # ExplainStep ----------------------------------------------------------------------

    async def explain(self, ns: str, run_id: str, record: run_pb2.StepRun) -> run_pb2.StepExplanation:
        """The recorded explanation of `record`, with a hit's provenance and a miss's diff
        against the nearest previous outcome of the same step."""
        explanation = Explanation()
        explanation.CopyFrom(record.explanation)
        if explanation.decision in (Explanation.DECISION_HIT, Explanation.DECISION_RESUMED):
            produced = explanation.outcome.end_time if explanation.outcome.HasField("end_time") else None
            if produced is not None and ", produced " not in explanation.reason:
                when = produced.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
                explanation.reason += f", produced {when}"
            return explanation
        if explanation.decision != Explanation.DECISION_MISS:
            return explanation
        current = await self.run_records(ns, run_id)
        previous = await self.nearest_previous(current, record.step)
        if previous is None:
            return explanation  # the first outcome of this step: nothing to compare with
        old, old_record = previous
        changes = component_changes(await self.components(old_record), await self.components(record))
        await self.trace_changes(current, old, record.step, changes, TRACE_DEPTH)
        explanation.compared_run = old.name
        explanation.compared_step = record.step
        explanation.compared_outcome.CopyFrom(old_record.outcome)
        explanation.changes.extend(changes)
        if changes and explanation.reason == _NO_OUTCOME_REASON:
            explanation.reason = f"miss: {describe_changes(changes)} (compared with {old.name} step {record.step})"
        moved = image_resolution_change(record, old_record)
        if moved:
            explanation.reason += f"; {moved}"
        return explanation

    # DiffRuns -------------------------------------------------------------------------

    async def diff_runs(
        self, name_a: str, name_b: str, page_size: int = 0, page_token: str = ""
    ) -> run_pb2.DiffRunsResponse:
        """One page of every step of two runs, matched by name, classified and ordered (see
        the proto).

        Each page computes the whole ordered diff and answers its slice: the order needs
        every step's kind, and committed records never change, so pages of two finished
        runs fit together exactly (of a run still going, a later page may see a step
        moved to another kind). The token binds the offset to the two runs.
        """
        if page_size < 0 or page_size > MAX_DIFF_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size: must be 0 (meaning {DEFAULT_DIFF_PAGE_SIZE}) to {MAX_DIFF_PAGE_SIZE}", field="page_size"
            )
        offset = _decode_diff_token(page_token, name_a, name_b)
        if not name_a:
            raise InvalidArgument("run_a: is required; name a run, e.g. namespaces/default/runs/r1", field="run_a")
        if not name_b:
            raise InvalidArgument("run_b: is required; name a run, e.g. namespaces/default/runs/r2", field="run_b")
        a = await self.run_records(*parse_run_name(name_a, "run_a"), all_done=True)
        b = await self.run_records(*parse_run_name(name_b, "run_b"), all_done=True)
        names_a = [s.name for s in a.spec.steps] if a.spec is not None else sorted(a.done)
        names_b = [s.name for s in b.spec.steps] if b.spec is not None else sorted(b.done)
        # A run limited to some steps (a replay of a step) is compared on those steps only:
        # the steps it left out were not removed, just not part of it.
        if b.run.options.only_steps:
            names_a = [n for n in names_a if n in set(names_b)]
        if a.run.options.only_steps:
            names_b = [n for n in names_b if n in set(names_a)]
        set_a, set_b = set(names_a), set(names_b)
        ordered = names_b + [n for n in names_a if n not in set_b]
        diffs = [await self._diff_step(a, b, name, name in set_a, name in set_b) for name in ordered]
        rank = {kind: i for i, kind in enumerate(_KIND_ORDER)}
        position = {name: i for i, name in enumerate(ordered)}
        diffs.sort(key=lambda d: (rank[d.kind], position[d.step]))
        size = page_size or DEFAULT_DIFF_PAGE_SIZE
        end = offset + size
        token = _encode_diff_token(end, name_a, name_b) if end < len(diffs) else ""
        return run_pb2.DiffRunsResponse(run_a=a.name, run_b=b.name, steps=diffs[offset:end], next_page_token=token)

    async def _diff_step(self, a: RunRecords, b: RunRecords, step: str, in_a: bool, in_b: bool) -> run_pb2.StepDiff:
        if not in_a:
            return StepDiff(step=step, kind=StepDiff.KIND_ADDED, message=f"only in {b.name}")
        if not in_b:
            return StepDiff(step=step, kind=StepDiff.KIND_REMOVED, message=f"only in {a.name}")
        record_a, record_b = a.done.get(step), b.done.get(step)
        diff = StepDiff(step=step)
        if record_a is not None:
            diff.dna_a = record_a.outcome.dna or record_a.dna
        if record_b is not None:
            diff.dna_b = record_b.outcome.dna or record_b.dna
        uncommitted = [
            f"{_state(record)} in {records.name}"
            for records, record in ((a, record_a), (b, record_b))
            if record is None or record.state not in COMMITTED_STEP_STATES
        ]
        if uncommitted:
            diff.kind = StepDiff.KIND_INCOMPARABLE
            diff.message = "no committed outcome: " + ", ".join(uncommitted)
            return diff
        assert record_a is not None
        assert record_b is not None
        diff.outputs_differ = dict(record_a.outcome.outputs) != dict(record_b.outcome.outputs)
        await self.components(record_a)
        await self.components(record_b)
        moved = image_resolution_change(record_b, record_a)
        if diff.dna_a == diff.dna_b:
            if diff.outputs_differ:
                diff.kind = StepDiff.KIND_NONDETERMINISTIC
                diff.message = "same DNA, different outputs: the step is nondeterministic"
                if moved:
                    diff.message = f"same DNA, different outputs; {moved}, which may be why"
            else:
                diff.kind = StepDiff.KIND_SAME
                diff.message = moved
            return diff
        changes = component_changes(await self.components(record_a), await self.components(record_b))
        await self.trace_changes(b, a, step, changes, 0)
        diff.changes.extend(changes)
        diff.caused_by.extend(sorted({c.upstream_step for c in changes if c.upstream_step}))
        own = [c for c in changes if is_own_change(c)]
        diff.kind = StepDiff.KIND_ROOT_CAUSE if own or not changes else StepDiff.KIND_INPUT_CHANGED
        diff.message = describe_changes(changes) or "DNA differs"
        if moved:
            diff.message += f"; {moved}"
        return diff


def _runs_fingerprint(name_a: str, name_b: str) -> str:
    return hashlib.sha256(f"{name_a}\n{name_b}".encode()).hexdigest()[:16]


def _encode_diff_token(offset: int, name_a: str, name_b: str) -> str:
    """An opaque token: the next offset, bound to the two runs it pages through (AIP-158)."""
    return base64.urlsafe_b64encode(f"diff:{_runs_fingerprint(name_a, name_b)}:{offset}".encode()).decode()


def _decode_diff_token(token: str, name_a: str, name_b: str) -> int:
    if not token:
        return 0
    try:
        kind, fingerprint, offset = base64.urlsafe_b64decode(token.encode()).decode().split(":")
    except ValueError:
        kind, fingerprint, offset = "", "", ""
    if kind != "diff" or not offset.isdigit():
        raise InvalidArgument(
            "page_token: not a token of DiffRuns; pass next_page_token of the previous page, or leave it empty "
            "to start over",
            field="page_token",
        )
    if fingerprint != _runs_fingerprint(name_a, name_b):
        raise InvalidArgument(
            "page_token: it pages through another pair of runs; send the same run_a and run_b as the first page, "
            "or leave it empty to start over",
            field="page_token",
        )
    return int(offset)
