"""weft_core.blobs.DirectoryBlobStore on a real directory: verified, atomic, sharded writes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from weft_core.blobs import CHUNK_BYTES, DirectoryBlobStore, check_digest, digest_of
from weft_core.errors import InvalidArgument, NotFound


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_put_stores_content_at_its_sharded_digest_path(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    info = await store.put(b"hello")
    hex_digest = hashlib.sha256(b"hello").hexdigest()
    assert info.digest == f"sha256:{hex_digest}"
    assert info.size == 5
    assert (tmp_path / "sha256" / hex_digest[:2] / hex_digest).read_bytes() == b"hello"
    assert await store.get(info.digest) == b"hello"
    assert await store.exists(info.digest)
    assert (await store.put(b"hello")).digest == info.digest  # storing again is a no-op


async def test_a_streamed_upload_with_a_wrong_digest_stores_nothing(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = os.urandom(5000)
    wrong = digest_of(b"something else")
    with pytest.raises(InvalidArgument, match=r"the uploaded content is sha256:\w+ \(5000 bytes\) but the header"):
        await store.put_stream(chunks_of(data), digest=wrong, size=len(data))
    with pytest.raises(InvalidArgument, match="more than the 10 bytes"):
        await store.put_stream(chunks_of(data), digest=digest_of(data), size=10)
    with pytest.raises(InvalidArgument, match=r"\(5000 bytes\) but the header declared sha256:\w+ \(6000 bytes\)"):
        await store.put_stream(chunks_of(data), digest=digest_of(data), size=6000)
    assert files_under(tmp_path) == []  # no blob, no temporary file left behind
    info = await store.put_stream(chunks_of(data), digest=digest_of(data), size=len(data))
    assert await store.get(info.digest) == data


async def test_reads_stream_chunks_from_an_offset(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = os.urandom(CHUNK_BYTES * 2 + 17)
    info = await store.put(data)
    chunks = [c async for c in store.read(info.digest, offset=CHUNK_BYTES - 3)]
    assert [len(c) for c in chunks] == [CHUNK_BYTES, 20]
    assert b"".join(chunks) == data[CHUNK_BYTES - 3 :]
    with pytest.raises(InvalidArgument, match="past the end"):
        _ = [c async for c in store.read(info.digest, offset=len(data) + 1)]
    with pytest.raises(NotFound, match="is not stored"):
        await store.get(digest_of(b"absent"))


async def test_a_file_is_stored_by_its_content(tmp_path: Path) -> None:
    source = tmp_path / "out.bin"
    source.write_bytes(b"x" * 3_000_000)
    store = DirectoryBlobStore(tmp_path / "blobs")
    info = await store.put_file(source)
    assert info.digest == digest_of(source.read_bytes())
    assert info.size == 3_000_000


async def test_concurrent_uploads_of_the_same_content_leave_one_blob(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = os.urandom(200_000)
    infos = await asyncio.gather(*(store.put_stream(chunks_of(data, 7000)) for _ in range(8)))
    assert {i.digest for i in infos} == {digest_of(data)}
    assert [p.name for p in files_under(tmp_path)] == [digest_of(data)[7:]]


def test_stale_temporary_files_of_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    DirectoryBlobStore(tmp_path)
    stale, fresh = tmp_path / "tmp" / "upload-old", tmp_path / "tmp" / "upload-new"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"in progress")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    DirectoryBlobStore(tmp_path)
    assert not stale.exists()
    assert fresh.exists()  # maybe another process's upload in progress


@pytest.mark.parametrize(
    "digest",
    ["", "sha256:", "sha256:" + "A" * 64, "md5:" + "a" * 64, "sha256:" + "a" * 63, "a" * 64, "sha256:" + "g" * 64],
)
def test_malformed_digests_are_rejected_with_the_expected_form(digest: str) -> None:
    with pytest.raises(InvalidArgument, match=r'^blob: .* is not a blob digest; use "sha256:" followed by the 64'):
        check_digest(digest, "blob")
