"""The blob-store contract, run against both backends: the directory and S3 (a real moto server).

Every test gets `blob_store` twice: a `DirectoryBlobStore` and an `ObjectBlobStore` on a
fresh bucket, both opened from a URL exactly as weft-api, weft-executor and the pods'
helper containers open them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.blobs.conftest import BlobBackend
from weft_core.blobs import DirectoryBlobStore, digest_of, missing_blobs
from weft_core.errors import InvalidArgument, NotFound
from weft_core.objectstore import SMALL_BLOB_BYTES, ObjectBlobStore, blob_store_url, open_blob_store

MiB = 1024 * 1024
#: Larger than SMALL_BLOB_BYTES: takes the multipart path of the S3 backend.
LARGE = SMALL_BLOB_BYTES + 3 * MiB + 17


def content(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB of non-repeating-looking data
    return (block * (size // len(block) + 1))[:size]


async def chunked(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_put_get_stat_of_a_small_blob(blob_store: BlobBackend) -> None:
    data = b"rows,1000\n"
    info = await blob_store.put(data)
    assert info.digest == digest_of(data)
    assert info.size == len(data)
    assert await blob_store.get(info.digest) == data
    stat = await blob_store.stat(info.digest)
    assert stat is not None
    assert stat.size == len(data)
    assert await blob_store.exists(info.digest)
    again = await blob_store.put(data)
    assert again.digest == info.digest


@pytest.mark.parametrize("size", [0, 1, LARGE])
async def test_put_stream_with_its_digest_then_read_back(blob_store: BlobBackend, size: int) -> None:
    data = content(size)
    info = await blob_store.put_stream(chunked(data), digest=digest_of(data), size=size)
    assert (info.digest, info.size) == (digest_of(data), size)
    read = b"".join([chunk async for chunk in blob_store.read(info.digest)])
    assert read == data


async def test_reads_from_an_offset_return_the_rest_in_bounded_chunks(blob_store: BlobBackend) -> None:
    data = content(LARGE, seed=1)
    info = await blob_store.put(data)
    for offset in (0, 1, MiB - 1, MiB, LARGE - 5):
        chunks = [chunk async for chunk in blob_store.read(info.digest, offset=offset, chunk_size=MiB)]
        assert b"".join(chunks) == data[offset:]
        assert all(len(chunk) <= MiB for chunk in chunks)
    assert [chunk async for chunk in blob_store.read(info.digest, offset=LARGE)] == []
    with pytest.raises(InvalidArgument, match="past the end"):
        _ = [chunk async for chunk in blob_store.read(info.digest, offset=LARGE + 1)]
    with pytest.raises(InvalidArgument, match="negative"):
        _ = [chunk async for chunk in blob_store.read(info.digest, offset=-1)]


async def test_put_file_stores_the_files_content(blob_store: BlobBackend, tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    data = content(LARGE, seed=2)
    path.write_bytes(data)
    info = await blob_store.put_file(path)
    assert info.digest == digest_of(data)
    assert await blob_store.get(info.digest) == data


@pytest.mark.parametrize("size", [100, LARGE])
async def test_a_lying_digest_stores_nothing(blob_store: BlobBackend, size: int) -> None:
    data = content(size, seed=3)
    claimed = digest_of(b"something else")
    with pytest.raises(InvalidArgument, match="nothing was stored"):
        await blob_store.put_stream(chunked(data), digest=claimed, size=size)
    assert await blob_store.stat(claimed) is None
    assert await blob_store.stat(digest_of(data)) is None
    assert [blob async for blob in blob_store.list_blobs()] == []


@pytest.mark.parametrize("size", [100, LARGE])
async def test_a_lying_size_stores_nothing(blob_store: BlobBackend, size: int) -> None:
    data = content(size, seed=4)
    for declared in (size - 1, size + 1):
        with pytest.raises(InvalidArgument, match="bytes"):
            await blob_store.put_stream(chunked(data), digest=digest_of(data), size=declared)
    assert await blob_store.stat(digest_of(data)) is None


async def test_a_wrong_upload_of_stored_content_is_still_refused(blob_store: BlobBackend) -> None:
    data = content(1000, seed=5)
    info = await blob_store.put(data)
    with pytest.raises(InvalidArgument, match="nothing was stored"):
        await blob_store.put_stream(chunked(b"x" * 1000), digest=info.digest, size=1000)
    assert await blob_store.get(info.digest) == data


async def test_a_missing_blob(blob_store: BlobBackend) -> None:
    absent = digest_of(b"never stored")
    assert await blob_store.stat(absent) is None
    assert not await blob_store.exists(absent)
    with pytest.raises(NotFound, match="not stored"):
        await blob_store.get(absent)
    with pytest.raises(NotFound):
        _ = [chunk async for chunk in blob_store.read(absent, offset=3)]
    stored = await blob_store.put(b"here")
    assert await missing_blobs(blob_store, [absent, stored.digest, absent]) == [absent]
    with pytest.raises(InvalidArgument, match="digest"):
        await blob_store.stat("sha256:not-hex")


async def test_concurrent_writers_of_the_same_digest_all_succeed(blob_store: BlobBackend) -> None:
    small, large = content(3000, seed=6), content(LARGE, seed=7)
    results = await asyncio.gather(
        *(blob_store.put(small) for _ in range(6)),
        *(blob_store.put_stream(chunked(large), digest=digest_of(large), size=len(large)) for _ in range(4)),
    )
    assert {r.digest for r in results} == {digest_of(small), digest_of(large)}
    assert await blob_store.get(digest_of(small)) == small
    assert await blob_store.get(digest_of(large)) == large
    listed = sorted([blob.digest async for blob in blob_store.list_blobs()])
    assert listed == sorted({digest_of(small), digest_of(large)})


async def test_readers_during_concurrent_writes_see_the_whole_blob_or_nothing(blob_store: BlobBackend) -> None:
    data = content(LARGE, seed=8)
    digest = digest_of(data)
    seen: list[int] = []

    async def reader() -> None:
        while not seen or seen[-1] != len(data):
            try:
                got = await blob_store.get(digest)
            except NotFound:
                await asyncio.sleep(0.005)
                continue
            assert got == data
            seen.append(len(got))

    watcher = asyncio.create_task(reader())
    await asyncio.gather(*(blob_store.put_stream(chunked(data), digest=digest, size=len(data)) for _ in range(3)))
    await asyncio.wait_for(watcher, 30)
    assert seen[-1] == len(data)


async def test_stat_many_answers_for_every_digest_at_once(blob_store: BlobBackend) -> None:
    """The batched check of a cache hit (bench/bench_blobs.py times 2,000 of them)."""
    stored = [await blob_store.put(f"output {i}".encode()) for i in range(20)]
    wanted = [s.digest for s in stored] + [digest_of(f"absent {i}".encode()) for i in range(480)]
    found = await blob_store.stat_many([*wanted, wanted[0]])
    assert len(found) == 500
    assert {d for d, info in found.items() if info is not None} == {s.digest for s in stored}
    assert all(found[s.digest].size == len(f"output {i}") for i, s in enumerate(stored))  # type: ignore[union-attr]


_KILLED_WRITER = """
import asyncio, sys, time
from weft_core.objectstore import open_blob_store

