"""The forensic timeline of a run: what happened to it and to each step, when, where, why.

    history = await read_run_history(store, keyspace, ns, run_id)   # etcd
    events = build_timeline(history, spans)                          # pure

The run's etcd records are the authority on what happened (they are written before
anything is reported, and exist whether or not a span was ever exported): the run record
gives submitted/started/finished, each step's final record its readiness, attempts (with
their executor, handle, times and fate), cache decision and end, and the history of its
step record (etcd keeps every revision until compaction) each claim by an executor.
Spans, when stored, add precision and detail: the moment an executor started on a claim
(`weft.step`), the cache lookup, where a process or pod ran (`host.name`, `process.pid`,
`k8s.node.name`, `k8s.pod.name`), the output upload, and the spans a step's own code
recorded. An event found in both is marked SOURCE_BOTH.

Events are ordered by time, and within one step never out of lifecycle order (ready,
claimed, decided, launched, ended, committed) even when two clocks disagree slightly.
This module only reads: it never writes etcd or the span store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from weft.v1 import run_pb2, trace_pb2
from weft_core.errors import Internal, NotFound
from weft_core.keyspace import Keyspace
from weft_core.spec import run_name
from weft_core.store import Compacted, Store
from weft_core.telemetry import ATTR_ATTEMPT, ATTR_STEP
from weft_tracer.spans import timestamp_at

Event = trace_pb2.TimelineEvent
Kind = trace_pb2.TimelineEvent.Kind
Source = trace_pb2.TimelineEvent.Source
StepRun = run_pb2.StepRun
Attempt = run_pb2.Attempt

#: Lifecycle rank of each kind: breaks ties in time and keeps a step's events causal.
_RANK = {
    Event.KIND_SUBMITTED: 0,
    Event.KIND_RUN_STARTED: 1,
    Event.KIND_READY: 2,
    Event.KIND_CLAIMED: 3,
    Event.KIND_CACHE_HIT: 4,
    Event.KIND_CACHE_MISS: 4,
    Event.KIND_RETRIED: 5,
    Event.KIND_LAUNCHED: 6,
    Event.KIND_SPAN: 7,
    Event.KIND_OUTPUTS_UPLOADED: 8,
    Event.KIND_ATTEMPT_FAILED: 9,
    Event.KIND_LOST: 9,
    Event.KIND_LOSER: 10,
    Event.KIND_COMMITTED: 11,
    Event.KIND_FAILED: 11,
    Event.KIND_SKIPPED: 11,
    Event.KIND_CANCELLED: 11,
    Event.KIND_RUN_FINISHED: 12,
}

_LOST_COMMIT = "lost the commit"


@dataclass
class RunHistory:
    """What etcd knows of one run.

    Attributes:
        run: The run record.
        records: Each step's latest record (the done record, with attempts the step
            record has beyond it, such as losers).
        revisions: Every stored revision of each step's record, oldest first.
        step_order: Step names in the order they first appeared in the history.
        compacted: etcd had compacted part of the history: `revisions` holds only the
            latest records.
    """

    run: run_pb2.Run
    records: dict[str, StepRun] = field(default_factory=dict)
    revisions: dict[str, list[StepRun]] = field(default_factory=dict)
    step_order: list[str] = field(default_factory=list)
    compacted: bool = False


def _parse_step(value: bytes, key: bytes) -> StepRun:
    record = StepRun()
    try:
        record.ParseFromString(value)
    except DecodeError as error:
        raise Internal(f"the step record at {key.decode(errors='replace')} is corrupt: {error}") from error
    return record


async def read_run_history(store: Store, keyspace: Keyspace, ns: str, run_id: str) -> RunHistory:
    """Reads a run's records and the history of its step records from etcd.

    Raises:
        NotFound: The run does not exist.
    """
    prefix = keyspace.run_prefix(ns, run_id)
    listed = await store.range_all(prefix)
    run_key = keyspace.run(ns, run_id)
    steps_prefix, done_prefix = keyspace.steps_prefix(ns, run_id), keyspace.done_prefix(ns, run_id)
    run_kv = next((kv for kv in listed.kvs if kv.key == run_key), None)
    if run_kv is None:
        raise NotFound(f'run "{run_name(ns, run_id)}" does not exist; list runs with `weft runs list`')
    run = run_pb2.Run()
    try:
        run.ParseFromString(run_kv.value)
    except DecodeError as error:
        raise Internal(f"the run record at {run_key.decode()} is corrupt: {error}") from error
    history = RunHistory(run=run)
    done: dict[str, StepRun] = {}
    latest: dict[str, StepRun] = {}
    for kv in listed.kvs:
        if kv.key.startswith(done_prefix):
            done[keyspace.tail(kv.key, done_prefix)] = _parse_step(kv.value, kv.key)
        elif kv.key.startswith(steps_prefix):
            latest[keyspace.tail(kv.key, steps_prefix)] = _parse_step(kv.value, kv.key)

    # Every revision of the step records, from the run's creation to now: a watch from a
    # past revision replays etcd's history (until compaction). A commit deletes the step
    # record in the transaction that writes the done record, so a finished run lists no
    # step record at all: the watch covers the whole run prefix and ends once the newest
    # key listed above went by (a put of a key still present, so it is in the history;
    # any step record write after it would itself have been listed).
    newest = max((kv.mod_revision for kv in listed.kvs), default=0)
    if newest > run_kv.create_revision:
        try:
            watch = store.watch(prefix, run_kv.create_revision)
            async with contextlib.aclosing(watch) as batches:
                async for batch in batches:
                    for event in batch:
                        if event.deleted or not event.key.startswith(steps_prefix):
                            continue
                        step = keyspace.tail(event.key, steps_prefix)
                        history.revisions.setdefault(step, []).append(_parse_step(event.value, event.key))
                    if max((e.revision for e in batch), default=0) >= newest:
                        break
        except Compacted:
            history.compacted = True
            history.revisions = {step: [record] for step, record in latest.items()}
    for step in [*latest, *done]:
        if step not in history.step_order:
            history.step_order.append(step)
    for step in history.revisions:
        if step not in history.step_order:
            history.step_order.append(step)
    for step in history.step_order:
        record = StepRun()
        record.CopyFrom(done.get(step) or latest[step])
        newer = latest.get(step)
        if newer is not None and len(newer.attempts) > len(record.attempts):
            # A loser is appended to the step record after the done record was written.
            del record.attempts[:]
            record.attempts.extend(newer.attempts)
        record.step = step
        history.records[step] = record
    return history


def _nanos(stamp: Timestamp) -> int:
    return stamp.ToNanoseconds() if stamp.seconds or stamp.nanos else 0


@dataclass
class _SpanIndex:
    """The spans of a run's trace, found by what they stand for."""

    by_id: dict[str, trace_pb2.Span]
    step_spans: dict[str, list[trace_pb2.Span]]  # weft.step spans by step
    attempt_spans: dict[tuple[str, int], trace_pb2.Span]  # weft.attempt by (step, attempt)
    children: dict[str, list[trace_pb2.Span]]

    @classmethod
    def of(cls, spans: Iterable[trace_pb2.Span]) -> _SpanIndex:
        index = cls({}, {}, {}, {})
        for span in spans:
            index.by_id[span.span_id] = span
            index.children.setdefault(span.parent_span_id, []).append(span)
        for span in index.by_id.values():
            step = span.attributes.get(ATTR_STEP, "")
            if span.name == "weft.step" and step:
                index.step_spans.setdefault(step, []).append(span)
            elif span.name == "weft.attempt" and step:
                with contextlib.suppress(ValueError):
                    index.attempt_spans[(step, int(span.attributes.get(ATTR_ATTEMPT, "0")))] = span
        for found in index.step_spans.values():
            found.sort(key=lambda s: _nanos(s.start_time))
        return index

    def child(self, parent: trace_pb2.Span | None, name: str) -> trace_pb2.Span | None:
        if parent is None:
            return None
        return next((c for c in self.children.get(parent.span_id, ()) if c.name == name), None)

    def step_of(self, span: trace_pb2.Span) -> str:
        """The step a span belongs to: its own `weft.step`, else its nearest ancestor's."""
        seen: set[str] = set()
        current: trace_pb2.Span | None = span
        while current is not None and current.span_id not in seen:
            seen.add(current.span_id)
            step = current.attributes.get(ATTR_STEP, "")
            if step:
                return step
            current = self.by_id.get(current.parent_span_id)
        return ""


