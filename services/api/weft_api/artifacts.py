"""ArtifactService: uploads and downloads of content-addressed blobs over gRPC.

A thin gRPC face of the configured `BlobStore` (a directory, or object storage that the
executors and step pods also reach directly). PutBlob verifies the uploaded bytes against
the header's digest and size and stores nothing on a mismatch; GetBlob streams 1 MiB
chunks from an offset; StatBlob also tells the store that the blob is wanted (`touch`),
because uploaders ask it before skipping an upload and the sweep must not delete a blob
such an upload is about to rely on. `TRAFFIC` counts the bytes that went through the
service, so an operator (and a test) can see that step data goes around the api when
the store is object storage. This module never touches etcd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from weft.v1 import artifact_pb2, artifact_pb2_grpc
from weft_core.blobs import CHUNK_BYTES, BlobInfo, BlobStore, check_digest
from weft_core.errors import InvalidArgument, NotFound


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


class ArtifactService(artifact_pb2_grpc.ArtifactServiceServicer):
    """The ArtifactService of weft-api (see the module docstring)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

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
        TRAFFIC.blobs_received += 1
        return blob_message(info)

    async def GetBlob(
        self, request: artifact_pb2.GetBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[artifact_pb2.GetBlobResponse]:
        check_digest(request.digest)
        info = await self.blobs.stat(request.digest)
        if info is None:
            raise NotFound(f"blob {request.digest} is not stored; upload it first (PutBlob)")
        if not 0 <= request.offset <= info.size:
            raise InvalidArgument(
                f"offset: {request.offset} is outside blob {request.digest} of {info.size} bytes; "
                "use 0 to read from the start",
                field="offset",
            )
        TRAFFIC.blobs_sent += 1
        async for chunk in self.blobs.read(request.digest, offset=request.offset, chunk_size=CHUNK_BYTES):
            TRAFFIC.bytes_sent += len(chunk)
            yield artifact_pb2.GetBlobResponse(data=chunk)

    async def StatBlob(
        self, request: artifact_pb2.StatBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> artifact_pb2.Blob:
        check_digest(request.digest)
        touch = getattr(self.blobs, "touch", None)
        info = await (touch(request.digest) if touch is not None else self.blobs.stat(request.digest))
        if info is None:
            raise NotFound(f"blob {request.digest} is not stored")
        return blob_message(info)
