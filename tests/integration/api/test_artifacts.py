"""ArtifactService over gRPC, and RemoteBlobStore (the executors' client) against it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.api.support import files_under
from tests.integration.conftest import InProcessApi
from weft.v1 import artifact_pb2, artifact_pb2_grpc
from weft_core.blobs import CHUNK_BYTES, RemoteBlobStore, digest_of
from weft_core.errors import InvalidArgument, NotFound


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Any:
    return artifact_pb2_grpc.ArtifactServiceStub(channel)  # type: ignore[no-untyped-call]


def upload(digest: str, size: int, *parts: bytes) -> Iterator[artifact_pb2.PutBlobRequest]:
    yield artifact_pb2.PutBlobRequest(header=artifact_pb2.BlobHeader(digest=digest, size_bytes=size))
    for part in parts:
        yield artifact_pb2.PutBlobRequest(data=part)


async def test_put_then_get_from_an_offset_in_1_mib_chunks(stub: Any, api: InProcessApi) -> None:
    data = os.urandom(CHUNK_BYTES * 2 + 5)
    blob = await stub.PutBlob(upload(digest_of(data), len(data), data[:100], data[100:]))
    assert blob.digest == digest_of(data)
    assert blob.size_bytes == len(data)
    chunks = [r.data async for r in stub.GetBlob(artifact_pb2.GetBlobRequest(digest=blob.digest, offset=10))]
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES - 5]
    assert b"".join(chunks) == data[10:]
    stat = await stub.StatBlob(artifact_pb2.StatBlobRequest(digest=blob.digest))
    assert stat.size_bytes == len(data)
    assert stat.HasField("create_time")


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        (lambda d: upload(digest_of(b"other"), len(d), d), "but the header declared sha256:"),
        (lambda d: upload(digest_of(d), len(d) + 1, d), f"({len(b'payload') + 1} bytes)"),
        (lambda d: upload(digest_of(d), 3, d), "more than the 3 bytes its header declared"),
        (lambda d: upload("sha256:XYZ", len(d), d), 'header.digest: "sha256:XYZ" is not a blob digest'),
        (lambda d: iter([artifact_pb2.PutBlobRequest(data=d)]), "the first message of PutBlob must be the header"),
        (lambda d: upload(digest_of(d), -1, d), "header.size_bytes: -1 is negative"),
    ],
    ids=["wrong-digest", "wrong-size", "too-much-data", "bad-digest", "no-header", "negative-size"],
)
async def test_a_bad_upload_is_refused_and_stores_nothing(
    stub: Any, api: InProcessApi, requests: Any, message: str
) -> None:
    before = files_under(api.blob_dir)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutBlob(requests(b"payload"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    assert files_under(api.blob_dir) == before


async def test_missing_blobs_and_bad_offsets(stub: Any) -> None:
    missing = digest_of(b"never stored")
    for call in (
        stub.StatBlob(artifact_pb2.StatBlobRequest(digest=missing)),
        stub.GetBlob(artifact_pb2.GetBlobRequest(digest=missing)).read(),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"blob {missing} is not stored" in (caught.value.details() or "")
    blob = await stub.PutBlob(upload(digest_of(b"abc"), 3, b"abc"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBlob(artifact_pb2.GetBlobRequest(digest=blob.digest, offset=4)).read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "offset: 4 is outside blob" in (caught.value.details() or "")


async def test_remote_blob_store_round_trips_through_the_service(api: InProcessApi, tmp_path: Path) -> None:
    remote = RemoteBlobStore(api.address)
    try:
        small = await remote.put(b"hello")
        assert small.digest == digest_of(b"hello")
        assert await remote.get(small.digest) == b"hello"
        assert await remote.exists(small.digest)
        assert await remote.stat(digest_of(b"nope")) is None

        big = os.urandom(3 * CHUNK_BYTES + 1)
        path = tmp_path / "output.bin"
        path.write_bytes(big)
        stored = await remote.put_file(path)
        assert stored.size == len(big)
        assert b"".join([c async for c in remote.read(stored.digest, offset=CHUNK_BYTES)]) == big[CHUNK_BYTES:]
        assert (api.blob_dir / "sha256" / stored.digest[7:9] / stored.digest[7:]).read_bytes() == big

        async def stream() -> AsyncIterator[bytes]:
            yield b"streamed "
            yield b"without a digest"

        streamed = await remote.put_stream(stream())
        assert await remote.get(streamed.digest) == b"streamed without a digest"
        with pytest.raises(InvalidArgument, match="but the header declared"):
            await remote.put_stream(stream(), digest=digest_of(b"x"), size=len(b"streamed without a digest"))
        with pytest.raises(NotFound, match="is not stored"):
            await remote.get(digest_of(b"absent"))
    finally:
        await remote.close()
