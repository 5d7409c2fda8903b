"""How a run moves forward in etcd: readiness, failure, skipping, completion, cancellation.

Every function here derives the next state from *committed* records and writes it so
that doing it twice, concurrently on several executors, or again after a crash is
harmless (DESIGN.md, data flow 2 and invariant 3):

- ready marks and terminal (`done`) records are created with create-if-absent, in
  batches within etcd's limits, so a 2,000-wide fan-out or skip costs a few dozen
  transactions;
- run records change only in transactions guarded on the run key's mod revision, and
  the run key and its runindex key are always written together;
- a step's failure and the run's `failed_step` are written in one transaction, so a run
  whose steps are all done is FAILED exactly when some step failed.

This module never launches anything and never holds state that another executor would
need: what it caches (steps known to be committed) are immutable facts.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.errors import Internal
from weft_core.keyspace import Keyspace, ready_mark
from weft_core.pipelines import PipelineReader
from weft_core.provenance import run_scope
from weft_core.runs import run_summary
from weft_core.spec import Dag, parse_pipeline_name, run_name
from weft_core.store import MAX_TXN_OPS, KeyValue, Store, absent, lease_is, op_delete, op_get, op_put, unchanged_since

log = logging.getLogger(__name__)

Run = run_pb2.Run
StepRun = run_pb2.StepRun

#: Run states after which nothing changes any more.
TERMINAL_RUN_STATES = frozenset({Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_CANCELLED})
#: Run states in which steps are scheduled and may complete the run.
ACTIVE_RUN_STATES = frozenset({Run.STATE_PENDING, Run.STATE_RUNNING})
#: Step states whose outcome downstream steps may consume.
COMMITTED_STEP_STATES = frozenset({StepRun.STATE_SUCCEEDED, StepRun.STATE_CACHED})


class RunEnded(Exception):
    """The step's run is already terminal (e.g. cancelled while PENDING): nothing more may
    be committed into it; the caller drops the step's ready mark and claim."""