async def main() -> None:
    store = open_blob_store(sys.argv[1])
    async def chunks():
        for i in range(64):
            yield bytes([i]) * (1024 * 1024)
            if i == 20:
                open(sys.argv[2], "w").close()
                await asyncio.sleep(3600)
    await store.put_stream(chunks())

asyncio.run(main())
"""


async def test_a_writer_killed_mid_upload_leaves_no_visible_blob(
    backend_url: str, blob_store: BlobBackend, tmp_path: Path
) -> None:
    marker = tmp_path / "halfway"
    writer = subprocess.Popen(  # noqa: ASYNC220  (started once; the test then only polls it)
        [sys.executable, "-c", _KILLED_WRITER, backend_url, str(marker)], env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert writer.poll() is None, "the writer died before it was halfway"
            assert time.monotonic() < deadline, "the writer never got halfway"
            await asyncio.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
    assert [blob async for blob in blob_store.list_blobs()] == []
    full = b"".join(bytes([i]) * MiB for i in range(64))
    assert await blob_store.stat(digest_of(full)) is None
    # The leftover (a temp file, or an abandoned multipart upload S3 never shows) is garbage
    # the sweep removes once it is stale; the blob store stays usable.
    later = datetime.now(UTC) + timedelta(days=1)
    removed = await blob_store.remove_stale_uploads(later)
    if isinstance(blob_store, DirectoryBlobStore):
        assert removed == 1
    info = await blob_store.put(b"after the crash")
    assert await blob_store.get(info.digest) == b"after the crash"


async def test_the_sweep_removes_markers_of_blobs_that_do_not_exist(blob_store: BlobBackend) -> None:
    kept = await blob_store.put(b"stored")
    await blob_store.touch(kept.digest)
    assert await blob_store.touch(digest_of(b"asked about, never stored")) is None
    later = datetime.now(UTC) + timedelta(days=1)
    removed = await blob_store.remove_stale_uploads(later)
    assert removed == (1 if isinstance(blob_store, ObjectBlobStore) else 0)
    assert await blob_store.remove_stale_uploads(later) == 0
    assert await blob_store.get(kept.digest) == b"stored"


async def test_touch_marks_a_stored_blob_as_wanted(blob_store: BlobBackend) -> None:
    info = await blob_store.put(b"old output")
    await asyncio.sleep(1.1)  # S3's modification times have a resolution of a second
    between = datetime.now(UTC)
    await asyncio.sleep(1.1)
    assert await blob_store.touch(digest_of(b"never stored")) is None
    assert await blob_store.touch(info.digest) is not None
    (listed,) = [blob async for blob in blob_store.list_blobs()]
    assert listed.last_used > between
    assert not await blob_store.delete_unused(info.digest, between)
    assert await blob_store.delete_unused(info.digest, datetime.now(UTC) + timedelta(seconds=5))
    assert await blob_store.stat(info.digest) is None


async def test_a_touch_during_a_deletion_keeps_the_blob(
    blob_store: BlobBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: a writer finds the blob (and touches it) exactly while the sweep
    deletes it; the sweep must give it back. Real components cannot be timed this finely."""
    info = await blob_store.put(b"re-produced output")
    cutoff = datetime.now(UTC) + timedelta(seconds=5)
    if isinstance(blob_store, ObjectBlobStore):
        real_stat = ObjectBlobStore.stat
        touched: list[bool] = []

        async def stat_then_touch(self: ObjectBlobStore, digest: str) -> object:
            result = await real_stat(self, digest)
            if not touched:
                touched.append(True)
                await self.touch(digest)  # the writer, between the sweep's check and its delete
            return result

        monkeypatch.setattr(ObjectBlobStore, "stat", stat_then_touch)
    else:
        real_rename = os.rename

        def touch_then_rename(source: str | Path, target: str | Path) -> None:
            time.sleep(0.01)
            os.utime(source)  # the writer touches the blob just before the sweep moves it
            real_rename(source, target)

        monkeypatch.setattr(os, "rename", touch_then_rename)
    assert not await blob_store.delete_unused(info.digest, cutoff)
    monkeypatch.undo()
    assert await blob_store.get(info.digest) == b"re-produced output"


def test_blob_store_urls_are_validated() -> None:
    for good in ("s3://bucket/prefix", "gs://bucket", "az://container/p", "file:///var/lib/weft", "/var/lib/weft"):
        assert blob_store_url(good) == good
    for bad, why in (
        ("ftp://host/x", "unsupported scheme"),
        ("s3://key:secret@bucket/p", "must not hold credentials"),
        ("s3:///prefix", "names no bucket"),
        ("file://host/dir", "local directory"),
    ):
        with pytest.raises(ValueError, match=why):
            blob_store_url(bad)
    with pytest.raises(InvalidArgument, match="blob store URL"):
        open_blob_store("ftp://host/x")
