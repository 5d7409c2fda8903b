"""Incomplete multipart uploads on S3 (a real moto server): a writer killed mid-upload
leaves parts S3 never lists as objects; the sweep aborts those older than the stale-upload
age, a dry run only reports them, and uploads of another prefix or still young are kept
(moto dates every upload 2010-11-10, so "young" is relative to that date here).

The two S3 requests involved (`weft_core.s3uploads`) are signed by weft itself; moto does
not check header signatures by default, so the signature is compared with botocore's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from tests.integration.blobs.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, expected_header_signature
from tests.integration.blobs.test_blob_stores import _KILLED_WRITER
from weft_api.gc import render
from weft_core.blobs import DirectoryBlobStore
from weft_core.gc import STALE_UPLOAD_SECONDS, sweep
from weft_core.keyspace import Keyspace
from weft_core.objectstore import ObjectBlobStore
from weft_core.s3uploads import S3Uploads
from weft_core.store import Store


async def _kill_a_writer_halfway(url: str, tmp_path: Path) -> None:
    marker = tmp_path / f"halfway-{time.monotonic_ns()}"
    writer = subprocess.Popen(  # noqa: ASYNC220  (started once; the test then only polls it)
        [sys.executable, "-c", _KILLED_WRITER, url, str(marker)], env=os.environ.copy()
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


def _uploads(url: str) -> S3Uploads:
    client = S3Uploads.from_environment(urlsplit(url).netloc)
    assert isinstance(client, S3Uploads), client
    return client


async def test_the_sweep_aborts_a_crashed_writers_multipart_upload(
    s3_url: str, store: Store, keyspace: Keyspace, tmp_path: Path
) -> None:
    bucket = urlsplit(s3_url).netloc
    neighbour = f"s3://{bucket}/another-installation"
    await _kill_a_writer_halfway(s3_url, tmp_path)
    await _kill_a_writer_halfway(neighbour, tmp_path)
    client = _uploads(s3_url)
    assert len(await client.list_incomplete("weft/")) == 1
    blobs = ObjectBlobStore.from_url(s3_url)

    (listed,) = await client.list_incomplete("weft/")
    # moto answers every upload's `Initiated` with one fixed date (2010-11-10T20:48:33Z), so
    # "young" is shown relative to that date: an upload started less than the stale-upload
    # age before the sweep may still be running, and is kept.
    soon = listed.initiated + timedelta(seconds=STALE_UPLOAD_SECONDS - 60)
    young = await sweep(store, keyspace.root, blobs, now=soon)
    assert young.incomplete_uploads == []
    assert len(await client.list_incomplete("weft/")) == 1

    later = datetime.now(UTC)
    dry = await sweep(store, keyspace.root, blobs, dry_run=True, now=later)
    (found,) = dry.incomplete_uploads
    assert found.key.startswith("weft/uploads/")
    assert f"would abort incomplete multipart upload of {found.key}" in render(dry)
    assert "would abort 1 incomplete multipart uploads" in render(dry)
    assert len(await client.list_incomplete("weft/")) == 1, "a dry run aborted something"

    done = await sweep(store, keyspace.root, blobs, now=later)
    assert [u.upload_id for u in done.incomplete_uploads] == [found.upload_id]
    assert "aborted 1 incomplete multipart uploads" in render(done)
    assert await client.list_incomplete("weft/") == []
    # Another prefix's upload (another installation) is not this sweep's.
    assert len(await client.list_incomplete("another-installation/")) == 1


async def test_the_sweep_says_when_it_cannot_look_for_incomplete_uploads(
    s3_url: str, store: Store, keyspace: Keyspace, monkeypatch: object, tmp_path: Path
) -> None:
    blobs = ObjectBlobStore.from_url(s3_url)  # obstore read its credentials already
    os.environ.pop("AWS_SECRET_ACCESS_KEY")  # restored by the s3_env fixture's monkeypatch
    report = await sweep(store, keyspace.root, blobs)
    assert "rely on the bucket's AbortIncompleteMultipartUpload lifecycle rule" in report.incomplete_uploads_unchecked
    assert "incomplete multipart uploads not checked" in render(report)
    directory = await sweep(store, keyspace.root, DirectoryBlobStore(tmp_path / "blobs"))
    assert directory.incomplete_uploads_unchecked == ""


def test_requests_are_signed_as_aws_signs_them() -> None:
    client = S3Uploads("http://127.0.0.1:9000", "weft-bucket", "eu-west-1", ACCESS_KEY_ID, SECRET_ACCESS_KEY, "tok")
    when = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    for method, key, query in (
        ("GET", "", {"uploads": "", "prefix": "weft/", "key-marker": "weft/a b"}),
        ("DELETE", "weft/uploads/0a1b", {"uploadId": "2~abc/+="}),
    ):
        url, headers = client.signed_headers(method, key, query, when)
        signature = headers["authorization"].rsplit("Signature=", 1)[1]
        assert expected_header_signature(method, url, headers, "eu-west-1", "tok") == signature
    assert SECRET_ACCESS_KEY not in repr(client)
    virtual = S3Uploads.from_environment("b", {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert isinstance(virtual, S3Uploads)
    assert (
        virtual.signed_headers("GET", "", {"uploads": ""}, when)[0] == "https://b.s3.us-east-1.amazonaws.com/?uploads="
    )
