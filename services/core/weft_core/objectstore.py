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
- Larger content is streamed as a multipart upload to `uploads/<uuid>` while it is hashed;
  when the stream ends with the wrong digest or size, the generator feeding the upload
  raises, obstore abandons the multipart upload, and nothing is ever visible. A verified
  upload is copied server-side to its final key (a copy is atomic; two writers of the same
  digest copy the same bytes) and the temporary key is deleted. A writer killed mid-upload
  leaves an incomplete multipart upload (invisible; expired by the bucket's
  `AbortIncompleteMultipartUpload` lifecycle rule, see `blobStore` in the chart's values.yaml) or an
  `uploads/` key that the sweep removes (`weft_core.gc.STALE_UPLOAD_SECONDS`). S3 copies objects of
  at most 5 GiB in one request, so this backend stores blobs up to 5 GiB (the executor's
  default `--max-output-bytes` is 1 GiB).

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
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
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
from weft_core.errors import InvalidArgument, NotFound, ServiceError, Unavailable

if TYPE_CHECKING:
    from obstore.store import ObjectStore

#: URL schemes of the object-storage backend (obstore's names and their usual aliases).
OBJECT_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss"})
#: Content up to this size is verified in memory and stored with one conditional put.
SMALL_BLOB_BYTES = 8 * 1024 * 1024
#: Part size of multipart uploads (S3 needs at least 5 MiB per part but the last).
PART_BYTES = 8 * 1024 * 1024
#: Object requests in flight at once for a batched check (`stat_many`).
STAT_CONCURRENCY = 64

BLOBS = "sha256"
UPLOADS = "uploads"
TOUCHED = "touched"
TRASH = "trash"


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


def open_blob_store(url: str) -> BlobStore:
    """The backend `url` names (see the module docstring).

    Args:
        url: `s3://…`, `gs://…`, `az://…`, `file:///dir` or a directory path.

    Raises:
        InvalidArgument: The URL is not a valid blob store URL.
    """
    try:
        blob_store_url(url)
    except ValueError as error:
        raise InvalidArgument(f"blob store URL {url!r}: {error}") from None
    if not is_object_store_url(url):
        return DirectoryBlobStore(directory_of(url))
    return ObjectBlobStore.from_url(url)


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
        digest, size = await asyncio.to_thread(_file_digest, path)

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

        temporary = f"{UPLOADS}/{uuid.uuid4().hex}"
        try:
            await obstore.put_async(self._store, temporary, verified(), chunk_size=PART_BYTES, max_concurrency=4)
        except Exception as error:
            if refused:
                raise refused[-1] from None
            raise _blob_error("a multipart upload", error) from error
        actual = "sha256:" + hasher.hexdigest()
        try:
            # Overwriting is harmless: whoever else wrote this key wrote the same bytes.
            await obstore.copy_async(self._store, temporary, self.key_of(actual))
        except Exception as error:
            raise _blob_error(f"publishing {actual}", error) from error
        finally:
            await self._delete_quietly([temporary])
        return BlobInfo(actual, written, datetime.now(UTC))

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
                while len(pending) >= chunk_size:
                    yield pending[:chunk_size]
                    pending = pending[chunk_size:]
        except Exception as error:
            raise _blob_error(f"reading {digest}", error) from error
        if pending:
            yield pending

    async def get(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(digest)])

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
            await obstore.copy_async(self._store, key, trash)
            await obstore.delete_async(self._store, key)
        except Exception as error:
            raise _blob_error(f"deleting {digest}", error) from error
        marker_after = await self._marker(digest)
        if marker_after is not None and (marker_before is None or marker_after[1] != marker_before[1]):
            try:
                await obstore.copy_async(self._store, trash, key)
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


def _file_digest(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size
