"""The blob sweep against real etcd and both backends: what nothing references goes, what
anything references (or what is young) stays, and a dry run deletes nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.blobs.conftest import BlobBackend
from weft_core.blobs import digest_of
from weft_core.gc import MIN_AGE_SECONDS, check_min_age, referenced_digests, sweep
from weft_core.keyspace import Keyspace
from weft_core.store import Store

HOUR = 3600.0


async def test_the_sweep_deletes_only_old_blobs_that_nothing_references(
    blob_store: BlobBackend, store: Store, keyspace: Keyspace
) -> None:
    output = await blob_store.put(b"an outcome's output")
    log = await blob_store.put(b"an attempt's stdout")
    orphan = await blob_store.put(b"an output whose run was never committed" * 100)
    # Digests inside records of any kind, as etcd holds them (protobuf bytes, JSON...).
    await store.put(keyspace.root.encode() + b"/outcomes/ns/abc", b"\x12\x47" + output.digest.encode() + b"\x00")
    await store.put(keyspace.root.encode() + b"/runs/ns/r1", f'{{"log": "{log.digest}"}}'.encode())
    # Another installation's keys do not protect anything here.
    await store.put(keyspace.root.encode() + b"-other/x", orphan.digest.encode())
    assert await referenced_digests(store, keyspace.root) >= {output.digest, log.digest}

    later = datetime.now(UTC) + timedelta(hours=2)
    dry = await sweep(store, keyspace.root, blob_store, min_age=HOUR, dry_run=True, now=later)
    assert [b.digest for b in dry.deleted] == [orphan.digest]
    assert dry.deleted_bytes == orphan.size
    assert dry.referenced == 2
    assert await blob_store.exists(orphan.digest), "a dry run deleted something"

    young = await sweep(store, keyspace.root, blob_store, min_age=HOUR)
    assert young.deleted == []
    assert [b.digest for b in young.kept_young] == [orphan.digest]

    done = await sweep(store, keyspace.root, blob_store, min_age=HOUR, now=later)
    assert [b.digest for b in done.deleted] == [orphan.digest]
    assert not await blob_store.exists(orphan.digest)
    assert await blob_store.get(output.digest) == b"an outcome's output"
    assert await blob_store.get(log.digest) == b"an attempt's stdout"


async def test_an_upload_in_flight_of_old_unreferenced_content_is_not_swept(
    blob_store: BlobBackend, store: Store, keyspace: Keyspace
) -> None:
    """The commit-in-flight case: an attempt re-produces content an old orphan already has.
    Its upload finds the blob stored and touches it, so the sweep (whose cutoff lies between
    the orphan's write and the upload) keeps it for the commit that is on its way."""
    data = b"the same bytes an abandoned attempt wrote long ago"
    await blob_store.put(data)
    await asyncio.sleep(1.1)  # S3 modification times have a resolution of a second
    cutoff = datetime.now(UTC)
    await asyncio.sleep(1.1)
    untouched = await blob_store.put(b"another orphan")  # written after the cutoff too...
    await blob_store.put(data)  # the new attempt's upload: content already stored
    now = cutoff + timedelta(seconds=HOUR)
    report = await sweep(store, keyspace.root, blob_store, min_age=HOUR, now=now)
    assert report.deleted == []
    assert await blob_store.get(digest_of(data)) == data
    assert {b.digest for b in report.kept_young} == {digest_of(data), untouched.digest}


def test_a_min_age_below_an_hour_is_refused() -> None:
    assert check_min_age(MIN_AGE_SECONDS) == MIN_AGE_SECONDS
    with pytest.raises(ValueError, match="commit is still on its way"):
        check_min_age(60)
