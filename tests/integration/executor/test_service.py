"""The executor's presence: its registration record, ExecutorService (live logs), health."""

from __future__ import annotations

import json
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.executor.support import Harness, states
from tests.support import assert_eventually_async
from weft.v1 import executor_pb2, executor_pb2_grpc, run_pb2

Run = run_pb2.Run


async def test_registration_record_is_bound_to_the_lease(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor(executor_id="node-a")

    kv = await h.store.get(h.keyspace.executor("node-a"))

    assert kv is not None
    record = json.loads(kv.value)
    assert set(record) == {"id", "address", "runtime", "host", "pid", "start_time"}
    assert record["id"] == "node-a"
    assert record["address"] == executor.address
    assert record["runtime"] == "local"
    assert record["pid"] == os.getpid()
    assert record["start_time"].endswith("Z")
    assert kv.lease == executor.registration.lease
    await executor.stop()
    h.executors.remove(executor)
    assert await h.store.get(h.keyspace.executor("node-a")) is None


async def test_health_and_reflection_are_served(harness: Harness) -> None:
    executor = await harness.start_executor()
    async with grpc.aio.insecure_channel(executor.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="weft.v1.ExecutorService"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert "weft.v1.ExecutorService" in names


async def test_live_logs_follow_a_running_attempt_until_it_ends(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor()
    release = h.tmp / "release"
    script = (
        f'echo "tick 1"; echo "err 1" >&2; echo "tick 2"; while [ ! -e {release} ]; do sleep 0.05; done; '
        'echo "tick 3"; echo done > "$WEFT_OUTPUTS/out"'
    )
    pipeline = await h.apply("chatty", [h.step("chatty", script)])
    run = await h.run(pipeline.name)

    async def running() -> bool:
        return states(await h.get(run.name)).get("chatty") == "RUNNING"

    await assert_eventually_async(running, timeout=20, what="the step runs")
    stream = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run.name, step="chatty", follow=True))
    seen: dict[int, bytes] = {}
    async for chunk in stream:
        assert chunk.attempt == 1
        seen[chunk.stream] = seen.get(chunk.stream, b"") + chunk.data
        if b"tick 2" in seen.get(run_pb2.LogChunk.STREAM_STDOUT, b"") and not release.exists():
            release.touch()  # only now may the step go on: what came so far was live
    assert seen[run_pb2.LogChunk.STREAM_STDOUT] == b"tick 1\ntick 2\ntick 3\n"
    assert seen[run_pb2.LogChunk.STREAM_STDERR] == b"err 1\n"
    finished = await h.wait(run.name)
    assert finished.state == Run.STATE_SUCCEEDED

    # Once finished, the same logs come from the artifact store.
    stored = h.clients.runs.ReadLogs(run_pb2.ReadLogsRequest(run=run.name, step="chatty"))
    assert b"".join([c.data async for c in stored if c.stream == run_pb2.LogChunk.STREAM_STDOUT]) == (
        b"tick 1\ntick 2\ntick 3\n"
    )
    # The executor itself no longer knows the attempt.
    async with grpc.aio.insecure_channel(executor.address) as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)  # type: ignore[no-untyped-call]
        request = executor_pb2.ReadAttemptLogsRequest(run=run.name, step="chatty", attempt=1)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.ReadAttemptLogs(request):
                pass
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        details = raised.value.details() or ""
        assert "attempt 1 of step chatty" in details, details
        assert "is not running on executor exec-0" in details, details
        # A negative attempt number is refused as the api's ReadLogs refuses it, naming the field.
        request.attempt = -1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.ReadAttemptLogs(request):
                pass
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith("attempt: "), raised.value.details()
