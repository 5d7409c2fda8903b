"""Blob throughput of the artifact store's paths, and the time to verify a 2,000-output cache hit.

    .venv/bin/python bench/bench_blobs.py [--rounds 2] [--large-mib 256]

In one invocation, on this machine, it measures put and get MB/s of 1 KiB, 1 MiB and
256 MiB blobs through three paths:

- `directory`: `DirectoryBlobStore` on a temp dir (what `weft up` uses by default),
- `s3`: `ObjectBlobStore` against a real S3-protocol server (PyPI `moto[server]`, its own
  process on loopback: a stand-in for S3 that keeps objects in memory, so its figures say
  more about moto and loopback HTTP than about a cloud bucket),
- `api-grpc`: `RemoteBlobStore` through a `weft-api` subprocess on the directory backend:
  the path every blob took before object storage (1 MiB chunks over a gRPC stream).

Then the cache-hit check of invariant 7 for an outcome with 2,000 outputs, on each path:
`missing_blobs` (one batched check) against one `stat` after another (the baseline).
Each figure is the median of the rounds. Not part of the test suite: the client shares
two cores with the servers, so ratios measured together mean more than absolute values.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weft.localstack import ChildProcess, EtcdProcess, api_process, free_port
from weft_core.blobs import BlobStore, DirectoryBlobStore, RemoteBlobStore, missing_blobs
from weft_core.objectstore import ObjectBlobStore

KiB, MiB = 1024, 1024 * 1024
OUTPUTS = 2000


def moto_server(log_path: Path) -> tuple[ChildProcess, str]:
    """Starts `moto_server` on a free loopback port; returns it and its endpoint."""
    import shutil
    import sys

    command = str(Path(sys.executable).parent / "moto_server")
    if not Path(command).exists():
        command = shutil.which("moto_server") or ""
    if not command:
        raise SystemExit('moto_server is not installed: pip install "moto[server]"')
    port = free_port()
    child = ChildProcess([command, "-H", "127.0.0.1", "-p", str(port)], log_path)
    child.start()
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=1):
                break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.1)
    return child, endpoint


def unique_blobs(size: int, count: int, tag: str) -> list[bytes]:
    """`count` distinct blobs of `size` bytes (distinct, so every put really stores)."""
    blobs = []
    for index in range(count):
        head = hashlib.sha256(f"{tag}-{index}-{uuid.uuid4()}".encode()).digest()
        blobs.append((head * (size // len(head) + 1))[:size] if size >= len(head) else head[:size])
    return blobs


async def throughput(store: BlobStore, size: int, count: int, spool: Path) -> tuple[float, float]:
    """(put MB/s, get MB/s) of `count` blobs of `size`, 8 in flight for small ones. Large
    blobs are stored from a file, as step outputs are (`put_file`)."""
    blobs = unique_blobs(size, count, f"{size}")
    limit = asyncio.Semaphore(8 if size <= MiB else 1)
    files: dict[int, Path] = {}
    if size > 64 * MiB:
        for index, data in enumerate(blobs):
            files[index] = spool / f"large-{index}"
            files[index].write_bytes(data)

    async def put(index: int, data: bytes) -> str:
        async with limit:
            if index in files:
                return (await store.put_file(files[index])).digest
            return (await store.put(data)).digest

    async def get(digest: str) -> int:
        async with limit:
            total = 0
            async for chunk in store.read(digest):
                total += len(chunk)
            return total

    started = time.perf_counter()
    digests = await asyncio.gather(*(put(i, b) for i, b in enumerate(blobs)))
    put_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sizes = await asyncio.gather(*(get(d) for d in digests))
    get_seconds = time.perf_counter() - started
    assert sizes == [size] * count
    for path in files.values():
        path.unlink()
    moved = size * count / 1e6
    return moved / put_seconds, moved / get_seconds


async def cache_hit_check(store: BlobStore, digests: list[str]) -> tuple[float, float]:
    """(batched ms, one-after-another ms) to confirm that all `digests` are stored."""
    started = time.perf_counter()
    assert await missing_blobs(store, digests) == []
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for digest in digests:
        assert await store.stat(digest) is not None
    sequential = time.perf_counter() - started
    return batched * 1000, sequential * 1000


async def bench(rounds: int, large_mib: int, workdir: Path) -> None:
    etcd = EtcdProcess(workdir / "etcd-data", log_path=workdir / "etcd.log")
    etcd.start()
    moto, endpoint = moto_server(workdir / "moto.log")
    api = api_process(etcd.endpoint, workdir / "api-blobs", workdir / "api.log", health=True)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
    )
    try:
        api.start()
        bucket = urllib.request.Request(f"{endpoint}/bench", method="PUT")
        await asyncio.to_thread(lambda: urllib.request.urlopen(bucket, timeout=10).close())
        stores: dict[str, Callable[[], Any]] = {
            "directory": lambda: DirectoryBlobStore(workdir / "dir-blobs"),
            "s3": lambda: ObjectBlobStore.from_url("s3://bench/weft"),
            "api-grpc": lambda: RemoteBlobStore(api.address),
        }
        opened = {name: make() for name, make in stores.items()}
        sizes = [("1 KiB", KiB, 400), ("1 MiB", MiB, 32), (f"{large_mib} MiB", large_mib * MiB, 1)]
        print(f"blob throughput, MB/s (median of {rounds} rounds; 1 KiB and 1 MiB with 8 in flight)")
        print(f"{'size':>8}  {'path':<10} {'put':>9} {'get':>9}")
        for label, size, count in sizes:
            for name, store in opened.items():
                results = [await throughput(store, size, count, workdir) for _ in range(rounds)]
                put = statistics.median(r[0] for r in results)
                get = statistics.median(r[1] for r in results)
                print(f"{label:>8}  {name:<10} {put:9.1f} {get:9.1f}", flush=True)
        print(f"\ncache-hit verification of {OUTPUTS} outputs, ms (median of {rounds} rounds)")
        print(f"{'path':<10} {'batched':>9} {'one by one':>11} {'ratio':>6}")
        for name, store in opened.items():
            digests = [(await store.put(blob)).digest for blob in unique_blobs(64, OUTPUTS, f"hit-{name}")]
            results = [await cache_hit_check(store, digests) for _ in range(rounds)]
            batched = statistics.median(r[0] for r in results)
            sequential = statistics.median(r[1] for r in results)
            print(f"{name:<10} {batched:9.0f} {sequential:11.0f} {sequential / batched:5.1f}x", flush=True)
        for store in opened.values():
            await store.close()
    finally:
        api.stop()
        moto.stop()
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--large-mib", type=int, default=256, help="size of the large blob, MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weft-bench-blobs-") as workdir:
        asyncio.run(bench(args.rounds, args.large_mib, Path(workdir)))


if __name__ == "__main__":
    main()
