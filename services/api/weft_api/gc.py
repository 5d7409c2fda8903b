"""`weft-gc`: sweep the artifact store of blobs that nothing references (see `weft_core.gc`).

    weft-gc --etcd-endpoints http://127.0.0.1:2379 --blob-store s3://bucket/prefix [--dry-run] [--min-age 86400]

It reads the same `WEFT_ETCD_ENDPOINTS`, `WEFT_ETCD_ROOT`, `WEFT_BLOB_STORE` and
`WEFT_BLOB_DIR` as weft-api, so inside an api pod `weft-gc --dry-run` needs no flags (and
the same credentials apply). `weft gc` runs this program. It prints one line per blob that
goes (or, with `--dry-run`, would go) and a summary with the count and bytes; exit code 0
on success, 1 when etcd or the store could not be read. It never prints a blob's content.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from weft_core.config import ETCD_FLAGS, Flag, optional_blob_store_url, optional_path, parse_flags
from weft_core.errors import ServiceError
from weft_core.gc import DEFAULT_MIN_AGE_SECONDS, SweepableBlobStore, SweepReport, check_min_age, sweep
from weft_core.objectstore import open_blob_store
from weft_core.store import Store
from weft_core.units import human_bytes

FLAGS = (
    ETCD_FLAGS[0],
    ETCD_FLAGS[1],
    Flag("--blob-store", "WEFT_BLOB_STORE", "artifact store URL (s3://..., gs://..., az://...)", default="",
         convert=optional_blob_store_url),
    Flag("--blob-dir", "WEFT_BLOB_DIR", "artifact store directory (instead of --blob-store)", default="",
         convert=optional_path),
    Flag("--min-age", "WEFT_GC_MIN_AGE", "seconds an unreferenced blob is kept after its last write or use",
         default=str(int(DEFAULT_MIN_AGE_SECONDS)), convert=lambda v: check_min_age(float(v))),
)  # fmt: skip


def render(report: SweepReport) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    lines = [
        f"{verb} {blob.digest}  {human_bytes(blob.size)}  last used {blob.last_used:%Y-%m-%d %H:%M:%S}Z"
        for blob in report.deleted
    ]
    lines.append(
        f"{verb} {len(report.deleted)} unreferenced blobs, {human_bytes(report.deleted_bytes)}; "
        f"kept {report.referenced} referenced and {len(report.kept_young)} younger than {report.min_age:g}s"
        + ("" if report.dry_run else f"; removed {report.stale_uploads} stale temporary uploads")
    )
    abort_verb = "would abort" if report.dry_run else "aborted"
    for upload in report.incomplete_uploads:
        started = f"{upload.initiated:%Y-%m-%d %H:%M:%S}Z"
        lines.append(f"{abort_verb} incomplete multipart upload of {upload.key}  started {started}")
    if report.incomplete_uploads:
        lines.append(f"{abort_verb} {len(report.incomplete_uploads)} incomplete multipart uploads")
    if report.incomplete_uploads_unchecked:
        lines.append(f"incomplete multipart uploads not checked: {report.incomplete_uploads_unchecked}")
    return "\n".join(lines)


async def run(argv: Sequence[str] | None = None) -> int:
    # --dry-run is a switch, which the services' flag helper (VALUE flags) does not have.
    switches = argparse.ArgumentParser(add_help=False)
    switches.add_argument("--dry-run", action="store_true")
    known, rest = switches.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    dry_run = bool(known.dry_run)
    values = parse_flags(
        "weft-gc",
        "weft-gc: delete blobs that no pipeline version, run, outcome or log references, once older than "
        "--min-age. --dry-run: only list what would be deleted, and how many bytes.",
        FLAGS,
        rest,
    )
    url = values["blob_store"] or (str(values["blob_dir"]) if values["blob_dir"] else "")
    if not url:
        print("weft-gc: error: pass --blob-store URL or --blob-dir DIR (or set WEFT_BLOB_STORE)", file=sys.stderr)
        return 2
    store = Store(values["etcd_endpoints"])
    blobs = open_blob_store(url)
    try:
        sweepable: SweepableBlobStore = blobs  # type: ignore[assignment]
        report = await sweep(store, values["etcd_root"], sweepable, min_age=values["min_age"], dry_run=dry_run)
    except ServiceError as error:
        print(f"weft-gc: error: {error.message}", file=sys.stderr)
        return 1
    finally:
        await blobs.close()
        await store.close()
    print(render(report), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(asyncio.run(run(argv)))


if __name__ == "__main__":
    main()
