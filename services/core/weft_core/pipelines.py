"""Stored pipeline versions: their etcd record format and how to read them back.

weft-api writes pipelines and weft-executor reads the version a run names; both go
through this module so they agree on the format (keys in `weft_core.keyspace`):

- `head` — `PipelineHead` JSON: the latest version digest, the version count, the
  pipeline's create time, description and labels (labels describe the pipeline, not a
  version, so they are not part of any digest).
- `versions/{hex}` — `PipelineVersionRecord` JSON: the version's sequence number and
  create time, and the stored `weft.v1.Pipeline` (bare name + spec) either inline
  (base64) or, when its serialized size exceeds `INLINE_SPEC_BYTES`, as the digest of a
  blob in the artifact store (invariant 6: a 10,000-step spec may not fit one etcd value).
- `seq/{n}` — `PipelineVersionOrder` JSON: digest and create time of the n-th version,
  for listing versions newest first without reading the specs.

Versions are immutable and named by content, so `PipelineReader` caches parsed specs by
digest; the cache can never be stale. This module reads etcd and blobs; it never writes
etcd (only `version_record` prepares what the api writes).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from weft.v1 import pipeline_pb2
from weft_core.blobs import BlobStore, check_digest, digest_of
from weft_core.errors import Internal, InvalidArgument, NotFound
from weft_core.keyspace import Keyspace
from weft_core.spec import Dag, pipeline_name
from weft_core.store import KeyValue, Store

#: A stored Pipeline larger than this (serialized) goes to the artifact store, not etcd.
INLINE_SPEC_BYTES = 512 * 1024
#: Shortest hex prefix accepted as a version.
MIN_VERSION_PREFIX = 4


def now_rfc3339() -> str:
    """The current time as an RFC 3339 UTC string (how records store times)."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp.ToJsonString()


def timestamp(rfc3339: str) -> Timestamp:
    """A protobuf Timestamp of an RFC 3339 string."""
    stamp = Timestamp()
    stamp.FromJsonString(rfc3339)
    return stamp