def now() -> Timestamp:
    """The current time as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


_LOG_TAIL_SUFFIX = re.compile(r"; last (?:stderr|log) lines:$")
_TRACEBACK_HEADER = "Traceback (most recent call last):"
_RUNNER_RAISED = re.compile(r"^weft: \S+ raised \S")
_FRAME = re.compile(r'^\s+File ".*", line \d+')
_CARETS = re.compile(r"^\s*[\^~]+\s*$")
#: Bounds on the traceback a run's message quotes: the run record is rewritten with every
#: change of the run and read by every list, so it stays small whatever a step printed.
SUMMARY_TRACEBACK_LINES = 16
SUMMARY_MAX_CHARS = 2000
_SUMMARY_LINE_CHARS = 240


def summary(message: str) -> str:
    """What a run's message says of its failed step's failure message.

    The first line (the runtime's reason, e.g. "exit code 1"), without the log lines that
    follow it; but when those log lines end with a Python traceback (a function step
    that raised, or any Python program), the exception's type and message and the
    traceback's last frames follow, at most SUMMARY_TRACEBACK_LINES lines and
    SUMMARY_MAX_CHARS characters in all: that is what the user needs to see first.
    """
    first, _, tail = message.partition("\n") if message else ("failed", "", "")
    # "; last stderr lines:" (local runtime) and "; last log lines:" (kubernetes).
    head = _LOG_TAIL_SUFFIX.sub("", first.removesuffix(";"))
    if head == first:
        return head[:SUMMARY_MAX_CHARS]
    # Python 3.11's markers under the failing expression (^^^^) line up only in a terminal.
    lines = [line.rstrip() for line in tail.splitlines() if line.strip() and not _CARETS.match(line)]
    # The last traceback is the one that ended the program (a chained one prints last).
    starts = [i for i, line in enumerate(lines) if line.strip() == _TRACEBACK_HEADER]
    if starts:
        quoted = lines[starts[-1] :]
    else:
        # The quoted lines began inside the traceback: from its first frame that is left.
        frame = next((i for i, line in enumerate(lines) if _FRAME.match(line)), None)
        quoted = [_TRACEBACK_HEADER, "  ...", *lines[frame:]] if frame is not None else []
    if len(quoted) < 3:
        # No frame is left: the runner's last line still names the exception
        # ("weft: NAME raised TYPE: TEXT").
        raised = next((line for line in reversed(lines) if _RUNNER_RAISED.match(line)), "")
        return f"{head}: {raised.removeprefix('weft: ')}"[:SUMMARY_MAX_CHARS] if raised else head[:SUMMARY_MAX_CHARS]
    # weft's function runner ends with "weft: NAME raised TYPE: TEXT", which repeats the
    # exception's own last line: said once is enough.
    if len(quoted) > 2 and quoted[-1].startswith("weft: ") and quoted[-1].endswith(quoted[-2]):
        quoted.pop()
    quoted = [line if len(line) <= _SUMMARY_LINE_CHARS else line[: _SUMMARY_LINE_CHARS - 4] + " ..." for line in quoted]
    header, frames, exception = quoted[0], quoted[1:-1], quoted[-1]

    def render(kept: list[str]) -> list[str]:
        elided = ["  ..."] if len(kept) < len(frames) and kept[:1] != ["  ..."] else []
        return [f"{head}: {exception}"[:_SUMMARY_LINE_CHARS], header, *elided, *kept, exception]

    # Drop the outermost frames first: the innermost, where it was raised, matter most.
    kept = frames
    while kept and (len(render(kept)) > SUMMARY_TRACEBACK_LINES or len("\n".join(render(kept))) > SUMMARY_MAX_CHARS):
        kept = kept[1:]
    return "\n".join(render(kept))[:SUMMARY_MAX_CHARS]


def parse_run(kv: KeyValue) -> Run:
    run = Run()
    try:
        run.ParseFromString(kv.value)
    except Exception as error:  # protobuf raises several kinds on garbage
        raise Internal(f"the run record at {kv.key.decode()} does not parse ({error}); it is corrupt") from error
    return run


def parse_step_run(kv: KeyValue) -> StepRun:
    record = StepRun()
    try:
        record.ParseFromString(kv.value)
    except Exception as error:
        raise Internal(f"the step record at {kv.key.decode()} does not parse ({error}); it is corrupt") from error
    return record


def _topological(steps: list[str], dag: Dag) -> list[str]:
    """`steps` ordered so that every step comes after its upstreams among `steps`."""
    members = set(steps)
    waiting = {s: sum(1 for u in dag.upstream_of(s) if u in members) for s in steps}
    order = [s for s in steps if waiting[s] == 0]
    for step in order:  # grows while iterating
        for child in dag.successors(step):
            if child in members:
                waiting[child] -= 1
                if waiting[child] == 0:
                    order.append(child)
    return order


@dataclass(frozen=True)
class RunRef:
    """A run as executors address it, with the spec of its pipeline version."""

    namespace: str
    run_id: str
    spec: pipeline_pb2.PipelineSpec
    dag: Dag
    steps: Mapping[str, pipeline_pb2.Step]

    @property
    def name(self) -> str:
        """The run's resource name, `namespaces/{ns}/runs/{run}`."""
        return run_name(self.namespace, self.run_id)

    def step(self, name: str) -> pipeline_pb2.Step:
        return self.steps[name]


class RunRefs:
    """Builds RunRefs, indexing each pipeline version's steps by name once.

    Specs are immutable and named by their version digest, so the index never goes stale.
    """

    def __init__(self, pipelines: PipelineReader, *, cache_size: int = 64) -> None:
        self.pipelines = pipelines
        self._indexes: OrderedDict[str, Mapping[str, pipeline_pb2.Step]] = OrderedDict()
        self._cache_size = cache_size

    async def of(self, namespace: str, run_id: str, run: Run) -> RunRef:
        """The RunRef of a run record.

        Raises:
            NotFound: The run's pipeline version no longer exists.
        """
        pipeline_ns, pipeline = parse_pipeline_name(run.pipeline, "run.pipeline")
        spec, dag = await self.pipelines.spec(pipeline_ns, pipeline, run.pipeline_version)
        if run.options.only_steps:
            # A replay of some steps: the run is made of them and their upstream only.
            spec = run_scope(spec, run.options.only_steps)
            return RunRef(namespace, run_id, spec, Dag.from_spec(spec), {step.name: step for step in spec.steps})
        index = self._indexes.get(run.pipeline_version)
        if index is None:
            index = {step.name: step for step in spec.steps}
            self._indexes[run.pipeline_version] = index
            while len(self._indexes) > self._cache_size:
                self._indexes.popitem(last=False)
        return RunRef(namespace, run_id, spec, dag, index)


class RunProgress:
    """The etcd transitions of runs and steps that every executor may perform."""

    def __init__(
        self,
        store: Store,
        keyspace: Keyspace,
        *,
        stop_orphan: Callable[[RunRef, str, run_pb2.Attempt, str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        #: Stops an attempt a dead executor left running (a pod), when a cancel ends its step.
        self.stop_orphan = stop_orphan
        # Steps known to have a committed outcome, per run: done records never change, so
        # this can only be incomplete, never wrong. It saves re-reading joins' upstreams.
        self._committed: dict[tuple[str, str], set[str]] = {}

    def committed_in(self, namespace: str, run_id: str) -> set[str]:
        """Steps of the run known to be committed (SUCCEEDED or CACHED): immutable facts."""
        return self._committed.setdefault((namespace, run_id), set())

    def forget(self, namespace: str, run_id: str) -> None:
        """Drops what is cached about a run (call when it reached a terminal state)."""
        self._committed.pop((namespace, run_id), None)

    # Run records ----------------------------------------------------------------------

    async def read_run(self, namespace: str, run_id: str) -> tuple[Run, KeyValue] | None:
        kv = await self.store.get(self.keyspace.run(namespace, run_id))
        return None if kv is None else (parse_run(kv), kv)

    def _run_writes(self, namespace: str, run_id: str, run: Run) -> list[object]:
        # The index holds only the small summary (no parameters): executors and ListRuns
        # read it 1,000 entries at a time.
        return [
            op_put(self.keyspace.run(namespace, run_id), run.SerializeToString()),
            op_put(self.keyspace.run_index(namespace, run_id), run_summary(run).SerializeToString()),
        ]

    async def _update_run(self, namespace: str, run_id: str, change: Callable[[Run], Run | None]) -> Run | None:
        """Applies `change` to the run record until the guarded write wins.

        `change` returns the new run, or None when nothing is to be written (e.g. the run
        is no longer in the state the caller expected). Returns what was written, or None.
        """
        while True:
            found = await self.read_run(namespace, run_id)
            if found is None:
                return None
            run, kv = found
            updated = change(run)
            if updated is None:
                return None
            result = await self.store.txn(
                [unchanged_since(kv.key, kv.mod_revision)], self._run_writes(namespace, run_id, updated)
            )
            if result.succeeded:
                return updated

    async def start_run(self, ref: RunRef) -> bool:
        """Derives a PENDING run's root readiness, then sets it RUNNING.

        Returns True if this call (or an earlier one) left the run RUNNING.
        """
        roots = ref.dag.roots()
        await self.store.create_many_if_absent(
            [(self.keyspace.ready(ref.namespace, ref.run_id, step), ready_mark()) for step in roots]
        )

        def to_running(run: Run) -> Run | None:
            if run.state != Run.STATE_PENDING:
                return None
            started = Run()
            started.CopyFrom(run)
            started.state = Run.STATE_RUNNING
            started.start_time.CopyFrom(now())
            return started

        written = await self._update_run(ref.namespace, ref.run_id, to_running)
        if written is not None:
            log.info("run %s started: %d root step(s) ready", ref.name, len(roots))
            return True
        found = await self.read_run(ref.namespace, ref.run_id)
        if found is not None and found[0].state in TERMINAL_RUN_STATES:
            # Cancelled (or finished) while we derived its roots: those marks are stale.
            await self.store.delete(self.keyspace.ready_run_prefix(ref.namespace, ref.run_id), prefix=True)
        return found is not None and found[0].state == Run.STATE_RUNNING

    async def fail_run(self, namespace: str, run_id: str, message: str) -> None:
        """Ends a run that cannot proceed at all (e.g. its pipeline version is gone)."""

        def to_failed(run: Run) -> Run | None:
            if run.state in TERMINAL_RUN_STATES:
                return None
            failed = Run()
            failed.CopyFrom(run)
            failed.state = Run.STATE_FAILED
            failed.message = message
            failed.end_time.CopyFrom(now())
            return failed

        await self._update_run(namespace, run_id, to_failed)
        await self.store.delete(self.keyspace.ready_run_prefix(namespace, run_id), prefix=True)

    # Readiness ------------------------------------------------------------------------

    async def derive_successors(self, ref: RunRef, step: str) -> list[str]:
        """Creates the ready marks of `step`'s successors whose upstreams are all committed.

        `step` itself must be committed (SUCCEEDED or CACHED). Reading the upstreams of
        a join stops at the first one that is not committed, so a 2,000-wide join costs
        about one read per finishing upstream, not 2,000.

        Returns the successors found ready (their marks may have existed already).
        """
        committed = self._committed.setdefault((ref.namespace, ref.run_id), set())
        committed.add(step)
        ready = [s for s in ref.dag.successors(step) if await self._upstreams_committed(ref, s, committed)]
        if ready:
            await self.create_ready_marks(ref, ready)
        return ready

    async def create_ready_marks(self, ref: RunRef, steps: list[str]) -> None:
        """Creates the ready marks of `steps` that have neither a mark nor a done record.

        A step that is done already must not be marked again: re-deriving readiness after
        a crash (or on the slower of two executors) would walk the whole finished
        downstream once more, one claim after the other.
        """
        ks = self.keyspace
        await self.store.create_many_if_absent(
            [(ks.ready(ref.namespace, ref.run_id, s), ready_mark()) for s in steps],
            unless=[ks.done(ref.namespace, ref.run_id, s) for s in steps],
        )

    async def _upstreams_committed(self, ref: RunRef, step: str, committed: set[str]) -> bool:
        unknown = [u for u in ref.dag.upstream_of(step) if u not in committed]
        # Small batches first: while a wide join is filling up, an uncommitted upstream is
        # usually among the first few read, so most finishers read a handful of records.
        start, size = 0, 8
        while start < len(unknown):
            batch = unknown[start : start + size]
            start, size = start + len(batch), min(size * 4, MAX_TXN_OPS)
            keys = [self.keyspace.done(ref.namespace, ref.run_id, u) for u in batch]
            found = await self.store.get_many(keys)
            for upstream, key in zip(batch, keys, strict=True):
                kv = found.get(key)
                if kv is None or parse_step_run(kv).state not in COMMITTED_STEP_STATES:
                    return False
                committed.add(upstream)
        return True

    # Terminal step records ------------------------------------------------------------

    async def commit_failure(self, ref: RunRef, record: StepRun) -> StepRun | None:
        """Commits a step's final failure and, if it is the run's first, the run's reason.

        One transaction writes the done record (only if absent), the step record and, when
        the run is active and has no failed step yet, the run's `failed_step` and
        `message`: so whoever later finds every step done knows whether the run failed.

        Returns None if this call committed, or the done record that was there first.

        Raises:
            RunEnded: The run is terminal already; nothing was written.
        """
        done_key = self.keyspace.done(ref.namespace, ref.run_id, record.step)
        data = record.SerializeToString()
        while True:
            found = await self.read_run(ref.namespace, ref.run_id)
            if found is None or found[0].state in TERMINAL_RUN_STATES:
                raise RunEnded(f"run {ref.name} ended before step {record.step} could commit its failure")
            run, kv = found
            # Guarded on the run record, so a run that turns terminal meanwhile gets nothing.
            compares: list[object] = [absent(done_key), unchanged_since(kv.key, kv.mod_revision)]
            writes: list[object] = [
                op_put(done_key, data),
                # The done record replaces the step record (each record is written once).
                op_delete(self.keyspace.step(ref.namespace, ref.run_id, record.step)),
            ]
            if run.state in ACTIVE_RUN_STATES and not run.failed_step:
                failed = Run()
                failed.CopyFrom(run)
                failed.failed_step = record.step
                failed.message = f"step {record.step} failed: {summary(record.message)}"
                writes.extend(self._run_writes(ref.namespace, ref.run_id, failed))
            result = await self.store.txn(compares, writes, [op_get(done_key)])
            if result.succeeded:
                return None
            existing = result.range_kvs(0)
            if existing:
                return parse_step_run(existing[0])
            # The run record changed under us (another step failed, a cancel): read it again.

    async def skip_downstream(self, ref: RunRef, failed_step: str) -> int:
        """Marks every transitive downstream step of a failed step SKIPPED (create-if-absent).

        Returns how many done records this call created.
        """
        # Skips are written deepest first (reverse topological order), so whatever part of
        # a walk was written before a crash is closed under "downstream of": a child with a
        # done record has one on all of its downstream steps too, and its subtree is not
        # walked again. 2,000 failing mappers over one shared downstream cost one walk,
        # not 2,000.
        children = list(ref.dag.successors(failed_step))
        if not children:
            return 0
        done_keys = {c: self.keyspace.done(ref.namespace, ref.run_id, c) for c in children}
        found = await self.store.get_many(list(done_keys.values()))
        descendants: list[str] = []
        seen = {failed_step, *(c for c, key in done_keys.items() if key in found)}
        queue = deque(c for c in children if c not in seen)
        for child in queue:
            seen.add(child)
            descendants.append(child)
        while queue:
            for child in ref.dag.successors(queue.popleft()):
                if child not in seen:
                    seen.add(child)
                    descendants.append(child)
                    queue.append(child)
        if not descendants:
            return 0
        end = now()
        items = []
        for name in reversed(_topological(descendants, ref.dag)):
            skipped = StepRun(step=name, state=StepRun.STATE_SKIPPED, message=f"upstream step {failed_step} failed")
            skipped.end_time.CopyFrom(end)
            items.append((self.keyspace.done(ref.namespace, ref.run_id, name), skipped.SerializeToString()))
        created = await self.store.create_many_if_absent(items)
        return len(created)

    async def check_completion(self, ref: RunRef, done_count: int | None = None) -> bool:
        """Ends the run when every step has a done record: FAILED if a step failed, else SUCCEEDED.

        Every writer of a done record calls this after its write, so whoever wrote the last
        one sees them all. `done_count` is the count read in the writer's own commit
        transaction, when it read one (it saves a round trip).

        Returns True if the run is terminal or was made terminal by this call.
        """
        if done_count is None:
            done_count = await self.store.count(self.keyspace.done_prefix(ref.namespace, ref.run_id))
        if done_count < len(ref.dag.steps):
            return False
        counts = await self.step_counts(ref)

        def to_terminal(run: Run) -> Run | None:
            if run.state not in ACTIVE_RUN_STATES:
                return None
            ended = Run()
            ended.CopyFrom(run)
            stamp = now()
            ended.step_counts.clear()
            ended.step_counts.update(counts)
            ended.state = Run.STATE_FAILED if run.failed_step else Run.STATE_SUCCEEDED
            ended.end_time.CopyFrom(stamp)
            if not ended.HasField("start_time"):
                ended.start_time.CopyFrom(stamp)
            return ended

        written = await self._update_run(ref.namespace, ref.run_id, to_terminal)
        if written is not None:
            log.info("run %s %s", ref.name, Run.State.Name(written.state).removeprefix("STATE_"))
        return True

    async def step_counts(self, ref: RunRef) -> dict[str, int]:
        """Steps by terminal state name (`SUCCEEDED`, `CACHED`...), read once as the run ends,
        so that listings of finished runs can show them without reading every step."""
        done = await self.store.range_all(self.keyspace.done_prefix(ref.namespace, ref.run_id))
        counts: dict[str, int] = {}
        for kv in done.kvs:
            name = StepRun.State.Name(parse_step_run(kv).state).removeprefix("STATE_")
            counts[name] = counts.get(name, 0) + 1
        return counts

    # Cancellation ---------------------------------------------------------------------

    async def finalize_cancel(self, ref: RunRef) -> bool:
        """Finishes cancelling a run once no step of it is claimed any more.

        Writes done CANCELLED for every unfinished step, deletes its ready marks and sets
        the run CANCELLED. Several executors may do this at once. Returns True if the run
        is CANCELLED afterwards.
        """
        found = await self.read_run(ref.namespace, ref.run_id)
        if found is None or found[0].state != Run.STATE_CANCELLING:
            return found is not None and found[0].state == Run.STATE_CANCELLED
        if await self.store.count(self.keyspace.claims_run_prefix(ref.namespace, ref.run_id)):
            return False  # whoever holds a claim finalizes when it lets go (or its lease expires)
        reason = found[0].message
        done_prefix = self.keyspace.done_prefix(ref.namespace, ref.run_id)
        listed = await self.store.range_all(done_prefix, keys_only=True)
        done = {self.keyspace.tail(kv.key, done_prefix) for kv in listed.kvs}
        if self.stop_orphan is not None:
            # No claim is left, so an attempt still RUNNING in a step record was launched by
            # an executor that died: its pod would run on for hours after the run is over.
            steps_prefix = self.keyspace.steps_prefix(ref.namespace, ref.run_id)
            for kv in (await self.store.range_all(steps_prefix)).kvs:
                name = self.keyspace.tail(kv.key, steps_prefix)
                if name in done:
                    continue
                for attempt in parse_step_run(kv).attempts:
                    if attempt.state == run_pb2.Attempt.STATE_RUNNING and attempt.handle:
                        await self.stop_orphan(ref, name, attempt, f"run cancelled{': ' + reason if reason else ''}")
        end = now()
        items = []
        for name in ref.dag.steps:
            if name not in done:
                cancelled = StepRun(
                    step=name, state=StepRun.STATE_CANCELLED, message=f"run cancelled{': ' + reason if reason else ''}"
                )
                cancelled.end_time.CopyFrom(end)
                items.append((self.keyspace.done(ref.namespace, ref.run_id, name), cancelled.SerializeToString()))
        await self.store.create_many_if_absent(items)
        await self.store.delete(self.keyspace.ready_run_prefix(ref.namespace, ref.run_id), prefix=True)
        counts = await self.step_counts(ref)

        def to_cancelled(run: Run) -> Run | None:
            if run.state != Run.STATE_CANCELLING:
                return None
            ended = Run()
            ended.CopyFrom(run)
            ended.step_counts.clear()
            ended.step_counts.update(counts)
            ended.state = Run.STATE_CANCELLED
            ended.end_time.CopyFrom(now())
            return ended

        written = await self._update_run(ref.namespace, ref.run_id, to_cancelled)
        if written is not None:
            log.info("run %s cancelled", ref.name)
        return True

    # Claims ---------------------------------------------------------------------------

    async def release_claim(self, namespace: str, run_id: str, step: str, lease: int) -> bool:
        """Deletes only a step's claim, if `lease` still holds it, keeping its ready mark so
        that the step is claimed again later. Returns False when the claim was not ours."""
        claim = self.keyspace.claim(namespace, run_id, step)
        result = await self.store.txn([lease_is(claim, lease)], [op_delete(claim)])
        return result.succeeded

    async def release(self, namespace: str, run_id: str, step: str, lease: int) -> bool:
        """Deletes a step's ready mark and claim in one transaction, if `lease` still holds
        the claim. Returns False when the claim was no longer ours (left to its holder)."""
        claim = self.keyspace.claim(namespace, run_id, step)
        result = await self.store.txn(
            [lease_is(claim, lease)],
            [op_delete(self.keyspace.ready(namespace, run_id, step)), op_delete(claim)],
        )
        return result.succeeded
