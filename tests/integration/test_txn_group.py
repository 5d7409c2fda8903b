"""Group commit against a real etcd: transactions in flight together share one, and each
still gets exactly the outcome it would get alone (weft_core.store.TxnGroup, which the
executor's Store and weft-api's CreateRun both send through)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from weft_core.keyspace import Keyspace
from weft_core.store import Store, TxnGroup, TxnResult, absent, op_delete, op_get, op_put


def keys_under(keyspace: Keyspace, folder: str) -> Callable[[str], bytes]:
    return lambda name: f"{keyspace.root}/{folder}/{name}".encode()


async def test_a_failing_member_sends_the_group_alone_and_only_it_fails(store: Store, keyspace: Keyspace) -> None:
    key = keys_under(keyspace, "group")
    await store.put(key("taken"), b"before")
    group = TxnGroup(store)

    def create(name: str) -> asyncio.Future[TxnResult]:
        return asyncio.ensure_future(
            group.txn([absent(key(name))], [op_put(key(name), name.encode())], [op_get(key(name))])
        )

    # Queued in the same moment, they form one group, which fails on "taken" (its compare
    # does not hold) and is then sent member by member.
    names = ("first", "a", "taken", "b", "c")
    results: list[TxnResult] = list(await asyncio.gather(*(create(name) for name in names)))
    outcome = dict(zip(names, results, strict=True))
    assert all(outcome[n].succeeded for n in ("first", "a", "b", "c"))
    assert not outcome["taken"].succeeded
    # The refused member got its own failure branch's answer, as if it had been alone.
    assert [kv.value for kv in outcome["taken"].range_kvs(0)] == [b"before"]
    for name in ("first", "a", "b", "c"):
        found = await store.get(key(name))
        assert found is not None
        assert found.value == name.encode()
    taken = await store.get(key("taken"))
    assert taken is not None
    assert taken.value == b"before"


async def test_members_that_succeed_together_share_one_revision(store: Store, keyspace: Keyspace) -> None:
    key = keys_under(keyspace, "together")
    group = TxnGroup(store)
    names = [f"k{i}" for i in range(20)]
    results = await asyncio.gather(*(group.txn([absent(key(n))], [op_put(key(n), b"v")]) for n in names))
    assert all(r.succeeded for r in results)
    revisions = [r.revision for r in results]
    assert len(set(revisions)) < len(names)  # grouped
    for name, revision in zip(names, revisions, strict=True):
        found = await store.get(key(name))
        assert found is not None
        assert found.mod_revision == revision  # each answer names the revision of its own write


async def test_conflicting_and_ungroupable_members_never_share_a_transaction(store: Store, keyspace: Keyspace) -> None:
    key = f"{keyspace.root}/contested".encode()
    group = TxnGroup(store)
    # Ten creates of one key: exactly one wins, as if each had been sent alone.
    results = await asyncio.gather(*(group.txn([absent(key)], [op_put(key, str(i).encode())]) for i in range(10)))
    assert sum(r.succeeded for r in results) == 1
    # A range delete is sent alone (its range is not a key the group can reason about).
    other = f"{keyspace.root}/contested-other".encode()
    deleted, put = await asyncio.gather(
        group.txn([], [op_delete(key, prefix=True)]), group.txn([absent(other)], [op_put(other, b"v")])
    )
    assert deleted.succeeded
    assert put.succeeded
    assert deleted.revision != put.revision
    assert await store.get(key) is None


async def test_each_member_of_a_group_gets_the_answers_of_its_own_operations(store: Store, keyspace: Keyspace) -> None:
    key = keys_under(keyspace, "answers")
    await store.put(key("read"), b"value")
    group = TxnGroup(store)
    writes = [group.txn([absent(key(f"w{i}"))], [op_put(key(f"w{i}"), b"v")]) for i in range(5)]
    reading = group.txn([], [op_get(key("read"))])
    *written, read = await asyncio.gather(*writes, reading)
    assert all(r.succeeded for r in written)
    assert len({r.revision for r in (*written, read)}) < 6  # grouped
    assert [kv.value for kv in read.range_kvs(0)] == [b"value"]