def _decode_json(raw: bytes, key: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise Internal(f"the {what} record at {key.decode()} is not valid JSON ({error}); it is corrupt") from error
    if not isinstance(value, dict):
        raise Internal(f"the {what} record at {key.decode()} is not a JSON object; it is corrupt")
    return value


def _encode_json(record: Any) -> bytes:
    return json.dumps(asdict(record), sort_keys=True, separators=(",", ":")).encode()


@dataclass
class PipelineHead:
    """The `head` record: which version is the latest, and the pipeline's own metadata."""

    version: str
    version_count: int
    create_time: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    #: When the head version was first stored (so listings need not read version records).
    version_create_time: str = ""

    def encode(self) -> bytes:
        return _encode_json(self)

    @classmethod
    def decode(cls, raw: bytes, key: bytes) -> PipelineHead:
        value = _decode_json(raw, key, "pipeline head")
        try:
            return cls(
                version=str(value["version"]),
                version_count=int(value["version_count"]),
                create_time=str(value["create_time"]),
                description=str(value.get("description", "")),
                labels={str(k): str(v) for k, v in dict(value.get("labels", {})).items()},
                version_create_time=str(value.get("version_create_time", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise Internal(f"the pipeline head at {key.decode()} lacks {error}; it is corrupt") from error


@dataclass
class PipelineVersionRecord:
    """The `versions/{hex}` record. Exactly one of `pipeline` (base64) and `spec_blob` is set."""

    digest: str
    sequence: int
    create_time: str
    size_bytes: int
    pipeline: str = ""
    spec_blob: str = ""
    #: Who created the version (the authenticated subject; "" without auth).
    created_by: str = ""

    def encode(self) -> bytes:
        return _encode_json(self)

    @classmethod
    def decode(cls, raw: bytes, key: bytes) -> PipelineVersionRecord:
        value = _decode_json(raw, key, "pipeline version")
        try:
            return cls(
                digest=str(value["digest"]),
                sequence=int(value["sequence"]),
                create_time=str(value["create_time"]),
                size_bytes=int(value.get("size_bytes", 0)),
                pipeline=str(value.get("pipeline", "")),
                spec_blob=str(value.get("spec_blob", "")),
                created_by=str(value.get("created_by", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise Internal(f"the pipeline version at {key.decode()} lacks {error}; it is corrupt") from error


@dataclass
class PipelineVersionOrder:
    """The `seq/{n}` record."""

    digest: str
    create_time: str
    created_by: str = ""

    def encode(self) -> bytes:
        return _encode_json(self)

    @classmethod
    def decode(cls, raw: bytes, key: bytes) -> PipelineVersionOrder:
        value = _decode_json(raw, key, "pipeline version order")
        try:
            return cls(
                digest=str(value["digest"]),
                create_time=str(value["create_time"]),
                created_by=str(value.get("created_by", "")),
            )
        except KeyError as error:
            raise Internal(f"the pipeline version order at {key.decode()} lacks {error}; it is corrupt") from error


def version_record(
    name: str, spec: pipeline_pb2.PipelineSpec, digest: str, sequence: int, create_time: str
) -> tuple[PipelineVersionRecord, bytes | None]:
    """The record of a new version, and the blob to store first when the spec is too large.

    Returns:
        (record, blob): `blob` is None when the spec is inline; otherwise the caller must
        store it in the artifact store before writing the record.
    """
    stored = pipeline_pb2.Pipeline(name=name)
    stored.spec.CopyFrom(spec)
    data = stored.SerializeToString(deterministic=True)
    if len(data) > INLINE_SPEC_BYTES:
        record = PipelineVersionRecord(digest, sequence, create_time, len(data), spec_blob=digest_of(data))
        return record, data
    return PipelineVersionRecord(
        digest, sequence, create_time, len(data), pipeline=base64.b64encode(data).decode()
    ), None


def split_version(version: str, field: str = "version") -> str:
    """The hex (or hex prefix) of a version given as `sha256:<hex>`, `<hex>` or a prefix."""
    text = version.removeprefix("sha256:")
    if len(text) == 64:
        return check_digest("sha256:" + text, field)[:64]
    if len(text) < MIN_VERSION_PREFIX or len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidArgument(
            f'{field}: "{version}" is not a version; give the digest "sha256:<64 hex>" or a unique prefix of '
            f"at least {MIN_VERSION_PREFIX} lower-case hex digits (see `weft pipelines get NAME --versions`)",
            field=field,
        )
    return text


class PipelineReader:
    """Reads pipeline heads and versions, caching parsed specs by version digest.

    Cached specs are shared: callers must not modify what `spec()` returns.
    """

    def __init__(self, store: Store, keyspace: Keyspace, blobs: BlobStore, *, cache_size: int = 16) -> None:
        self.store = store
        self.keyspace = keyspace
        self.blobs = blobs
        self._cache_size = cache_size
        self._specs: OrderedDict[str, tuple[pipeline_pb2.PipelineSpec, Dag]] = OrderedDict()

    async def head(self, ns: str, name: str) -> tuple[PipelineHead, KeyValue] | None:
        """The pipeline's head record and its etcd entry, or None if it does not exist."""
        kv = await self.store.get(self.keyspace.pipeline_head(ns, name))
        if kv is None:
            return None
        return PipelineHead.decode(kv.value, kv.key), kv

    async def require_head(self, ns: str, name: str) -> tuple[PipelineHead, KeyValue]:
        """Like `head`, but NOT_FOUND (naming the pipeline and how to list them) when absent."""
        found = await self.head(ns, name)
        if found is None:
            raise NotFound(
                f'pipeline "{pipeline_name(ns, name)}" does not exist; create it with '
                f"`weft apply -f pipeline.yaml` or see the existing ones with `weft pipelines list`"
            )
        return found

    async def resolve_version(self, ns: str, name: str, version: str, field: str = "version") -> str:
        """The full digest of `version` (a digest or a unique hex prefix) of a pipeline.

        Raises:
            InvalidArgument: Malformed or ambiguous version.
            NotFound: No such version.
        """
        hex_part = split_version(version, field)
        prefix = self.keyspace.pipeline_version(ns, name, hex_part)
        found = await self.store.range(prefix, limit=2, keys_only=True)
        if not found.kvs:
            raise NotFound(
                f'{field}: pipeline "{pipeline_name(ns, name)}" has no version "{version}"; '
                f"list its versions with `weft pipelines get {name} --versions`"
            )
        if len(found.kvs) > 1:
            raise InvalidArgument(
                f'{field}: "{version}" matches several versions of pipeline "{name}"; give more hex digits',
                field=field,
            )
        versions_prefix = self.keyspace.pipeline_versions(ns, name)
        return "sha256:" + self.keyspace.tail(found.kvs[0].key, versions_prefix)

    async def version_record(self, ns: str, name: str, digest: str) -> PipelineVersionRecord | None:
        """The record of one version by full digest, or None."""
        key = self.keyspace.pipeline_version(ns, name, check_digest(digest, "version"))
        kv = await self.store.get(key)
        return None if kv is None else PipelineVersionRecord.decode(kv.value, kv.key)

    async def load_stored(self, record: PipelineVersionRecord) -> pipeline_pb2.Pipeline:
        """The stored Pipeline (bare name + spec) of a version record, from etcd or the blob."""
        where = f"pipeline version {record.digest}"
        if record.spec_blob:
            try:
                data = await self.blobs.get(record.spec_blob)
            except NotFound as error:
                raise Internal(
                    f"the spec blob {record.spec_blob} of {where} is missing from the artifact store; "
                    "restore the blob directory or create the pipeline again"
                ) from error
        else:
            try:
                data = base64.b64decode(record.pipeline, validate=True)
            except binascii.Error as error:
                raise Internal(f"the inline spec of {where} is not base64; the record is corrupt") from error
        stored = pipeline_pb2.Pipeline()
        try:
            stored.ParseFromString(data)
        except Exception as error:  # protobuf raises DecodeError or others on garbage
            raise Internal(f"the spec of {where} does not parse ({error}); it is corrupt") from error
        return stored

    async def spec(self, ns: str, name: str, digest: str) -> tuple[pipeline_pb2.PipelineSpec, Dag]:
        """The spec of one version and its DAG (cached; do not modify them).

        Raises:
            NotFound: The pipeline has no such version (it may have been deleted).
        """
        cached = self._specs.get(digest)
        if cached is not None:
            self._specs.move_to_end(digest)
            return cached
        record = await self.version_record(ns, name, digest)
        if record is None:
            raise NotFound(
                f'pipeline "{pipeline_name(ns, name)}" has no version {digest}; it may have been deleted '
                "(DeletePipeline removes every version)"
            )
        stored = await self.load_stored(record)
        entry = (stored.spec, Dag.from_spec(stored.spec))
        self._specs[digest] = entry
        while len(self._specs) > self._cache_size:
            self._specs.popitem(last=False)
        return entry

    def remember(self, digest: str, spec: pipeline_pb2.PipelineSpec, dag: Dag) -> None:
        """Caches a spec the caller already has (the api right after validating it)."""
        self._specs[digest] = (spec, dag)
        while len(self._specs) > self._cache_size:
            self._specs.popitem(last=False)

    async def get(self, ns: str, name: str, version: str = "", *, with_spec: bool = True) -> pipeline_pb2.Pipeline:
        """The Pipeline as GetPipeline returns it: latest or the given version.

        Raises:
            NotFound: No such pipeline or version.
            InvalidArgument: Malformed or ambiguous version.
        """
        head, head_kv = await self.require_head(ns, name)
        digest = head.version if not version else await self.resolve_version(ns, name, version)
        record = await self.version_record(ns, name, digest)
        if record is None:
            raise NotFound(f'pipeline "{pipeline_name(ns, name)}" has no version {digest}')
        message = pipeline_message(ns, name, head, head_kv, record)
        if with_spec:
            spec, _ = await self.spec(ns, name, digest)
            message.spec.CopyFrom(spec)
        return message


def pipeline_message(
    ns: str, name: str, head: PipelineHead, head_kv: KeyValue, record: PipelineVersionRecord | PipelineVersionOrder
) -> pipeline_pb2.Pipeline:
    """A Pipeline message with every output-only field, without the spec."""
    return pipeline_pb2.Pipeline(
        name=pipeline_name(ns, name),
        version=record.digest,
        description=head.description,
        labels=head.labels,
        create_time=timestamp(head.create_time),
        version_create_time=timestamp(record.create_time),
        version_count=head.version_count,
        etag=str(head_kv.mod_revision),
        created_by=record.created_by,
    )
