"""RunService: creates runs, reports and streams their progress, cancels, resumes, explains.

The api only ever writes the run record (CreateRun, CancelRun, ResumeRun); executors
write everything else under the run (step and done records, ready marks, outcomes). What
a client sees of a run is synthesized from those committed records on every read, so the
api keeps no state and can be killed at any moment (invariant 5):

- CreateRun writes the run key, its runindex summary, its runorder key and the request key
  in ONE transaction, and nothing else: a run is wholly visible or not at all (DESIGN.md,
  data flow step 1). Parameter values are inline in the run record; their blobs are
  written by the executor before an attempt reads them, so CreateRun does no file I/O
  and a refused call leaves nothing behind.
- ListRuns pages through the runorder keys (newest first) and reads only the small
  runindex summaries (no parameters): a page never reads the namespace's whole index.
- A step's state is its done record if present, else its step record, else READY if a
  ready mark exists, else WAITING; steps of a CANCELLED run without a done record show
  CANCELLED. GetRun reads these with a few paged range reads at one revision, never one
  read per step.
- WatchRun is a snapshot at revision R followed by one etcd watch of the run's prefix
  from R + 1, so events come in commit order and a client resumes by revision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import string
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from weft.v1 import executor_pb2, executor_pb2_grpc, pipeline_pb2, run_pb2, run_pb2_grpc
from weft_api.group_commit import GroupCommit
from weft_api.lineage import LineageReader
from weft_api.listing import check_request_id, decode_token, encode_token, page_size
from weft_api.provenance import Provenance
from weft_core.auth import current_subject
from weft_core.blobs import BlobStore, digest_of
from weft_core.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from weft_core.keyspace import Keyspace, ready_time_of
from weft_core.pipelines import PipelineReader
from weft_core.provenance import restore_spilled, run_scope
from weft_core.requests import RequestIdLeases, RequestRecord, request_digest
from weft_core.runs import run_summary
from weft_core.spec import (
    check_dns_label,
    label_problems,
    parse_namespace,
    parse_pipeline_name,
    parse_run_name,
    pipeline_name,
    raise_problems,
    run_name,
)
from weft_core.store import Compacted, KeyValue, LeaseNotFound, Store, absent, op_get, op_put, unchanged_since
from weft_core.telemetry import ATTR_RUN, run_root_span
from weft_core.tls import Peer

log = logging.getLogger(__name__)

Run = run_pb2.Run
StepRun = run_pb2.StepRun

TERMINAL_RUN_STATES = frozenset({Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_CANCELLED})
#: Largest parameter value kept in the run record (larger data belongs in step outputs).
MAX_PARAMETER_BYTES = 64 * 1024
#: Largest run record (run + runindex are written together, both under etcd's request limit).
MAX_RUN_RECORD_BYTES = 256 * 1024
#: Keys read per page while reading a run's records.
READ_PAGE = 1000
#: Most runs one filtered ListRuns call looks at before it answers a partial page.
LIST_SCAN_LIMIT = 10_000
#: Attempts at a guarded write of the run record before giving up with ABORTED.
WRITE_ATTEMPTS = 16
#: Tries at picking an unused generated run id.
RUN_ID_ATTEMPTS = 8
#: Chunk size of log streams read from the artifact store.
LOG_CHUNK_BYTES = 1024 * 1024
#: Pipelines whose head CreateRun remembers (each entry is a few hundred bytes).
HEAD_CACHE_SIZE = 4096

_RUN_ID_ALPHABET = string.ascii_lowercase + string.digits


def _check_step_options(spec: pipeline_pb2.PipelineSpec, options: run_pb2.RunOptions) -> None:
    """INVALID_ARGUMENT unless every step `options` names is a step of the version."""
    known = {step.name for step in spec.steps}
    for field_name in ("only_steps", "rerun_steps"):
        for i, step in enumerate(getattr(options, field_name)):
            if step not in known:
                field = f"run.options.{field_name}[{i}]"
                raise InvalidArgument(
                    f'{field}: the pipeline version has no step "{step}"; name one of its steps', field=field
                )


class OutOfRange(ServiceError):
    """A requested revision is outside what etcd has: compacted, or beyond its current revision."""

    code = grpc.StatusCode.OUT_OF_RANGE


def check_view(view: int) -> int:
    """`view` if it is a RunView value.

    Raises:
        InvalidArgument: Naming `view`, for a number the enum does not have.
    """
    if view not in run_pb2.RunView.values():
        raise InvalidArgument(
            f"view: {view} is not a run view; use RUN_VIEW_BASIC or RUN_VIEW_FULL (or leave it unset)", field="view"
        )
    return view


def state_name(state: int) -> str:
    """`SUCCEEDED` for StepRun.STATE_SUCCEEDED (the keys of Run.step_counts)."""
    return StepRun.State.Name(state).removeprefix("STATE_")


def generate_run_id(pipeline: str) -> str:
    """`<pipeline>-<5 random lower-case letters and digits>`, at most 63 characters."""
    # One draw from the system's randomness (not one per character: each is a syscall).
    number = secrets.randbelow(len(_RUN_ID_ALPHABET) ** 5)
    suffix = ""
    for _ in range(5):
        number, index = divmod(number, len(_RUN_ID_ALPHABET))
        suffix += _RUN_ID_ALPHABET[index]
    return f"{pipeline[: 63 - 6].rstrip('-')}-{suffix}"


def resolve_parameters(
    spec: pipeline_pb2.PipelineSpec, given: Mapping[str, str], pipeline: str, field: str = "run.parameters"
) -> dict[str, str]:
    """Every declared parameter's value: given, else its default.

    Raises:
        InvalidArgument: Naming each unknown, missing (required) or too large parameter.
    """
    declared = {p.name: p for p in spec.parameters}
    known = ", ".join(declared) or "none"
    problems: list[tuple[str, str]] = []
    for name in given:
        if name not in declared:
            problems.append(
                (f'{field}["{name}"]', f'pipeline "{pipeline}" has no parameter "{name}" (its parameters: {known})')
            )
    values: dict[str, str] = {}
    for parameter in spec.parameters:
        if parameter.name in given:
            values[parameter.name] = given[parameter.name]
        elif parameter.HasField("default_value"):
            values[parameter.name] = parameter.default_value
        else:
            problems.append(
                (
                    f'{field}["{parameter.name}"]',
                    f'parameter "{parameter.name}" is required (it has no default); pass it, '
                    f"e.g. `weft run {pipeline} -p {parameter.name}=VALUE`",
                )
            )
    for name, value in values.items():
        size = len(value.encode())
        if size > MAX_PARAMETER_BYTES:
            problems.append(
                (
                    f'{field}["{name}"]',
                    f"the value has {size} bytes, over the limit of {MAX_PARAMETER_BYTES}; pass large data "
                    "as a step output or a file a step downloads",
                )
            )
    raise_problems(problems)
    return values


def _decode(message: type, kv_value: bytes, key: bytes) -> object:
    record = message()
    try:
        record.ParseFromString(kv_value)
    except Exception as error:  # protobuf raises DecodeError (or others) on garbage
        raise Internal(f"the record at {key.decode()} does not parse as {message.__name__}; it is corrupt") from error
    return record


def decode_run(kv_value: bytes, key: bytes, mod_revision: int) -> run_pb2.Run:
    """A stored run record, with its etag (the mod revision)."""
    run = _decode(Run, kv_value, key)
    assert isinstance(run, Run)
    run.etag = str(mod_revision)
    return run


def decode_step(kv_value: bytes, key: bytes) -> run_pb2.StepRun:
    step = _decode(StepRun, kv_value, key)
    assert isinstance(step, StepRun)
    return step


@dataclass
class _PipelineAt:
    """What CreateRun last read of a pipeline's head. It may be stale: the run's transaction
    compares the head's mod revision, so a stale entry costs a retry, never a wrong run."""

    head_revision: int
    latest: str
    #: Versions named by runs (a digest or a prefix) → full digest, as of `head_revision`:
    #: versions are added and deleted only together with a change of the head.
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class RunSnapshot:
    """A run and every step of it, synthesized from the records at one revision."""

    run: run_pb2.Run
    steps: list[run_pb2.StepRun]
    revision: int
    done: set[str]


