"""PipelineService: stores pipelines as immutable versions named by their spec's digest.

Writes follow one pattern: read the head, then one etcd transaction guarded on the
head's mod revision (so two concurrent creates never lose a version or its count), retried
on conflict. A spec too large for etcd is stored as a blob first; an orphan blob left by a
crash is harmless (blobs are content-addressed). Validation happens before anything is
written, so a rejected request writes nothing. The service keeps no state of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc

from weft.v1 import pipeline_pb2, pipeline_pb2_grpc
from weft_api.access import check_step_security
from weft_api.listing import check_request_id, decode_token, encode_token, page_size
from weft_core.auth import current_subject
from weft_core.blobs import BlobStore
from weft_core.composition import expand_uses
from weft_core.errors import Aborted, InvalidArgument, NotFound
from weft_core.keyspace import Keyspace
from weft_core.pipelines import (
    PipelineHead,
    PipelineReader,
    PipelineVersionOrder,
    now_rfc3339,
    pipeline_message,
    version_record,
)
from weft_core.requests import RequestIdLeases, RequestRecord, request_digest
from weft_core.spec import parse_namespace, parse_pipeline_name, pipeline_name, spec_digest, validate_pipeline
from weft_core.store import (
    KeyValue,
    LeaseNotFound,
    Store,
    TxnResult,
    absent,
    op_delete,
    op_get,
    op_put,
    present,
    unchanged_since,
)

log = logging.getLogger(__name__)

#: Transactions retried when a concurrent writer changed the head in between.
WRITE_ATTEMPTS = 16
#: Keys read per page while scanning for pipeline heads.
SCAN_PAGE = 1000


class PipelineFilter:
    """A parsed ListPipelines filter: `label.KEY=VALUE` terms and `name=PREFIX*` (or exact)."""

    def __init__(self, text: str) -> None:
        self.labels: dict[str, str] = {}
        self.name_prefix = ""
        self.name_exact = ""
        for term in text.split():
            key, sep, value = term.partition("=")
            if not sep:
                raise self._bad(term)
            if key.startswith("label.") and len(key) > len("label."):
                self.labels[key[len("label.") :]] = value
            elif key == "name" and value.endswith("*"):
                self.name_prefix = value[:-1]
            elif key == "name" and value:
                self.name_exact = value
            else:
                raise self._bad(term)

    @staticmethod
    def _bad(term: str) -> InvalidArgument:
        return InvalidArgument(
            f'filter: cannot understand "{term}"; use space-separated terms like '
            '"label.team=data" and "name=etl-*" (a prefix) or "name=etl-daily"',
            field="filter",
        )

    def matches(self, name: str, head: PipelineHead) -> bool:
        if self.name_exact and name != self.name_exact:
            return False
        return all(head.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class _RequestTaken:
    """A CreatePipeline's request id was recorded by another request: `record` says what it made."""

    record: RequestRecord


