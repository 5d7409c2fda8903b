"""Fixtures of the blob-store suite: one moto S3 server per session, a fresh bucket per test,
and `blob_store`, parametrized over the directory backend and the S3 backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.blobs.s3server import S3Server
from tests.integration.conftest import running_api
from tests.integration.executor.support import Harness
from weft.localstack import EtcdProcess
from weft_core.blobs import DirectoryBlobStore
from weft_core.keyspace import Keyspace
from weft_core.objectstore import ObjectBlobStore
from weft_core.store import Store

BlobBackend = DirectoryBlobStore | ObjectBlobStore


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS variables of the test server, set in this process too (obstore reads them)."""
    environ = s3_server.environ()
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return environ


@pytest.fixture
def s3_url(s3_server: S3Server, s3_env: dict[str, str]) -> str:
    """`s3://<fresh bucket>/weft` on the test server."""
    return f"s3://{s3_server.make_bucket()}/weft"


@pytest.fixture(params=["directory", "s3"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty blob store of each backend."""
    if request.param == "directory":
        return f"file://{tmp_path / 'blobs'}"
    url: str = request.getfixturevalue("s3_url")
    return url


@pytest.fixture
def blob_store(backend_url: str) -> BlobBackend:
    """An empty blob store of each backend, opened from its URL as the services open it."""
    from weft_core.objectstore import open_blob_store

    store = open_blob_store(backend_url)
    assert isinstance(store, DirectoryBlobStore | ObjectBlobStore)
    return store


@pytest.fixture
async def s3_harness(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path, s3_url: str
) -> AsyncIterator[tuple[Harness, str]]:
    """The executor tests' harness with weft-api backed by a fresh S3 bucket, and its URL.
    Executors started in it are told the same URL (`blob_store=url`) by the test."""
    store = Store(etcd.endpoint)
    async with (
        running_api(etcd.endpoint, keyspace, tmp_path / "no-blob-dir", blob_store=s3_url) as api,
        grpc.aio.insecure_channel(api.address) as channel,
    ):
        harness = Harness(
            etcd_endpoint=etcd.endpoint,
            api_address=api.address,
            keyspace=keyspace,
            blob_dir=tmp_path / "no-blob-dir",
            tmp=tmp_path,
            channel=channel,
            store=store,
        )
        try:
            yield harness, s3_url
        finally:
            await harness.close()
            await store.close()
