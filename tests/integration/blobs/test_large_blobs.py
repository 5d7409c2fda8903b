"""Blobs larger than S3's single-request copy limit (5 GiB) on the S3 backend (a real moto
server), shown with the limit lowered to 1 MiB rather than with real 5 GiB blobs.

moto copies objects of any size, so the limit S3 enforces is injected: `obstore.copy_async`
is wrapped to refuse, as S3 does, a source larger than the (lowered) limit. Every path that
copies (an upload of undeclared digest, the sweep's trash copy and its restore) must then
publish without a server-side copy; an upload of declared digest never copies at all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import obstore
import pytest

from tests.integration.blobs.test_blob_stores import LARGE, chunked, content
from weft_core import objectstore
from weft_core.blobs import digest_of
from weft_core.errors import InvalidArgument
from weft_core.objectstore import UPLOADS, ObjectBlobStore

LIMIT = 1024 * 1024


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Lowers the copy limit to 1 MiB and makes copies above it fail as on S3; yields the
    copies that were made."""
    made: list[tuple[str, str]] = []
    real_copy = obstore.copy_async

    async def copy_like_s3(store: Any, source: str, target: str, **kwargs: Any) -> None:
        size = (await obstore.head_async(store, source))["size"]
        if size > LIMIT:
            raise RuntimeError(f"InvalidRequest: the copy source is larger than the maximum allowable size ({size})")
        made.append((source, target))
        await real_copy(store, source, target, **kwargs)

    monkeypatch.setattr(objectstore, "COPY_LIMIT_BYTES", LIMIT)
    monkeypatch.setattr(obstore, "copy_async", copy_like_s3)
    return made


async def _keys(store: ObjectBlobStore, prefix: str) -> list[str]:
    return [meta["path"] async for batch in obstore.list(store._store, prefix=prefix) for meta in batch]


async def test_an_upload_of_undeclared_digest_over_the_limit_is_published_without_a_copy(
    s3_url: str, copies: list[tuple[str, str]]
) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    data = content(LARGE, seed=7)

    info = await store.put_stream(chunked(data))

    assert info.digest == digest_of(data)
    assert await store.get(info.digest) == data
    assert copies == []
    assert await _keys(store, UPLOADS + "/") == []  # the temporary upload is gone


async def test_an_upload_of_declared_digest_goes_straight_to_its_key(
    s3_url: str, copies: list[tuple[str, str]]
) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    data = content(LARGE, seed=8)

    info = await store.put_stream(chunked(data), digest=digest_of(data), size=len(data))

    assert await store.get(info.digest) == data
    assert copies == []
    with pytest.raises(InvalidArgument):
        await store.put_stream(chunked(content(LARGE, seed=9)), digest=digest_of(b"other"), size=LARGE)
    assert await store.stat(digest_of(b"other")) is None


async def test_the_sweep_deletes_a_blob_over_the_limit(s3_url: str, copies: list[tuple[str, str]]) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    data = content(LARGE, seed=10)
    info = await store.put_stream(chunked(data), digest=digest_of(data), size=len(data))

    assert await store.delete_unused(info.digest, datetime.now(UTC) + timedelta(seconds=5))

    assert await store.stat(info.digest) is None
    assert copies == []
    assert await _keys(store, "trash/") == []


async def test_a_streamed_copy_publishes_only_the_bytes_it_was_told(s3_url: str, copies: list[tuple[str, str]]) -> None:
    store = ObjectBlobStore.from_url(s3_url)
    data = content(LARGE, seed=11)
    await obstore.put_async(store._store, "uploads/source", data)

    with pytest.raises(InvalidArgument, match="copying uploads/source"):
        await store._copy("uploads/source", "uploads/target", LARGE, digest_of(b"not these bytes"))

    assert await _keys(store, "uploads/target") == []
    await store._copy("uploads/source", "uploads/target", LARGE, digest_of(data))
    assert bytes(await (await obstore.get_async(store._store, "uploads/target")).bytes_async()) == data
    assert copies == []