def _where(attempt: Attempt, attempt_span: trace_pb2.Span | None, launch: trace_pb2.Span | None) -> str:
    """Where an attempt ran, from the semantic-convention attributes of its span and its
    launch span (the pod's node is known only after the launch, on the attempt's span),
    else from its handle."""
    attrs: dict[str, str] = {}
    for span in (attempt_span, launch):
        if span is not None:
            attrs.update((key, value) for key, value in span.attributes.items() if value)
    pod = attrs.get("k8s.pod.name", "")
    if pod:
        node = attrs.get("k8s.node.name", "")
        namespace = attrs.get("k8s.namespace.name", "")
        parts = [f"node {node}"] if node else []
        parts.append(f"pod {namespace}/{pod}" if namespace else f"pod {pod}")
        return " ".join(parts)
    pid = attrs.get("process.pid", "")
    host = attrs.get("host.name", "")
    if pid or host:
        return " ".join(p for p in (f"host {host}" if host else "", f"pid {pid}" if pid else "") if p)
    if attempt.handle:
        return f"pid {attempt.handle}" if attempt.handle.isdigit() else f"pod {attempt.handle}"
    return ""


class _StepEvents:
    """Collects one step's events in lifecycle order."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.events: list[Event] = []

    def add(
        self,
        kind: int,
        nanos: int,
        source: int,
        *,
        attempt: int = 0,
        executor: str = "",
        where: str = "",
        message: str = "",
        span: trace_pb2.Span | None = None,
    ) -> None:
        if not nanos:
            return  # a transition whose time nobody recorded cannot be placed
        self.events.append(
            Event(
                time=timestamp_at(nanos),
                kind=kind,  # type: ignore[arg-type]
                step=self.step,
                attempt=attempt,
                executor=executor,
                where=where,
                message=message,
                source=source,  # type: ignore[arg-type]
                span_id=span.span_id if span is not None else "",
            )
        )


def _claims(revisions: Sequence[StepRun], record: StepRun) -> list[str]:
    """Executors that claimed the step, in order (one entry per claim)."""
    claims: list[str] = []
    previous = ""
    for revision in revisions:
        executor = revision.executor
        if executor and executor != previous:
            claims.append(executor)
        previous = executor or previous
    if not claims:
        executor = record.executor or (record.attempts[-1].executor if record.attempts else "")
        if executor:
            claims.append(executor)
    return claims


def _step_events(step: str, history: RunHistory, spans: _SpanIndex) -> list[Event]:
    record = history.records[step]
    out = _StepEvents(step)
    out.add(Event.KIND_READY, _nanos(record.ready_time), Source.SOURCE_ETCD)

    # Claims: each executor that took the step, timed by its weft.step span when stored.
    step_spans = list(spans.step_spans.get(step, []))
    claimed_spans: dict[int, trace_pb2.Span] = {}
    claims = _claims(history.revisions.get(step, []), record)
    for index, executor in enumerate(claims):
        first_attempt = next((a for a in record.attempts if a.executor == executor), None)
        span = None
        if first_attempt is not None:
            attempt_span = spans.attempt_spans.get((step, first_attempt.number))
            span = spans.by_id.get(attempt_span.parent_span_id) if attempt_span is not None else None
        if span is None and index == len(claims) - 1 and step_spans:
            span = step_spans[-1]  # the last claim (a cache hit launches nothing)
        if span is not None:
            claimed_spans[index] = span
            with contextlib.suppress(ValueError):
                step_spans.remove(span)
        nanos = _nanos(span.start_time) if span is not None else 0
        if not nanos and first_attempt is not None:
            nanos = _nanos(first_attempt.start_time)
            # Without its span, a takeover's claim is placed no later than the moment the
            # new claimer marked the previous attempt LOST (it claims, then marks).
            before = [a for a in record.attempts if a.number < first_attempt.number]
            if before and before[-1].state == Attempt.STATE_LOST and _nanos(before[-1].end_time):
                nanos = min(nanos, _nanos(before[-1].end_time))
        if not nanos:
            nanos = _nanos(record.end_time) or _nanos(record.ready_time)
        out.add(
            Event.KIND_CLAIMED,
            nanos,
            Source.SOURCE_BOTH if span is not None else Source.SOURCE_ETCD,
            executor=executor,
            span=span,
        )

    # The cache decision: one per lookup span, else the record's explanation.
    explanation = record.explanation
    reason = explanation.reason
    lookups = [
        lookup
        for span in [*claimed_spans.values(), *spans.step_spans.get(step, [])]
        if (lookup := spans.child(span, "weft.cache_lookup")) is not None
    ]
    unique_lookups = list({lookup.span_id: lookup for lookup in lookups}.values())
    unique_lookups.sort(key=lambda s: _nanos(s.start_time))
    decision_kind = {
        run_pb2.StepExplanation.DECISION_HIT: Event.KIND_CACHE_HIT,
        run_pb2.StepExplanation.DECISION_RESUMED: Event.KIND_CACHE_HIT,
        run_pb2.StepExplanation.DECISION_MISS: Event.KIND_CACHE_MISS,
    }
    final_kind = decision_kind.get(explanation.decision, 0)
    for lookup in unique_lookups:
        # `weft.cache` (hit/miss/resumed) is the attribute the design names; today's
        # executors write `weft.cache.decision` (DECISION_HIT...): either is understood.
        name = lookup.attributes.get("weft.cache", "") or lookup.attributes.get("weft.cache.decision", "")
        hits = {"DECISION_HIT", "DECISION_RESUMED", "hit", "resumed"}
        kind = Event.KIND_CACHE_HIT if name in hits else Event.KIND_CACHE_MISS
        same = kind == final_kind
        out.add(
            kind,
            _nanos(lookup.end_time),
            Source.SOURCE_BOTH if same else Source.SOURCE_SPAN,
            executor=claims[-1] if claims and lookup is unique_lookups[-1] else "",
            message=reason if same else "",
            span=lookup,
        )
    if not unique_lookups and final_kind:
        decided = _nanos(record.attempts[0].start_time) if record.attempts else _nanos(record.end_time)
        out.add(final_kind, decided, Source.SOURCE_ETCD, executor=claims[-1] if claims else "", message=reason)

    # Attempts: launch, then how each ended.
    previous: Attempt | None = None
    for attempt in record.attempts:
        attempt_span = spans.attempt_spans.get((step, attempt.number))
        launch = spans.child(attempt_span, "weft.launch")
        started = _nanos(attempt.start_time)
        if previous is not None and previous.state == Attempt.STATE_FAILED and attempt.number > previous.number:
            out.add(
                Event.KIND_RETRIED,
                started,
                Source.SOURCE_ETCD,
                attempt=attempt.number,
                executor=attempt.executor,
                message=f"attempt {attempt.number} after attempt {previous.number} failed: "
                f"{previous.message.splitlines()[0] if previous.message else 'failed'}",
            )
        out.add(
            Event.KIND_LAUNCHED,
            started,
            Source.SOURCE_BOTH if launch is not None else Source.SOURCE_ETCD,
            attempt=attempt.number,
            executor=attempt.executor,
            where=_where(attempt, attempt_span, launch),
            span=launch,
        )
        ended = _nanos(attempt.end_time)
        if attempt.state == Attempt.STATE_SUCCEEDED and attempt.message.startswith(_LOST_COMMIT):
            out.add(
                Event.KIND_LOSER,
                ended,
                Source.SOURCE_ETCD,
                attempt=attempt.number,
                executor=attempt.executor,
                message=attempt.message,
            )
        elif attempt.state == Attempt.STATE_SUCCEEDED:
            upload = spans.child(attempt_span, "weft.output_upload")
            out.add(
                Event.KIND_OUTPUTS_UPLOADED,
                _nanos(upload.end_time) if upload is not None else ended,
                Source.SOURCE_BOTH if upload is not None else Source.SOURCE_ETCD,
                attempt=attempt.number,
                executor=attempt.executor,
                message=", ".join(f"{name} {digest[:19]}" for name, digest in sorted(attempt.output_digests.items())),
                span=upload,
            )
        elif attempt.state in (Attempt.STATE_FAILED, Attempt.STATE_LOST, Attempt.STATE_CANCELLED):
            kind = {
                Attempt.STATE_FAILED: Event.KIND_ATTEMPT_FAILED,
                Attempt.STATE_LOST: Event.KIND_LOST,
                Attempt.STATE_CANCELLED: Event.KIND_CANCELLED,
            }[attempt.state]
            out.add(
                kind,
                ended,
                Source.SOURCE_BOTH if attempt_span is not None else Source.SOURCE_ETCD,
                attempt=attempt.number,
                executor=attempt.executor,
                message=attempt.message,
                span=attempt_span,
            )
        previous = attempt

    # The step's end.
    end_kind = {
        StepRun.STATE_SUCCEEDED: Event.KIND_COMMITTED,
        StepRun.STATE_CACHED: Event.KIND_COMMITTED,
        StepRun.STATE_FAILED: Event.KIND_FAILED,
        StepRun.STATE_SKIPPED: Event.KIND_SKIPPED,
        StepRun.STATE_CANCELLED: Event.KIND_CANCELLED,
    }.get(record.state)
    if end_kind is not None:
        state = StepRun.State.Name(record.state).removeprefix("STATE_")
        message = record.message or state
        if record.reused_from_run:
            message = f"{state}, reused from {record.reused_from_run}"
        # A commit is placed when its transaction was sent: its commit span's start, else
        # the commit time the executor wrote into the outcome, else the record's end (when
        # the attempt ended). Not the span's end: the same transaction creates the
        # successors' ready marks, stamped just before it is sent, and a successor must
        # never look ready before the commit that made it so.
        commits = [
            commit
            for span in spans.step_spans.get(step, [])
            if (commit := spans.child(span, "weft.commit")) is not None and commit.attributes.get("weft.state") == state
        ]
        commit_span = commits[-1] if commits else None
        committed = _nanos(record.outcome.commit_time) if record.state == StepRun.STATE_SUCCEEDED else 0
        out.add(
            end_kind,
            _nanos(commit_span.start_time) if commit_span is not None else committed or _nanos(record.end_time),
            Source.SOURCE_BOTH if commit_span is not None else Source.SOURCE_ETCD,
            span=commit_span,
            executor=record.outcome.executor if record.state == StepRun.STATE_SUCCEEDED else record.executor,
            message=message,
        )
    return out.events


def build_timeline(history: RunHistory, spans: Sequence[trace_pb2.Span]) -> list[Event]:
    """The run's timeline in order, with `sequence` numbers set (see the module docstring)."""
    run = history.run
    index = _SpanIndex.of(spans)
    run_events = _StepEvents("")
    pipeline = run.pipeline + (f"@{run.pipeline_version[:19]}" if run.pipeline_version else "")
    run_events.add(Event.KIND_SUBMITTED, _nanos(run.create_time), Source.SOURCE_ETCD, message=pipeline)
    run_events.add(Event.KIND_RUN_STARTED, _nanos(run.start_time), Source.SOURCE_ETCD)
    if run.state in (run_pb2.Run.STATE_SUCCEEDED, run_pb2.Run.STATE_FAILED, run_pb2.Run.STATE_CANCELLED):
        state = run_pb2.Run.State.Name(run.state).removeprefix("STATE_")
        run_events.add(
            Event.KIND_RUN_FINISHED,
            _nanos(run.end_time),
            Source.SOURCE_ETCD,
            message=f"{state}: {run.message}" if run.message else state,
        )
    groups = [run_events.events]
    for step in history.step_order:
        groups.append(_step_events(step, history, index))

    # Spans of the step's own code (and anything else not weft's): name and step.
    user = _StepEvents("")
    for span in spans:
        if span.name.startswith("weft.") or span.service.startswith("weft-"):
            continue
        user.step = index.step_of(span)
        user.add(Event.KIND_SPAN, _nanos(span.start_time), Source.SOURCE_SPAN, message=span.name, span=span)
    by_step: dict[str, list[Event]] = {}
    for event in user.events:
        by_step.setdefault(event.step, []).append(event)
    for group in groups:
        if group and group[0].step in by_step:
            group.extend(by_step.pop(group[0].step))
    groups.extend(by_step.values())

    keyed: list[tuple[int, int, int, int, Event]] = []
    for group_number, group in enumerate(groups):
        if group_number == 0:
            ordered_group = sorted(group, key=lambda e: (_RANK.get(e.kind, 7), e.time.ToNanoseconds()))
        else:
            ordered_group = _causal(group)
        # Within a step, lifecycle order wins over a clock that disagrees by a little:
        # an event is placed no earlier than the one before it.
        floor = 0
        for position, event in enumerate(ordered_group):
            floor = max(floor, event.time.ToNanoseconds())
            last = 1 if event.kind == Event.KIND_RUN_FINISHED else 0
            keyed.append((floor, last, group_number, position, event))
    keyed.sort(key=lambda item: item[:4])
    ordered = [item[4] for item in keyed]
    for sequence, event in enumerate(ordered):
        event.sequence = sequence
    return ordered


