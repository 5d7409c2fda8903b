"""The executor's hot path keeps its promises: every launch leaves a trace, re-derived
readiness never walks finished steps again, a release is seen whole, a step whose input
is gone fails instead of hanging, a shared downstream is skipped once, losers keep each
other's records, and no record grows with the number of a step's inputs."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest

from tests.integration.executor.support import Harness, state_name, states, steps_by_name, until
from weft.v1 import artifact_pb2, pipeline_pb2, run_pb2
from weft_core.dna import INLINE_RECORD_BYTES, content_digest, step_dna
from weft_core.spec import MAX_STEPS, Dag, parse_run_name
from weft_core.store import TxnResult, op_delete, op_put, txn_request
from weft_executor.progress import RunProgress, RunRef
from weft_executor.runtime import AttemptSpec, LaunchedAttempt

Run = run_pb2.Run
StepRun = run_pb2.StepRun
Attempt = run_pb2.Attempt


async def iter_put(data: bytes) -> AsyncIterator[artifact_pb2.PutBlobRequest]:
    yield artifact_pb2.PutBlobRequest(header=artifact_pb2.BlobHeader(digest=content_digest(data), size_bytes=len(data)))
    yield artifact_pb2.PutBlobRequest(data=data)


async def finished(h: Harness, name: str, timeout: float) -> Run:
    """The run once terminal, without its steps (10,000 steps would not fit one response)."""
    request = run_pb2.GetRunRequest(name=name, view=run_pb2.RUN_VIEW_BASIC)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run: Run = await h.clients.runs.GetRun(request)
        if run.state in (Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_CANCELLED):
            return run
        assert asyncio.get_running_loop().time() < deadline, f"run {name} is {state_name(run.state, Run.State)}"
        await asyncio.sleep(0.2)


def run_ref(run: Run, pipeline: pipeline_pb2.Pipeline) -> RunRef:
    ns, run_id = parse_run_name(run.name)
    spec = pipeline.spec
    return RunRef(ns, run_id, spec, Dag.from_spec(spec), {step.name: step for step in spec.steps})


async def set_running(h: Harness, run: Run) -> None:
    """Makes a run RUNNING as an executor would, without one (the test plays the executors)."""
    ns, run_id = parse_run_name(run.name)
    run.state = Run.STATE_RUNNING
    data = run.SerializeToString()
    await h.store.put(h.keyspace.run(ns, run_id), data)
    await h.store.put(h.keyspace.run_index(ns, run_id), data)


async def test_a_process_launched_as_the_lease_is_lost_never_runs_unrecorded(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #15's "launch that leaves no trace", with one write per launch: the lease goes
    away the moment the process exists, so its record (with its pid) cannot land. The
    process is held at its gate until that record lands, so it never runs its command;
    the step is taken over and its command runs once, recorded."""
    h = harness
    executor = await h.start_executor(lease_ttl=2)
    real_launch = executor.runtime.launch
    lost_at_launch: list[int] = []

    async def launch_then_lose_the_lease(spec: AttemptSpec) -> LaunchedAttempt:
        launched = await real_launch(spec)
        if not lost_at_launch:
            lost_at_launch.append(spec.attempt)
            await h.store.revoke_lease(executor.registration.lease)
        return launched

    monkeypatch.setattr(executor.runtime, "launch", launch_then_lose_the_lease)
    ran = h.tmp / "ran.txt"
    pipeline = await h.apply(
        "trace", [h.step("only", f'echo "$WEFT_ATTEMPT" >> {ran}; printf done > "$WEFT_OUTPUTS/out"')]
    )
    run = await h.run(pipeline.name)
    ended = await h.wait(run.name, timeout=30)

    assert lost_at_launch == [1]
    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    # The held process of the first launch never ran: the command ran once, recorded.
    assert ran.read_text().split() == ["1"]
    attempts = steps_by_name(ended)["only"].attempts
    assert [(a.number, state_name(a.state, Attempt.State)) for a in attempts] == [(1, "SUCCEEDED")]
    assert attempts[0].handle.isdigit()


