"""ArtifactService backed by object storage: the SDK's, CLI's and grpcurl's PutBlob, GetBlob
and StatBlob answer from the same bucket the executors and pods use directly."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.conftest import running_api
from weft.localstack import EtcdProcess
from weft_api.artifacts import TRAFFIC
from weft_core.blobs import CHUNK_BYTES, RemoteBlobStore, digest_of
from weft_core.config import ApiConfig
from weft_core.errors import InvalidArgument, NotFound
from weft_core.keyspace import Keyspace
from weft_core.objectstore import ObjectBlobStore


async def test_artifact_service_serves_the_bucket(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, s3_url: str
) -> None:
    bucket = ObjectBlobStore.from_url(s3_url)
    async with running_api(etcd.endpoint, keyspace, tmp_path / "unused", blob_store=s3_url) as api:
        client = RemoteBlobStore(api.address)
        try:
            data = os.urandom(3 * CHUNK_BYTES + 11)
            received = TRAFFIC.bytes_received
            info = await client.put(data)
            assert TRAFFIC.bytes_received - received == len(data)
            assert await bucket.get(info.digest) == data, "PutBlob did not store into the bucket"
            direct = await bucket.put(b"written by a pod, straight to the bucket")
            assert await client.get(direct.digest) == b"written by a pod, straight to the bucket"
            assert b"".join([c async for c in client.read(info.digest, offset=CHUNK_BYTES)]) == data[CHUNK_BYTES:]
            stat = await client.stat(info.digest)
            assert stat is not None
            assert stat.size == len(data)
            assert await client.stat(digest_of(b"absent")) is None
            with pytest.raises(NotFound):
                await client.get(digest_of(b"absent"))
            with pytest.raises(InvalidArgument, match="nothing was stored"):
                await client.put_stream(_chunks(b"abc"), digest=digest_of(b"abd"), size=3)
        finally:
            await client.close()
    assert not (tmp_path / "unused").exists(), "the api made a blob directory although the store is S3"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_the_api_takes_blob_store_or_blob_dir() -> None:
    config = ApiConfig.from_args(["--etcd-endpoints", "http://127.0.0.1:2379", "--blob-store", "s3://b/p"], {})
    assert config.blob_store_url == "s3://b/p"
    config = ApiConfig.from_args(["--etcd-endpoints", "http://127.0.0.1:2379", "--blob-dir", "/tmp/b"], {})
    assert config.blob_store_url == "/tmp/b"
    with pytest.raises(SystemExit):
        ApiConfig.from_args(["--etcd-endpoints", "http://127.0.0.1:2379"], {})
    with pytest.raises(SystemExit):
        ApiConfig.from_args(["--etcd-endpoints", "http://127.0.0.1:2379", "--blob-store", "s3://k:s@b/p"], {})
