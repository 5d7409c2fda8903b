"""The run record's one owner (weft_core.runs) against a real etcd: a run key is never
written without its summary index, the etag is the write's revision and never stored,
and a missing run or a declined change writes nothing."""

from __future__ import annotations

from weft.v1 import run_pb2
from weft_core.keyspace import Keyspace
from weft_core.runs import parse_run, run_writes, update_run
from weft_core.store import Store

Run = run_pb2.Run


async def test_an_update_writes_the_run_and_its_summary_together(store: Store, keyspace: Keyspace) -> None:
    run = Run(name="namespaces/ns/runs/r1", state=Run.STATE_RUNNING, parameters={"big": "x" * 1000})
    await store.txn([], run_writes(keyspace, "ns", "r1", run))

    def finish(current: Run) -> Run:
        current.state = Run.STATE_SUCCEEDED
        return current

    written = await update_run(store, keyspace, "ns", "r1", finish)
    assert written is not None
    kv = await store.get(keyspace.run("ns", "r1"))
    assert kv is not None
    assert written.etag == str(kv.mod_revision)
    stored = parse_run(kv)
    assert stored.state == Run.STATE_SUCCEEDED
    assert stored.parameters["big"] == "x" * 1000
    assert not stored.etag  # the revision is the etag: a stored one would go stale
    index = await store.get(keyspace.run_index("ns", "r1"))
    assert index is not None
    assert index.mod_revision == kv.mod_revision  # one transaction
    summary = Run.FromString(index.value)
    assert summary.state == Run.STATE_SUCCEEDED
    assert not summary.parameters  # the index holds the small summary only


async def test_an_update_of_a_missing_run_or_a_declined_change_writes_nothing(store: Store, keyspace: Keyspace) -> None:
    assert await update_run(store, keyspace, "ns", "absent", lambda run: run) is None
    assert await store.get(keyspace.run("ns", "absent")) is None
    await store.txn([], run_writes(keyspace, "ns", "r3", Run(name="namespaces/ns/runs/r3")))
    before = await store.get(keyspace.run("ns", "r3"))
    assert await update_run(store, keyspace, "ns", "r3", lambda run: None) is None
    after = await store.get(keyspace.run("ns", "r3"))
    assert before is not None
    assert after is not None
    assert after.mod_revision == before.mod_revision