async def test_a_local_launch_is_one_write_of_the_step_record_with_its_pid(harness: Harness) -> None:
    """The spawn gate's point: the attempt is recorded once, RUNNING with its process id,
    rather than UNCONFIRMED before the launch and again once the pid is known."""
    h = harness
    await h.start_executor()
    pipeline = await h.apply("one-write", [h.step("only")])
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    created = await h.store.get(h.keyspace.run(ns, run_id))
    assert created is not None
    ended = await h.wait(run.name, timeout=30)
    assert ended.state == Run.STATE_SUCCEEDED, ended.message

    written: list[StepRun] = []

    async def collect() -> None:
        async for batch in h.store.watch(h.keyspace.step(ns, run_id, "only"), created.create_revision):
            written.extend(StepRun.FromString(event.value) for event in batch if not event.deleted)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), 1.0)
    assert [state_name(record.state) for record in written] == ["RUNNING"]
    (attempt,) = written[0].attempts
    assert state_name(attempt.state, Attempt.State) == "RUNNING"
    assert attempt.handle.isdigit()


def written_keys(request: Any) -> list[bytes]:
    """The keys a TxnRequest writes in its success branch, nested transactions included."""
    keys: list[bytes] = []
    for op in request.success:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            keys.append(op.request_put.key)
        elif kind == "request_delete_range":
            keys.append(op.request_delete_range.key)
        elif kind == "request_txn":
            keys.extend(written_keys(op.request_txn))
    return keys


