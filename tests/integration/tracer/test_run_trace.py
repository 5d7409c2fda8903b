"""GetRunTrace: one connected tree per run, from CreateRun down to the step's own spans.

Real processes throughout: weft-api and weft-executor export over OTLP to weft-tracer,
and the step's Python code exports its own span with the OpenTelemetry SDK, continuing
the TRACEPARENT the executor gave it.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.executor.support import until
from tests.integration.tracer.conftest import Traced
from tests.integration.tracer.support import ancestry, assert_connected, by_name, user_step
from tests.support import assert_eventually_async
from weft.v1 import run_pb2, trace_pb2
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
    h.start_process(env=traced.executor_env, lease_ttl=2)
    ended = await h.wait(run.name, timeout=60)
    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    attempts = ended.steps[0].attempts
    assert [a.state for a in attempts] == [run_pb2.Attempt.STATE_LOST, run_pb2.Attempt.STATE_SUCCEEDED]

    async def complete() -> trace_pb2.RunTrace:
        trace = await traced.client.trace(run.name)
        attempt_two = [s for s in by_name(trace).get("weft.attempt", []) if s.attributes["weft.attempt"] == "2"]
        assert attempt_two and "user.inner" in by_name(trace), sorted(by_name(trace))
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
