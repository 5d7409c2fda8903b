"""WatchRun against a real etcd: snapshot then live events in commit order, the end at a
terminal state, resumption by revision across an api crash, and compaction."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import weft
from tests.integration.api.support import Clients, ExecutorWrites, create_pipeline, create_run, simple, step
from tests.integration.conftest import ApiProcess, InProcessApi, running_api
from tests.support import assert_eventually_async
from weft import RetrySettings
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft.v1.pipeline_pb2 import PipelineSpec
from weft_core.keyspace import Keyspace
from weft_core.store import Store, op_put

Run = run_pb2.Run
StepRun = run_pb2.StepRun


async def next_event(stream: Any, timeout: float = 10.0) -> run_pb2.RunEvent | None:
    """The next event, or None when the stream ended."""
    event = await asyncio.wait_for(stream.read(), timeout)
    return None if event is grpc.aio.EOF else event  # type: ignore[attr-defined]  # missing from grpc-stubs


async def drain(stream: Any) -> list[run_pb2.RunEvent]:
    events = []
    while (event := await next_event(stream)) is not None:
        events.append(event)
    return events


def describe(event: run_pb2.RunEvent) -> str:
    if event.HasField("run"):
        return f"run:{Run.State.Name(event.run.state)}"
    return f"{event.step.step}:{StepRun.State.Name(event.step.state)}"


async def test_a_watch_sends_a_snapshot_then_changes_and_ends_at_a_terminal_state(
    api: InProcessApi, channel: grpc.aio.Channel, store: Store
) -> None:
    clients = Clients.of(channel)
    await create_pipeline(clients, "etl", simple(2))
    run = await create_run(clients, "etl")
    executor = ExecutorWrites(store, api.keyspace, run.name)
    await executor.set_run_state(Run.STATE_RUNNING)
    await executor.mark_ready("s0")

    stream = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name))
    snapshot = [await next_event(stream) for _ in range(3)]
    assert [describe(e) for e in snapshot if e] == ["run:STATE_RUNNING", "s0:STATE_READY", "s1:STATE_WAITING"]
    assert all(e is not None and e.snapshot for e in snapshot)
    assert len({e.revision for e in snapshot if e}) == 1

    revisions = [
        await executor.step_record("s0", StepRun.STATE_RUNNING),
        await executor.done_record("s0", StepRun.STATE_SUCCEEDED),
        await executor.step_record("s0", StepRun.STATE_RUNNING),  # late: must not undo the done record
        await executor.done_record("s1", StepRun.STATE_SUCCEEDED),
        await executor.set_run_state(Run.STATE_SUCCEEDED),
    ]
    await executor.step_record("s1", StepRun.STATE_RUNNING)  # after the end: never sent
    live = await drain(stream)
    assert [describe(e) for e in live] == [
        "s0:STATE_RUNNING",
        "s0:STATE_SUCCEEDED",
        "s1:STATE_SUCCEEDED",
        "run:STATE_SUCCEEDED",
    ]
    assert [e.revision for e in live] == [revisions[0], revisions[1], revisions[3], revisions[4]]
    assert not any(e.snapshot for e in live)

    # A watch of a finished run is its snapshot alone; resuming after its end sends nothing.
    again = await drain(clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name)))
    assert [describe(e) for e in again] == ["run:STATE_SUCCEEDED", "s0:STATE_SUCCEEDED", "s1:STATE_SUCCEEDED"]
    after_end = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, start_revision=revisions[4] + 1))
    assert await drain(after_end) == []


async def test_a_step_becoming_ready_is_a_ready_event_of_the_full_view_only(
    api: InProcessApi, channel: grpc.aio.Channel, store: Store
) -> None:
    """Ready marks live with the scheduler's keys, outside the run's prefix: WatchRun
    watches them too, and never lets a late mark undo a later state."""
    clients = Clients.of(channel)
    await create_pipeline(clients, "etl", simple(2))
    run = await create_run(clients, "etl")
    executor = ExecutorWrites(store, api.keyspace, run.name)
    await executor.set_run_state(Run.STATE_RUNNING)
    stream = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name))
    basic = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, view=run_pb2.RUN_VIEW_BASIC))
    snapshot = [await next_event(stream) for _ in range(3)]
    assert [describe(e) for e in snapshot if e] == ["run:STATE_RUNNING", "s0:STATE_WAITING", "s1:STATE_WAITING"]
    assert describe(await next_event(basic) or run_pb2.RunEvent()) == "run:STATE_RUNNING"

    await executor.mark_ready("s0")
    ready = await next_event(stream)
    assert ready is not None
    assert describe(ready) == "s0:STATE_READY"
    assert ready.step.ready_time.seconds > 0
    assert not ready.snapshot
    await executor.step_record("s0", StepRun.STATE_RUNNING)
    assert describe(await next_event(stream) or run_pb2.RunEvent()) == "s0:STATE_RUNNING"
    # A mark made again after a state past READY (a re-derivation after a release) is
    # not sent: it would undo RUNNING in the client's view.
    await store.delete(api.keyspace.ready(executor.ns, executor.run, "s0"))
    await executor.mark_ready("s0")
    await executor.done_record("s0", StepRun.STATE_SUCCEEDED)
    assert describe(await next_event(stream) or run_pb2.RunEvent()) == "s0:STATE_SUCCEEDED"
    await executor.mark_ready("s1")
    assert describe(await next_event(stream) or run_pb2.RunEvent()) == "s1:STATE_READY"
    await executor.done_record("s1", StepRun.STATE_SUCCEEDED)
    await executor.set_run_state(Run.STATE_SUCCEEDED)
    assert [describe(e) for e in await drain(stream)] == ["s1:STATE_SUCCEEDED", "run:STATE_SUCCEEDED"]
    assert [describe(e) for e in await drain(basic)] == ["run:STATE_SUCCEEDED"]


async def test_a_watch_resumes_after_the_api_is_killed_with_no_gap_and_no_duplicate(
    api_process: ApiProcess, store: Store
) -> None:
    keyspace = api_process.keyspace
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        clients = Clients.of(channel)
        await create_pipeline(clients, "etl", simple(6))
        run = await create_run(clients, "etl")
        executor = ExecutorWrites(store, keyspace, run.name)
        stream = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name))
        snapshot = [await next_event(stream) for _ in range(7)]
        assert all(e is not None and e.snapshot for e in snapshot)

        written = [await executor.set_run_state(Run.STATE_RUNNING)]
        for name in ("s0", "s1"):
            written.append(await executor.step_record(name, StepRun.STATE_RUNNING))
            written.append(await executor.done_record(name, StepRun.STATE_SUCCEEDED))
        received = [await next_event(stream) for _ in written]

        api_process.kill()
        for name in ("s2", "s3"):  # committed while no api runs
            written.append(await executor.step_record(name, StepRun.STATE_RUNNING))
            written.append(await executor.done_record(name, StepRun.STATE_SUCCEEDED))
        with pytest.raises(grpc.aio.AioRpcError) as broken:
            await next_event(stream)
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE

    api_process.start()  # same port: the client dials the same address
    async with grpc.aio.insecure_channel(api_process.address) as channel:
        clients = Clients.of(channel)
        last = received[-1]
        assert last is not None
        resumed = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, start_revision=last.revision + 1))
        for name in ("s4", "s5"):
            written.append(await executor.step_record(name, StepRun.STATE_RUNNING))
            written.append(await executor.done_record(name, StepRun.STATE_SUCCEEDED))
        written.append(await executor.set_run_state(Run.STATE_SUCCEEDED))
        received += await drain(resumed)

    assert [e.revision for e in received if e] == written
    assert describe(received[-1]) == "run:STATE_SUCCEEDED"  # type: ignore[arg-type]
    assert [describe(e) for e in received if e and e.HasField("step") and e.step.state == StepRun.STATE_SUCCEEDED] == [
        f"s{i}:STATE_SUCCEEDED" for i in range(6)
    ]


async def test_a_compacted_start_revision_is_out_of_range_with_the_way_out(
    private_etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path
) -> None:
    store = Store(private_etcd.endpoint)
    try:
        async with (
            running_api(private_etcd.endpoint, keyspace, tmp_path / "blobs") as api,
            grpc.aio.insecure_channel(api.address) as channel,
        ):
            clients = Clients.of(channel)
            await create_pipeline(clients, "etl", simple(1))
            run = await create_run(clients, "etl")
            executor = ExecutorWrites(store, keyspace, run.name)
            first = await executor.step_record("s0", StepRun.STATE_RUNNING)
            latest = await executor.done_record("s0", StepRun.STATE_SUCCEEDED)
            compaction = await asyncio.create_subprocess_exec(
                "etcdctl", "--endpoints", private_etcd.endpoint, "compaction", str(latest),
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            assert await compaction.wait() == 0
            stream = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, start_revision=first))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await drain(stream)
            assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "was compacted by etcd" in (caught.value.details() or "")
            assert "restart the watch with start_revision 0" in (caught.value.details() or "")
            # Starting over from 0 works.
            fresh = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name))
            assert describe(await next_event(fresh)) == "run:STATE_PENDING"  # type: ignore[arg-type]
            fresh.cancel()
    finally:
        await store.close()


async def test_changes_committed_together_mark_only_the_last_event_of_their_revision(
    api: InProcessApi, channel: grpc.aio.Channel, store: Store
) -> None:
    clients = Clients.of(channel)
    await create_pipeline(clients, "etl", simple(3))
    run = await create_run(clients, "etl")
    ns, run_id = run.name.split("/")[1], run.name.split("/")[3]
    stream = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name))
    snapshot = [await next_event(stream) for _ in range(4)]
    assert [e.last_in_revision for e in snapshot if e] == [False, False, False, True]

    # One transaction finishing two steps (as an executor's SKIPPED batch does): one revision.
    records = [
        op_put(api.keyspace.done(ns, run_id, name), StepRun(step=name, state=StepRun.STATE_SKIPPED).SerializeToString())
        for name in ("s1", "s2")
    ]
    together = (await store.txn([], records)).revision
    alone = await ExecutorWrites(store, api.keyspace, run.name).done_record("s0", StepRun.STATE_FAILED)
    live = [await next_event(stream) for _ in range(3)]
    assert [(e.revision, e.step.step, e.last_in_revision) for e in live if e] == [
        (together, "s1", False),
        (together, "s2", True),
        (alone, "s0", True),
    ]
    stream.cancel()


async def test_a_start_revision_beyond_the_store_is_out_of_range_with_the_current_revision(
    api: InProcessApi, channel: grpc.aio.Channel, store: Store
) -> None:
    clients = Clients.of(channel)
    await create_pipeline(clients, "etl", simple(1))
    run = await create_run(clients, "etl")
    current = await store.status()
    stream = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, start_revision=current + 1000))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain(stream)  # at once: it must not wait silently until a deadline
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    details = caught.value.details() or ""
    assert details.startswith(f"start_revision: {current + 1000} is beyond the store's current revision "), details
    assert f"revision {current}" in details, details
    # The next revision is a valid place to resume: nothing happened since the last event.
    waiting = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, start_revision=current + 1))
    written = await ExecutorWrites(store, api.keyspace, run.name).step_record("s0", StepRun.STATE_RUNNING)
    event = await next_event(waiting)
    assert event is not None
    assert event.revision == written
    waiting.cancel()


async def test_a_basic_watch_sends_only_the_run_records_changes(
    api: InProcessApi, channel: grpc.aio.Channel, store: Store
) -> None:
    clients = Clients.of(channel)
    await create_pipeline(clients, "etl", simple(3))
    run = await create_run(clients, "etl")
    executor = ExecutorWrites(store, api.keyspace, run.name)
    await executor.mark_ready("s0")
    stream = clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, view=run_pb2.RUN_VIEW_BASIC))
    snapshot = await next_event(stream)
    assert snapshot is not None
    assert (describe(snapshot), snapshot.snapshot, snapshot.last_in_revision) == ("run:STATE_PENDING", True, True)
    running = await executor.set_run_state(Run.STATE_RUNNING)
    await executor.step_record("s0", StepRun.STATE_RUNNING)
    await executor.done_record("s0", StepRun.STATE_SUCCEEDED)
    ended = await executor.set_run_state(Run.STATE_SUCCEEDED)
    live = await drain(stream)
    assert [(describe(e), e.revision, e.last_in_revision) for e in live] == [
        ("run:STATE_RUNNING", running, True),
        ("run:STATE_SUCCEEDED", ended, True),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain(clients.runs.WatchRun(run_pb2.WatchRunRequest(name=run.name, view=7)))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("view: 7 is not a run view")


class CountingChannel:
    """A real channel that counts the bytes of every response by method, as received."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self.received: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def _counting(self, method: str, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def deserialize(data: bytes) -> Any:
            self.received[method.rsplit("/", 1)[1]] += len(data)
            return deserializer(data)

        return deserialize

    def unary_unary(self, method: str, **kwargs: Any) -> Any:
        kwargs["response_deserializer"] = self._counting(method, kwargs["response_deserializer"])
        return self._channel.unary_unary(method, **kwargs)

    def unary_stream(self, method: str, **kwargs: Any) -> Any:
        kwargs["response_deserializer"] = self._counting(method, kwargs["response_deserializer"])
        return self._channel.unary_stream(method, **kwargs)


