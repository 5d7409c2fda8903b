"""GetRunTrace: one connected tree per run, from CreateRun down to the step's own spans.

Real processes throughout: weft-api and weft-executor export over OTLP to weft-tracer,
and the step's Python code exports its own span with the OpenTelemetry SDK, continuing
the TRACEPARENT the executor gave it.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from tests.integration.executor.support import until
from tests.integration.tracer.conftest import Traced, traced_stack
from tests.integration.tracer.support import TracerProcess, ancestry, assert_connected, by_name, user_step
from tests.support import assert_eventually_async
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2, trace_pb2
from weft_core.keyspace import Keyspace
from weft_core.telemetry import parse_traceparent

Run = run_pb2.Run


async def test_a_steps_own_span_hangs_under_the_runs_create_run_span(traced: Traced) -> None:
    h = traced.harness
    h.start_process(env=traced.executor_env)
    pipeline = await h.apply("traced", [user_step(h, "work", traced.tracer_address)])
    run = await h.wait((await h.run(pipeline.name)).name)
    assert run.state == Run.STATE_SUCCEEDED, run.message

    async def complete() -> trace_pb2.RunTrace:
        trace = await traced.client.trace(run.name)
        wanted = {"weft.CreateRun", "weft.step", "weft.attempt", "weft.commit", "user.work", "user.inner"}
        assert wanted <= set(by_name(trace)), sorted(by_name(trace))
        return trace

    trace = await assert_eventually_async(complete, timeout=15, what="every span of the run is stored")

    parsed = parse_traceparent(run.traceparent)
    assert parsed is not None
    assert trace.trace_id == f"{parsed[0]:032x}"
    assert_connected(trace)
    names = by_name(trace)
    assert ancestry(trace, names["user.inner"][0]) == [
        "user.inner",
        "user.work",
        "weft.attempt",
        "weft.step",
        "weft.CreateRun",
    ]
    work = names["user.work"][0]
    assert work.service == "user-code"
    assert work.attributes["rows"] == "3"
    assert [e.name for e in work.events] == ["halfway"]
    assert names["weft.attempt"][0].attributes["weft.step"] == "work"
    assert names["weft.CreateRun"][0].service == "weft-api"
    # Depth first: every parent is listed before its children.
    position = {s.span_id: i for i, s in enumerate(trace.spans)}
    for span in trace.spans:
        if span.parent_span_id:
            assert position[span.parent_span_id] < position[span.span_id], span.name
            assert span.depth == trace.spans[position[span.parent_span_id]].depth + 1
    assert not any(s.placeholder for s in trace.spans)


async def test_a_step_configured_by_its_environment_alone_exports_into_the_runs_trace(traced: Traced) -> None:
    """The step names no endpoint: the local runtime passes the executor's OTLP variables
    (and TRACEPARENT), so an SDK configured by the environment joins the run's trace.
    weft's own spans say who worked on the step, where, and what the cache decided."""
    h = traced.harness
    executor = h.start_process(env=traced.executor_env)
    pipeline = await h.apply("from-env", [user_step(h, "work", "")])
    first = await h.wait((await h.run(pipeline.name)).name)
    assert first.state == Run.STATE_SUCCEEDED, first.message
    second = await h.wait((await h.run(pipeline.name)).name)
    assert second.steps[0].state == run_pb2.StepRun.STATE_CACHED, second.steps[0].message

    async def complete(run: str, wanted: set[str]) -> trace_pb2.RunTrace:
        trace = await traced.client.trace(run)
        assert wanted <= set(by_name(trace)), sorted(by_name(trace))
        return trace

    trace = await assert_eventually_async(
        lambda: complete(first.name, {"user.inner", "weft.attempt", "weft.cache_lookup"}),
        timeout=15,
        what="the step's own spans, exported to the endpoint its environment named",
    )
    assert_connected(trace)
    names = by_name(trace)
    assert ancestry(trace, names["user.work"][0])[:3] == ["user.work", "weft.attempt", "weft.step"]
    step, attempt = names["weft.step"][0].attributes, names["weft.attempt"][0].attributes
    assert step["weft.executor"] == attempt["weft.executor"] == executor.executor_id
    assert attempt["host.name"] == socket.gethostname()
    assert step["weft.cache"] == names["weft.cache_lookup"][0].attributes["weft.cache"] == "miss"

    hit = await assert_eventually_async(
        lambda: complete(second.name, {"weft.step", "weft.commit"}), timeout=15, what="the cache hit's spans"
    )
    assert by_name(hit)["weft.step"][0].attributes["weft.cache"] == "hit"
    assert "weft.attempt" not in by_name(hit)  # nothing was launched


