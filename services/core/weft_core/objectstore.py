"""The artifact store on object storage (S3, GCS, Azure Blob), and the choice of backend by URL.

`open_blob_store(url)` is how every service and helper container picks its backend:
`file:///var/lib/weft/blobs` (or a plain path) is the directory backend
(`weft_core.blobs.DirectoryBlobStore`), `s3://bucket/prefix`, `gs://bucket/prefix` and
`az://container/prefix` are `ObjectBlobStore`, built on PyPI `obstore` (the Rust
`object_store` crate: one maintained client for the three clouds, S3-compatible servers
such as MinIO and Ceph RGW, streaming multipart uploads).

Layout under the URL's prefix::

    sha256/ab/abcdef…   a blob, named by the sha256 of its content (the same keys as the
                        directory backend)
    uploads/<uuid>      a large upload in progress (or left by a crash); never read
    touched/ab/abcdef…  a tiny marker rewritten whenever someone relies on a blob that
                        was already stored (re-upload of the same content, StatBlob), so
                        the sweep (`weft_core.gc`) sees when a blob was last wanted
    trash/ab/abcdef…    a blob the sweep is deleting (for at most a few requests)

How a blob becomes visible only once verified:

- Content of at most `SMALL_BLOB_BYTES` is hashed in memory and written with ONE
  conditional put (`If-None-Match: *`, obstore's `mode="create"`) at its final key: the
  object appears whole or not at all, and a concurrent writer of the same digest simply
  finds it there (`AlreadyExistsError`).
- Larger content whose digest the writer declares (files, the executor's uploads, SDK
  uploads that send the digest) is streamed as a multipart upload straight to its final
  key while it is hashed; when the stream ends with the wrong digest or size, the
  generator feeding the upload raises before the last part, obstore abandons the
  multipart upload, and nothing is ever visible. Completing a multipart upload is atomic,
  and two writers of the same digest complete the same bytes.
- Larger content of an undeclared digest is streamed to `uploads/<uuid>` (its final key
  is only known at its end), then copied server-side to its final key and the temporary
  key is deleted. S3 copies at most 5 GiB in one request (`COPY_LIMIT_BYTES`): a bigger
  object is instead read back and written to its final key as a verified multipart
  upload (`_copy`), so blobs have no size limit beyond the store's own (5 TiB on S3).
- A writer killed mid-upload leaves an incomplete multipart upload (invisible to
  listings; `stale_multipart_uploads` aborts those older than the stale-upload age on
  S3, the bucket's `AbortIncompleteMultipartUpload` lifecycle rule does it everywhere)
  or an `uploads/` key that the sweep removes (`weft_core.gc.STALE_UPLOAD_SECONDS`).

Step pods' helpers get no credentials at all: the executor signs, per attempt, a GET URL
for each input blob and a PUT URL for each output's *staging* key
(`uploads/attempts/<id>/<n>`, `staging_key`), expiring with the attempt (`sign_reads`,
`sign_staged_writes`); it then reads each staged output back, verifying its digest and
size as it writes it to its final key (`publish_staged`), so a wrong or replaced staged
object is never published.

Credentials come only from where each cloud's own tools look for them: environment
variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`,
`GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_KEY`, …), IRSA / EKS pod identity, GKE
workload identity, instance metadata. The URL names a bucket and prefix, never a secret:
this module refuses URLs with user info, and never logs, stores or returns a credential
or blob content.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from weft_core.blobs import (
    CHUNK_BYTES,
    BlobInfo,
    BlobStore,
    DirectoryBlobStore,
    StoredBlob,
    check_digest,
    digest_of,
    mismatch_message,
)
from weft_core.digests import file_digest
from weft_core.errors import InvalidArgument, NotFound, ServiceError, Unavailable

if TYPE_CHECKING:
    from obstore.store import ObjectStore

    from weft_core.s3uploads import IncompleteUpload

#: URL schemes of the object-storage backend (obstore's names and their usual aliases).
OBJECT_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss"})
#: Content up to this size is verified in memory and stored with one conditional put.
SMALL_BLOB_BYTES = 8 * 1024 * 1024
#: Part size of multipart uploads (S3 needs at least 5 MiB per part but the last).
PART_BYTES = 8 * 1024 * 1024
#: Object requests in flight at once for a batched check (`stat_many`).
STAT_CONCURRENCY = 64
#: The largest object S3 copies in one request (CopyObject); larger ones are streamed.
COPY_LIMIT_BYTES = 5 * 1024**3
#: The longest a presigned URL may live (AWS SigV4's and GCS V4's limit).
MAX_SIGNED_SECONDS = 7 * 24 * 3600

BLOBS = "sha256"
UPLOADS = "uploads"
TOUCHED = "touched"
TRASH = "trash"
#: Where step pods' helpers put outputs through presigned URLs, one folder per attempt.
STAGING = f"{UPLOADS}/attempts"


def staging_key(attempt_id: str, slot: str) -> str:
    """The staging key of one output (`slot`: its position, or "manifest") of an attempt."""
    if not attempt_id or not all(c in "0123456789abcdef" for c in attempt_id):
        raise ValueError(f"attempt id {attempt_id!r} is not lower-case hex")
    return f"{STAGING}/{attempt_id}/{slot}"


def blob_store_url(value: str) -> str:
    """Validates a `--blob-store` value: a directory (path or `file://` URL) or an object store URL.

    Raises:
        ValueError: The message says what a valid value looks like.
    """
    if not value:
        raise ValueError("expected a URL such as s3://bucket/prefix or file:///var/lib/weft/blobs")
    parts = urlsplit(value)
    if parts.scheme in ("", "file"):
        if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URLs name a local directory: file:///path, not {value!r}")
        return value
    if parts.scheme not in OBJECT_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in ("s3", "gs", "az", "file"))
        raise ValueError(f"unsupported scheme {parts.scheme!r}; use one of {schemes}")
    if "@" in parts.netloc or parts.password is not None:
        # A URL is printed at start and may end up in specs: credentials belong in the
        # environment (or a Secret, or workload identity), never in it.
        raise ValueError(
            "the URL must not hold credentials; set them in the environment (e.g. AWS_ACCESS_KEY_ID) "
            "or use workload identity"
        )
    if not parts.netloc:
        raise ValueError(f"{value!r} names no bucket; use {parts.scheme}://BUCKET/PREFIX")
    return value


def is_object_store_url(url: str) -> bool:
    """Whether `url` names object storage (rather than a directory)."""
    return urlsplit(url).scheme in OBJECT_SCHEMES


def directory_of(url: str) -> Path:
    """The directory a `file://` URL or plain path names."""
    parts = urlsplit(url)
    return Path(parts.path) if parts.scheme == "file" else Path(url)


def open_blob_store(url: str, *, counted_as: str = "") -> BlobStore:
    """The backend `url` names (see the module docstring).

    Args:
        url: `s3://…`, `gs://…`, `az://…`, `file:///dir` or a directory path.
        counted_as: Who moves bytes straight to object storage through it ("executor"):
            counted in `weft_blob_store_bytes_total`. "" (weft-api, whose ArtifactService
            counts its own traffic) counts nothing.

    Raises:
        InvalidArgument: The URL is not a valid blob store URL.
    """
    try:
        blob_store_url(url)
    except ValueError as error:
        raise InvalidArgument(f"blob store URL {url!r}: {error}") from None
    if not is_object_store_url(url):
        return DirectoryBlobStore(directory_of(url))
    store = ObjectBlobStore.from_url(url)
    store.counted_as = counted_as
    return store


def _blob_error(what: str, error: Exception) -> ServiceError:
    return Unavailable(f"object store: {what} failed ({type(error).__name__}: {str(error).splitlines()[0]}); retry")


class ObjectBlobStore:
    """A `BlobStore` on S3, GCS or Azure Blob (see the module docstring).

    Args:
        store: An obstore store whose prefix is the blob store's root.
        url: The URL it was opened from (for messages).
    """

    def __init__(self, store: ObjectStore, url: str) -> None:
        self._store = store
        self.url = url
        self._stat_slots = asyncio.Semaphore(STAT_CONCURRENCY)
        #: Who moves bytes through this store, for `weft_blob_store_bytes_total` ("": not counted).
        self.counted_as = ""

    def _moved(self, direction: str, size: int) -> None:
        """Counts `size` bytes written to ("in") or read from ("out") the store."""
        if self.counted_as and size:
            from weft_core import metrics

            metrics.blob_store_bytes(direction, self.counted_as, size)

    @classmethod
    def from_url(cls, url: str) -> ObjectBlobStore:
        """Opens `s3://bucket/prefix`, `gs://…` or `az://…`; obstore reads the credentials,
        endpoint and region from the standard environment variables and identity services
        (`AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` point it at MinIO or a test server)."""
        from obstore.store import from_url

        scheme = urlsplit(url).scheme
        normalized = {"gcs": "gs", "azure": "az"}.get(scheme, scheme)
        return cls(from_url(normalized + url[len(scheme) :]), url)

    async def close(self) -> None:
        """Nothing to release (obstore's client pools close with the object)."""

    # Keys -----------------------------------------------------------------------------

    @staticmethod
    def key_of(digest: str, area: str = BLOBS) -> str:
        """The key of a blob (or of its marker or trash copy) under the store's prefix."""
        hex_digest = check_digest(digest)
        return f"{area}/{hex_digest[:2]}/{hex_digest}"

    # Writes ---------------------------------------------------------------------------

    async def put(self, data: bytes) -> BlobInfo:
        return await self._put_small(digest_of(data), bytes(data))

    async def put_stream(
        self, chunks: AsyncIterable[bytes], *, digest: str | None = None, size: int | None = None
    ) -> BlobInfo:
        if digest is not None:
            check_digest(digest)
        if size is not None and size < 0:
            raise InvalidArgument(f"size_bytes: {size} is negative; send the content's size in bytes")
        large = size is None or size > SMALL_BLOB_BYTES
        if digest is not None and large and await self.touch(digest) is not None:
            # Already stored: the content must still be the declared one (a wrong upload is
            # always refused), but it need not travel to the store again.
            actual, written = await _drain(chunks, size)
            if actual != digest or (size is not None and written != size):
                raise InvalidArgument(mismatch_message(digest, size, actual, written))
            info = await self.stat(digest)
            if info is None:
                raise Unavailable(f"object store: {digest} was deleted while it was uploaded again; retry")
            return info
        stream = aiter(chunks)
        head: list[bytes] = []
        buffered = 0
        async for chunk in stream:
            head.append(chunk)
            buffered += len(chunk)
            if size is not None and buffered > size:
                raise InvalidArgument(
                    f"the upload sent more than the {size} bytes its header declared; nothing was stored: "
                    "send the exact size in the header"
                )
            if buffered > SMALL_BLOB_BYTES:
                return await self._put_large(head, stream, digest, size)
        data = b"".join(head)
        actual = digest_of(data)
        if (digest is not None and actual != digest) or (size is not None and len(data) != size):
            raise InvalidArgument(mismatch_message(digest, size, actual, len(data)))
        return await self._put_small(actual, data)

    async def put_file(self, path: Path) -> BlobInfo:
        digest, size = await asyncio.to_thread(file_digest, path)

        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as source:  # noqa: ASYNC230  (chunks are read in a thread below)
                while chunk := await asyncio.to_thread(source.read, PART_BYTES):
                    yield chunk

        # Declared digest and size: a file that changes while it is uploaded is refused.
        return await self.put_stream(chunks(), digest=digest, size=size)

    async def _put_small(self, digest: str, data: bytes) -> BlobInfo:
        import obstore
        from obstore.exceptions import AlreadyExistsError

        # One conditional put when the content is new (the usual case: one request). When it
        # is stored already, the touch marks it wanted and checks it is still there: a sweep
        # may have taken it between the refused put and the marker, then it is put again.
        for _ in range(3):
            try:
                await obstore.put_async(self._store, self.key_of(digest), data, mode="create")
            except AlreadyExistsError:
                existing = await self.touch(digest)
                if existing is not None:
                    return existing
                continue
            except Exception as error:
                raise _blob_error(f"storing {digest}", error) from error
            self._moved("in", len(data))
            return BlobInfo(digest, len(data), datetime.now(UTC))
        raise Unavailable(f"object store: {digest} keeps vanishing while it is stored (a sweep?); retry")

    async def _put_large(
        self, head: list[bytes], rest: AsyncIterator[bytes], digest: str | None, size: int | None
    ) -> BlobInfo:
        import obstore

        hasher = hashlib.sha256()
        written = 0
        refused: list[InvalidArgument] = []

        async def verified() -> AsyncIterator[bytes]:
            nonlocal written

            async def source() -> AsyncIterator[bytes]:
                for chunk in head:
                    yield chunk
                async for chunk in rest:
                    yield chunk

            async for chunk in source():
                hasher.update(chunk)
                written += len(chunk)
                if size is not None and written > size:
                    refused.append(
                        InvalidArgument(
                            f"the upload sent more than the {size} bytes its header declared; nothing was stored: "
                            "send the exact size in the header"
                        )
                    )
                    raise refused[-1]
                yield chunk
            actual = "sha256:" + hasher.hexdigest()
            if (digest is not None and actual != digest) or (size is not None and written != size):
                # Raising before the stream ends makes obstore abandon the multipart
                # upload: the temporary object never exists, let alone the blob.
                refused.append(InvalidArgument(mismatch_message(digest, size, actual, written)))
                raise refused[-1]

        # A declared digest names the final key up front: the multipart upload completes
        # there only once verified (no copy, so no copy size limit). Overwriting is
        # harmless: whoever else wrote this key wrote the same bytes.
        target = self.key_of(digest) if digest is not None else f"{UPLOADS}/{uuid.uuid4().hex}"
        try:
            await obstore.put_async(self._store, target, verified(), chunk_size=PART_BYTES, max_concurrency=4)
        except Exception as error:
            if refused:
                raise refused[-1] from None
            raise _blob_error("a multipart upload", error) from error
        self._moved("in", written)
        actual = "sha256:" + hasher.hexdigest()
        if digest is not None:
            return BlobInfo(actual, written, datetime.now(UTC))
        try:
            await self._copy(target, self.key_of(actual), written, actual)
        except InvalidArgument:
            raise
        except Exception as error:
            raise _blob_error(f"publishing {actual}", error) from error
        finally:
            await self._delete_quietly([target])
        return BlobInfo(actual, written, datetime.now(UTC))

    async def _copy(self, source: str, target: str, size: int, digest: str) -> None:
        """Copies `source` (holding `digest`, `size` bytes) to `target`: server-side up to
        `COPY_LIMIT_BYTES`, else read back and written as a multipart upload that completes
        only if the bytes still hash to `digest` (S3 refuses bigger CopyObject requests)."""
        import obstore

        if size <= COPY_LIMIT_BYTES:
            await obstore.copy_async(self._store, source, target)
            return
        result = await obstore.get_async(self._store, source)
        hasher = hashlib.sha256()
        moved = 0

        async def verified() -> AsyncIterator[bytes]:
            nonlocal moved
            async for part in result.stream(min_chunk_size=PART_BYTES):
                hasher.update(part)
                moved += len(part)
                yield bytes(part)
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest or moved != size:
                raise InvalidArgument(f"copying {source}: {mismatch_message(digest, size, actual, moved)}")

        await obstore.put_async(self._store, target, verified(), chunk_size=PART_BYTES, max_concurrency=4)
        self._moved("out", moved)
        self._moved("in", moved)

    # Reads ----------------------------------------------------------------------------

    async def stat(self, digest: str) -> BlobInfo | None:
        import obstore

        key = self.key_of(digest)
        async with self._stat_slots:
            try:
                meta = await obstore.head_async(self._store, key)
            except FileNotFoundError:
                return None
            except Exception as error:
                raise _blob_error(f"reading {digest}'s size", error) from error
        return BlobInfo(digest, int(meta["size"]), meta["last_modified"])

    async def exists(self, digest: str) -> bool:
        return await self.stat(digest) is not None

    async def stat_many(self, digests: Iterable[str]) -> dict[str, BlobInfo | None]:
        """Each blob's description (None when it is not stored), at most
        `STAT_CONCURRENCY` requests in flight: one batched check of 2,000 outputs."""
        unique = sorted(set(digests))
        found = await asyncio.gather(*(self.stat(d) for d in unique))
        return dict(zip(unique, found, strict=True))

    async def read(self, digest: str, *, offset: int = 0, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        import obstore

        key = self.key_of(digest)
        if offset < 0:
            raise InvalidArgument(f"offset: {offset} is negative; use 0 to read from the start")
        options: dict[str, object] = {}
        if offset:
            # A range past the end is an error of the store's own; say it in weft's words.
            info = await self.stat(digest)
            if info is None:
                raise NotFound(f"blob {digest} is not stored; upload it first (PutBlob)")
            if offset > info.size:
                raise InvalidArgument(f"offset: {offset} is past the end of blob {digest} ({info.size} bytes)")
            if offset == info.size:
                return
            options["range"] = {"offset": offset}
        try:
            result = await obstore.get_async(self._store, key, options=options or None)  # type: ignore[arg-type]
            stream = result.stream(min_chunk_size=chunk_size)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not stored; upload it first (PutBlob)") from None
        except Exception as error:
            raise _blob_error(f"reading {digest}", error) from error
        pending = b""
        try:
            async for part in stream:
                # Chunks of exactly `chunk_size` (but the last): the gRPC stream's messages
                # must stay under its limit whatever the store's network reads return.
                pending += bytes(part)
                self._moved("out", len(part))
                while len(pending) >= chunk_size:
                    yield pending[:chunk_size]
                    pending = pending[chunk_size:]
        except Exception as error:
            raise _blob_error(f"reading {digest}", error) from error
        if pending:
            yield pending

    async def get(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest)])

    # Presigned access for step pods ---------------------------------------------------

    @property
    def can_sign(self) -> bool:
        """Whether this store can presign URLs (S3, GCS and Azure can; it needs credentials
        that sign, e.g. keys or IRSA on S3, a service account on GCS)."""
        from obstore.store import AzureStore, GCSStore, S3Store

        return isinstance(self._store, S3Store | GCSStore | AzureStore)

    async def _sign(self, method: Literal["GET", "PUT"], keys: Sequence[str], expires_in: timedelta) -> list[str]:
        import obstore
        from obstore.store import AzureStore, GCSStore, S3Store

        if not keys:
            return []
        store = self._store
        if not isinstance(store, S3Store | GCSStore | AzureStore):
            raise InvalidArgument(f"blob store {self.url}: this store cannot presign URLs")
        seconds = min(max(1.0, expires_in.total_seconds()), float(MAX_SIGNED_SECONDS))
        try:
            urls = await obstore.sign_async(store, method, list(keys), timedelta(seconds=seconds))
        except Exception as error:
            raise _blob_error(f"presigning {len(keys)} URL(s)", error) from error
        return [str(url) for url in urls]

    async def sign_reads(self, digests: Iterable[str], expires_in: timedelta) -> dict[str, str]:
        """A presigned GET URL for each blob (by digest), valid for `expires_in` (at most
        `MAX_SIGNED_SECONDS`): it reads that one object and nothing else."""
        unique = sorted(set(digests))
        urls = await self._sign("GET", [self.key_of(digest) for digest in unique], expires_in)
        return dict(zip(unique, urls, strict=True))

    async def sign_staged_writes(self, keys: Sequence[str], expires_in: timedelta) -> list[str]:
        """A presigned PUT URL for each staging key (`staging_key`), valid for `expires_in`.
        What is put there is published only after `publish_staged` verified it."""
        for key in keys:
            if not key.startswith(STAGING + "/"):
                raise InvalidArgument(f"{key!r} is not a staging key; presigned writes go under {STAGING}/ only")
        return await self._sign("PUT", keys, expires_in)

    async def read_staged(self, key: str, limit: int) -> bytes:
        """The content of a small staged object (a manifest), at most `limit` bytes.

        Raises:
            NotFound: Nothing was staged there.
            InvalidArgument: It is bigger than `limit`.
        """
        import obstore

        try:
            result = await obstore.get_async(self._store, key)
            if result.meta["size"] > limit:
                raise InvalidArgument(f"staged object {key} is {result.meta['size']} bytes, over {limit}")
            data = bytes(await result.bytes_async())
        except FileNotFoundError:
            raise NotFound(f"nothing was staged at {key}") from None
        except ServiceError:
            raise
        except Exception as error:
            raise _blob_error(f"reading {key}", error) from error
        self._moved("out", len(data))
        return data

    async def publish_staged(self, key: str, digest: str, size: int) -> BlobInfo:
        """Publishes the object staged at `key` as blob `digest` of `size` bytes.

        The staged bytes are read back and hashed as they are written to the blob's key
        (one pass, `put_stream` with the declared digest and size): what is published is
        exactly what was verified, even if someone holding the PUT URL replaced the staged
        object meanwhile. The staged key is deleted afterwards. A staged key already gone
        whose blob is stored with that size (another executor published it) is accepted.

        Raises:
            InvalidArgument: The staged object is not `digest` of `size` bytes.
            NotFound: Nothing was staged there and the blob is not stored.
        """
        import obstore

        check_digest(digest)
        try:
            result = await obstore.get_async(self._store, key)
        except FileNotFoundError:
            info = await self.touch(digest)
            if info is not None and info.size == size:
                return info
            raise NotFound(f"output {digest} was not staged at {key}") from None
        except Exception as error:
            raise _blob_error(f"reading {key}", error) from error

        async def staged() -> AsyncIterator[bytes]:
            async for part in result.stream(min_chunk_size=PART_BYTES):
                self._moved("out", len(part))
                yield bytes(part)

        try:
            info = await self.put_stream(staged(), digest=digest, size=size)
        except InvalidArgument as error:
            raise InvalidArgument(f"staged output {key}: {error.message}") from None
        await self._delete_quietly([key])
        return info

    async def remove_staged(self, keys: Sequence[str]) -> None:
        """Deletes staging keys (a failed attempt's outputs); what is left the sweep removes."""
        await self._delete_quietly(list(keys))

    # Retention ------------------------------------------------------------------------

    async def touch(self, digest: str) -> BlobInfo | None:
        """Records that `digest` is wanted now, then returns its description (None if it is
        not stored). The marker is written before the blob is looked at: a sweep that
        deletes the blob after this looked will see the marker and put the blob back."""
        import obstore

        try:
            await obstore.put_async(self._store, self.key_of(digest, TOUCHED), uuid.uuid4().bytes)
        except Exception as error:
            raise _blob_error(f"marking {digest} as in use", error) from error
        return await self.stat(digest)

    async def list_blobs(self) -> AsyncIterator[StoredBlob]:
        """Every stored blob with the later of its write time and its last touch."""
        import obstore

        touched: dict[str, datetime] = {}
        try:
            async for batch in obstore.list(self._store, prefix=TOUCHED + "/", chunk_size=1000):
                for meta in batch:
                    touched[meta["path"].rsplit("/", 1)[-1]] = meta["last_modified"]
            async for batch in obstore.list(self._store, prefix=BLOBS + "/", chunk_size=1000):
                for meta in batch:
                    hex_digest = meta["path"].rsplit("/", 1)[-1]
                    if len(hex_digest) != 64:
                        continue
                    written = meta["last_modified"]
                    last_used = max(written, touched.get(hex_digest, written))
                    yield StoredBlob("sha256:" + hex_digest, int(meta["size"]), last_used)
        except Exception as error:
            raise _blob_error("listing blobs", error) from error

    async def delete_unused(self, digest: str, cutoff: datetime) -> bool:
        """Deletes `digest` unless it was written or touched after `cutoff`; returns
        whether it was deleted.

        The blob is first copied to `trash/`, then deleted, then its marker is read again:
        a writer that touched it meanwhile (it found the blob and will rely on it) gets it
        back from the trash copy. Readers may miss the blob for those few requests; a
        writer never loses it.
        """
        import obstore

        marker_before = await self._marker(digest)
        info = await self.stat(digest)
        if info is None:
            return False
        if info.create_time > cutoff or (marker_before is not None and marker_before[0] > cutoff):
            return False
        key, trash = self.key_of(digest), self.key_of(digest, TRASH)
        try:
            await self._copy(key, trash, info.size, digest)
            await obstore.delete_async(self._store, key)
        except Exception as error:
            raise _blob_error(f"deleting {digest}", error) from error
        marker_after = await self._marker(digest)
        if marker_after is not None and (marker_before is None or marker_after[1] != marker_before[1]):
            try:
                await self._copy(trash, key, info.size, digest)
            except Exception as error:
                raise _blob_error(f"restoring {digest}", error) from error
            await self._delete_quietly([trash])
            return False
        await self._delete_quietly([trash, self.key_of(digest, TOUCHED)])
        return True

    async def remove_stale_uploads(self, cutoff: datetime) -> int:
        """Deletes temporary upload keys, trash copies, and markers of blobs that do not
        exist (a StatBlob of an absent digest leaves one), all older than `cutoff`."""
        import obstore

        stale: list[str] = []
        stored: set[str] = set()
        markers: list[tuple[str, datetime]] = []
        try:
            for area in (UPLOADS, TRASH):
                async for batch in obstore.list(self._store, prefix=area + "/", chunk_size=1000):
                    stale += [m["path"] for m in batch if m["last_modified"] < cutoff]
            async for batch in obstore.list(self._store, prefix=TOUCHED + "/", chunk_size=1000):
                markers += [(m["path"], m["last_modified"]) for m in batch]
            async for batch in obstore.list(self._store, prefix=BLOBS + "/", chunk_size=1000):
                stored.update(m["path"].rsplit("/", 1)[-1] for m in batch)
        except Exception as error:
            raise _blob_error("listing temporary uploads", error) from error
        stale += [key for key, when in markers if when < cutoff and key.rsplit("/", 1)[-1] not in stored]
        await self._delete_quietly(stale)
        return len(stale)

    async def stale_multipart_uploads(self, cutoff: datetime, *, abort: bool) -> tuple[list[IncompleteUpload], str]:
        """The incomplete multipart uploads under this store's prefix started before
        `cutoff` (a crashed writer's), aborted when `abort`; and, when they could not be
        looked for, why (another cloud, or no static S3 credentials)."""
        from weft_core.s3uploads import S3RequestError, S3Uploads

        parts = urlsplit(self.url)
        if parts.scheme not in ("s3", "s3a"):
            return [], (
                f"{parts.scheme}:// stores keep uncommitted uploads out of sight and expire them themselves "
                "(Azure after 7 days) or by a bucket lifecycle rule (GCS AbortIncompleteMultipartUpload)"
            )
        client = S3Uploads.from_environment(parts.netloc)
        if isinstance(client, str):
            return [], client
        prefix = parts.path.strip("/")
        try:
            found = await client.list_incomplete(prefix + "/" if prefix else "")
            stale = [upload for upload in found if upload.initiated < cutoff]
            if abort:
                for upload in stale:
                    await client.abort(upload)
        except S3RequestError as error:
            raise Unavailable(f"object store: incomplete multipart uploads: {error}; retry") from None
        return stale, ""

    async def _marker(self, digest: str) -> tuple[datetime, str] | None:
        import obstore

        try:
            meta = await obstore.head_async(self._store, self.key_of(digest, TOUCHED))
        except FileNotFoundError:
            return None
        except Exception as error:
            raise _blob_error(f"reading {digest}'s marker", error) from error
        return meta["last_modified"], str(meta.get("e_tag") or "")

    async def _delete_quietly(self, keys: list[str]) -> None:
        import obstore

        for start in range(0, len(keys), 1000):
            try:
                await obstore.delete_async(self._store, keys[start : start + 1000])
            except FileNotFoundError:
                pass
            except Exception:  # left-overs are removed by the next sweep
                pass


async def _drain(chunks: AsyncIterable[bytes], size: int | None) -> tuple[str, int]:
    hasher = hashlib.sha256()
    written = 0
    async for chunk in chunks:
        hasher.update(chunk)
        written += len(chunk)
        if size is not None and written > size:
            break
    return "sha256:" + hasher.hexdigest(), written
