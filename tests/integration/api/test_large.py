"""Invariant 6 at the api: a 10,000-step pipeline and a 2,000-root fan-out are stored,
read back, listed and run, while every etcd value stays far below etcd's request limit."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.integration.api.support import Clients, ExecutorWrites, create_pipeline, create_run, keyspace_snapshot, step
from tests.integration.conftest import InProcessApi
from weft.localstack import EtcdProcess
from weft.v1 import pipeline_pb2, run_pb2
from weft_core.pipelines import INLINE_SPEC_BYTES, PipelineVersionRecord
from weft_core.store import MAX_RECEIVE_BYTES, MAX_REQUEST_BYTES, Store

#: Runs whose three parameters of 65,000 bytes each would make ~200 KB index entries.
RUNS_WITH_LARGE_PARAMETERS = 24


@pytest.fixture
def clients(channel: grpc.aio.Channel) -> Clients:
    return Clients.of(channel)


def ten_thousand_steps() -> pipeline_pb2.PipelineSpec:
    # Ten independent chains of 1,000 steps, each with a realistic command line.
    steps = []
    for chain in range(10):
        for i in range(1000):
            reads = (f"c{chain}-s{i - 1}",) if i else ()
            built = step(f"c{chain}-s{i}", reads=reads, command=("python", "-m", "transform", f"--part={i}"))
            built.container.args.extend([f"--input=s3://datasets/2026/chain-{chain}/part-{i:05d}.parquet", "--verbose"])
            built.container.env.add(name="DATASET_VERSION", value=f"v{chain}.{i}-with-a-longer-description-tag")
            built.container.resources.requests.update({"cpu": "250m", "memory": "512Mi"})
            steps.append(built)
    return pipeline_pb2.PipelineSpec(steps=steps)


async def test_a_10000_step_pipeline_is_stored_read_back_listed_and_run(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    spec = ten_thousand_steps()
    assert spec.ByteSize() > 2 * MAX_REQUEST_BYTES  # it cannot be one etcd value
    started = time.monotonic()
    created = await create_pipeline(clients, "huge", spec)
    create_seconds = time.monotonic() - started
    assert created.version_count == 1

    kv = await store.get(api.keyspace.pipeline_version("default", "huge", created.version[7:]))
    assert kv is not None
    record = PipelineVersionRecord.decode(kv.value, kv.key)
    assert record.spec_blob  # stored by digest in the artifact store
    assert record.size_bytes > INLINE_SPEC_BYTES
    assert all(len(value) < 64 * 1024 for value, _ in (await keyspace_snapshot(store, api.keyspace)).values())

    got = await clients.pipelines.GetPipeline(pipeline_pb2.GetPipelineRequest(name=created.name))
    assert got.spec == spec
    listed = await clients.pipelines.ListPipelines(pipeline_pb2.ListPipelinesRequest())
    assert [p.version for p in listed.pipelines] == [created.version]

    run = await create_run(clients, "huge")
    executor = ExecutorWrites(store, api.keyspace, run.name)
    done = run_pb2.StepRun(state=run_pb2.StepRun.STATE_SUCCEEDED, dna="sha256:" + "e" * 64).SerializeToString()
    await store.put_many(
        [(api.keyspace.done("default", run.name.rsplit("/", 1)[1], s.name), done) for s in spec.steps[:9000]]
    )
    await executor.mark_ready(*(s.name for s in spec.steps[9000:9010]))
    started = time.monotonic()
    full = await clients.runs.GetRun(run_pb2.GetRunRequest(name=run.name))
    get_run_seconds = time.monotonic() - started
    assert len(full.steps) == 10_000
    assert dict(full.step_counts) == {"SUCCEEDED": 9000, "READY": 10, "WAITING": 990}
    assert create_seconds < 20
    assert get_run_seconds < 10


async def test_a_2000_root_fan_out_is_stored_and_run(clients: Clients, api: InProcessApi, store: Store) -> None:
    roots = [step(f"root-{i}") for i in range(2000)]
    join = step("join", depends_on=tuple(f"root-{i}" for i in range(2000)))
    spec = pipeline_pb2.PipelineSpec(steps=[*roots, join])
    created = await create_pipeline(clients, "wide", spec)
    got = await clients.pipelines.GetPipeline(
        pipeline_pb2.GetPipelineRequest(name=created.name, version=created.version[7:20])
    )
    assert got.spec == spec
    run = await create_run(clients, "wide")
    await ExecutorWrites(store, api.keyspace, run.name).mark_ready(*(f"root-{i}" for i in range(2000)))
    full = await clients.runs.GetRun(run_pb2.GetRunRequest(name=run.name))
    assert dict(full.step_counts) == {"READY": 2000, "WAITING": 1}


async def test_runs_with_large_parameters_keep_the_run_index_small_and_listable(
    clients: Clients, api: InProcessApi, store: Store, etcd: EtcdProcess
) -> None:
    spec = pipeline_pb2.PipelineSpec(
        parameters=[pipeline_pb2.Parameter(name=p, default_value="") for p in ("a", "b", "c")], steps=[step("s")]
    )
    await create_pipeline(clients, "big", spec)
    large = "x" * 65_000  # just under the per-value limit: CreateRun accepts it

    async def one(i: int) -> run_pb2.Run:
        parameters = {p: f"{large}{p}{i}" for p in ("a", "b", "c")}
        run = run_pb2.Run(pipeline="big", parameters=parameters)
        created: run_pb2.Run = await clients.runs.CreateRun(run_pb2.CreateRunRequest(run=run))
        return created

    created = [await one(i) for i in range(RUNS_WITH_LARGE_PARAMETERS)]
    await clients.runs.CancelRun(run_pb2.CancelRunRequest(name=created[0].name))  # the index follows changes

    index = await store.range_all(api.keyspace.run_index_prefix("default"))
    assert len(index.kvs) == RUNS_WITH_LARGE_PARAMETERS
    largest = max(len(kv.value) for kv in index.kvs)
    assert largest < 1024, f"a run index entry has {largest} bytes: it carries the parameters"
    # So 1,000 of them (the page executors and ListRuns read) stay far below the receive limit.
    assert 1000 * largest < MAX_RECEIVE_BYTES // 16

    # A client that accepts only 256 KiB per answer reads every entry in one page: before
    # the fix, each entry held ~195 KB of parameters and a page of 1,000 exceeded 64 MiB.
    small = Store(etcd.endpoint, max_receive_bytes=256 * 1024)
    try:
        page = await small.range(api.keyspace.run_index_prefix("default"), limit=1000)
        assert len(page.kvs) == RUNS_WITH_LARGE_PARAMETERS
    finally:
        await small.close()

    listed = await clients.runs.ListRuns(run_pb2.ListRunsRequest(page_size=1000))
    assert [r.name for r in listed.runs] == [r.name for r in reversed(created)]
    assert all(not r.parameters and not r.parameter_digests and not r.traceparent for r in listed.runs)
    assert listed.runs[-1].state == run_pb2.Run.STATE_CANCELLED
    assert listed.runs[0].pipeline == "namespaces/default/pipelines/big"
    assert listed.runs[0].HasField("create_time")
    # The run itself still has everything.
    got = await clients.runs.GetRun(run_pb2.GetRunRequest(name=created[0].name, view=run_pb2.RUN_VIEW_BASIC))
    assert got.parameters["a"] == f"{large}a0"
    assert got.traceparent == created[0].traceparent
