"""weft_core.store against a real etcd: limits, create-if-absent, resumable watches."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import assert_eventually_async
from weft.localstack import EtcdProcess
from weft_core.errors import Internal, Unavailable
from weft_core.keyspace import Keyspace
from weft_core.store import MAX_TXN_OPS, ResponseTooLarge, Store, op_put


async def test_create_many_if_absent_batches_past_the_txn_limit(store: Store, keyspace: Keyspace) -> None:
    keys = [(keyspace.ready("ns", "r", f"s{i:04d}"), b"") for i in range(2000)]
    # Some exist already: they must be left alone and not reported as created.
    await store.put(keys[5][0], b"old")
    created = await store.create_many_if_absent(keys)
    assert len(created) == 1999
    assert keys[5][0] not in created
    assert (await store.get(keys[5][0])).value == b"old"  # type: ignore[union-attr]
    assert await store.count(keyspace.ready_run_prefix("ns", "r")) == 2000
    # Deriving the same marks again creates nothing.
    assert await store.create_many_if_absent(keys) == []


async def test_a_transaction_over_the_limit_is_refused_before_it_reaches_etcd(store: Store, keyspace: Keyspace) -> None:
    ops = [op_put(keyspace.step("ns", "r", f"s{i}"), b"x") for i in range(MAX_TXN_OPS + 1)]
    with pytest.raises(Exception, match="exceeds etcd's limit"):
        await store.txn([], ops)
    assert await store.count(keyspace.steps_prefix("ns", "r")) == 0


async def test_range_all_reads_every_page_at_one_revision(store: Store, keyspace: Keyspace) -> None:
    items = [(keyspace.step("ns", "r", f"s{i:05d}"), b"v") for i in range(2500)]
    await store.put_many(items)
    result = await store.range_all(keyspace.steps_prefix("ns", "r"), page=700)
    assert [kv.key for kv in result.kvs] == [k for k, _ in items]


async def test_watch_resumes_after_etcd_restarts(private_etcd: EtcdProcess, keyspace: Keyspace) -> None:
    store = Store(private_etcd.endpoint, timeout=2)
    try:
        prefix = keyspace.run_prefix("ns", "r")
        start = await store.put(keyspace.step("ns", "r", "a"), b"1")
        seen: list[bytes] = []

        async def consume() -> None:
            async for batch in store.watch(prefix, start):
                seen.extend(e.value for e in batch)
                if len(seen) >= 3:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        private_etcd.stop()
        with pytest.raises(Unavailable, match="unavailable"):
            await store.put(keyspace.step("ns", "r", "b"), b"lost")
        private_etcd.start()
        # The channel reconnects with a short backoff: the first write may still find it down.
        await assert_eventually_async(
            lambda: store.put(keyspace.step("ns", "r", "b"), b"2"), timeout=10, retry_on=(Unavailable,)
        )
        await store.put(keyspace.step("ns", "r", "c"), b"3")
        await asyncio.wait_for(task, 15)
        assert seen == [b"1", b"2", b"3"]
    finally:
        await store.close()


async def test_an_answer_too_large_for_the_client_is_internal_and_range_all_reads_it_in_smaller_pages(
    etcd: EtcdProcess, store: Store, keyspace: Keyspace
) -> None:
    items = [(keyspace.step("ns", "r", f"s{i:03d}"), bytes([65 + i % 26]) * 4096) for i in range(40)]
    await store.put_many(items)
    small = Store(etcd.endpoint, max_receive_bytes=64 * 1024)  # 40 values of 4 KiB do not fit one answer
    try:
        with pytest.raises(ResponseTooLarge) as caught:
            await small.range(keyspace.steps_prefix("ns", "r"))
        # Retrying the same read fails the same way: it must not look like an outage.
        assert isinstance(caught.value, Internal)
        assert not isinstance(caught.value, Unavailable)
        assert "smaller pages" in caught.value.message
        result = await small.range_all(keyspace.steps_prefix("ns", "r"))
        assert [(kv.key, kv.value) for kv in result.kvs] == items
    finally:
        await small.close()