class PipelineService(pipeline_pb2_grpc.PipelineServiceServicer):
    """The PipelineService of weft-api (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        keyspace: Keyspace,
        blobs: BlobStore,
        reader: PipelineReader,
        request_ids: RequestIdLeases | None = None,
        *,
        relaxed_security_namespaces: frozenset[str] = frozenset(),
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.blobs = blobs
        self.reader = reader
        self.request_ids = request_ids or RequestIdLeases(store)
        #: Namespaces whose steps may relax the hardened pod defaults (Container.security).
        self.relaxed_security_namespaces = relaxed_security_namespaces

    async def CreatePipeline(
        self, request: pipeline_pb2.CreatePipelineRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pipeline_pb2.Pipeline:
        ns = parse_namespace(request.parent)
        request_id = check_request_id(request.request_id)
        if not request.pipeline.name:
            raise InvalidArgument(
                'pipeline.name: is required; name the pipeline (e.g. "etl-daily")', field="pipeline.name"
            )
        name_ns, name = parse_pipeline_name(request.pipeline.name, "pipeline.name", default_ns=ns)
        if name_ns != ns:
            raise InvalidArgument(
                f'pipeline.name: "{request.pipeline.name}" is in namespace "{name_ns}" but parent is "{ns}"; '
                "make them agree or give just the pipeline id",
                field="pipeline.name",
            )
        digest_of_request = request_digest(request) if request_id else ""
        if request_id:
            created = await self.store.get(self.keyspace.request(ns, request_id))
            if created is not None:
                return await self._replay(ns, request_id, RequestRecord.decode(created.value), digest_of_request)

        pipeline = pipeline_pb2.Pipeline(name=name, description=request.pipeline.description)
        pipeline.labels.update(request.pipeline.labels)
        pipeline.spec.CopyFrom(request.pipeline.spec)
        await self._expand_uses(ns, pipeline)
        dag = validate_pipeline(pipeline)
        check_step_security(pipeline.spec, ns, self.relaxed_security_namespaces)
        digest = spec_digest(pipeline.spec)
        self.reader.remember(digest, pipeline.spec, dag)

        for _ in range(WRITE_ATTEMPTS):
            try:
                written = await self._write_version(ns, pipeline, digest, request_id, digest_of_request)
            except LeaseNotFound:
                self.request_ids.forget()  # the request-id lease is gone: the next try gets a new one
                continue
            if isinstance(written, _RequestTaken):
                # A concurrent request with the same request id got there first: its result
                # is the answer, and the head stays where that request left it.
                return await self._replay(ns, request_id, written.record, digest_of_request)
            if written is not None:
                head, head_revision, record = written
                result = pipeline_message(ns, name, head, _revision_only(head_revision), record)
                result.spec.CopyFrom(pipeline.spec)
                return result
        raise Aborted(
            f'pipeline "{pipeline_name(ns, name)}" kept changing concurrently; retry the request',
        )

    async def _expand_uses(self, ns: str, pipeline: pipeline_pb2.Pipeline) -> None:
        """Replaces steps that use another pipeline by its steps (weft_core/composition.py).

        It only reads: a refused use writes nothing.
        """

        async def fetch(name: str, version: str) -> pipeline_pb2.Pipeline:
            return await self.reader.get(ns, name, version)

        await expand_uses(pipeline, fetch)

    async def _replay(
        self, ns: str, request_id: str, record: RequestRecord, digest_of_request: str
    ) -> pipeline_pb2.Pipeline:
        """The answer to a retried CreatePipeline: the version the request id created.

        Raises:
            InvalidArgument: The request id was used for another request (naming `request_id`).
        """
        created = record.created
        record.check_same(request_id, digest_of_request)
        resource, _, digest_hex = created.partition("/versions/")
        try:
            name_ns, name = parse_pipeline_name(resource)
        except InvalidArgument:
            name_ns, name = "", ""
        if name_ns != ns or not digest_hex:
            raise InvalidArgument(
                f'request_id: "{request_id}" was already used for another kind of request ({created}); '
                "use a fresh request id for each new request",
                field="request_id",
            )
        return await self.reader.get(ns, name, digest_hex)

    async def _write_version(
        self, ns: str, pipeline: pipeline_pb2.Pipeline, digest: str, request_id: str, digest_of_request: str
    ) -> tuple[PipelineHead, int, PipelineVersionOrder] | _RequestTaken | None:
        """One attempt at making `digest` the head.

        Returns:
            What was written (or found already the latest); `_RequestTaken` when the
            request id was recorded by a concurrent request meanwhile; None when a
            concurrent change of the pipeline won (try again).
        """
        name = pipeline.name
        keyspace = self.keyspace
        head_key = keyspace.pipeline_head(ns, name)
        version_key = keyspace.pipeline_version(ns, name, digest.removeprefix("sha256:"))
        found = await self.reader.head(ns, name)
        head, head_kv = found if found is not None else (None, None)
        head_revision = head_kv.mod_revision if head_kv is not None else 0
        labels = dict(pipeline.labels)
        # The request key is created in the same transaction as the change it names, and only
        # if absent: of two requests with one id, exactly one changes anything, and a retry
        # replays its result instead of writing the head again (which could move it back).
        request_key = keyspace.request(ns, request_id) if request_id else b""
        request_compares = [absent(request_key)] if request_id else []
        request_ops = (
            [
                op_put(
                    request_key,
                    RequestRecord(f"{pipeline_name(ns, name)}/versions/{digest[7:]}", digest_of_request).encode(),
                    await self.request_ids.lease(),
                )
            ]
            if request_id
            else []
        )
        request_reads = [op_get(request_key)] if request_id else []

        def taken(result: TxnResult) -> _RequestTaken | None:
            if request_id:
                kvs = result.range_kvs(0)
                if kvs:
                    return _RequestTaken(RequestRecord.decode(kvs[0].value))
            return None

        existing = await self.reader.version_record(ns, name, digest)
        if existing is not None and head is not None:
            order = PipelineVersionOrder(digest, existing.create_time, existing.created_by)
            new_head = PipelineHead(
                version=digest,
                version_count=head.version_count,
                create_time=head.create_time,
                description=pipeline.description,
                labels=labels,
                version_create_time=existing.create_time,
            )
            if new_head == head:
                # The same spec and metadata are already the latest: nothing to change, but
                # the request id is recorded, so a retry after someone else moved the head on
                # answers this result instead of making this version the head again.
                if not request_id:
                    return head, head_revision, order
                result = await self.store.txn(
                    [unchanged_since(head_key, head_revision), *request_compares], request_ops, request_reads
                )
                return (head, head_revision, order) if result.succeeded else taken(result)
            result = await self.store.txn(
                [unchanged_since(head_key, head_revision), present(version_key), *request_compares],
                [op_put(head_key, new_head.encode()), *request_ops],
                request_reads,
            )
            return (new_head, result.revision, order) if result.succeeded else taken(result)

        now = now_rfc3339()
        sequence = (head.version_count if head is not None else 0) + 1
        record, blob = version_record(name, pipeline.spec, digest, sequence, now)
        record.created_by = current_subject()
        if blob is not None:
            # Stored before the record that names it, so a record never points at nothing.
            await self.blobs.put(blob)
        new_head = PipelineHead(
            version=digest,
            version_count=sequence,
            create_time=head.create_time if head is not None else now,
            description=pipeline.description,
            labels=labels,
            version_create_time=now,
        )
        order = PipelineVersionOrder(digest, now, record.created_by)
        result = await self.store.txn(
            [unchanged_since(head_key, head_revision), absent(version_key), *request_compares],
            [
                op_put(version_key, record.encode()),
                op_put(keyspace.pipeline_version_order(ns, name, sequence), order.encode()),
                op_put(head_key, new_head.encode()),
                *request_ops,
            ],
            request_reads,
        )
        if result.succeeded:
            log.info("pipeline %s version %d is %s", pipeline_name(ns, name), sequence, digest)
            return new_head, result.revision, order
        return taken(result)

    async def GetPipeline(
        self, request: pipeline_pb2.GetPipelineRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pipeline_pb2.Pipeline:
        ns, name = parse_pipeline_name(request.name)
        return await self.reader.get(ns, name, request.version)

    async def ListPipelines(
        self, request: pipeline_pb2.ListPipelinesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pipeline_pb2.ListPipelinesResponse:
        """Pipelines by name, at their latest version, without their specs (GetPipeline has
        them): a page of 10,000-step specs would not fit a response."""
        ns = parse_namespace(request.parent)
        size = page_size(request.page_size)
        where = PipelineFilter(request.filter)
        prefix = self.keyspace.pipeline_prefix(ns)
        scan_prefix = prefix + where.name_prefix.encode() if where.name_prefix else prefix
        position = decode_token(request.page_token, prefix)
        start = position + b"\0" if position else scan_prefix
        if where.name_exact:
            scan_prefix = prefix + where.name_exact.encode() + b"/"
            start = max(start, scan_prefix)

        # One match more than a page tells whether another page follows.
        found: list[tuple[bytes, pipeline_pb2.Pipeline]] = []
        revision = 0
        more = True
        while more and len(found) <= size:
            page = await self.store.range(scan_prefix, start=start, limit=SCAN_PAGE, keys_only=True, revision=revision)
            revision = page.revision
            more = page.more and bool(page.kvs)
            if page.kvs:
                start = page.kvs[-1].key + b"\0"
            head_keys = [kv.key for kv in page.kvs if _is_head(kv.key, prefix)]
            heads = await self.store.get_many(head_keys) if head_keys else {}
            for key in head_keys:
                kv = heads.get(key)
                if kv is None:
                    continue  # deleted between the scan and the read
                name = self.keyspace.tail(key, prefix).removesuffix("/head")
                head = PipelineHead.decode(kv.value, kv.key)
                if where.matches(name, head):
                    order = PipelineVersionOrder(head.version, head.version_create_time or head.create_time)
                    found.append((key, pipeline_message(ns, name, head, kv, order)))
                    if len(found) > size:
                        break
        token = encode_token(found[size - 1][0]) if len(found) > size else ""
        return pipeline_pb2.ListPipelinesResponse(pipelines=[p for _, p in found[:size]], next_page_token=token)

    async def ListPipelineVersions(
        self, request: pipeline_pb2.ListPipelineVersionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pipeline_pb2.ListPipelineVersionsResponse:
        """Versions newest first, without their specs (GetPipeline with `version` has them)."""
        ns, name = parse_pipeline_name(request.name)
        size = page_size(request.page_size)
        head, head_kv = await self.reader.require_head(ns, name)
        prefix = self.keyspace.pipeline_version_orders(ns, name)
        position = decode_token(request.page_token, prefix)
        # Descending from the token's key (inclusive, so skipped), one more than a page to
        # tell whether another page follows.
        page = await self.store.range(prefix, start=position, limit=size + 2, descending=True)
        kvs = [kv for kv in page.kvs if position is None or kv.key < position]
        versions = [
            pipeline_message(ns, name, head, head_kv, PipelineVersionOrder.decode(kv.value, kv.key))
            for kv in kvs[:size]
        ]
        token = encode_token(kvs[size - 1].key) if len(kvs) > size else ""
        return pipeline_pb2.ListPipelineVersionsResponse(versions=versions, next_page_token=token)

    async def DeletePipeline(
        self, request: pipeline_pb2.DeletePipelineRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pipeline_pb2.DeletePipelineResponse:
        ns, name = parse_pipeline_name(request.name)
        head_key = self.keyspace.pipeline_head(ns, name)
        for _ in range(WRITE_ATTEMPTS):
            head_kv = await self.store.get(head_key)
            if head_kv is None:
                raise NotFound(f'pipeline "{pipeline_name(ns, name)}" does not exist; see `weft pipelines list`')
            if request.etag and request.etag != str(head_kv.mod_revision):
                raise Aborted(
                    f'etag: "{request.etag}" is not the current etag of pipeline "{pipeline_name(ns, name)}" '
                    f'("{head_kv.mod_revision}"): it changed since you read it; get it again and retry'
                )
            result = await self.store.txn(
                [unchanged_since(head_key, head_kv.mod_revision)],
                [op_delete(self.keyspace.pipeline_all(ns, name), prefix=True)],
            )
            if result.succeeded:
                log.info("deleted pipeline %s", pipeline_name(ns, name))
                return pipeline_pb2.DeletePipelineResponse()
        raise Aborted(f'pipeline "{pipeline_name(ns, name)}" kept changing concurrently; retry the delete')


def _is_head(key: bytes, prefix: bytes) -> bool:
    """Whether `key` is `{prefix}{name}/head` (and not a key deeper in some pipeline)."""
    rest = key[len(prefix) :]
    return rest.endswith(b"/head") and rest.count(b"/") == 1


def _revision_only(revision: int) -> Any:
    """A stand-in KeyValue carrying just the mod revision a write produced (for the etag)."""
    return KeyValue(key=b"", value=b"", create_revision=0, mod_revision=revision, version=0, lease=0)
