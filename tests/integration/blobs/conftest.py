"""Fixtures of the blob-store suite: one moto S3 server per session, a fresh bucket per test,
and `blob_store`, parametrized over the directory backend and the S3 backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.blobs.s3server import S3Server
from weft_core.blobs import DirectoryBlobStore
from weft_core.objectstore import ObjectBlobStore

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
