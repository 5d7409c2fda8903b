"""Content-addressed blob storage: step inputs and outputs, parameter values, logs, big specs.

A blob is named by the sha256 of its content, `sha256:<64 lower-case hex>`. `BlobStore`
is the interface services use; two backends implement it:

- `DirectoryBlobStore`, the default backend behind ArtifactService: a directory with
  files at `sha256/ab/abcdef…`. A write goes to a temporary file, is fsynced, verified
  against its digest and atomically renamed, so a reader never sees a partial blob and a
  crash mid-write leaves only a temporary file.
- `RemoteBlobStore`, a client of ArtifactService over gRPC, for executors.

Blobs are immutable: storing existing content again is a no-op. Nothing here knows about
etcd, runs or steps, and nothing here may log blob content (it may hold user data).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import grpc

from weft.v1 import artifact_pb2, artifact_pb2_grpc
from weft_core.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from weft_core.tls import Peer

#: Size of the chunks blobs are read and streamed in.
CHUNK_BYTES = 1024 * 1024
#: Temporary files older than this are leftovers of a crash and are removed at start.
STALE_TEMP_SECONDS = 3600.0

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    """`sha256:<hex>` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str, field: str = "digest") -> str:
    """Returns the hex part of a valid digest; raises InvalidArgument naming `field` otherwise."""
    if not _DIGEST.match(digest):
        shown = digest if len(digest) <= 80 else digest[:80] + "…"
        raise InvalidArgument(
            f'{field}: "{shown}" is not a blob digest; use "sha256:" followed by the 64 lower-case hex digits '
            "of the content's SHA-256 (e.g. the output of `sha256sum FILE`)",
            field=field,
        )
    return digest[len("sha256:") :]


@dataclass(frozen=True)
class BlobInfo:
    """What is known about a stored blob."""

    digest: str
    size: int
    create_time: datetime


