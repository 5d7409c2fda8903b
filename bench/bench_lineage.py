"""Lineage query latency at 100 and 1,000 stored runs, and the commit cost of the index.

    .venv/bin/python bench/bench_lineage.py [--queries 50] [--commits 200]

Starts its own etcd (default election settings, data in a temp dir) and stores runs of a
5-step chain (root → s1 → s2 → s3 → s4; every run reads one shared outcome too, so that
outcome has a consumer per run) as the executor commits them: each step's done record
and its lineage index (`weft_core.lineage.index_outcome`). It then times GetLineage's
reader in process (`weft_api.lineage.LineageReader`, the code behind the RPC, without
gRPC): 3-deep upstream from a run's last step, 3-deep downstream from a run's first
step, a blob query, and 1-deep downstream of the shared outcome (a consumer per run).
The commit figure is a transaction shaped like the executor's commit (compare absent,
3 puts, a count) alone and followed by the index of a 2-input step, alternated in the
same invocation. Medians; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_api.lineage import LineageReader
from weft_core.blobs import DirectoryBlobStore
from weft_core.dna import content_digest
from weft_core.keyspace import Keyspace
from weft_core.lineage import index_outcome
from weft_core.store import Store, absent, op_get, op_put

CHAIN = ("root", "s1", "s2", "s3", "s4")
NS = "bench"


def _step_record(run_id: str, step: str, inputs: dict[str, tuple[str, str]]) -> tuple[run_pb2.StepRun, dict[str, str]]:
    """A SUCCEEDED record of `step` in `run_id`; `inputs` maps input name → (digest, producer DNA)."""
    dna = content_digest(f"{run_id}/{step}".encode())
    outcome = run_pb2.Outcome(
        dna=dna,
        outputs={"out": content_digest(f"{run_id}/{step}/out".encode())},
        run=f"namespaces/{NS}/runs/{run_id}",
        step=step,
        attempt=1,
        executor="bench",
        input_outcomes={name: producer for name, (_, producer) in inputs.items() if producer},
    )
    record = run_pb2.StepRun(step=step, state=run_pb2.StepRun.STATE_SUCCEEDED, dna=dna, outcome=outcome)
    record.explanation.dna = dna
    record.explanation.components.add(name="command", value=f'["sh","-c","{step}"]')
    for name, (digest, _) in sorted(inputs.items()):
        record.explanation.components.add(name=f"input:{name}", value=digest)
    return record, {name: digest for name, (digest, _) in inputs.items()}


async def store_runs(store: Store, keyspace: Keyspace, first: int, last: int, shared: run_pb2.StepRun) -> None:
    for number in range(first, last):
        run_id = f"run-{number:05d}"
        previous: run_pb2.StepRun | None = None
        for step in CHAIN:
            inputs: dict[str, tuple[str, str]] = {"seed": (content_digest(run_id.encode()), "")}
            if previous is not None:
                inputs = {"in": (previous.outcome.outputs["out"], previous.outcome.dna)}
            if step == "s1":
                inputs["shared"] = (shared.outcome.outputs["out"], shared.outcome.dna)
            record, digests = _step_record(run_id, step, inputs)
            await store.put(keyspace.done(NS, run_id, step), record.SerializeToString())
            await index_outcome(store, keyspace, NS, record.outcome, digests)
            previous = record


async def timed(call: Callable[[], Awaitable[object]], times: int) -> float:
    """Median milliseconds of `times` calls."""
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def queries(reader: LineageReader, times: int, run_id: str, shared: run_pb2.StepRun) -> dict[str, float]:
    up = run_pb2.GetLineageRequest(
        run=f"namespaces/{NS}/runs/{run_id}", step="s4", direction=run_pb2.LINEAGE_DIRECTION_UPSTREAM, depth=3
    )
    down = run_pb2.GetLineageRequest(
        run=f"namespaces/{NS}/runs/{run_id}", step="root", direction=run_pb2.LINEAGE_DIRECTION_DOWNSTREAM, depth=3
    )
    blob = run_pb2.GetLineageRequest(
        parent=f"namespaces/{NS}", blob=content_digest(f"{run_id}/s2/out".encode()), depth=3
    )
    fan = run_pb2.GetLineageRequest(
        parent=f"namespaces/{NS}",
        outcome=shared.outcome.dna,
        direction=run_pb2.LINEAGE_DIRECTION_DOWNSTREAM,
        depth=1,
        page_size=1000,
    )
    return {
        "3-deep upstream": await timed(lambda: reader.get_lineage(up), times),
        "3-deep downstream": await timed(lambda: reader.get_lineage(down), times),
        "blob, 3 deep both ways": await timed(lambda: reader.get_lineage(blob), times),
        "consumers of the shared outcome (1 deep)": await timed(lambda: reader.get_lineage(fan), max(3, times // 10)),
    }


async def commit_cost(store: Store, keyspace: Keyspace, commits: int) -> tuple[float, float]:
    """Median ms per commit without and with the lineage index, alternated."""
    without, with_index = [], []
    for i in range(commits):
        run_id = f"commit-{i:05d}"
        record, digests = _step_record(
            run_id, "s1", {"in": (content_digest(b"a"), content_digest(b"p")), "x": (content_digest(b"x"), "")}
        )
        data = record.SerializeToString()
        done = keyspace.done(NS, run_id, "s1")
        writes = [
            op_put(done, data),
            op_put(keyspace.step(NS, run_id, "s1"), data),
            op_put(
                keyspace.outcome(NS, record.outcome.dna.removeprefix("sha256:")), record.outcome.SerializeToString()
            ),
            op_get(keyspace.done_prefix(NS, run_id), prefix=True, count_only=True),
        ]
        started = time.perf_counter()
        await store.txn([absent(done)], writes)
        if i % 2:
            await index_outcome(store, keyspace, NS, record.outcome, digests)
            with_index.append((time.perf_counter() - started) * 1000)
        else:
            without.append((time.perf_counter() - started) * 1000)
    return statistics.median(without), statistics.median(with_index)


async def bench(args: argparse.Namespace, endpoint: str, blob_dir: Path) -> None:
    store = Store(endpoint)
    keyspace = Keyspace("/bench")
    reader = LineageReader(store, keyspace, DirectoryBlobStore(blob_dir))
    try:
        shared, digests = _step_record("shared", "model", {})
        await store.put(keyspace.done(NS, "shared", "model"), shared.SerializeToString())
        await index_outcome(store, keyspace, NS, shared.outcome, digests)
        stored = 0
        for total in (100, 1000):
            started = time.perf_counter()
            await store_runs(store, keyspace, stored, total, shared)
            print(
                f"stored runs {stored}..{total - 1} ({len(CHAIN)} steps each) in {time.perf_counter() - started:.1f} s"
            )
            stored = total
            figures = await queries(reader, args.queries, "run-00042", shared)
            for name, ms in figures.items():
                print(f"  {total:5d} runs  {name:44s} {ms:7.2f} ms (median)")
        without, with_index = await commit_cost(store, keyspace, args.commits)
        print(
            f"commit of a 2-input step: {without:.2f} ms without the index, {with_index:.2f} ms with it "
            f"(+{with_index - without:.2f} ms, x{with_index / without:.2f}; medians of {args.commits // 2} each)"
        )
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=50, help="calls per query figure (the median is shown)")
    parser.add_argument("--commits", type=int, default=200, help="commits measured (half without the index)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as temp:
        etcd = EtcdProcess(Path(temp), fast=False)
        etcd.start()
        try:
            asyncio.run(bench(args, etcd.endpoint, Path(temp) / "blobs"))
        finally:
            etcd.stop()


if __name__ == "__main__":
    main()
