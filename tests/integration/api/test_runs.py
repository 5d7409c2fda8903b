"""RunService against a real etcd: creation, reads synthesized from executor records,
listing, cancel, resume, explain and logs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import weft_api.runs
from tests.integration.api.support import (
    Clients,
    ExecutorWrites,
    create_pipeline,
    create_run,
    diamond,
    files_under,
    simple,
)
from tests.integration.conftest import InProcessApi, running_api
from weft.v1 import executor_pb2, executor_pb2_grpc, pipeline_pb2, run_pb2
from weft_core.blobs import DirectoryBlobStore, digest_of
from weft_core.requests import RETENTION, ROTATION
from weft_core.server import ServiceBinding, create_server
from weft_core.store import Store
from weft_core.telemetry import parse_traceparent

Run = run_pb2.Run
StepRun = run_pb2.StepRun
Attempt = run_pb2.Attempt


@pytest.fixture
def clients(channel: grpc.aio.Channel) -> Clients:
    return Clients.of(channel)


async def states(clients: Clients, run: str) -> dict[str, str]:
    got = await clients.runs.GetRun(run_pb2.GetRunRequest(name=run))
    return {s.step: StepRun.State.Name(s.state) for s in got.steps}


async def test_create_run_fills_defaults_keeps_parameters_inline_and_starts_a_trace(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    pipeline = await create_pipeline(clients, "etl", diamond())
    run = await create_run(clients, "etl", label="nightly")
    assert run.name.startswith("namespaces/default/runs/etl-")
    assert len(run.name.rsplit("/", 1)[1]) == len("etl-") + 5
    assert run.state == Run.STATE_PENDING
    assert run.pipeline == "namespaces/default/pipelines/etl"
    assert run.pipeline_version == pipeline.version
    assert dict(run.parameters) == {"size": "10", "label": "nightly"}
    assert run.parameter_digests["size"] == digest_of(b"10")
    assert run.parameter_digests["label"] == digest_of(b"nightly")
    # One etcd transaction and no file I/O: the executor stores a value's blob before an
    # attempt reads it, so a refused or abandoned CreateRun leaves nothing behind.
    assert files_under(api.blob_dir) == []
    assert parse_traceparent(run.traceparent) is not None
    # The run key, its index and nothing else of the run exist, all from one transaction.
    ns, run_id = "default", run.name.rsplit("/", 1)[1]
    run_kv = await store.get(api.keyspace.run(ns, run_id))
    index_kv = await store.get(api.keyspace.run_index(ns, run_id))
    assert run_kv is not None
    assert index_kv is not None
    assert run_kv.mod_revision == index_kv.mod_revision == int(run.etag)
    stored = Run()
    stored.ParseFromString(run_kv.value)
    assert stored.traceparent == run.traceparent


async def test_a_given_run_id_is_used_once(clients: Clients) -> None:
    await create_pipeline(clients, "etl", simple(1))
    request = run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"), run_id="nightly-1")
    run = await clients.runs.CreateRun(request)
    assert run.name == "namespaces/default/runs/nightly-1"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.runs.CreateRun(request)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.details() == (
        'run_id: run "namespaces/default/runs/nightly-1" already exists; choose another run_id or leave it empty '
        "to have one generated"
    )


async def test_request_id_returns_the_same_run_even_for_concurrent_retries(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    await create_pipeline(clients, "etl", simple(1))
    request = run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"), request_id="retry-me")
    runs = await asyncio.gather(*(clients.runs.CreateRun(request) for _ in range(8)))
    assert len({r.name for r in runs}) == 1
    assert await store.count(api.keyspace.run_index_prefix("default")) == 1


async def test_a_run_uses_the_pipeline_as_it_is_now_whatever_the_api_read_before(clients: Clients) -> None:
    # CreateRun trusts what it read of a pipeline's head only as far as its transaction can
    # check it: each change of the pipeline below must be seen by the very next run.
    first = await create_pipeline(clients, "etl", simple(1))
    assert (await create_run(clients, "etl")).pipeline_version == first.version
    second = await create_pipeline(clients, "etl", simple(2))
    assert (await create_run(clients, "etl")).pipeline_version == second.version
    by_prefix = run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl", pipeline_version=first.version[7:15]))
    assert (await clients.runs.CreateRun(by_prefix)).pipeline_version == first.version
    await clients.pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(name=first.name))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_run(clients, "etl")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.runs.CreateRun(by_prefix)  # the version went with the pipeline
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    again = await create_pipeline(clients, "etl", simple(3))
    assert (await create_run(clients, "etl")).pipeline_version == again.version


async def test_a_request_id_reused_with_another_body_is_refused_and_the_same_body_is_a_retry(
    clients: Clients, api: InProcessApi, store: Store, tmp_path: Path
) -> None:
    await create_pipeline(clients, "etl", diamond())
    await create_pipeline(clients, "other", diamond())

    def request(pipeline: str, label: str) -> run_pb2.CreateRunRequest:
        return run_pb2.CreateRunRequest(
            run=run_pb2.Run(pipeline=pipeline, parameters={"label": label}), request_id="nightly"
        )

    first = await clients.runs.CreateRun(request("etl", "a"))
    assert (await clients.runs.CreateRun(request("etl", "a"))).name == first.name
    for different in (request("other", "a"), request("etl", "b")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.runs.CreateRun(different)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(
            f'request_id: "nightly" was already used for a different request (the one that created {first.name})'
        )
    assert await store.count(api.keyspace.run_index_prefix("default")) == 1
    # A retry answers the first result even once the pipeline has gone, also from an api
    # replica that never read the pipeline.
    await clients.pipelines.DeletePipeline(pipeline_pb2.DeletePipelineRequest(name="namespaces/default/pipelines/etl"))
    assert (await clients.runs.CreateRun(request("etl", "a"))).name == first.name
    async with (
        running_api(api.config.etcd_endpoints, api.keyspace, tmp_path / "replica") as replica,
        grpc.aio.insecure_channel(replica.address) as channel,
    ):
        assert (await Clients.of(channel).runs.CreateRun(request("etl", "a"))).name == first.name


async def test_concurrent_creates_share_transactions_and_each_keeps_its_own_outcome(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    # Creates in flight together may be written in shared transactions (group commit), yet
    # each gets the answer it would get alone: one run per request id, one winner per run id.
    await create_pipeline(clients, "etl", simple(1))

    def request(i: int) -> run_pb2.CreateRunRequest:
        if i % 5 == 0:
            return run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"), request_id="shared-request")
        if i % 5 == 1:
            return run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"), run_id="contested")
        return run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl", labels={"i": str(i)}))

    answers = await asyncio.gather(*(clients.runs.CreateRun(request(i)) for i in range(60)), return_exceptions=True)
    by_request = {a.name for i, a in enumerate(answers) if i % 5 == 0 and isinstance(a, run_pb2.Run)}
    assert len(by_request) == 1, answers
    contested = [a for i, a in enumerate(answers) if i % 5 == 1]
    assert sum(isinstance(a, run_pb2.Run) for a in contested) == 1, contested
    assert all(a.code() == grpc.StatusCode.ALREADY_EXISTS for a in contested if isinstance(a, grpc.aio.AioRpcError)), (
        contested
    )
    plain = [a for i, a in enumerate(answers) if i % 5 > 1]
    assert all(isinstance(a, run_pb2.Run) for a in plain), plain
    assert await store.count(api.keyspace.run_index_prefix("default")) == 1 + 1 + len(plain)
    # Every run is whole: its index key is from the very transaction that wrote it. (Whether
    # two shared a transaction depends on timing; test_group_commit.py shows they do.)
    for run in [*plain, *(a for a in contested if isinstance(a, run_pb2.Run))]:
        assert isinstance(run, run_pb2.Run)
        index = await store.get(api.keyspace.run_index("default", run.name.rsplit("/", 1)[1]))
        assert index is not None
        assert index.mod_revision == int(run.etag)


async def test_a_long_pipeline_name_gives_a_63_character_run_id(clients: Clients) -> None:
    name = "p" * 60 + "-x"
    await create_pipeline(clients, name, simple(1))
    run = await create_run(clients, name)
    run_id = run.name.rsplit("/", 1)[1]
    assert len(run_id) <= 63
    assert run_id.startswith("p" * 57 + "-")


async def test_get_run_synthesizes_every_step_from_executor_records(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    await create_pipeline(clients, "etl", diamond())
    run = await create_run(clients, "etl", label="x")
    assert await states(clients, run.name) == dict.fromkeys(["generate", "left", "right", "join"], "STATE_WAITING")

    executor = ExecutorWrites(store, api.keyspace, run.name)
    await executor.set_run_state(Run.STATE_RUNNING)
    before = time.time_ns()
    await executor.mark_ready("generate")
    assert (await states(clients, run.name))["generate"] == "STATE_READY"
    ready = (await clients.runs.GetRun(run_pb2.GetRunRequest(name=run.name))).steps[0]
    assert before <= ready.ready_time.ToNanoseconds() <= time.time_ns()  # when it became ready
    await executor.step_record("generate", StepRun.STATE_RUNNING, attempts=[Attempt(number=1, executor="e1")])
    await executor.done_record("generate", StepRun.STATE_SUCCEEDED, dna="sha256:" + "d" * 64)
    await executor.mark_ready("left", "right")
    await executor.step_record("left", StepRun.STATE_RUNNING)
    await executor.done_record("right", StepRun.STATE_CACHED)

    got = await clients.runs.GetRun(run_pb2.GetRunRequest(name=run.name))
    assert got.state == Run.STATE_RUNNING
    assert [s.step for s in got.steps] == ["generate", "left", "right", "join"]  # spec order
    assert {s.step: StepRun.State.Name(s.state) for s in got.steps} == {
        "generate": "STATE_SUCCEEDED",  # the done record wins over the step record
        "left": "STATE_RUNNING",
        "right": "STATE_CACHED",
        "join": "STATE_WAITING",
    }
    assert dict(got.step_counts) == {"SUCCEEDED": 1, "RUNNING": 1, "CACHED": 1, "WAITING": 1}
    basic = await clients.runs.GetRun(run_pb2.GetRunRequest(name=run.name, view=run_pb2.RUN_VIEW_BASIC))
    assert not basic.steps


async def test_runs_list_newest_first_in_pages_with_filters(clients: Clients, api: InProcessApi, store: Store) -> None:
    await create_pipeline(clients, "etl", simple(1))
    await create_pipeline(clients, "other", simple(1))
    created = []
    for i in range(7):
        created.append(await create_run(clients, "etl" if i % 2 == 0 else "other"))
    names: list[str] = []
    token = ""
    while True:
        page = await clients.runs.ListRuns(run_pb2.ListRunsRequest(page_size=3, page_token=token))
        assert len(page.runs) <= 3
        names += [r.name for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert names == [r.name for r in reversed(created)]

    etl = await clients.runs.ListRuns(run_pb2.ListRunsRequest(filter="pipeline=etl"))
    assert [r.name for r in etl.runs] == [r.name for r in reversed(created) if r.pipeline.endswith("/etl")]
    await ExecutorWrites(store, api.keyspace, created[1].name).set_run_state(Run.STATE_FAILED)
    await ExecutorWrites(store, api.keyspace, created[2].name).set_run_state(Run.STATE_RUNNING)
    failed_or_running = await clients.runs.ListRuns(run_pb2.ListRunsRequest(filter="state=RUNNING,failed"))
    assert [r.name for r in failed_or_running.runs] == [created[2].name, created[1].name]
    both = await clients.runs.ListRuns(run_pb2.ListRunsRequest(filter="pipeline=other state=FAILED"))
    assert [r.name for r in both.runs] == [created[1].name]


async def test_a_filtered_list_scans_a_bounded_number_of_runs_per_page(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weft_api.runs, "LIST_SCAN_LIMIT", 4)
    await create_pipeline(clients, "etl", simple(1))
    await create_pipeline(clients, "other", simple(1))
    oldest = await create_run(clients, "other")
    for _ in range(9):
        await create_run(clients, "etl")

    found: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        request = run_pb2.ListRunsRequest(filter="pipeline=other", page_size=2, page_token=token)
        page = await clients.runs.ListRuns(request)
        found += [r.name for r in page.runs]
        sizes.append(len(page.runs))
        token = page.next_page_token
        if not token:
            break
    assert found == [oldest.name]
    # Each call looked at no more than 4 runs: the first calls answer empty pages with a token.
    assert sizes == [0, 0, 1]


async def test_cancel_of_a_pending_run_is_immediate_and_of_a_running_run_asks_executors(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    await create_pipeline(clients, "etl", simple(3))
    pending = await create_run(clients, "etl")
    cancelled = await clients.runs.CancelRun(run_pb2.CancelRunRequest(name=pending.name, reason="not today"))
    assert cancelled.state == Run.STATE_CANCELLED
    assert cancelled.message == "not today"
    assert cancelled.HasField("end_time")
    assert set((await states(clients, pending.name)).values()) == {"STATE_CANCELLED"}
    index = await clients.runs.ListRuns(run_pb2.ListRunsRequest(filter="state=CANCELLED"))
    assert [r.name for r in index.runs] == [pending.name]  # the index follows the record

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.runs.CancelRun(run_pb2.CancelRunRequest(name=pending.name))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already finished (CANCELLED)" in (caught.value.details() or "")

    running = await create_run(clients, "etl")
    executor = ExecutorWrites(store, api.keyspace, running.name)
    await executor.set_run_state(Run.STATE_RUNNING)
    await executor.done_record("s0", StepRun.STATE_SUCCEEDED)
    cancelling = await clients.runs.CancelRun(run_pb2.CancelRunRequest(name=running.name))
    assert cancelling.state == Run.STATE_CANCELLING
    again = await clients.runs.CancelRun(run_pb2.CancelRunRequest(name=running.name))
    assert again.state == Run.STATE_CANCELLING
    await executor.set_run_state(Run.STATE_CANCELLED)
    assert await states(clients, running.name) == {
        "s0": "STATE_SUCCEEDED",
        "s1": "STATE_CANCELLED",
        "s2": "STATE_CANCELLED",
    }


async def test_resume_makes_a_linked_run_of_a_finished_one(clients: Clients, api: InProcessApi, store: Store) -> None:
    v1 = await create_pipeline(clients, "etl", diamond("true"))
    source = await create_run(clients, "etl", label="a", size="5")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.runs.ResumeRun(run_pb2.ResumeRunRequest(name=source.name))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is PENDING; only a finished run" in (caught.value.details() or "")

    await ExecutorWrites(store, api.keyspace, source.name).set_run_state(Run.STATE_FAILED, failed_step="left")
    v2 = await create_pipeline(clients, "etl", diamond("false"))
    same = await clients.runs.ResumeRun(run_pb2.ResumeRunRequest(name=source.name, request_id="resume-1"))
    assert same.resumed_from == source.name
    assert same.pipeline_version == v1.version
    assert dict(same.parameters) == {"label": "a", "size": "5"}
    assert same.state == Run.STATE_PENDING
    retried = await clients.runs.ResumeRun(run_pb2.ResumeRunRequest(name=source.name, request_id="resume-1"))
    assert retried.name == same.name
    latest = await clients.runs.ResumeRun(
        run_pb2.ResumeRunRequest(name=source.name, latest_version=True, run_id="resumed")
    )
    assert latest.name == "namespaces/default/runs/resumed"
    assert latest.pipeline_version == v2.version


async def test_explain_step_reads_the_record_explanation(clients: Clients, api: InProcessApi, store: Store) -> None:
    await create_pipeline(clients, "etl", simple(2))
    run = await create_run(clients, "etl")
    unclaimed = await clients.runs.ExplainStep(run_pb2.ExplainStepRequest(run=run.name, step="s1"))
    assert unclaimed.decision == run_pb2.StepExplanation.DECISION_UNSPECIFIED
    assert unclaimed.reason == "not claimed yet"

    explanation = run_pb2.StepExplanation(
        dna="sha256:" + "a" * 64,
        components=[run_pb2.DnaComponent(name="image", value="busybox:1.36")],
        decision=run_pb2.StepExplanation.DECISION_MISS,
        reason="miss: no outcome with this DNA",
    )
    await ExecutorWrites(store, api.keyspace, run.name).step_record(
        "s0", StepRun.STATE_RUNNING, explanation=explanation
    )
    assert await clients.runs.ExplainStep(run_pb2.ExplainStepRequest(run=run.name, step="s0")) == explanation

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.runs.ExplainStep(run_pb2.ExplainStepRequest(run=run.name, step="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == f'run "{run.name}" has no step "nope"; its steps are: s0, s1'


async def read_logs(clients: Clients, run: str, step: str, attempt: int = 0) -> list[tuple[int, bytes]]:
    chunks = clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run, step=step, attempt=attempt))
    return [(c.stream, c.data) async for c in chunks]


async def test_logs_of_a_finished_attempt_come_from_its_blobs(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    await create_pipeline(clients, "etl", simple(1))
    run = await create_run(clients, "etl")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_logs(clients, run.name, "s0")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no attempt yet (it is WAITING)" in (caught.value.details() or "")

    blobs = DirectoryBlobStore(api.blob_dir)
    out1, err1 = await blobs.put(b"first try\n"), await blobs.put(b"boom\n")
    out2 = await blobs.put(b"x" * (1024 * 1024 + 10))
    attempts = [
        Attempt(number=1, state=Attempt.STATE_FAILED, stdout_digest=out1.digest, stderr_digest=err1.digest),
        Attempt(number=2, state=Attempt.STATE_SUCCEEDED, stdout_digest=out2.digest),
    ]
    await ExecutorWrites(store, api.keyspace, run.name).done_record("s0", StepRun.STATE_SUCCEEDED, attempts=attempts)
    first = await read_logs(clients, run.name, "s0", attempt=1)
    assert first == [(run_pb2.LogChunk.STREAM_STDOUT, b"first try\n"), (run_pb2.LogChunk.STREAM_STDERR, b"boom\n")]
    latest = await read_logs(clients, run.name, "s0")
    assert b"".join(data for _, data in latest) == b"x" * (1024 * 1024 + 10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_logs(clients, run.name, "s0", attempt=3)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "(its attempts: 1, 2)" in (caught.value.details() or "")


class LiveLogs(executor_pb2_grpc.ExecutorServiceServicer):
    """The contract of an executor's ReadAttemptLogs, serving fixed output (a real gRPC server)."""

    def __init__(self) -> None:
        self.requests: list[executor_pb2.ReadAttemptLogsRequest] = []

    async def ReadAttemptLogs(
        self, request: executor_pb2.ReadAttemptLogsRequest, context: object
    ) -> AsyncIterator[run_pb2.LogChunk]:
        self.requests.append(request)
        for line in (b"line 1\n", b"line 2\n"):
            yield run_pb2.LogChunk(stream=run_pb2.LogChunk.STREAM_STDOUT, data=line, attempt=request.attempt)


