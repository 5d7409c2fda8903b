"""ArtifactService: uploads and downloads of content-addressed blobs over gRPC.

A thin gRPC face of the configured `BlobStore` (a directory, or object storage that the
executors and step pods also reach directly). PutBlob verifies the uploaded bytes against
the header's digest and size and stores nothing on a mismatch; GetBlob streams 1 MiB
chunks from an offset; StatBlob also tells the store that the blob is wanted (`touch`),
because uploaders ask it before skipping an upload and the sweep must not delete a blob
such an upload is about to rely on. `TRAFFIC` counts the bytes that went through the
service, so an operator (and a test) can see that step data goes around the api when
the store is object storage.

With authentication on, blobs are shared by content but readable per namespace: a
PutBlob for namespace ns records `blobrefs/{ns}/{hex}` in etcd once the content is
verified, and GetBlob/StatBlob in ns answer NOT_FOUND for a blob ns never uploaded, so
knowing a digest from another namespace gives nothing (uploading needs the content
itself, so a reference cannot be forged). Cluster-wide admins (executors) read any
blob; their StatBlob in a namespace still answers for that namespace, so an executor
uploads an output another namespace already has and the reference is recorded. Blobs
that executors and step helpers write straight to object storage have no `blobrefs` key;
they are readable in ns because an outcome of ns references them: the lineage index
(`weft_core.lineage`) records every output of a committed outcome
(`lineage/{ns}/producer/{hex}/`) and every blob it read (`lineage/{ns}/consumed/{hex}/`),
and the reference check reads those too, in the same etcd round trip. Only committed
outcomes count (a losing attempt's outputs stay unreadable), and the index is written
just after the commit, so an output is readable once its step's lineage is. Without
authentication nothing here touches etcd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from weft.v1 import artifact_pb2, artifact_pb2_grpc
from weft_api.access import blob_namespace
from weft_core import metrics
from weft_core.auth import EVERY_NAMESPACE, current_principal
from weft_core.blobs import CHUNK_BYTES, BlobInfo, BlobStore, check_digest
from weft_core.errors import InvalidArgument, NotFound
from weft_core.keyspace import Keyspace
from weft_core.store import Store, op_get


@dataclass
class ArtifactTraffic:
    """Bytes and blobs that went through ArtifactService in this process (all instances)."""

    bytes_received: int = 0
    bytes_sent: int = 0
    blobs_received: int = 0
    blobs_sent: int = 0


#: This process's ArtifactService traffic (like a metrics registry: one per process).
TRAFFIC = ArtifactTraffic()


def blob_message(info: BlobInfo) -> artifact_pb2.Blob:
    created = Timestamp()
    created.FromDatetime(info.create_time)
    return artifact_pb2.Blob(digest=info.digest, size_bytes=info.size, create_time=created)


class BlobReferences:
    """Which namespaces may read which blobs (auth only): a `blobrefs/{ns}/{hex}` key
    (an upload for ns), or an outcome of ns that produced or read the blob (its lineage)."""

    def __init__(self, store: Store, keyspace: Keyspace) -> None:
        self.store = store
        self.keyspace = keyspace

    async def record(self, namespace: str, digest: str) -> None:
        """Makes the blob readable in `namespace` (after its content was verified)."""
        if namespace != EVERY_NAMESPACE:
            await self.store.put(self.keyspace.blob_ref(namespace, check_digest(digest)), b"")

    async def visible(self, namespace: str, digest: str, *, admin_sees_all: bool) -> bool:
        """Whether the current caller may see the blob when asking in `namespace`."""
        principal = current_principal()
        if principal is None or (admin_sees_all and principal.cluster_admin):
            return True
        if namespace == EVERY_NAMESPACE:
            return True  # the access rule already required the role in every namespace
        return await self.referenced_in(namespace, digest)

    async def referenced_in(self, namespace: str, digest: str) -> bool:
        """Whether `namespace` uploaded the blob or one of its outcomes references it."""
        hex_digest = check_digest(digest)
        ks = self.keyspace
        result = await self.store.txn(
            [],
            [
                op_get(ks.blob_ref(namespace, hex_digest)),
                op_get(ks.lineage_producer(namespace, hex_digest), prefix=True, count_only=True),
                op_get(ks.lineage_consumed(namespace, hex_digest), prefix=True, count_only=True),
            ],
        )
        uploaded = bool(result.range_kvs(0))
        return uploaded or any(result.responses[i].response_range.count for i in (1, 2))


class ArtifactService(artifact_pb2_grpc.ArtifactServiceServicer):
    """The ArtifactService of weft-api (see the module docstring)."""

    def __init__(self, blobs: BlobStore, references: BlobReferences | None = None) -> None:
        """Serves `blobs`; `references` (given when authentication is on) limits reads to
        blobs uploaded for the namespace asked in."""
        self.blobs = blobs
        self.references = references

    async def _visible(self, request_namespace: str, digest: str, *, admin_sees_all: bool) -> bool:
        if self.references is None:
            return True
        namespace = blob_namespace(request_namespace, "namespace")
        return await self.references.visible(namespace, digest, admin_sees_all=admin_sees_all)

    async def PutBlob(
        self, request_iterator: AsyncIterator[artifact_pb2.PutBlobRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> artifact_pb2.Blob:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument(
                "header: the first message of PutBlob must be the header (digest and size_bytes), then the data",
                field="header",
            )
        header = first.header
        check_digest(header.digest, "header.digest")
        if header.size_bytes < 0:
            raise InvalidArgument(
                f"header.size_bytes: {header.size_bytes} is negative; send the content's size",
                field="header.size_bytes",
            )

        async def data() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.WhichOneof("part") != "data":
                    raise InvalidArgument("header: send exactly one header, as the first message", field="header")
                TRAFFIC.bytes_received += len(message.data)
                yield message.data

        # Content already stored is still verified (and then discarded by the store), so a
        # wrong upload is always refused; clients avoid re-uploads with StatBlob first.
        info = await self.blobs.put_stream(data(), digest=header.digest, size=header.size_bytes)
        if self.references is not None:
            await self.references.record(blob_namespace(header.namespace, "header.namespace"), info.digest)
        metrics.blob_bytes("in", info.size)
        TRAFFIC.blobs_received += 1
        return blob_message(info)

    async def GetBlob(
        self, request: artifact_pb2.GetBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[artifact_pb2.GetBlobResponse]:
        check_digest(request.digest)
        info = await self.blobs.stat(request.digest)
        if info is None or not await self._visible(request.namespace, request.digest, admin_sees_all=True):
            raise NotFound(f"blob {request.digest} is not stored; upload it first (PutBlob)")
        if not 0 <= request.offset <= info.size:
            raise InvalidArgument(
                f"offset: {request.offset} is outside blob {request.digest} of {info.size} bytes; "
                "use 0 to read from the start",
                field="offset",
            )
        TRAFFIC.blobs_sent += 1
        async for chunk in self.blobs.read(request.digest, offset=request.offset, chunk_size=CHUNK_BYTES):
            metrics.blob_bytes("out", len(chunk))
            TRAFFIC.bytes_sent += len(chunk)
            yield artifact_pb2.GetBlobResponse(data=chunk)

    async def StatBlob(
        self, request: artifact_pb2.StatBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> artifact_pb2.Blob:
        check_digest(request.digest)
        touch = getattr(self.blobs, "touch", None)
        info = await (touch(request.digest) if touch is not None else self.blobs.stat(request.digest))
        # Same message whether absent or of another namespace: existence is not leaked.
        if info is None or not await self._visible(request.namespace, request.digest, admin_sees_all=False):
            raise NotFound(f"blob {request.digest} is not stored")
        return blob_message(info)