async def test_after_an_executor_sigkill_the_tree_stays_connected(traced: Traced) -> None:
    h = traced.harness
    release = h.tmp / "release"
    victim = h.start_process(env=traced.executor_env, lease_ttl=2)
    step = user_step(h, "slow", traced.tracer_address, wait_for=release)
    pipeline = await h.apply("failover", [step])
    run = await h.run(pipeline.name)
    await until(lambda: (h.tmp / "started-slow-1").exists(), timeout=30, what="attempt 1 runs on the victim")
    victim.kill()
    release.touch()
    survivor = h.start_process(env=traced.executor_env, lease_ttl=2)
    ended = await h.wait(run.name, timeout=60)
    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    await asyncio.to_thread(survivor.stop)  # flushes its exporter: its weft.step span too
    attempts = ended.steps[0].attempts
    assert [a.state for a in attempts] == [run_pb2.Attempt.STATE_LOST, run_pb2.Attempt.STATE_SUCCEEDED]

    async def complete() -> trace_pb2.RunTrace:
        trace = await traced.client.trace(run.name)
        attempt_two = [s for s in by_name(trace).get("weft.attempt", []) if s.attributes["weft.attempt"] == "2"]
        assert attempt_two, sorted(by_name(trace))
        assert "user.inner" in by_name(trace), sorted(by_name(trace))
        return trace

    trace = await assert_eventually_async(complete, timeout=15, what="the second executor's spans are stored")
    assert_connected(trace)
    names = by_name(trace)
    # The user's span of the attempt that ran to the end hangs under that attempt.
    inner = names["user.inner"]
    assert len(inner) == 1
    assert ancestry(trace, inner[0])[:4] == ["user.inner", "user.work", "weft.attempt", "weft.step"]
    # Whatever the killed executor exported before it died is in the tree too; a parent
    # it never sent is stood in for, marked, under the run's root.
    for span in trace.spans:
        if span.placeholder:
            assert span.name == "(not received)"
            assert span.parent_span_id == f"{parse_traceparent(run.traceparent)[1]:016x}"  # type: ignore[index]


async def test_bad_run_names_and_unknown_runs_are_refused(traced: Traced) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await traced.client.trace("runs/x")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run:" in (bad.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await traced.client.trace("namespaces/default/runs/nope")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_tracer_restarted_mid_run_keeps_what_it_stored_and_gets_what_exporters_held(
    etcd: EtcdProcess, keyspace: Keyspace, tmp_path: Path
) -> None:
    process = TracerProcess(tmp_path, etcd.endpoint, keyspace.root)
    process.start()
    try:
        async with traced_stack(etcd, keyspace, tmp_path, None, process.address) as traced:
            h = traced.harness
            release = h.tmp / "release"
            h.start_process(env=traced.executor_env)
            first = user_step(h, "first", traced.tracer_address)
            second = user_step(h, "second", traced.tracer_address, wait_for=release, depends_on=["first"])
            pipeline = await h.apply("restart", [first, second])
            run = await h.run(pipeline.name)
            await until(lambda: (h.tmp / "started-second-1").exists(), timeout=30, what="the second step runs")

            async def first_stored() -> trace_pb2.RunTrace:
                trace = await traced.client.trace(run.name)
                users = [s for s in by_name(trace).get("user.work", []) if ancestry(trace, s)[-1] == "weft.CreateRun"]
                assert len(users) == 1, sorted(by_name(trace))
                return trace

            before = await assert_eventually_async(first_stored, timeout=15, what="the first step's spans")
            await asyncio.to_thread(process.stop)  # SIGTERM: drains its queue, then exits
            release.touch()  # the second step ends, and its spans are exported, while the tracer is away
            await asyncio.sleep(1.0)
            await asyncio.to_thread(process.start)
            ended = await h.wait(run.name, timeout=60)
            assert ended.state == Run.STATE_SUCCEEDED, ended.message

            async def complete() -> trace_pb2.RunTrace:
                trace = await traced.client.trace(run.name)
                assert len(by_name(trace).get("user.work", [])) == 2, sorted(by_name(trace))
                assert len(by_name(trace).get("weft.commit", [])) == 2, sorted(by_name(trace))
                assert not any(s.placeholder for s in trace.spans), "a parent span never arrived"
                return trace

            after = await assert_eventually_async(complete, timeout=30, what="spans held by exporters arrive")
            assert_connected(after)
            assert {s.span_id for s in before.spans} <= {s.span_id for s in after.spans}, "a stored span was lost"
            steps = {s.attributes.get("weft.step") for s in by_name(after)["weft.attempt"]}
            assert steps == {"first", "second"}
    finally:
        await asyncio.to_thread(process.stop)