async def test_logs_of_a_running_attempt_are_read_from_its_executor(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    await create_pipeline(clients, "etl", simple(1))
    run = await create_run(clients, "etl")
    executor = ExecutorWrites(store, api.keyspace, run.name)
    running = [Attempt(number=1, state=Attempt.STATE_RUNNING, executor="exec-a")]
    await executor.step_record("s0", StepRun.STATE_RUNNING, attempts=running)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_logs(clients, run.name, "s0")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert 'executor "exec-a" that runs attempt 1 of step "s0" is not registered' in (caught.value.details() or "")

    servicer = LiveLogs()
    name = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name
    server, port = create_server(
        "127.0.0.1:0", [ServiceBinding(name, servicer, executor_pb2_grpc.add_ExecutorServiceServicer_to_server)]
    )
    await server.start()
    record = {"id": "exec-a", "address": f"127.0.0.1:{port}", "runtime": "local", "host": "h", "pid": 1}
    await store.put(api.keyspace.executor("exec-a"), json.dumps(record).encode())
    try:
        logs = await read_logs(clients, run.name, "s0")
        assert [data for _, data in logs] == [b"line 1\n", b"line 2\n"]
        assert servicer.requests[0].run == run.name
        assert servicer.requests[0].attempt == 1
    finally:
        await server.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_logs(clients, run.name, "s0")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f'executor "exec-a" at 127.0.0.1:{port} cannot be reached' in (caught.value.details() or "")


class EndsMidStream(executor_pb2_grpc.ExecutorServiceServicer):
    """An executor whose attempt ends while the api reads its live logs: it sends the first
    line, then (as a real executor does once it forgot the attempt) answers NOT_FOUND."""

    def __init__(self, on_end: Callable[[], Awaitable[None]]) -> None:
        self.on_end = on_end

    async def ReadAttemptLogs(
        self, request: executor_pb2.ReadAttemptLogsRequest, context: Any
    ) -> AsyncIterator[run_pb2.LogChunk]:
        yield run_pb2.LogChunk(stream=run_pb2.LogChunk.STREAM_STDOUT, data=b"line 1\n", attempt=request.attempt)
        await self.on_end()
        await context.abort(grpc.StatusCode.NOT_FOUND, "attempt 1 is no longer running here")


async def test_logs_of_an_attempt_that_ends_while_read_continue_from_its_blobs(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    await create_pipeline(clients, "etl", simple(1))
    run = await create_run(clients, "etl")
    executor = ExecutorWrites(store, api.keyspace, run.name)
    await executor.step_record(
        "s0", StepRun.STATE_RUNNING, attempts=[Attempt(number=1, state=Attempt.STATE_RUNNING, executor="exec-a")]
    )
    blobs = DirectoryBlobStore(api.blob_dir)
    stdout, stderr = await blobs.put(b"line 1\nline 2\n"), await blobs.put(b"oops\n")

    async def end_attempt() -> None:
        ended = Attempt(
            number=1, state=Attempt.STATE_SUCCEEDED, stdout_digest=stdout.digest, stderr_digest=stderr.digest
        )
        await executor.done_record("s0", StepRun.STATE_SUCCEEDED, attempts=[ended])

    name = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name
    binding = ServiceBinding(name, EndsMidStream(end_attempt), executor_pb2_grpc.add_ExecutorServiceServicer_to_server)
    server, port = create_server("127.0.0.1:0", [binding])
    await server.start()
    record = {"id": "exec-a", "address": f"127.0.0.1:{port}", "runtime": "local", "host": "h", "pid": 1}
    await store.put(api.keyspace.executor("exec-a"), json.dumps(record).encode())
    try:
        logs = await read_logs(clients, run.name, "s0")
    finally:
        await server.stop(0)
    # Nothing lost at the handover from the live stream to the stored logs, nothing twice.
    assert logs == [
        (run_pb2.LogChunk.STREAM_STDOUT, b"line 1\n"),
        (run_pb2.LogChunk.STREAM_STDOUT, b"line 2\n"),
        (run_pb2.LogChunk.STREAM_STDERR, b"oops\n"),
    ]


async def test_request_ids_are_kept_a_day_and_a_lost_lease_does_not_block_requests(
    clients: Clients, api: InProcessApi, store: Store
) -> None:
    spec = simple(1)
    request = pipeline_pb2.CreatePipelineRequest(
        pipeline=pipeline_pb2.Pipeline(name="etl", spec=spec), request_id="p-1"
    )
    await clients.pipelines.CreatePipeline(request)
    first = await clients.runs.CreateRun(run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"), request_id="r-1"))
    keys = [api.keyspace.request("default", "p-1"), api.keyspace.request("default", "r-1")]
    records = await store.get_many(keys)
    leases = {records[key].lease for key in keys}
    assert len(leases) == 1, "request ids must share one lease"
    assert 0 not in leases, "request ids must be bound to a lease"
    (lease,) = leases
    # etcd deletes them by itself, after at least a day (not never: they would pile up).
    assert RETENTION <= await store.lease_time_to_live(lease) <= RETENTION + ROTATION

    # etcd forgets the lease (revoked by an operator, or restored from a backup): the
    # remembered ids go with it, and new requests still succeed under a new lease.
    await store.revoke_lease(lease)
    assert await store.get_many(keys) == {}
    second = await clients.runs.CreateRun(run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"), request_id="r-2"))
    again = await clients.runs.CreateRun(run_pb2.CreateRunRequest(run=run_pb2.Run(pipeline="etl"), request_id="r-2"))
    assert again.name == second.name != first.name
    renewed = await store.get(api.keyspace.request("default", "r-2"))
    assert renewed is not None
    assert renewed.lease not in (0, lease)
    spec.steps[0].container.args.append("changed")
    await clients.pipelines.CreatePipeline(
        pipeline_pb2.CreatePipelineRequest(pipeline=pipeline_pb2.Pipeline(name="etl", spec=spec), request_id="p-2")
    )
