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
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import grpc

from weft.v1 import artifact_pb2, artifact_pb2_grpc
from weft_core.digests import file_digest
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

log = logging.getLogger(__name__)

#: Size of the chunks blobs are read and streamed in.
CHUNK_BYTES = 1024 * 1024
#: Existence checks in flight at once in `missing_blobs` for stores without `stat_many`.
MISSING_CHECK_CONCURRENCY = 64
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


@dataclass(frozen=True)
class StoredBlob:
    """A blob as the sweep (`weft_core.gc`) sees it: its size and when it was last written
    or relied on (`touch`)."""

    digest: str
    size: int
    last_used: datetime


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

    async def close(self) -> None:
        """Releases connections (the store is not used afterwards)."""
        ...


def mismatch_message(
    declared_digest: str | None, declared_size: int | None, actual_digest: str, actual_size: int
) -> str:
    """What PutBlob answers when the content is not what its header declared."""
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


_mismatch = mismatch_message


async def missing_blobs(store: BlobStore, digests: Iterable[str]) -> list[str]:
    """The digests among `digests` that `store` does not hold, sorted, in ONE batched check.

    This is the cache-hit verification of invariant 7: backends with `stat_many` (the
    directory: one thread hop; object storage: concurrent HEADs) answer all at once, others
    (the api's ArtifactService) get concurrent StatBlobs on one channel.
    """
    unique = sorted(set(digests))
    if not unique:
        return []
    stat_many = getattr(store, "stat_many", None)
    if stat_many is not None:
        found: dict[str, BlobInfo | None] = await stat_many(unique)
        return [d for d in unique if found.get(d) is None]
    # Concurrent, but bounded: 2,000 StatBlobs at once only queue up in the api's threads.
    slots = asyncio.Semaphore(MISSING_CHECK_CONCURRENCY)

    async def stat(digest: str) -> BlobInfo | None:
        async with slots:
            return await store.stat(digest)

    infos = await asyncio.gather(*(stat(d) for d in unique))
    return [d for d, info in zip(unique, infos, strict=True) if info is None]


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

    async def close(self) -> None:
        """Nothing to release."""

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

    async def stat_many(self, digests: Iterable[str]) -> dict[str, BlobInfo | None]:
        """Each blob's description (None when it is not stored), in one thread hop."""
        return await asyncio.to_thread(lambda: {d: self._stat_now(d) for d in sorted(set(digests))})

    async def touch(self, digest: str) -> BlobInfo | None:
        """Records that the blob is wanted now (its mtime, which the sweep reads) and returns
        its description, or None if it is not stored."""
        return await asyncio.to_thread(self._touch_now, digest)

    def _stat_now(self, digest: str) -> BlobInfo | None:
        try:
            info = self.path_of(digest).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(digest, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    def _touch_now(self, digest: str) -> BlobInfo | None:
        try:
            os.utime(self.path_of(digest))
        except FileNotFoundError:
            return None
        return self._stat_now(digest)

    # Retention (see weft_core.gc) -----------------------------------------------------

    async def list_blobs(self) -> AsyncIterator[StoredBlob]:
        """Every stored blob with its last write or touch time."""
        for entry in await asyncio.to_thread(self._list_now):
            yield entry

    def _list_now(self) -> list[StoredBlob]:
        found: list[StoredBlob] = []
        for shard in sorted(self._blobs.iterdir()):
            if not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                with contextlib.suppress(FileNotFoundError):
                    info = path.stat()
                    if len(path.name) == 64:
                        when = datetime.fromtimestamp(info.st_mtime, UTC)
                        found.append(StoredBlob("sha256:" + path.name, info.st_size, when))
        return found

    async def delete_unused(self, digest: str, cutoff: datetime) -> bool:
        """Deletes the blob unless it was written or touched after `cutoff`; returns whether
        it was deleted.

        The file is renamed into `trash/` first and its mtime read again: a writer that
        touched it before the rename (it found the blob and relies on it) changed the
        mtime, and the file is put back; a writer after the rename finds no file and
        stores it again.
        """
        return await asyncio.to_thread(self._delete_unused_now, digest, cutoff)

    def _delete_unused_now(self, digest: str, cutoff: datetime) -> bool:
        final = self.path_of(digest)
        try:
            before = final.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if before > cutoff.timestamp() * 1e9:
            return False
        trash = self.root / "trash"
        trash.mkdir(exist_ok=True)
        doomed = trash / f"{final.name}.{uuid.uuid4().hex}"
        try:
            os.rename(final, doomed)
        except FileNotFoundError:
            return False
        if doomed.stat().st_mtime_ns != before:
            with contextlib.suppress(FileExistsError):
                os.link(doomed, final)  # back where it was, unless it was stored anew meanwhile
            doomed.unlink()
            return False
        doomed.unlink()
        return True

    async def remove_stale_uploads(self, cutoff: datetime) -> int:
        """Deletes temporary files of uploads (and of deletions) older than `cutoff`."""

        def remove() -> int:
            removed = 0
            for directory in (self._temp, self.root / "trash"):
                if not directory.is_dir():
                    continue
                for leftover in directory.iterdir():
                    with contextlib.suppress(OSError):
                        if leftover.stat().st_mtime < cutoff.timestamp():
                            leftover.unlink()
                            removed += 1
            return removed

        return await asyncio.to_thread(remove)

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
        existing = self._touch_now(digest)
        if existing is None:
            return self._write_verified(digest, len(data), [data])
        return existing

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
        if self._touch_now(digest) is not None:
            # Same content already stored (a concurrent upload won): keep that file, and
            # tell the sweep it is wanted again.
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


#: How long a call to the artifact store is retried while weft-api is unreachable (a
#: restart, a rolling upgrade) before it fails with Unavailable.
DEFAULT_API_PATIENCE = 120.0
#: Pause before the first retry; it doubles up to RETRY_MAX_SECONDS.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
#: Details of UNKNOWN/INTERNAL/CANCELLED statuses that mean the connection broke (the
#: server died mid-call), not that the server refused the request.
_BROKEN_STREAM = (
    "stream removed",
    "socket closed",
    "connection reset",
    "broken pipe",
    "rst_stream",
    "goaway",
    "end of tcp stream",
    "connection refused",
    "transport",
)


def transient_failure(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call is worth retrying: the service was unreachable, or the
    connection broke mid-call, as when weft-api restarts. Refusals are not."""
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
        details = (error.details() or "").lower()
        return any(marker in details for marker in _BROKEN_STREAM)
    return False


class _Patience:
    """The retry state of one call: when it must give up, and the next pause."""

    def __init__(self, store: RemoteBlobStore, what: str) -> None:
        self.store = store
        self.what = what
        self.give_up_at: float | None = None
        self.pause = RETRY_FIRST_SECONDS

    async def wait(self, error: grpc.aio.AioRpcError) -> None:
        """Sleeps before the next try, or raises the error as a ServiceError when the call
        must not be retried (a refusal) or the patience is used up."""
        if not transient_failure(error):
            raise self.store._error(error) from error
        now = time.monotonic()
        if self.give_up_at is None:
            self.give_up_at = now + self.store.patience
        if now + self.pause > self.give_up_at:
            raise self.store._error(error, gave_up_after=self.store.patience) from error
        self.store._outage_started(self.what, error)
        await asyncio.sleep(self.pause)
        self.pause = min(self.pause * 2, RETRY_MAX_SECONDS)

    def progressed(self) -> None:
        """The call made progress (a chunk arrived): a later break gets the full patience."""
        self.give_up_at = None
        self.pause = RETRY_FIRST_SECONDS
        self.store._outage_ended()


class RemoteBlobStore:
    """A BlobStore that talks to weft-api's ArtifactService (used by executors and pods).

    Uploads skip content the service already has (one StatBlob first), so re-uploading
    a cached output costs one round trip. Every request names the namespace of
    `blob_namespace` (the current task's), so with authentication on an upload makes
    the blob readable in that namespace.

    Every call rides out a restart or rolling upgrade of weft-api: an unreachable service
    or a connection broken mid-call is retried with backoff for up to `patience` seconds
    (a read resumes at the offset it reached; an upload starts over, which is harmless for
    content-addressed blobs), and only then raises Unavailable. Refusals (NOT_FOUND,
    INVALID_ARGUMENT, ...) are never retried. The outage is logged once, as a WARNING
    naming what is retried, and its end as one INFO line.
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        *,
        timeout: float = 60.0,
        patience: float = DEFAULT_API_PATIENCE,
        peer: Peer | None = None,
    ) -> None:
        """Connects to `target` (`host:port`) or uses an existing channel.

        Args:
            target: The api's address, or a channel the caller owns.
            timeout: Deadline of each call, in seconds.
            patience: Seconds a call is retried while the api is unreachable (0: no retry).
            peer: The token and TLS settings towards the api (for a `host:port` target).
        """
        if isinstance(target, str):
            self.target = target
            self._channel = (peer or Peer()).open_channel(
                target,
                options=[
                    ("grpc.max_receive_message_length", 2 * CHUNK_BYTES + 1024),
                    ("grpc.max_send_message_length", 2 * CHUNK_BYTES + 1024),
                    # Reconnect soon after a restart instead of backing off for minutes.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._owns_channel = True
        else:
            self.target = "the artifact service"
            self._channel = target
            self._owns_channel = False
        self._stub: Any = artifact_pb2_grpc.ArtifactServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.patience = max(0.0, patience)
        #: time.monotonic() when the current outage was first seen (None: no outage).
        self._outage_since: float | None = None

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close(None)

    def _error(self, error: grpc.aio.AioRpcError, *, gave_up_after: float | None = None) -> ServiceError:
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
        during = f" for {gave_up_after:g}s" if gave_up_after else ""
        code = error.code().name
        return Unavailable(f"artifact store at {self.target} failed{during} ({code}: {details}); retry later")

    def _outage_started(self, what: str, error: grpc.aio.AioRpcError) -> None:
        if self._outage_since is not None:
            return  # one warning per outage, however many calls retry meanwhile
        self._outage_since = time.monotonic()
        log.warning(
            "artifact store at %s is unreachable (%s: %s) while %s; retrying for up to %gs",
            self.target,
            error.code().name,
            (error.details() or "").strip(),
            what,
            self.patience,
        )

    def _outage_ended(self) -> None:
        if self._outage_since is None:
            return
        log.info("artifact store at %s answers again after %.1fs", self.target, time.monotonic() - self._outage_since)
        self._outage_since = None

    async def _upload_once(self, digest: str, size: int, chunks: AsyncIterable[bytes]) -> BlobInfo:
        async def requests() -> AsyncIterator[artifact_pb2.PutBlobRequest]:
            header = artifact_pb2.BlobHeader(digest=digest, size_bytes=size, namespace=blob_namespace.get())
            yield artifact_pb2.PutBlobRequest(header=header)
            async for chunk in chunks:
                yield artifact_pb2.PutBlobRequest(data=chunk)

        blob = await self._stub.PutBlob(requests(), timeout=self.timeout)
        return _info_of(blob)

    async def _upload(self, digest: str, size: int, chunks: Callable[[], AsyncIterable[bytes]]) -> BlobInfo:
        """PutBlob, retried (with fresh chunks from `chunks()`) while the api is away."""
        patience = _Patience(self, f"uploading blob {digest}")
        while True:
            try:
                info = await self._upload_once(digest, size, chunks())
            except grpc.aio.AioRpcError as error:
                await patience.wait(error)
                continue
            patience.progressed()
            return info

    async def put(self, data: bytes) -> BlobInfo:
        digest = digest_of(data)
        if len(data) > CHUNK_BYTES:
            existing = await self.stat(digest)
            if existing is not None:
                return existing

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), CHUNK_BYTES):
                yield data[start : start + CHUNK_BYTES]

        return await self._upload(digest, len(data), chunks)

    async def put_stream(
        self, chunks: AsyncIterable[bytes], *, digest: str | None = None, size: int | None = None
    ) -> BlobInfo:
        if digest is not None:
            check_digest(digest)
        # Spooled to a file first: the header needs the digest before the content, and an
        # upload the api's restart broke off must be sent again from the start.
        with tempfile.NamedTemporaryFile(prefix="weft-upload-") as spool:
            async for chunk in chunks:
                await asyncio.to_thread(spool.write, chunk)
            await asyncio.to_thread(spool.flush)
            actual, written = await asyncio.to_thread(file_digest, Path(spool.name))
            if (digest is not None and actual != digest) or (size is not None and written != size):
                raise InvalidArgument(_mismatch(digest, size, actual, written))
            return await self.put_file(Path(spool.name))

    async def put_file(self, path: Path) -> BlobInfo:
        digest, size = await asyncio.to_thread(file_digest, path)
        existing = await self.stat(digest)
        if existing is not None:
            return existing
        return await self._upload(digest, size, lambda: _threaded(_file_chunks(path)))

    async def stat(self, digest: str) -> BlobInfo | None:
        check_digest(digest)
        patience = _Patience(self, f"looking up blob {digest}")
        request = artifact_pb2.StatBlobRequest(digest=digest, namespace=blob_namespace.get())
        while True:
            try:
                blob = await self._stub.StatBlob(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    patience.progressed()
                    return None
                await patience.wait(error)
                continue
            patience.progressed()
            return _info_of(blob)

    async def exists(self, digest: str) -> bool:
        return await self.stat(digest) is not None

    async def read(self, digest: str, *, offset: int = 0, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        # The service decides the chunk size; `chunk_size` is honoured by the directory backend.
        check_digest(digest)
        patience = _Patience(self, f"reading blob {digest}")
        position = offset
        while True:
            request = artifact_pb2.GetBlobRequest(digest=digest, offset=position, namespace=blob_namespace.get())
            call = self._stub.GetBlob(request, timeout=self.timeout)
            try:
                async for response in call:
                    patience.progressed()
                    position += len(response.data)
                    yield response.data
                patience.progressed()  # an empty blob, or the end
                return
            except grpc.aio.AioRpcError as error:
                # A broken stream resumes where it stopped: what was yielded stays valid.
                await patience.wait(error)
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
