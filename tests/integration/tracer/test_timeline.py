"""ListRunEvents and ReplayRunEvents: the forensic timeline of a run, and its playback.

The run has a cache hit, a retry and a failover (its executor SIGKILLed mid-attempt and
another one taking the step over), on real weft-executor processes that export to the
tracer; the timeline must list those events in order, with the executors' names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.integration.executor.support import until
from tests.integration.tracer.conftest import Traced
from tests.integration.tracer.support import kinds
from weft.v1 import pipeline_pb2, run_pb2, trace_pb2

Run = run_pb2.Run
Event = trace_pb2.TimelineEvent


def find_in_order(events: Sequence[Event], wanted: Sequence[tuple[str, str, int]]) -> list[Event]:
    """The events matching `wanted` (kind, step, attempt), which must appear in that order."""
    found: list[Event] = []
    listed = kinds(events)
    position = 0
    for item in wanted:
        while position < len(listed) and listed[position] != item:
            position += 1
        assert position < len(listed), f"{item} missing or out of order in:\n" + "\n".join(map(str, listed))
        found.append(events[position])
        position += 1
    return found


@pytest.mark.parametrize("exported", [True, False], ids=["with-spans", "etcd-only"])
async def test_a_retry_a_cache_hit_and_a_failover_are_listed_in_order_with_their_executors(
    traced: Traced, exported: bool
) -> None:
    """With spans, and with executors that export none: etcd's history alone is enough."""
    h = traced.harness
    env = traced.executor_env if exported else {}
    victim = h.start_process(env=env, lease_ttl=2)
    seed = await h.apply("seed", [h.step("hit")])
    seeded = await h.wait((await h.run(seed.name)).name)
    assert seeded.state == Run.STATE_SUCCEEDED, seeded.message

    mark, started, release = h.tmp / "failed-once", h.tmp / "slow-started", h.tmp / "release"
    flaky = h.step(
        "flaky",
        f'if [ ! -f {mark} ]; then touch {mark}; echo "first try fails" >&2; exit 3; fi; '
        'printf ok > "$WEFT_OUTPUTS/out"',
        retry=pipeline_pb2.RetryPolicy(max_attempts=2, backoff=Duration(nanos=100_000_000)),
    )
    slow = h.step(
        "slow",
        f'touch {started}; while [ ! -f {release} ]; do sleep 0.05; done; printf ok > "$WEFT_OUTPUTS/out"',
        depends_on=["flaky"],
    )
    pipeline = await h.apply("forensic", [h.step("hit"), flaky, slow])
    run = await h.run(pipeline.name)
    await until(started.exists, timeout=30, what="slow runs on the victim")
    victim.kill()
    release.touch()
    survivor = h.start_process(env=env, lease_ttl=2)
    ended = await h.wait(run.name, timeout=60)
    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    # Every span in (the survivor flushes on SIGTERM), so the spans' precision is there.
    await asyncio.to_thread(survivor.stop)
    assert traced.tracer is not None
    assert await asyncio.to_thread(traced.tracer.ingestor.wait_idle, 10)

    events = await traced.client.events(run.name)

    assert [e.sequence for e in events] == list(range(len(events)))

    # hit and flaky run side by side: each step's events are in order, and the steps are
    # in causal order (slow became ready after flaky committed).
    def of(*steps: str) -> list[Event]:
        return [e for e in events if e.step in steps]

    run_events = find_in_order(of(""), [("SUBMITTED", "", 0), ("RUN_STARTED", "", 0), ("RUN_FINISHED", "", 0)])
    hit_events = find_in_order(of("hit"), [("READY", "hit", 0), ("CLAIMED", "hit", 0), ("CACHE_HIT", "hit", 0)])
    hit_events += find_in_order(of("hit"), [("COMMITTED", "hit", 0)])
    flaky_events = find_in_order(
        of("flaky"),
        [
            ("CLAIMED", "flaky", 0),
            ("CACHE_MISS", "flaky", 0),
            ("LAUNCHED", "flaky", 1),
            ("ATTEMPT_FAILED", "flaky", 1),
            ("RETRIED", "flaky", 2),
            ("LAUNCHED", "flaky", 2),
            ("OUTPUTS_UPLOADED", "flaky", 2),
            ("COMMITTED", "flaky", 0),
        ],
    )
    slow_events = find_in_order(
        of("slow"),
        [
            ("READY", "slow", 0),
            ("CLAIMED", "slow", 0),
            ("LAUNCHED", "slow", 1),
            ("CLAIMED", "slow", 0),
            ("LOST", "slow", 1),
            ("LAUNCHED", "slow", 2),
            ("COMMITTED", "slow", 0),
        ],
    )
    assert flaky_events[-1].sequence < slow_events[0].sequence
    assert run_events[0].sequence == 0
    assert run_events[-1].sequence == len(events) - 1
    names = ["hit_ready", "hit_claim", "hit", "hit_done", "f_claim", "f_miss", "f1", "f1_failed", "retried", "f2",
             "f_upload", "f_done", "ready", "claim1", "s1", "claim2", "lost", "s2", "s_done"]  # fmt: skip
    by = dict(zip(names, [*hit_events, *flaky_events, *slow_events], strict=True))
    by["finished"] = run_events[-1]
    assert "hit" in by["hit"].message  # the reason, from the step's explanation
    assert by["f1"].executor == by["f2"].executor == victim.executor_id
    assert "exit" in by["f1_failed"].message or "3" in by["f1_failed"].message
    assert by["claim1"].executor == by["s1"].executor == victim.executor_id
    assert by["claim2"].executor == by["s2"].executor == survivor.executor_id
    assert by["lost"].executor == victim.executor_id
    assert by["s1"].where.startswith(("host ", "pid "))
    assert "pid" in by["s2"].where
    assert by["finished"].message == "SUCCEEDED"
    # The cache decisions say why: the hit names the reused outcome, the miss its reason.
    assert by["f_miss"].message
    assert by["hit_claim"].executor == victim.executor_id
    if exported:
        # Spans made them more precise: the survivor's claim is timed by its weft.step span.
        assert by["claim2"].source == Event.SOURCE_BOTH
        assert by["claim2"].span_id
    else:
        assert {e.source for e in events if e.step} == {Event.SOURCE_ETCD}
    # Pages of 3 give the same timeline.
    assert [e.SerializeToString() for e in await traced.client.events(run.name, page_size=3)] == [
        e.SerializeToString() for e in events
    ]


