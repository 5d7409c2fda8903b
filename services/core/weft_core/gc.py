"""The blob sweep: deletes blobs that nothing in etcd references, once they are old enough.

A blob is *referenced* when its digest (`sha256:<hex>`) appears in any value under the
installation's etcd root: pipeline versions (spec blobs), runs (parameter values),
step records and outcomes (outputs, stdout/stderr logs), anything else a later record
type names by digest. Reading digests out of the raw values rather than record by record
keeps the rule conservative: a new record type that names a blob protects it without a
change here. One blob store belongs to one etcd root; two installations must not share a
bucket prefix.

A blob is *deleted* when it is unreferenced and was neither written nor touched for
`min_age` seconds. The age is what protects a commit in flight: a step's outputs are
uploaded (or, when their content was already stored, touched: see `touch` in both
backends) before the outcome that references them is committed, so the sweep can only
delete an output whose commit came more than `min_age` after its upload. `min_age` must
therefore exceed the longest time from an attempt's upload to its commit, including an
executor failover and re-attachment to a finished pod; `MIN_AGE_SECONDS` (one hour) is
the least accepted, `DEFAULT_MIN_AGE_SECONDS` (one day) the default. The blob store is
listed BEFORE etcd is read, so a blob stored after the listing is never a candidate, and
each deletion re-checks the blob's age (`delete_unused`), so a touch between the listing
and the deletion keeps it.

The sweep also removes temporary upload keys older than the stale-upload age (left by
writers killed mid-upload) and, on S3, aborts incomplete multipart uploads started before
it (`ObjectBlobStore.stale_multipart_uploads`: S3 keeps their parts out of every listing).
A multipart upload running longer than `STALE_UPLOAD_SECONDS` is therefore cut short. It
never reads blob content and never writes etcd.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from weft_core.blobs import StoredBlob
from weft_core.objectstore import ObjectBlobStore
from weft_core.s3uploads import IncompleteUpload
from weft_core.store import Store

#: The least `min_age` accepted (see the module docstring).
MIN_AGE_SECONDS = 3600.0
DEFAULT_MIN_AGE_SECONDS = 24 * 3600.0
#: Temporary uploads older than this are a crashed writer's.
STALE_UPLOAD_SECONDS = 6 * 3600.0

_DIGEST_BYTES = re.compile(rb"sha256:[0-9a-f]{64}")


class SweepableBlobStore(Protocol):
    """What the sweep needs of a backend (`DirectoryBlobStore`, `ObjectBlobStore`)."""

    def list_blobs(self) -> AsyncIterator[StoredBlob]: ...

    async def delete_unused(self, digest: str, cutoff: datetime) -> bool: ...

    async def remove_stale_uploads(self, cutoff: datetime) -> int: ...


@dataclass
class SweepReport:
    """What a sweep found and did.

    Attributes:
        dry_run: Nothing was deleted; `deleted` is what would have been.
        deleted: Unreferenced blobs older than `min_age` (deleted unless `dry_run`).
        kept_young: Unreferenced blobs written or touched within `min_age`.
        referenced: Blobs something in etcd names.
        stale_uploads: Temporary upload keys removed (0 in a dry run).
        incomplete_uploads: Incomplete multipart uploads older than the stale-upload age,
            aborted unless `dry_run`.
        incomplete_uploads_unchecked: Why they were not looked for ("" when they were or
            the store has none: a directory).
    """

    dry_run: bool
    min_age: float
    deleted: list[StoredBlob] = field(default_factory=list)
    kept_young: list[StoredBlob] = field(default_factory=list)
    referenced: int = 0
    stale_uploads: int = 0
    incomplete_uploads: list[IncompleteUpload] = field(default_factory=list)
    incomplete_uploads_unchecked: str = ""

    @property
    def deleted_bytes(self) -> int:
        return sum(blob.size for blob in self.deleted)


async def referenced_digests(store: Store, etcd_root: str) -> set[str]:
    """Every blob digest named by a value under `etcd_root`, read at one revision."""
    prefix = etcd_root.rstrip("/").encode() + b"/"
    found: set[str] = set()
    listing = await store.range_all(prefix, page=500)
    for kv in listing.kvs:
        found.update(match.decode() for match in _DIGEST_BYTES.findall(kv.value))
    return found


def check_min_age(seconds: float) -> float:
    """Validates `--min-age`; raises ValueError saying why a shorter one is unsafe."""
    if seconds < MIN_AGE_SECONDS:
        raise ValueError(
            f"must be at least {MIN_AGE_SECONDS:g} seconds: a younger unreferenced blob may be the output "
            "of an attempt whose commit is still on its way"
        )
    return seconds


async def sweep(
    store: Store,
    etcd_root: str,
    blobs: SweepableBlobStore,
    *,
    min_age: float = DEFAULT_MIN_AGE_SECONDS,
    dry_run: bool = False,
    now: datetime | None = None,
) -> SweepReport:
    """Deletes (or, with `dry_run`, lists) the blobs nothing references (see the module docstring).

    Args:
        store: etcd.
        etcd_root: The installation's key root (e.g. `/weft`).
        blobs: The installation's blob store.
        min_age: Seconds an unreferenced blob is kept after its last write or touch.
        dry_run: Report only.
        now: The sweep's clock (tests).
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=min_age)
    report = SweepReport(dry_run=dry_run, min_age=min_age)
    # The listing comes first: a blob stored after it is no candidate (see the docstring).
    listed = [blob async for blob in blobs.list_blobs()]
    live = await referenced_digests(store, etcd_root)
    for blob in listed:
        if blob.digest in live:
            report.referenced += 1
        elif blob.last_used > cutoff:
            report.kept_young.append(blob)
        elif dry_run or await blobs.delete_unused(blob.digest, cutoff):
            report.deleted.append(blob)
        else:
            report.kept_young.append(blob)
    stale_cutoff = now - timedelta(seconds=STALE_UPLOAD_SECONDS)
    if not dry_run:
        report.stale_uploads = await blobs.remove_stale_uploads(stale_cutoff)
    if isinstance(blobs, ObjectBlobStore):
        found, why_not = await blobs.stale_multipart_uploads(stale_cutoff, abort=not dry_run)
        report.incomplete_uploads, report.incomplete_uploads_unchecked = found, why_not
    return report