class BlobStore(Protocol):
    """Content-addressed storage. Every method may raise `weft_core.errors.ServiceError`."""

    async def put(self, data: bytes) -> BlobInfo:
        """Stores `data`; returns its description (no-op if it exists)."""
        ...

    async def put_stream(
        self, chunks: AsyncIterable[bytes], *, digest: str | None = None, size: int | None = None
    ) -> BlobInfo:
        """Stores streamed content. With `digest`/`size`, the content must match them, else
        InvalidArgument is raised and nothing is stored."""
        ...

    async def put_file(self, path: Path) -> BlobInfo:
        """Stores the content of a local file."""
        ...

    async def stat(self, digest: str) -> BlobInfo | None:
        """The blob's description, or None if it is not stored."""
        ...

    async def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""
        ...

    def read(self, digest: str, *, offset: int = 0, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The content from `offset`, in chunks; NotFound if the blob is not stored."""
        ...

    async def get(self, digest: str) -> bytes:
        """The whole content (for small blobs); NotFound if it is not stored."""
        ...


def _mismatch(declared_digest: str | None, declared_size: int | None, actual_digest: str, actual_size: int) -> str:
    declared = " ".join(
        part
        for part in (declared_digest or "", f"({declared_size} bytes)" if declared_size is not None else "")
        if part
    )
    # Named after the header field that disagrees with the content (the digest when both do).
    field = "header.size_bytes" if declared_size is not None and declared_size != actual_size else "header.digest"
    return (
        f"{field}: the uploaded content is {actual_digest} ({actual_size} bytes) but the header declared {declared}; "
        "nothing was stored: compute the digest and size of the exact bytes you send and upload again"
    )


class DirectoryBlobStore:
    """Blobs as files under one directory (see the module docstring).

    Several processes may share the directory (e.g. api replicas on one volume): writes
    are atomic renames of fully written, verified files.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._temp = self.root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._temp.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self._temp.iterdir():
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    def path_of(self, digest: str) -> Path:
        """Where the blob's file is (whether or not it exists)."""
        hex_digest = check_digest(digest)
        return self._blobs / hex_digest[:2] / hex_digest

    async def put(self, data: bytes) -> BlobInfo:
        # One thread hop for the check and the write: small puts (parameters) are frequent.
        return await asyncio.to_thread(self._put_bytes, data)

    async def put_stream(
        self, chunks: AsyncIterable[bytes], *, digest: str | None = None, size: int | None = None
    ) -> BlobInfo:
        if digest is not None:
            check_digest(digest)
        if size is not None and size < 0:
            raise InvalidArgument(f"size_bytes: {size} is negative; send the content's size in bytes")
        handle, temp_name = await asyncio.to_thread(self._open_temp)
        hasher = hashlib.sha256()
        written = 0
        try:
            with os.fdopen(handle, "wb") as temp:
                async for chunk in chunks:
                    hasher.update(chunk)
                    written += len(chunk)
                    if size is not None and written > size:
                        raise InvalidArgument(
                            f"header.size_bytes: the upload sent more than the {size} bytes its header declared; "
                            "nothing was stored: send the exact size in the header",
                            field="header.size_bytes",
                        )
                    await asyncio.to_thread(temp.write, chunk)
                actual = "sha256:" + hasher.hexdigest()
                if (digest is not None and actual != digest) or (size is not None and written != size):
                    raise InvalidArgument(_mismatch(digest, size, actual, written))
                await asyncio.to_thread(_flush_and_sync, temp)
            return await asyncio.to_thread(self._publish, temp_name, actual, written)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise

    async def put_file(self, path: Path) -> BlobInfo:
        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as source:  # noqa: ASYNC230  (chunks are read in a thread below)
                while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
                    yield chunk

        return await self.put_stream(chunks())

    async def stat(self, digest: str) -> BlobInfo | None:
        path = self.path_of(digest)
        try:
            info = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            return None
        return BlobInfo(digest, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    async def exists(self, digest: str) -> bool:
        return await self.stat(digest) is not None

    async def read(self, digest: str, *, offset: int = 0, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        path = self.path_of(digest)
        if offset < 0:
            raise InvalidArgument(f"offset: {offset} is negative; use 0 to read from the start")
        try:
            source = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not stored; upload it first (PutBlob)") from None
        with source:
            size = os.fstat(source.fileno()).st_size
            if offset > size:
                raise InvalidArgument(f"offset: {offset} is past the end of blob {digest} ({size} bytes)")
            source.seek(offset)
            while chunk := await asyncio.to_thread(source.read, chunk_size):
                yield chunk

    async def get(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest)])

    # Blocking helpers, run in threads.

    def _open_temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self._temp, prefix="upload-")

    def _put_bytes(self, data: bytes) -> BlobInfo:
        digest = digest_of(data)
        try:
            info = self.path_of(digest).stat()
        except FileNotFoundError:
            return self._write_verified(digest, len(data), [data])
        return BlobInfo(digest, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    def _write_verified(self, digest: str, size: int, parts: list[bytes]) -> BlobInfo:
        handle, temp_name = self._open_temp()
        try:
            with os.fdopen(handle, "wb") as temp:
                for part in parts:
                    temp.write(part)
                _flush_and_sync(temp)
            return self._publish(temp_name, digest, size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise

    def _publish(self, temp_name: str, digest: str, size: int) -> BlobInfo:
        final = self.path_of(digest)
        final.parent.mkdir(exist_ok=True)
        if final.exists():
            # Same content already stored (a concurrent upload won): keep that file.
            os.unlink(temp_name)
        else:
            os.replace(temp_name, final)
            # The rename is durable only once the directory entry is on disk.
            directory = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        info = final.stat()
        if info.st_size != size:
            raise Internal(
                f"blob file {final} has {info.st_size} bytes, expected {size}; the blob directory is corrupt"
            )
        return BlobInfo(digest, size, datetime.fromtimestamp(info.st_mtime, UTC))


def _flush_and_sync(temp: IO[bytes]) -> None:
    temp.flush()
    os.fsync(temp.fileno())


def _file_digest(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            yield chunk


#: The namespace the blobs of the current task belong to ("" for none). An executor sets
#: it in each step's task, so uploads are recorded for that namespace and reads and
#: stats answer for it when weft-api has authentication on (weft_api.artifacts).
blob_namespace: contextvars.ContextVar[str] = contextvars.ContextVar("weft_blob_namespace", default="")


def namespace_context(namespace: str) -> contextvars.Context:
    """A copy of the current context whose blobs belong to `namespace` (for create_task)."""
    context = contextvars.copy_context()
    context.run(blob_namespace.set, namespace)
    return context


class RemoteBlobStore:
    """A BlobStore that talks to weft-api's ArtifactService (used by executors).

    Uploads skip content the service already has (one StatBlob first), so re-uploading
    a cached output costs one round trip. Every request names the namespace of
    `blob_namespace` (the current task's), so with authentication on an upload makes
    the blob readable in that namespace.
    """

    def __init__(self, target: str | grpc.aio.Channel, *, timeout: float = 60.0, peer: Peer | None = None) -> None:
        """Connects to `target` (`host:port`) or uses an existing channel.

        Args:
            target: The api's address, or a channel the caller owns.
            timeout: Deadline of each call, in seconds.
            peer: The token and TLS settings towards the api (for a `host:port` target).
        """
        if isinstance(target, str):
            self.target = target
            self._channel = (peer or Peer()).open_channel(
                target,
                options=[
                    ("grpc.max_receive_message_length", 2 * CHUNK_BYTES + 1024),
                    ("grpc.max_send_message_length", 2 * CHUNK_BYTES + 1024),
                ],
            )
            self._owns_channel = True
        else:
            self.target = "the artifact service"
            self._channel = target
            self._owns_channel = False
        self._stub: Any = artifact_pb2_grpc.ArtifactServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close(None)

    def _error(self, error: grpc.aio.AioRpcError) -> ServiceError:
        details = error.details() or ""
        by_code: dict[grpc.StatusCode, type[ServiceError]] = {
            grpc.StatusCode.NOT_FOUND: NotFound,
            grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
            # A missing or wrong peer token is a setting to fix, not an outage to wait out.
            grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
            grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        }
        if error.code() in by_code:
            return by_code[error.code()](details)
        return Unavailable(f"artifact store at {self.target} failed ({error.code().name}: {details}); retry later")

    async def _upload(self, digest: str, size: int, chunks: AsyncIterable[bytes]) -> BlobInfo:
        async def requests() -> AsyncIterator[artifact_pb2.PutBlobRequest]:
            header = artifact_pb2.BlobHeader(digest=digest, size_bytes=size, namespace=blob_namespace.get())
            yield artifact_pb2.PutBlobRequest(header=header)
            async for chunk in chunks:
                yield artifact_pb2.PutBlobRequest(data=chunk)

        try:
            blob = await self._stub.PutBlob(requests(), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from error
        return _info_of(blob)

    async def put(self, data: bytes) -> BlobInfo:
        digest = digest_of(data)
        if len(data) > CHUNK_BYTES:
            existing = await self.stat(digest)
            if existing is not None:
                return existing

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), CHUNK_BYTES):
                yield data[start : start + CHUNK_BYTES]

        return await self._upload(digest, len(data), chunks())

    async def put_stream(
        self, chunks: AsyncIterable[bytes], *, digest: str | None = None, size: int | None = None
    ) -> BlobInfo:
        if digest is not None and size is not None:
            check_digest(digest)
            return await self._upload(digest, size, chunks)
        # The header needs the digest before the content: spool it to a file first.
        with tempfile.NamedTemporaryFile(prefix="weft-upload-") as spool:
            async for chunk in chunks:
                await asyncio.to_thread(spool.write, chunk)
            await asyncio.to_thread(spool.flush)
            info = await self.put_file(Path(spool.name))
        if digest is not None and info.digest != digest:
            raise InvalidArgument(_mismatch(digest, size, info.digest, info.size))
        return info

    async def put_file(self, path: Path) -> BlobInfo:
        digest, size = await asyncio.to_thread(_file_digest, path)
        existing = await self.stat(digest)
        if existing is not None:
            return existing
        return await self._upload(digest, size, _threaded(_file_chunks(path)))

    async def stat(self, digest: str) -> BlobInfo | None:
        check_digest(digest)
        try:
            blob = await self._stub.StatBlob(
                artifact_pb2.StatBlobRequest(digest=digest, namespace=blob_namespace.get()), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error(error) from error
        return _info_of(blob)

    async def exists(self, digest: str) -> bool:
        return await self.stat(digest) is not None

    async def read(self, digest: str, *, offset: int = 0, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        # The service decides the chunk size; `chunk_size` is honoured by the directory backend.
        check_digest(digest)
        request = artifact_pb2.GetBlobRequest(digest=digest, offset=offset, namespace=blob_namespace.get())
        call = self._stub.GetBlob(request, timeout=self.timeout)
        try:
            async for response in call:
                yield response.data
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from error
        finally:
            call.cancel()

    async def get(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest)])


async def _threaded(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Iterates a blocking iterator (file reads) in a thread, chunk by chunk."""
    sentinel: Any = object()
    while (chunk := await asyncio.to_thread(next, chunks, sentinel)) is not sentinel:
        yield chunk


def _info_of(blob: artifact_pb2.Blob) -> BlobInfo:
    created = blob.create_time.ToDatetime(tzinfo=UTC) if blob.HasField("create_time") else datetime.now(UTC)
    return BlobInfo(blob.digest, int(blob.size_bytes), created)
