"""The run record's one owner: how it is decoded, written with its index, and updated.

The api (CreateRun, CancelRun) and the executors (every state change) write a run's
`runindex` key in the same transaction as its run key (`run_writes`). Both build the
value with `run_summary`, so the index stays small no matter how large the run record
is: ListRuns and the executors' run listing read up to 1,000 index entries per etcd
response, which must stay far under the client's receive limit (a run record may hold
256 KiB of parameters; 1,000 of those would not fit). A change to an existing run is a
guarded read-modify-write (`update_run`): written only if the run key is unchanged since
it was read, else read and applied again.

The summary never carries parameters, parameter digests or the trace context: whoever
needs them reads the run key. Only `update_run` touches etcd, and it never writes a run
key without its index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weft.v1 import run_pb2
from weft_core.errors import Aborted, Internal
from weft_core.keyspace import Keyspace
from weft_core.store import KeyValue, Store, op_put, unchanged_since

#: Longest run message kept in the summary (GetRun shows the whole message). A cancel
#: reason is at most 1,024 characters, so executors still see it in full.
MAX_SUMMARY_MESSAGE_CHARS = 2048


def run_summary(run: run_pb2.Run) -> run_pb2.Run:
    """The runindex value of `run`: the run without parameters, digests, trace context or steps.

    Args:
        run: A run record (not modified).

    Returns:
        A new Run with the name, pipeline and version, state, times, labels, options,
        step counts, message (cut to `MAX_SUMMARY_MESSAGE_CHARS`), failed step,
        resumed_from and etag of `run`.
    """
    summary = run_pb2.Run()
    summary.CopyFrom(run)
    summary.ClearField("parameters")
    summary.ClearField("parameter_digests")
    summary.ClearField("traceparent")
    summary.ClearField("steps")
    if len(summary.message) > MAX_SUMMARY_MESSAGE_CHARS:
        summary.message = summary.message[: MAX_SUMMARY_MESSAGE_CHARS - 1] + "…"
    return summary


def parse_run(kv: KeyValue) -> run_pb2.Run:
    """The run record stored in `kv` (as stored: no etag).

    Raises:
        Internal: The value does not parse: the record is corrupt.
    """
    run = run_pb2.Run()
    try:
        run.ParseFromString(kv.value)
    except Exception as error:  # protobuf raises several kinds on garbage
        raise Internal(f"the run record at {kv.key.decode()} does not parse ({error}); it is corrupt") from error
    return run


def run_writes(keyspace: Keyspace, namespace: str, run_id: str, run: run_pb2.Run) -> list[Any]:
    """The operations that write `run`: its key and its index summary, always together."""
    stored = run
    if run.etag:  # the mod revision says it; a stored one would go stale
        stored = run_pb2.Run()
        stored.CopyFrom(run)
        stored.ClearField("etag")
    return [
        op_put(keyspace.run(namespace, run_id), stored.SerializeToString()),
        op_put(keyspace.run_index(namespace, run_id), run_summary(stored).SerializeToString()),
    ]


async def update_run(
    store: Store,
    keyspace: Keyspace,
    namespace: str,
    run_id: str,
    change: Callable[[run_pb2.Run], run_pb2.Run | None],
    *,
    attempts: int = 0,
) -> run_pb2.Run | None:
    """Applies `change` to the run record until the guarded write wins.

    `change` gets the run as stored and returns the new run, or None when
    nothing is to be written (e.g. the run is no longer in the state the caller expected);
    an exception it raises ends the update with nothing written.

    Args:
        attempts: Lost writes (a concurrent change) to accept before giving up; 0: no limit.

    Returns:
        What was written, its etag the write's revision; None when the run does not exist
        or `change` returned None.

    Raises:
        Aborted: The run changed under every one of `attempts` writes.
    """
    key = keyspace.run(namespace, run_id)
    tried = 0
    while not attempts or tried < attempts:
        tried += 1
        kv = await store.get(key)
        if kv is None:
            return None
        updated = change(parse_run(kv))
        if updated is None:
            return None
        result = await store.txn(
            [unchanged_since(key, kv.mod_revision)], run_writes(keyspace, namespace, run_id, updated)
        )
        if result.succeeded:
            updated.etag = str(result.revision)
            return updated
    raise Aborted(f'run "namespaces/{namespace}/runs/{run_id}" kept changing while it was updated; retry')