def _causal(events: list[Event]) -> list[Event]:
    """One step's events in lifecycle order.

    Readiness, then each attempt's events (retried, launched, ended) by attempt number,
    then the step's end. Claims and cache decisions go in by time among them: a second
    executor's claim comes after the first attempt started and before it was marked
    LOST (the new claimer marks it). Spans of the step's own code go in by time too.
    """
    anchored = {Event.KIND_CLAIMED, Event.KIND_CACHE_HIT, Event.KIND_CACHE_MISS}

    def key(event: Event) -> tuple[int, int, int]:
        rank = _RANK.get(event.kind, 7)
        if event.kind == Event.KIND_READY:
            return (-1, rank, event.time.ToNanoseconds())
        if rank >= _RANK[Event.KIND_COMMITTED]:
            return (1 << 30, rank, event.time.ToNanoseconds())
        return (event.attempt, rank, event.time.ToNanoseconds())

    base = sorted((e for e in events if e.kind not in anchored and e.kind != Event.KIND_SPAN), key=key)
    timed = sorted((e for e in events if e.kind in anchored), key=lambda e: (e.time.ToNanoseconds(), _RANK[e.kind]))
    spans = sorted((e for e in events if e.kind == Event.KIND_SPAN), key=lambda e: e.time.ToNanoseconds())
    return _merge_by_time(_merge_by_time(base, timed), spans)


def _merge_by_time(base: list[Event], extra: list[Event]) -> list[Event]:
    """`base` in its order, with each of `extra` inserted before the first base event later
    than it (and never before an earlier-ranked event of the same kind family)."""
    out = list(base)
    for event in extra:
        nanos = event.time.ToNanoseconds()
        position = len(out)
        for i, other in enumerate(out):
            if other.time.ToNanoseconds() > nanos or (
                other.time.ToNanoseconds() == nanos and _RANK.get(other.kind, 7) > _RANK.get(event.kind, 7)
            ):
                position = i
                break
        out.insert(position, event)
    return out