async def test_waiting_for_a_run_ships_its_steps_once(
    api: InProcessApi, channel: grpc.aio.Channel, store: Store
) -> None:
    steps = 200
    clients = Clients.of(channel)
    await create_pipeline(clients, "wide", PipelineSpec(steps=[step(f"s{i}") for i in range(steps)]))
    created = await create_run(clients, "wide")
    executor = ExecutorWrites(store, api.keyspace, created.name)
    await executor.set_run_state(Run.STATE_RUNNING)
    for i in range(steps):
        await executor.done_record(f"s{i}", StepRun.STATE_SUCCEEDED, message="x" * 200)

    counting = CountingChannel(channel)
    client = weft.AsyncClient(counting, target=api.address, namespace="default", retry=RetrySettings())  # type: ignore[arg-type]
    run = await client.get_run(created.name, full=False)
    waiting = asyncio.create_task(run.wait(timeout=20))

    async def watching() -> bool:
        return counting.received["WatchRun"] > 0

    await assert_eventually_async(watching, what="wait() is watching the run")
    await executor.set_run_state(Run.STATE_SUCCEEDED)
    finished = await waiting
    assert finished.state == "SUCCEEDED"
    assert len(finished.steps) == steps  # wait() returns the run with every step run...
    one_full_run = len((await clients.runs.GetRun(run_pb2.GetRunRequest(name=created.name))).SerializeToString())
    # ...read once: the watch itself carried only the run record, not a snapshot of the steps.
    assert counting.received["GetRun"] < 1.2 * one_full_run, counting.received
    assert counting.received["WatchRun"] < one_full_run / 20, counting.received
