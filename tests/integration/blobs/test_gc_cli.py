"""`weft gc [--dry-run]`: the CLI runs weft-gc against real etcd and a real blob store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from weft.localstack import EtcdProcess
from weft_core.blobs import DirectoryBlobStore
from weft_core.keyspace import Keyspace
from weft_core.store import Store

WEFT = str(Path(sys.executable).parent / "weft")
TWO_DAYS = 2 * 24 * 3600


def weft(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    return subprocess.run([WEFT, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_gc_help() -> None:
    done = weft("gc", "--help")
    assert done.returncode == 0
    assert "--dry-run" in done.stdout
    assert "only list what would be deleted" in done.stdout


async def test_gc_dry_run_shows_what_would_go_then_gc_deletes_it(
    etcd: EtcdProcess, store: Store, keyspace: Keyspace, tmp_path: Path
) -> None:
    blobs = DirectoryBlobStore(tmp_path / "blobs")
    kept = await blobs.put(b"a step output an outcome references")
    orphan = await blobs.put(b"an output nothing references any more" * 1000)
    await store.put(keyspace.root.encode() + b"/outcomes/ns/x", kept.digest.encode())
    old = time.time() - TWO_DAYS
    for info in (kept, orphan):
        os.utime(blobs.path_of(info.digest), (old, old))
    where = ["--etcd-endpoints", etcd.endpoint, "--etcd-root", keyspace.root, "--blob-dir", str(blobs.root)]

    dry = weft("gc", "--dry-run", *where)

    assert dry.returncode == 0, dry.stderr
    assert f"would delete {orphan.digest}  36.1 KiB" in dry.stdout
    assert "would delete 1 unreferenced blobs, 36.1 KiB; kept 1 referenced" in dry.stdout
    assert kept.digest not in dry.stdout
    assert await blobs.exists(orphan.digest)

    done = weft("gc", *where)

    assert done.returncode == 0, done.stderr
    assert f"deleted {orphan.digest}" in done.stdout
    assert not await blobs.exists(orphan.digest)
    assert await blobs.get(kept.digest) == b"a step output an outcome references"


def test_gc_refuses_a_min_age_that_could_delete_a_commit_in_flight(etcd: EtcdProcess, tmp_path: Path) -> None:
    done = weft("gc", "--etcd-endpoints", etcd.endpoint, "--blob-dir", str(tmp_path), "--min-age", "60")
    assert done.returncode == 2
    assert "--min-age" in done.stderr
    assert "commit is still on its way" in done.stderr