async def test_a_plain_launched_step_writes_claim_running_record_and_commit_only(harness: Harness) -> None:
    """Single flight rides on the launch's RUNNING record: a step that shares its work in
    flight (the default) pays no etcd write of its own for it. From its claim to its
    commit a plain step sends three writing transactions, and the one that takes the
    DNA's in-flight record is the one that records the attempt RUNNING."""
    h = harness
    executor = await h.start_executor()
    store = executor.store
    real_txn = store.txn
    sent: list[Any] = []

    async def counted(compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> TxnResult:
        sent.append(txn_request(compares, success, failure))
        return await real_txn(compares, success, failure)

    store.txn = counted  # type: ignore[method-assign,assignment]
    pipeline = await h.apply("plain", [h.step("only")])
    run = await h.run(pipeline.name)
    ended = await h.wait(run.name, timeout=30)
    assert ended.state == Run.STATE_SUCCEEDED, ended.message
    store.txn = real_txn  # type: ignore[method-assign]

    ns, run_id = parse_run_name(run.name)
    claim_key = h.keyspace.claim(ns, run_id, "only")
    step_key = h.keyspace.step(ns, run_id, "only")
    done_key = h.keyspace.done(ns, run_id, "only")
    in_flight = h.keyspace.in_flight(ns, step_dna(pipeline.spec.steps[0], {}).hex)
    # The run's own transitions (RUNNING, then SUCCEEDED) are the run's, not the step's.
    run_keys = {h.keyspace.run(ns, run_id), h.keyspace.run_index(ns, run_id)}
    writes = [keys for keys in map(written_keys, sent) if keys and not set(keys) <= run_keys]
    first = next(i for i, keys in enumerate(writes) if claim_key in keys)
    last = next(i for i, keys in enumerate(writes) if done_key in keys)
    launch = writes[first : last + 1]
    assert len(launch) == 3, launch  # claim, RUNNING record, commit
    assert [in_flight in keys for keys in launch] == [False, True, True]  # taken, then deleted
    assert step_key in launch[1]


async def test_readiness_derived_again_does_not_mark_a_done_step(harness: Harness) -> None:
    """Review finding 1: a crash-recovery re-derivation (or the slower of two executors)
    must not give ready marks to steps that are done already."""
    h = harness
    pipeline = await h.apply("rederive", [h.step("a"), h.step("b", reads={"in": ("a", "out")})])
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    ref = run_ref(run, pipeline)
    for step in ("a", "b"):
        record = StepRun(step=step, state=StepRun.STATE_SUCCEEDED, outcome=run_pb2.Outcome(dna=f"sha256:{step}"))
        await h.store.put(h.keyspace.done(ns, run_id, step), record.SerializeToString())

    ready = await RunProgress(h.store, h.keyspace).derive_successors(ref, "a")

    assert ready == ["b"]  # b's upstreams are committed...
    assert await h.store.get(h.keyspace.ready(ns, run_id, "b")) is None  # ...but b is done: no mark


async def test_a_released_step_never_looks_ready_and_unclaimed(harness: Harness) -> None:
    """Review finding 2: a release deletes a ready mark and its claim in one transaction;
    an executor that saw the claim vanish first would try (and fail) to claim the step."""
    h = harness
    executor = await h.start_executor()
    ns, run_id = "default", "elsewhere-1"
    for i in range(40):
        ready, claim = h.keyspace.ready(ns, run_id, f"s{i}"), h.keyspace.claim(ns, run_id, f"s{i}")
        await h.store.txn([], [op_put(ready, b""), op_put(claim, b"another-executor")])
        await h.store.txn([], [op_delete(ready), op_delete(claim)])
    marker = h.keyspace.ready(ns, "marker", "m")
    await h.store.put(marker, b"")
    await until(lambda: ("default", "marker", "m") in executor.queue._ready, timeout=5, what="the mirror caught up")

    assert executor.claims_refused == 0


async def test_a_ready_step_whose_input_cannot_be_resolved_fails(harness: Harness) -> None:
    """Review finding 5: the step was dropped without a done record, so the run stayed
    RUNNING forever. It fails, naming the input, and the run ends."""
    h = harness
    pipeline = await h.apply("unresolved", [h.step("a"), h.step("b", reads={"in": ("a", "out")})])
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    await set_running(h, run)
    # `a` committed without the output `b` reads (a record written by an older executor).
    done = StepRun(step="a", state=StepRun.STATE_SUCCEEDED, outcome=run_pb2.Outcome(dna="sha256:" + "3" * 64))
    await h.store.put(h.keyspace.done(ns, run_id, "a"), done.SerializeToString())
    await h.store.put(h.keyspace.ready(ns, run_id, "b"), b"")

    await h.start_executor()
    ended = await h.wait(run.name, timeout=20)

    assert ended.state == Run.STATE_FAILED
    b = steps_by_name(ended)["b"]
    assert state_name(b.state) == "FAILED"
    assert b.message == "input in: upstream step a committed no output 'out' (it has: none)"
    assert h.launches() == {}


async def test_a_shared_downstream_is_skipped_once_not_once_per_failure(harness: Harness) -> None:
    """Review finding 9: every failing mapper walked the whole shared downstream again."""
    h = harness
    mappers = [h.step(f"m{i}") for i in range(20)]
    reduce = h.step("reduce", depends_on=[f"m{i}" for i in range(20)])
    tail = [h.step(f"t{i}", depends_on=["reduce"]) for i in range(300)]
    pipeline = await h.apply("shared", [*mappers, reduce, *tail])
    run = await h.run(pipeline.name)
    ref = run_ref(run, pipeline)
    progress = RunProgress(h.store, h.keyspace)
    assert await progress.skip_downstream(ref, "m0") == 301
    sent: list[int] = []
    real_txn = h.store.txn

    async def counted(compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> TxnResult:
        sent.append(len(success))
        return await real_txn(compares, success, failure)

    h.store.txn = counted  # type: ignore[method-assign,assignment]
    try:
        for i in range(1, 20):
            assert await progress.skip_downstream(ref, f"m{i}") == 0
    finally:
        h.store.txn = real_txn  # type: ignore[method-assign]

    assert len(sent) == 19  # one read of the direct successors per failure, no walk


async def test_skips_written_before_a_crash_are_closed_downstream(harness: Harness) -> None:
    """Skips are written deepest first: a walk cut short leaves no skipped step above an
    unskipped one, so pruning at a skipped child never strands its downstream."""
    h = harness
    chain = [h.step("f")] + [h.step(f"c{i}", depends_on=[f"c{i - 1}" if i else "f"]) for i in range(200)]
    pipeline = await h.apply("deep", chain)
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    ref = run_ref(run, pipeline)
    written: list[list[str]] = []
    real_create = h.store.create_many_if_absent

    async def crash_after_one_batch(items: Sequence[tuple[bytes, bytes]], **kwargs: Any) -> list[bytes]:
        created = await real_create(items[:32], **kwargs)
        written.append([h.keyspace.tail(k, h.keyspace.done_prefix(ns, run_id)) for k in created])
        raise ConnectionError("the executor died here")

    h.store.create_many_if_absent = crash_after_one_batch  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await RunProgress(h.store, h.keyspace).skip_downstream(ref, "f")
    h.store.create_many_if_absent = real_create  # type: ignore[method-assign]

    assert written == [[f"c{i}" for i in range(199, 167, -1)]]  # the deepest 32 first
    # Whoever redoes it (the failed step's ready mark is still there) finishes the walk.
    assert await RunProgress(h.store, h.keyspace).skip_downstream(ref, "f") == 200 - 32


async def test_two_losers_of_one_step_keep_both_records(harness: Harness) -> None:
    """Review finding 10: the loser record was an unguarded put, so one loser could erase
    the other's."""
    h = harness
    executor = await h.start_executor()
    pipeline = await h.apply("losers", [h.step("racer")])
    run = await h.run(pipeline.name)
    ns, run_id = parse_run_name(run.name)
    ref = run_ref(run, pipeline)
    winner = StepRun(step="racer", state=StepRun.STATE_SUCCEEDED, outcome=run_pb2.Outcome(dna="sha256:" + "4" * 64))
    losers = [Attempt(number=n, executor=f"zombie-{n}", state=Attempt.STATE_SUCCEEDED) for n in (1, 2, 3)]

    await asyncio.gather(*(executor.runner._record_loser(ref, winner, loser) for loser in losers))

    kv = await h.store.get(h.keyspace.step(ns, run_id, "racer"))
    assert kv is not None
    record = StepRun.FromString(kv.value)
    assert sorted(a.executor for a in record.attempts) == ["zombie-1", "zombie-2", "zombie-3"]


async def test_a_wide_join_keeps_its_records_small_and_explains_every_input(harness: Harness) -> None:
    """Invariant 6: the join's DNA components and input outcomes go to blobs by digest;
    the records hold digests, ExplainStep still shows every component, and a re-run of
    the whole pipeline is CACHED."""
    h = harness
    await h.start_executor(max_parallel=8)
    width = 400
    mappers = [h.step(f"m{i}") for i in range(width)]
    join = h.step(
        "join",
        'ls "$WEFT_INPUTS" | wc -l > "$WEFT_OUTPUTS/out"',
        reads={f"i{i}": (f"m{i}", "out") for i in range(width)},
    )
    pipeline = await h.apply("wide-join", [*mappers, join])

    first = await h.wait((await h.run(pipeline.name)).name, timeout=90)
    again = await h.wait((await h.run(pipeline.name)).name, timeout=60)

    assert first.state == Run.STATE_SUCCEEDED, first.message
    assert (await h.output(first, "join")).strip() == str(width).encode()
    done = await h.done_records(first.name)
    record, version = done["join"]
    assert version == 1
    assert len(record.SerializeToString()) < 2 * INLINE_RECORD_BYTES
    assert record.explanation.components_digest
    assert not record.explanation.components
    assert record.outcome.input_outcomes_digest
    assert not record.outcome.input_outcomes
    explained = await h.explain(first.name, "join")
    assert sum(1 for c in explained.components if c.name.startswith("input:")) == width
    assert again.state == Run.STATE_SUCCEEDED, again.message
    assert set(states(again).values()) == {"CACHED"}
    ns, run_id = parse_run_name(first.name)
    assert await h.store.count(h.keyspace.steps_prefix(ns, run_id)) == 0  # the done records replaced them


async def test_a_step_whose_commit_is_too_large_fails_with_a_clear_error(harness: Harness) -> None:
    """A commit etcd refuses as too large is a final error of the step, naming it and the
    size, never a retried or LOST attempt."""
    h = harness
    await h.start_executor()
    count, stem = 4000, "o" * 55
    names = [f"{stem}{i:05d}" for i in range(count)]
    script = f'cd "$WEFT_OUTPUTS"; i=0; while [ $i -lt {count} ]; do : > "$(printf "{stem}%05d" $i)"; i=$((i+1)); done'
    pipeline = await h.apply("too-large", [h.step("many", script, outputs=names), h.step("after", depends_on=["many"])])

    ended = await h.wait((await h.run(pipeline.name)).name, timeout=100)

    assert ended.state == Run.STATE_FAILED
    many = steps_by_name(ended)["many"]
    assert state_name(many.state) == "FAILED"
    assert many.message.startswith("step many: its commit is ")
    assert "KiB, over the 1024 KiB etcd accepts in one request" in many.message
    assert [state_name(a.state, Attempt.State) for a in many.attempts] == ["SUCCEEDED"]
    assert state_name(steps_by_name(ended)["after"].state) == "SKIPPED"
    assert h.launches() == {"many": 1}


@pytest.mark.slow
async def test_a_50000_step_pipeline_is_stored_read_back_and_run_created(harness: Harness) -> None:
    """The step limit is 50,000 (Argo users hit their wall near 50k nodes): such a spec is
    validated, stored by digest outside etcd, read back whole, and a run of it is created
    with one small record; one more step is refused, naming the limit."""
    h = harness
    steps = [
        pipeline_pb2.Step(name=f"s{i}", container=pipeline_pb2.Container(image="busybox", command=["true"]))
        for i in range(MAX_STEPS)
    ]
    created = await h.apply("fifty-thousand", steps)
    got = await h.clients.pipelines.GetPipeline(pipeline_pb2.GetPipelineRequest(name=created.name))
    run = await h.run(created.name)

    assert len(got.spec.steps) == MAX_STEPS == 50_000
    ns, run_id = parse_run_name(run.name)
    kv = await h.store.get(h.keyspace.run(ns, run_id))
    assert kv is not None
    assert len(kv.value) < 4096
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await h.apply("one-too-many", [*steps, pipeline_pb2.Step(name="one-more", container=steps[0].container)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "50001 steps exceed the limit of 50000; split the pipeline" in (refused.value.details() or "")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("WEFT_LONG_TESTS"),
    reason="minutes long on 2 cores (~7 min): runs with WEFT_LONG_TESTS=1 ./dev test",
)
@pytest.mark.timeout(480)
async def test_a_10000_wide_join_runs_and_reruns_cached(harness: Harness) -> None:
    """A join reading 10,000 outputs commits (it used to fail with "executor died 3 times":
    its commit passed etcd's request limit), and the fully cached re-run of all 10,001
    steps succeeds. To keep the test quick the mappers' outcomes are seeded in the cache,
    as an earlier run would have left them, so the first run runs only the join (10,000
    cache hits and one process); bench/bench_local_runtime.py --wide runs real processes."""
    h = harness
    executor = await h.start_executor(max_parallel=16)
    width = 10_000
    mappers = [h.step(f"m{i}") for i in range(width)]
    join = h.step(
        "join",
        'ls "$WEFT_INPUTS" | wc -l > "$WEFT_OUTPUTS/out"',
        reads={f"i{i}": (f"m{i}", "out") for i in range(width)},
    )
    pipeline = await h.apply("ten-thousand-join", [*mappers, join])
    blob = await h.clients.artifacts.PutBlob(iter_put(b"mapped"))
    seeded = []
    for step in mappers:
        dna = step_dna(step, {})
        outcome = run_pb2.Outcome(dna=dna.digest, outputs={"out": blob.digest}, run="seeded", step=step.name)
        seeded.append((h.keyspace.outcome("default", dna.hex), outcome.SerializeToString()))
    await h.store.put_many(seeded)

    first = await finished(h, (await h.run(pipeline.name)).name, timeout=220)
    assert first.state == Run.STATE_SUCCEEDED, first.message
    record, version = (await h.done_records(first.name))["join"]
    assert (await h.blob(record.outcome.outputs["out"])).strip() == str(width).encode()
    again = await finished(h, (await h.run(pipeline.name)).name, timeout=220)

    assert again.state == Run.STATE_SUCCEEDED, again.message
    assert dict(again.step_counts) == {"CACHED": width + 1}
    assert h.launches() == {"join": 1}
    assert version == 1
    assert len(record.SerializeToString()) < 2 * INLINE_RECORD_BYTES
    assert executor.claims_refused == 0