async def test_replay_keeps_order_and_recorded_timing_and_scales_with_speed(traced: Traced) -> None:
    h = traced.harness
    h.start_process(env=traced.executor_env)
    # Long enough that 10 % of it at speed 10 is more than a loaded machine's scheduling jitter.
    pipeline = await h.apply("paced", [h.step("a", 'sleep 1.5; printf a > "$WEFT_OUTPUTS/out"')])
    run = await h.wait((await h.run(pipeline.name)).name)
    assert run.state == Run.STATE_SUCCEEDED, run.message
    # Every span in, so the timeline does not gain precision between two reads.
    await asyncio.to_thread(h.processes[0].stop)
    assert traced.tracer is not None
    assert await asyncio.to_thread(traced.tracer.ingestor.wait_idle, 10)
    events = await traced.client.events(run.name)
    recorded = [e.time.ToNanoseconds() / 1e9 for e in events]
    offsets = [t - recorded[0] for t in recorded]
    total = offsets[-1]
    assert total > 1.5, offsets

    async def replay(**options: float | bool) -> tuple[list[Event], list[float], list[float]]:
        """The events, their arrival times since the request, and since the first event."""
        received: list[Event] = []
        arrivals: list[float] = []
        request = trace_pb2.ReplayRunEventsRequest(run=run.name, **options)  # type: ignore[arg-type]
        started = time.monotonic()
        async for event in traced.client.stub.ReplayRunEvents(request):
            arrivals.append(time.monotonic() - started)
            received.append(event)
        return received, arrivals, [a - arrivals[0] for a in arrivals]

    # Never early: the replay's clock starts when the request arrives, so no event can be
    # seen before its offset from the request. Never late by more than 10 % of the run's
    # length (plus a little for delivery) from the first event, whose own delivery a loaded
    # machine may delay.
    played, since_request, since_first = await replay(speed=1)
    assert [e.SerializeToString() for e in played] == [e.SerializeToString() for e in events]
    for offset, early, late, event in zip(offsets, since_request, since_first, played, strict=True):
        assert offset - 0.005 <= early, (event.kind, offset, early)
        assert late <= offset + 0.1 * total + 0.02, (event.kind, offset, late)

    fast, since_request, since_first = await replay(speed=10)
    assert [e.sequence for e in fast] == [e.sequence for e in events]
    for offset, early, late in zip(offsets, since_request, since_first, strict=True):
        assert offset / 10 - 0.005 <= early, (offset, early)
        assert late <= offset / 10 + 0.1 * total / 10 + 0.02, (offset, late)

    burst, _, since_first = await replay(as_fast_as_possible=True)
    assert len(burst) == len(events)
    assert since_first[-1] < min(0.2, total / 2)


async def test_bad_pages_speeds_and_filters_are_refused_with_the_field(traced: Traced) -> None:
    h = traced.harness
    h.start_process(env=traced.executor_env)
    pipeline = await h.apply("small", [h.step("only")])
    run = await h.wait((await h.run(pipeline.name)).name)
    stub = traced.client.stub
    cases = [
        (stub.ListRunEvents(trace_pb2.ListRunEventsRequest(run=run.name, page_token="garbage")), "page_token"),
        (stub.ListRunEvents(trace_pb2.ListRunEventsRequest(run=run.name, page_size=-1)), "page_size"),
        (stub.ListRunEvents(trace_pb2.ListRunEventsRequest(run=run.name, filter="nope")), "filter"),
        (stub.ListRunEvents(trace_pb2.ListRunEventsRequest(run="nope/x")), "run"),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert (refused.value.details() or "").startswith(f"{field}:"), refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as slow:
        async for _ in stub.ReplayRunEvents(trace_pb2.ReplayRunEventsRequest(run=run.name, speed=-2)):
            pass
    assert slow.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    filtered = await stub.ListRunEvents(trace_pb2.ListRunEventsRequest(run=run.name, filter="only"))
    assert {e.step for e in filtered.events} == {"", "only"}
