"""Claims this executor holds are always worked on: a claim whose answer was lost, or one
found with nothing working on it, is taken up instead of holding its step forever; and the
prefix mirrors that feed scheduling survive any etcd error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tests.integration.executor.support import Harness, states
from weft.localstack import EtcdProcess
from weft.v1 import run_pb2
from weft_core.errors import Unavailable
from weft_core.keyspace import Keyspace
from weft_core.store import KeyValue, Store, TxnResult, WatchEvent
from weft_executor.scheduler import follow_prefix

Run = run_pb2.Run


async def test_a_claim_whose_answer_was_lost_is_worked_on(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor()
    real_txn = executor.store.txn
    lost: list[bytes] = []

    async def answer_lost_once(
        compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> TxnResult:
        # etcd applies the claim; the reply never arrives (a deadline, a dropped connection).
        result = await real_txn(compares, success, failure)
        claim = next((c.key for c in compares if b"/claims/" in c.key), None)
        if claim is not None and result.succeeded and not lost:
            lost.append(claim)
            raise Unavailable("the answer of an applied claim was lost")
        return result

    executor.store.txn = answer_lost_once  # type: ignore[method-assign,assignment]
    pipeline = await h.apply("lost", [h.step("only")])

    run = await h.wait((await h.run(pipeline.name)).name, timeout=15)

    assert lost, "no claim answer was dropped"
    assert run.state == Run.STATE_SUCCEEDED, run.message
    assert h.launches() == {"only": 1}


async def test_a_claim_of_ours_that_nothing_works_on_is_taken_up(harness: Harness) -> None:
    h = harness
    executor = await h.start_executor()
    pipeline = await h.apply("orphan", [h.step("a"), h.step("b", reads={"in": ("a", "out")})])
    # A claim of this executor, bound to its live lease, that no task of it works on.
    claim = h.keyspace.claim("default", "orphan-1", "a")
    await h.store.put(claim, executor.executor_id.encode(), lease=executor.registration.lease)

    request = run_pb2.CreateRunRequest(run=Run(pipeline=pipeline.name), run_id="orphan-1")
    created = await h.clients.runs.CreateRun(request)
    run = await h.wait(created.name, timeout=20)

    assert run.state == Run.STATE_SUCCEEDED, run.message
    assert states(run) == {"a": "SUCCEEDED", "b": "SUCCEEDED"}


async def test_following_a_prefix_survives_an_error_that_is_not_an_outage(etcd: EtcdProcess) -> None:
    # A listing whose answer is larger than the client accepts fails with an Internal
    # error, not Unavailable: the loop must keep trying, and deliver once it can.
    keyspace = Keyspace(f"/follow-{id(etcd)}-{asyncio.get_running_loop().time()}")
    prefix = keyspace.run_index_all()
    writer = Store(etcd.endpoint)
    reader = Store(etcd.endpoint, max_receive_bytes=64 * 1024)
    seen: list[list[KeyValue]] = []

    async def listed(kvs: list[KeyValue]) -> None:
        seen.append(kvs)

    async def changed(events: list[WatchEvent]) -> None:
        return None

    try:
        await writer.put(prefix + b"default/huge", b"x" * (200 * 1024))
        follower = asyncio.create_task(follow_prefix(reader, prefix, listed, changed))
        await asyncio.sleep(1.5)
        assert not follower.done(), follower.exception() if follower.done() else ""
        assert seen == []

        await writer.put(prefix + b"default/huge", b"small")
        for _ in range(60):
            if seen:
                break
            await asyncio.sleep(0.1)
        assert [kv.value for kv in seen[0]] == [b"small"]
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    finally:
        await writer.delete(prefix, prefix=True)
        await writer.close()
        await reader.close()