class RunService(run_pb2_grpc.RunServiceServicer):
    """The RunService of weft-api (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        keyspace: Keyspace,
        blobs: BlobStore,
        reader: PipelineReader,
        request_ids: RequestIdLeases | None = None,
        *,
        peer: Peer | None = None,
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.blobs = blobs
        self.reader = reader
        self.request_ids = request_ids or RequestIdLeases(store)
        #: How the api calls executors (ReadAttemptLogs): its peer token and TLS.
        self.peer = peer or Peer()
        self._heads: OrderedDict[tuple[str, str], _PipelineAt] = OrderedDict()
        #: CreateRun's transactions, grouped with the concurrent ones (weft_api/group_commit.py).
        self.run_writes = GroupCommit(store)
        self.provenance = Provenance(store, keyspace, reader, blobs)
        self.lineage = LineageReader(store, keyspace, blobs)

    # Reading ------------------------------------------------------------------------

    async def _read_prefix(
        self, prefix: bytes, revision: int, *, keys_only: bool = False
    ) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` at `revision` (0: now), in pages; and the revision read."""
        kvs: list[KeyValue] = []
        start: bytes | None = None
        while True:
            page = await self.store.range(prefix, start=start, limit=READ_PAGE, revision=revision, keys_only=keys_only)
            revision = page.revision
            kvs.extend(page.kvs)
            if not page.more or not page.kvs:
                return kvs, revision
            start = page.kvs[-1].key + b"\0"

    async def read_run(self, ns: str, run: str) -> tuple[run_pb2.Run, KeyValue]:
        """The run record (without steps) and its etcd entry; NOT_FOUND if absent."""
        kv = await self.store.get(self.keyspace.run(ns, run))
        if kv is None:
            raise NotFound(f'run "{run_name(ns, run)}" does not exist; see `weft runs list`')
        return decode_run(kv.value, kv.key, kv.mod_revision), kv

    async def _spec_of(self, run: run_pb2.Run) -> pipeline_pb2.PipelineSpec | None:
        """The spec of the run's pipeline version, or None if it was deleted."""
        p_ns, p = parse_pipeline_name(run.pipeline, "run.pipeline")
        try:
            spec, _ = await self.reader.spec(p_ns, p, run.pipeline_version)
        except NotFound:
            return None
        return run_scope(spec, run.options.only_steps)

    async def snapshot(self, ns: str, run_id: str) -> RunSnapshot:
        """The run with every step, read at one revision (two paged range reads)."""
        for _ in range(3):
            try:
                return await self._snapshot_once(ns, run_id)
            except Compacted:
                continue  # the revision we read at was compacted meanwhile: read again
        raise Unavailable("etcd compacted the run's records while they were read three times; retry")

    async def _snapshot_once(self, ns: str, run_id: str) -> RunSnapshot:
        keyspace = self.keyspace
        kvs, revision = await self._read_prefix(keyspace.run_prefix(ns, run_id), 0)
        run_key = keyspace.run(ns, run_id)
        steps_prefix, done_prefix = keyspace.steps_prefix(ns, run_id), keyspace.done_prefix(ns, run_id)
        run: run_pb2.Run | None = None
        records: dict[str, run_pb2.StepRun] = {}
        done: dict[str, run_pb2.StepRun] = {}
        for kv in kvs:
            if kv.key == run_key:
                run = decode_run(kv.value, kv.key, kv.mod_revision)
            elif kv.key.startswith(done_prefix):
                done[keyspace.tail(kv.key, done_prefix)] = decode_step(kv.value, kv.key)
            elif kv.key.startswith(steps_prefix):
                records[keyspace.tail(kv.key, steps_prefix)] = decode_step(kv.value, kv.key)
        if run is None:
            raise NotFound(f'run "{run_name(ns, run_id)}" does not exist; see `weft runs list`')
        ready_prefix = keyspace.ready_run_prefix(ns, run_id)
        ready_kvs, _ = await self._read_prefix(ready_prefix, revision)
        ready = {keyspace.tail(kv.key, ready_prefix): ready_time_of(kv.value) for kv in ready_kvs}

        spec = await self._spec_of(run)
        # A deleted pipeline leaves no spec: show the steps that have records, by name.
        names = [s.name for s in spec.steps] if spec is not None else sorted(set(records) | set(done) | set(ready))
        steps = [self._step_state(name, run, done, records, ready) for name in names]
        run.step_counts.update(Counter(state_name(s.state) for s in steps))
        return RunSnapshot(run, steps, revision, set(done))

    @staticmethod
    def _step_state(
        name: str,
        run: run_pb2.Run,
        done: Mapping[str, run_pb2.StepRun],
        records: Mapping[str, run_pb2.StepRun],
        ready: Mapping[str, Timestamp],
    ) -> run_pb2.StepRun:
        if name in done:
            step = done[name]
        elif name in records:
            step = records[name]
        elif name in ready:
            step = StepRun(state=StepRun.STATE_READY, ready_time=ready[name])
        else:
            step = StepRun(state=StepRun.STATE_WAITING)
        step.step = name
        if run.state == Run.STATE_CANCELLED and name not in done:
            step.state = StepRun.STATE_CANCELLED
        return step

    async def GetRun(self, request: run_pb2.GetRunRequest, context: grpc.aio.ServicerContext[Any, Any]) -> run_pb2.Run:
        ns, run_id = parse_run_name(request.name)
        if check_view(request.view) == run_pb2.RUN_VIEW_BASIC:
            run, _ = await self.read_run(ns, run_id)
            return run
        snap = await self.snapshot(ns, run_id)
        snap.run.steps.extend(snap.steps)
        return snap.run

    async def ListRuns(
        self, request: run_pb2.ListRunsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.ListRunsResponse:
        """Runs newest first: a range of the runorder keys, then their small runindex summaries.

        Without a filter a page costs one limited range read plus a few batched gets. With a
        filter the order keys are scanned forward in batches until the page is full or
        `LIST_SCAN_LIMIT` runs were looked at; then the page may hold fewer runs than asked
        (even none) and its token goes on from where the scan stopped.
        """
        ns = parse_namespace(request.parent)
        size = page_size(request.page_size)
        check_view(request.view)
        pipeline_filter, states = self._parse_run_filter(request.filter, ns)
        keyspace = self.keyspace
        order_prefix = keyspace.run_order_prefix(ns)
        position = decode_token(request.page_token, b"runs:")
        start = order_prefix + _decode_run_position(position) + b"\0" if position else None

        runs: list[run_pb2.Run] = []
        token = ""
        scanned = 0
        while True:
            batch = await self.store.range(order_prefix, start=start, limit=size, keys_only=True)
            ids = [keyspace.parse_run_order(kv.key, ns)[1] for kv in batch.kvs]
            found = await self.store.get_many([keyspace.run_index(ns, run_id) for run_id in ids])
            for i, (kv, run_id) in enumerate(zip(batch.kvs, ids, strict=True)):
                index_kv = found.get(keyspace.run_index(ns, run_id))
                if index_kv is None:
                    continue  # an order key is written with its run: none lacks one unless deleted by hand
                run = decode_run(index_kv.value, index_kv.key, index_kv.mod_revision)
                if (pipeline_filter and run.pipeline != pipeline_filter) or (states and run.state not in states):
                    continue
                runs.append(run)
                if len(runs) == size:
                    if i + 1 < len(batch.kvs) or batch.more:
                        token = encode_token(b"runs:" + keyspace.tail(kv.key, order_prefix).encode())
                    break
            scanned += len(batch.kvs)
            if len(runs) == size or not batch.more or not batch.kvs:
                break
            start = batch.kvs[-1].key + b"\0"
            if scanned >= LIST_SCAN_LIMIT:
                # A filter that matches few runs must not make one call read the namespace:
                # answer what was found, and let the next page go on from here.
                token = encode_token(b"runs:" + keyspace.tail(batch.kvs[-1].key, order_prefix).encode())
                break
        if request.view == run_pb2.RUN_VIEW_FULL:
            for run in runs:
                snap = await self.snapshot(*parse_run_name(run.name))
                run.CopyFrom(snap.run)
                run.steps.extend(snap.steps)
        return run_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    @staticmethod
    def _parse_run_filter(text: str, ns: str) -> tuple[str, set[int]]:
        pipeline = ""
        states: set[int] = set()
        for term in text.split():
            key, sep, value = term.partition("=")
            if key == "pipeline" and sep and value:
                p_ns, p = parse_pipeline_name(value, "filter (pipeline)", default_ns=ns)
                pipeline = pipeline_name(p_ns, p)
            elif key == "state" and sep and value:
                for name in value.split(","):
                    full = "STATE_" + name.upper().removeprefix("STATE_")
                    if full not in Run.State.keys() or full == "STATE_UNSPECIFIED":  # noqa: SIM118  (an enum wrapper, not a dict)
                        choices = ", ".join(n.removeprefix("STATE_") for n in Run.State.keys()[1:])
                        raise InvalidArgument(
                            f'filter: "{name}" is not a run state; use one or more of {choices}', field="filter"
                        )
                    states.add(Run.State.Value(full))
            else:
                raise InvalidArgument(
                    f'filter: cannot understand "{term}"; use space-separated terms like "pipeline=etl" and '
                    '"state=RUNNING,FAILED"',
                    field="filter",
                )
        return pipeline, states

    # Creating -----------------------------------------------------------------------

    async def CreateRun(
        self, request: run_pb2.CreateRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.Run:
        ns = parse_namespace(request.parent)
        request_id = check_request_id(request.request_id)
        return await self.create_run(
            ns, request.run, request.run_id, request_id, request_digest(request) if request_id else ""
        )

    async def _run_of_request(self, ns: str, request_id: str, digest_of_request: str) -> run_pb2.Run | None:
        """The run an earlier request with this id created, if any."""
        kv = await self.store.get(self.keyspace.request(ns, request_id))
        if kv is None:
            return None
        return await self._run_named_by_request(ns, request_id, RequestRecord.decode(kv.value), digest_of_request)

    async def _run_named_by_request(
        self, ns: str, request_id: str, record: RequestRecord, digest_of_request: str
    ) -> run_pb2.Run:
        """The answer to a retried request: the run its id created.

        Raises:
            InvalidArgument: The request id was used for a different request (naming `request_id`).
        """
        record.check_same(request_id, digest_of_request)
        try:
            run_ns, run_id = parse_run_name(record.created)
        except InvalidArgument:
            raise InvalidArgument(
                f'request_id: "{request_id}" was already used for another kind of request ({record.created}); '
                "use a fresh request id for each new request",
                field="request_id",
            ) from None
        run, _ = await self.read_run(run_ns, run_id)
        return run

    async def _pipeline_at(self, ns: str, pipeline: str, *, fresh: bool) -> _PipelineAt:
        """The pipeline's head as last read (`fresh`: read it now); NOT_FOUND if it does not exist."""
        key = (ns, pipeline)
        cached = self._heads.get(key)
        if cached is not None and not fresh:
            self._heads.move_to_end(key)
            return cached
        head, kv = await self.reader.require_head(ns, pipeline)
        at = _PipelineAt(head_revision=kv.mod_revision, latest=head.version)
        self._heads[key] = at
        self._heads.move_to_end(key)
        while len(self._heads) > HEAD_CACHE_SIZE:
            self._heads.popitem(last=False)
        return at

    async def _version_of(self, ns: str, pipeline: str, at: _PipelineAt, version: str) -> str:
        """The full digest of the version a run asks for (the head's when none is named)."""
        if not version:
            return at.latest
        digest = at.versions.get(version)
        if digest is None:
            digest = await self.reader.resolve_version(ns, pipeline, version, "run.pipeline_version")
            at.versions[version] = digest
        return digest

    async def create_run(
        self,
        ns: str,
        wanted: run_pb2.Run,
        run_id: str,
        request_id: str,
        digest_of_request: str = "",
        resumed_from: str = "",
        replay_of: str = "",
    ) -> run_pb2.Run:
        """Validates and writes a new PENDING run in one transaction (see the module docstring).

        In the usual case this is ONE etcd round trip and nothing else: the pipeline's head is
        known from an earlier call and the transaction's compares check it is still the same
        (a changed or deleted pipeline fails the compare, and the call reads the head and
        tries again), that the run id is free and that the request id is unused. Parameter
        values travel inline in the run record with their digests; no blob is written here
        (the executor stores a value's blob before the first attempt that reads it), so a
        refused call leaves nothing behind.
        """
        if not wanted.pipeline:
            raise InvalidArgument(
                'run.pipeline: is required; name the pipeline to run (e.g. "etl")', field="run.pipeline"
            )
        p_ns, p = parse_pipeline_name(wanted.pipeline, "run.pipeline", default_ns=ns)
        if p_ns != ns:
            raise InvalidArgument(
                f'run.pipeline: the pipeline is in namespace "{p_ns}" but the run would be in "{ns}"; '
                "runs use pipelines of their own namespace",
                field="run.pipeline",
            )
        if run_id:
            check_dns_label(run_id, "run_id")
        problems = label_problems(wanted.labels, "run.labels")
        if wanted.options.cache_mode not in run_pb2.CacheMode.values():
            problems.append(("run.options.cache_mode", "unknown cache mode; use USE, REFRESH or OFF"))
        raise_problems(problems)

        keyspace = self.keyspace
        request_key = keyspace.request(ns, request_id) if request_id else b""
        head_key = keyspace.pipeline_head(ns, p)
        fresh = False  # read the pipeline's head now instead of trusting what was read before
        generated_ids = 0
        with run_root_span("weft.CreateRun", "", {"weft.pipeline": pipeline_name(ns, p)}) as (span, traceparent):
            for _ in range(WRITE_ATTEMPTS):
                try:
                    at = await self._pipeline_at(ns, p, fresh=fresh)
                    digest = await self._version_of(ns, p, at, wanted.pipeline_version)
                    spec, _ = await self.reader.spec(ns, p, digest)
                    _check_step_options(spec, wanted.options)
                    chosen = run_id or generate_run_id(p)
                    record = self._new_run_record(
                        ns, chosen, p, digest, spec, wanted, resumed_from, traceparent, replay_of
                    )
                except ServiceError as error:
                    if isinstance(error, NotFound) and not fresh:
                        fresh = True  # what was known of the pipeline may be stale: look again
                        continue
                    # A retry answers what the first request did, even if the pipeline has
                    # changed or gone since (the request id is checked only now to spare
                    # every first request a read).
                    earlier = await self._run_of_request(ns, request_id, digest_of_request) if request_id else None
                    if earlier is not None:
                        return earlier
                    raise
                span.set_attribute(ATTR_RUN, record.name)
                run_key = keyspace.run(ns, chosen)
                data = record.SerializeToString()
                if len(data) > MAX_RUN_RECORD_BYTES:
                    raise InvalidArgument(
                        f"run: the run record would have {len(data)} bytes, over the limit of "
                        f"{MAX_RUN_RECORD_BYTES}; use fewer or smaller parameters and labels",
                        field="run",
                    )
                created_nanos = record.create_time.seconds * 1_000_000_000 + record.create_time.nanos
                compares = [absent(run_key), unchanged_since(head_key, at.head_revision)]
                success = [
                    op_put(run_key, data),
                    op_put(keyspace.run_index(ns, chosen), run_summary(record).SerializeToString()),
                    op_put(keyspace.run_order(ns, created_nanos, chosen), b""),
                ]
                failure = [op_get(head_key), op_get(run_key, count_only=True)]
                if request_id:
                    compares.append(absent(request_key))
                    lease = await self.request_ids.lease()
                    success.append(op_put(request_key, RequestRecord(record.name, digest_of_request).encode(), lease))
                    failure.append(op_get(request_key))
                try:
                    result = await self.run_writes.txn(compares, success, failure)
                except LeaseNotFound:
                    # The request-id lease is gone (revoked, etcd restored): nothing was
                    # written; the next try gets a new lease.
                    self.request_ids.forget()
                    continue
                if result.succeeded:
                    log.info("created run %s of %s@%s", record.name, record.pipeline, record.pipeline_version[:19])
                    record.etag = str(result.revision)
                    return record
                if request_id and result.range_kvs(2):
                    # A concurrent request with the same id won: answer with its run.
                    taken = RequestRecord.decode(result.range_kvs(2)[0].value)
                    return await self._run_named_by_request(ns, request_id, taken, digest_of_request)
                head_now = result.range_kvs(0)
                if not head_now or head_now[0].mod_revision != at.head_revision:
                    fresh = True  # the pipeline changed (a new version, or deleted): look again
                    continue
                if result.responses[1].response_range.count:
                    if run_id:
                        raise AlreadyExists(
                            f'run_id: run "{run_name(ns, run_id)}" already exists; choose another run_id or leave '
                            "it empty to have one generated"
                        )
                    generated_ids += 1
                    if generated_ids >= RUN_ID_ATTEMPTS:
                        raise Internal(f"could not find an unused run id for pipeline {p} in {RUN_ID_ATTEMPTS} tries")
            raise Aborted(f'pipeline "{pipeline_name(ns, p)}" kept changing while the run was created; retry')

    @staticmethod
    def _new_run_record(
        ns: str,
        run_id: str,
        pipeline: str,
        digest: str,
        spec: pipeline_pb2.PipelineSpec,
        wanted: run_pb2.Run,
        resumed_from: str,
        traceparent: str,
        replay_of: str = "",
    ) -> run_pb2.Run:
        parameters = resolve_parameters(spec, wanted.parameters, pipeline)
        record = Run(
            name=run_name(ns, run_id),
            pipeline=pipeline_name(ns, pipeline),
            pipeline_version=digest,
            parameters=parameters,
            parameter_digests={name: digest_of(value.encode()) for name, value in parameters.items()},
            state=Run.STATE_PENDING,
            labels=wanted.labels,
            resumed_from=resumed_from,
            created_by=current_subject(),
            replay_of=replay_of,
            traceparent=traceparent,
        )
        record.options.CopyFrom(wanted.options)
        record.create_time.GetCurrentTime()
        return record

    async def ResumeRun(
        self, request: run_pb2.ResumeRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.Run:
        ns, source_id = parse_run_name(request.name)
        request_id = check_request_id(request.request_id)
        digest_of_request = request_digest(request) if request_id else ""
        if request_id:
            earlier = await self._run_of_request(ns, request_id, digest_of_request)
            if earlier is not None:
                return earlier
        source, _ = await self.read_run(ns, source_id)
        if source.state not in TERMINAL_RUN_STATES:
            raise FailedPrecondition(
                f'run "{source.name}" is {Run.State.Name(source.state).removeprefix("STATE_")}; only a finished run '
                "(SUCCEEDED, FAILED or CANCELLED) can be resumed: wait for it or cancel it first"
            )
        wanted = Run(pipeline=source.pipeline, labels=source.labels)
        wanted.options.CopyFrom(source.options)
        parameters = dict(source.parameters)
        if request.latest_version:
            # The latest version may have dropped parameters: keep only those it declares.
            p_ns, p = parse_pipeline_name(source.pipeline, "run.pipeline")
            head, _ = await self.reader.require_head(p_ns, p)
            spec, _ = await self.reader.spec(p_ns, p, head.version)
            declared = {parameter.name for parameter in spec.parameters}
            parameters = {k: v for k, v in parameters.items() if k in declared}
            wanted.pipeline_version = head.version
        else:
            wanted.pipeline_version = source.pipeline_version
        wanted.parameters.update(parameters)
        return await self.create_run(
            ns, wanted, request.run_id, request_id, digest_of_request, resumed_from=source.name
        )

    async def ReplayRun(
        self, request: run_pb2.ReplayRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.Run:
        """A new run of the same pipeline version and parameters, cache off (see the proto)."""
        ns, source_id = parse_run_name(request.name)
        request_id = check_request_id(request.request_id)
        digest_of_request = request_digest(request) if request_id else ""
        if request_id:
            earlier = await self._run_of_request(ns, request_id, digest_of_request)
            if earlier is not None:
                return earlier
        source, _ = await self.read_run(ns, source_id)
        if source.state not in TERMINAL_RUN_STATES:
            raise FailedPrecondition(
                f'run "{source.name}" is {Run.State.Name(source.state).removeprefix("STATE_")}; only a finished run '
                "can be replayed: wait for it or cancel it first"
            )
        wanted = Run(
            pipeline=source.pipeline,
            pipeline_version=source.pipeline_version,
            parameters=source.parameters,
            labels=source.labels,
        )
        wanted.options.cache_mode = run_pb2.CACHE_MODE_OFF
        resumed_from = ""
        if request.steps:
            wanted.options.only_steps.extend(await self._replayed_steps(source, request))
            if not request.with_upstream:
                # The upstream steps are resumed from the replayed run (its recorded inputs);
                # only the named steps launch again.
                wanted.options.rerun_steps.extend(wanted.options.only_steps)
                resumed_from = source.name
        elif request.with_upstream:
            raise InvalidArgument(
                "with_upstream: is only meaningful with steps; name the steps to replay", field="with_upstream"
            )
        return await self.create_run(
            ns, wanted, request.run_id, request_id, digest_of_request, resumed_from=resumed_from, replay_of=source.name
        )

    async def _replayed_steps(self, source: run_pb2.Run, request: run_pb2.ReplayRunRequest) -> list[str]:
        """The steps a ReplayRun names, each checked to be a step of the replayed run."""
        spec = await self._spec_of(source)
        if spec is None:
            raise FailedPrecondition(f'run "{source.name}": its pipeline version was deleted; it cannot be replayed')
        known = {step.name for step in spec.steps}
        for i, step in enumerate(request.steps):
            if step not in known:
                shown = ", ".join(s.name for s in spec.steps[:10]) + (", …" if len(spec.steps) > 10 else "")
                raise InvalidArgument(
                    f'steps[{i}]: run "{source.name}" has no step "{step}"; its steps are: {shown}', field=f"steps[{i}]"
                )
        return list(dict.fromkeys(request.steps))

    # Changing -----------------------------------------------------------------------

    async def CancelRun(
        self, request: run_pb2.CancelRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.Run:
        ns, run_id = parse_run_name(request.name)
        if len(request.reason) > 1024:
            raise InvalidArgument("reason: keep it under 1024 characters", field="reason")
        for _ in range(WRITE_ATTEMPTS):
            run, kv = await self.read_run(ns, run_id)
            if run.state in TERMINAL_RUN_STATES:
                raise FailedPrecondition(
                    f'run "{run.name}" already finished ({Run.State.Name(run.state).removeprefix("STATE_")}); '
                    "only PENDING or RUNNING runs can be cancelled"
                )
            if run.state == Run.STATE_CANCELLING:
                return run
            if run.state == Run.STATE_PENDING:
                # No executor has started it: nothing to stop, so it is cancelled at once.
                run.state = Run.STATE_CANCELLED
                run.end_time.GetCurrentTime()
            else:
                run.state = Run.STATE_CANCELLING
            run.message = request.reason or "cancelled by request"
            run.cancelled_by = current_subject()
            run.ClearField("etag")
            data = run.SerializeToString()
            result = await self.store.txn(
                [unchanged_since(kv.key, kv.mod_revision)],
                [
                    op_put(kv.key, data),
                    op_put(self.keyspace.run_index(ns, run_id), run_summary(run).SerializeToString()),
                ],
            )
            if result.succeeded:
                log.info("run %s is %s", run.name, Run.State.Name(run.state))
                run.etag = str(result.revision)
                return run
        raise Aborted(f'run "{run_name(ns, run_id)}" kept changing while it was cancelled; retry')

    # Streaming ----------------------------------------------------------------------

    async def WatchRun(
        self, request: run_pb2.WatchRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[run_pb2.RunEvent]:
        ns, run_id = parse_run_name(request.name)
        if request.start_revision < 0:
            raise InvalidArgument(
                "start_revision: must be 0 (snapshot first) or a revision seen earlier + 1", field="start_revision"
            )
        # BASIC: the run record's changes only, so a client waiting for the end is not sent
        # every step (and etcd filters the steps out before they reach us).
        run_only = check_view(request.view) == run_pb2.RUN_VIEW_BASIC
        keyspace = self.keyspace
        run_key = keyspace.run(ns, run_id)
        done: set[str] = set()
        if request.start_revision == 0:
            if run_only:
                run, revision = await self._read_run_at_now(ns, run_id)
                snapshot = [run_pb2.RunEvent(revision=revision, run=run, snapshot=True)]
                done_now: set[str] = set()
            else:
                snap = await self.snapshot(ns, run_id)
                run, revision, done_now = snap.run, snap.revision, snap.done
                snapshot = [run_pb2.RunEvent(revision=revision, run=run, snapshot=True)]
                snapshot += [run_pb2.RunEvent(revision=revision, step=step, snapshot=True) for step in snap.steps]
            snapshot[-1].last_in_revision = True
            for snapshot_event in snapshot:
                yield snapshot_event
            if run.state in TERMINAL_RUN_STATES:
                return
            start = revision + 1
            done = done_now
        else:
            run, current = await self._read_run_at_now(ns, run_id)
            if request.start_revision > current + 1:
                # Nothing will ever be at that revision for this store: say so now instead
                # of waiting silently until the client's deadline.
                raise OutOfRange(
                    f"start_revision: {request.start_revision} is beyond the store's current revision {current}; "
                    f"resume with the revision of the last event received + 1 (at most {current + 1}), or 0 for a "
                    "fresh snapshot",
                    field="start_revision",
                )
            if run.state in TERMINAL_RUN_STATES and int(run.etag) < request.start_revision:
                return  # the client has seen the end already; nothing will ever follow
            start = request.start_revision

        prefix = run_key if run_only else keyspace.run_prefix(ns, run_id)
        steps_prefix, done_prefix = keyspace.steps_prefix(ns, run_id), keyspace.done_prefix(ns, run_id)
        try:
            # Closed with the stream (a client that leaves), so the etcd watch ends at once.
            async with contextlib.aclosing(self.store.watch(prefix, start)) as batches:
                async for batch in batches:
                    # etcd delivers a revision's changes in one response: mark the last event of
                    # each revision so a client knows from where it may resume without a gap.
                    events: list[run_pb2.RunEvent] = []
                    for event in batch:
                        if event.deleted:
                            continue
                        if event.key == run_key:
                            changed = decode_run(event.value, event.key, event.revision)
                            events.append(run_pb2.RunEvent(revision=event.revision, run=changed))
                        elif run_only:
                            continue  # a key that merely starts like the run key's
                        elif event.key.startswith(done_prefix):
                            step = decode_step(event.value, event.key)
                            step.step = keyspace.tail(event.key, done_prefix)
                            done.add(step.step)
                            events.append(run_pb2.RunEvent(revision=event.revision, step=step))
                        elif event.key.startswith(steps_prefix):
                            step = decode_step(event.value, event.key)
                            step.step = keyspace.tail(event.key, steps_prefix)
                            if step.step not in done:  # a late record must not undo the terminal state
                                events.append(run_pb2.RunEvent(revision=event.revision, step=step))
                    for i, out in enumerate(events):
                        out.last_in_revision = i + 1 == len(events) or events[i + 1].revision != out.revision
                        yield out
                        if out.HasField("run") and out.run.state in TERMINAL_RUN_STATES:
                            return
        except Compacted as error:
            raise OutOfRange(
                f"start_revision: revision {start} of run {run_name(ns, run_id)} was compacted by etcd"
                f"{f' (oldest kept: {error.compact_revision})' if error.compact_revision else ''}; "
                "restart the watch with start_revision 0 to get a fresh snapshot"
            ) from error

    async def _read_run_at_now(self, ns: str, run_id: str) -> tuple[run_pb2.Run, int]:
        """The run record (etag set) and the store's current revision, in one read."""
        run_key = self.keyspace.run(ns, run_id)
        result = await self.store.txn([], [op_get(run_key)])
        found = result.range_kvs(0)
        if not found:
            raise NotFound(f'run "{run_name(ns, run_id)}" does not exist; see `weft runs list`')
        return decode_run(found[0].value, found[0].key, found[0].mod_revision), result.revision

    # Explaining and logs ------------------------------------------------------------

    async def _step_record(self, ns: str, run_id: str, step: str) -> tuple[run_pb2.Run, run_pb2.StepRun | None]:
        """The run and the step's latest record (done, else step record), checking the step
        exists in the run's pipeline."""
        if not step:
            raise InvalidArgument("step: is required; name a step of the run", field="step")
        run, _ = await self.read_run(ns, run_id)
        spec = await self._spec_of(run)
        done_key, step_key = self.keyspace.done(ns, run_id, step), self.keyspace.step(ns, run_id, step)
        found = await self.store.get_many([done_key, step_key])
        if spec is not None and step not in {s.name for s in spec.steps}:
            shown = ", ".join(s.name for s in spec.steps[:10]) + (", …" if len(spec.steps) > 10 else "")
            raise NotFound(f'run "{run.name}" has no step "{step}"; its steps are: {shown}')
        kv = found.get(done_key) or found.get(step_key)
        if kv is None and spec is None:
            raise NotFound(f'run "{run.name}" has no record of step "{step}"')
        return run, (decode_step(kv.value, kv.key) if kv is not None else None)

    async def ExplainStep(
        self, request: run_pb2.ExplainStepRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.StepExplanation:
        ns, run_id = parse_run_name(request.run, "run")
        _, record = await self._step_record(ns, run_id, request.step)
        if record is None or not record.HasField("explanation"):
            return run_pb2.StepExplanation(
                decision=run_pb2.StepExplanation.DECISION_UNSPECIFIED, reason="not claimed yet"
            )
        # A wide join's components live in a blob (invariant 6): show them all the same.
        await restore_spilled(record, self.blobs)
        record.step = request.step
        return await self.provenance.explain(ns, run_id, record)

    async def DiffRuns(
        self, request: run_pb2.DiffRunsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.DiffRunsResponse:
        return await self.provenance.diff_runs(request.run_a, request.run_b, request.page_size, request.page_token)

    async def GetLineage(
        self, request: run_pb2.GetLineageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> run_pb2.Lineage:
        return await self.lineage.get_lineage(request)

    async def ReadLogs(
        self, request: run_pb2.ReadLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[run_pb2.LogChunk]:
        ns, run_id = parse_run_name(request.run, "run")
        if request.attempt < 0:
            raise InvalidArgument("attempt: must be 0 (the latest) or an attempt number ≥ 1", field="attempt")
        run, record = await self._step_record(ns, run_id, request.step)
        attempts: Sequence[run_pb2.Attempt] = record.attempts if record is not None else []
        if not attempts:
            state = state_name(record.state) if record is not None else "WAITING"
            raise NotFound(f'step "{request.step}" of run "{run.name}" has no attempt yet (it is {state})')
        if request.attempt == 0:
            attempt = attempts[-1]
        else:
            matching = [a for a in attempts if a.number == request.attempt]
            if not matching:
                numbers = ", ".join(str(a.number) for a in attempts)
                raise NotFound(
                    f'step "{request.step}" of run "{run.name}" has no attempt {request.attempt} '
                    f"(its attempts: {numbers})"
                )
            attempt = matching[-1]

        sent = {run_pb2.LogChunk.STREAM_STDOUT: 0, run_pb2.LogChunk.STREAM_STDERR: 0}
        if attempt.state == run_pb2.Attempt.STATE_RUNNING:
            try:
                async for chunk in self._live_logs(run.name, request.step, attempt, request.follow):
                    sent[chunk.stream] += len(chunk.data)
                    yield chunk
                return
            except _AttemptNotLive:
                # It ended between our read of its record and the executor's answer: its logs
                # are blobs now. Go on from where the live stream stopped.
                _, record = await self._step_record(ns, run_id, request.step)
                ended = [a for a in (record.attempts if record else []) if a.number == attempt.number]
                if not ended or ended[-1].state == run_pb2.Attempt.STATE_RUNNING:
                    raise Unavailable(
                        f'attempt {attempt.number} of step "{request.step}" is between executors; retry in a moment'
                    ) from None
                attempt = ended[-1]
        streams = (
            (run_pb2.LogChunk.STREAM_STDOUT, attempt.stdout_digest),
            (run_pb2.LogChunk.STREAM_STDERR, attempt.stderr_digest),
        )
        for stream, digest in streams:
            if not digest:
                continue
            async for data in self.blobs.read(digest, offset=sent[stream], chunk_size=LOG_CHUNK_BYTES):
                yield run_pb2.LogChunk(stream=stream, data=data, attempt=attempt.number)

    async def _live_logs(
        self, run: str, step: str, attempt: run_pb2.Attempt, follow: bool
    ) -> AsyncIterator[run_pb2.LogChunk]:
        """Proxies ExecutorService.ReadAttemptLogs of the executor running the attempt."""
        executor = attempt.executor
        kv = await self.store.get(self.keyspace.executor(executor)) if executor else None
        if kv is None:
            raise Unavailable(
                f'executor "{executor}" that runs attempt {attempt.number} of step "{step}" is not registered '
                "(it may have died; another executor takes the step over shortly); retry in a moment"
            )
        try:
            address = str(json.loads(kv.value)["address"])
        except (ValueError, KeyError, TypeError) as error:
            raise Internal(f"the registration of executor {executor} has no address; it is corrupt") from error
        request = executor_pb2.ReadAttemptLogsRequest(run=run, step=step, attempt=attempt.number, follow=follow)
        async with self.peer.open_channel(address) as channel:
            stub: Any = executor_pb2_grpc.ExecutorServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.ReadAttemptLogs(request)
            try:
                async for chunk in call:
                    yield chunk
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    raise _AttemptNotLive() from error
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise Unavailable(
                        f'executor "{executor}" at {address} cannot be reached ({error.details()}); retry in a moment'
                    ) from error
                raise _service_error_of(error) from error
            finally:
                call.cancel()


class _AttemptNotLive(Exception):
    """The executor no longer runs the attempt (it ended, and its logs are blobs now)."""


def _service_error_of(error: grpc.aio.AioRpcError) -> ServiceError:
    """An executor's error status, passed on to our caller unchanged."""
    passed = ServiceError(error.details() or error.code().name)
    passed.code = error.code()
    return passed


def _decode_run_position(position: bytes) -> bytes:
    """The run order key tail (`{inverted time}/{run}`) a ListRuns page token stands for."""
    tail = position.removeprefix(b"runs:")
    inverted, slash, run = tail.partition(b"/")
    if len(inverted) != 19 or not inverted.isdigit() or not slash or not run or b"/" in run:
        raise InvalidArgument(
            "page_token: not a token of this listing; leave it empty to start over", field="page_token"
        )
    return tail
