"""The lineage index: the etcd edges that let a lineage query walk outcomes both ways.

When a step commits a new outcome (SUCCEEDED; a CACHED step reuses an outcome and adds
nothing), `index_outcome` writes, under `{root}/lineage/{ns}/` (see `weft_core.keyspace`):
who made the outcome, which outcome produced each of its output blobs, and, for every
input, a consumer edge keyed by the producing outcome and one keyed by the input's blob.
A query (`weft_api.lineage`) then answers with a few range reads per node, never a scan
of runs.

Every key says everything (values are empty), so each write is an idempotent put that is
safe alone, in any order, and repeated; they are batched into transactions of at most
`MAX_TXN_OPS` puts (a 10,000-input join writes 20,000 edges in ~160 transactions) and
never joined to the commit's own transaction, which must stay within etcd's limits. The
index is written after the commit: an executor that dies in between leaves that outcome
unindexed (its run's records still hold its lineage). Nothing here reads etcd.
"""

from __future__ import annotations

from collections.abc import Mapping

from weft.v1 import run_pb2
from weft_core.dna import SHA256_PREFIX
from weft_core.keyspace import Keyspace
from weft_core.spec import parse_run_name
from weft_core.store import MAX_TXN_OPS, Store, op_put


def _hex(digest: str) -> str:
    return digest.removeprefix(SHA256_PREFIX)


def lineage_keys(
    keyspace: Keyspace,
    namespace: str,
    outcome: run_pb2.Outcome,
    input_digests: Mapping[str, str],
    input_outcomes: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Every index key of a committed outcome.

    Args:
        keyspace: Where weft's keys live.
        namespace: The namespace of the outcome's run.
        outcome: The committed outcome (its run, step, DNA, outputs and input outcomes).
        input_digests: The content digest of each input by input name.
        input_outcomes: The producing outcome of each input, when the outcome's own
            `input_outcomes` were spilled to a blob (a wide join); default: the outcome's.
    """
    producers = outcome.input_outcomes if input_outcomes is None else input_outcomes
    _, run_id = parse_run_name(outcome.run, "outcome.run")
    dna = _hex(outcome.dna)
    keys = [keyspace.lineage_made(namespace, dna, run_id, outcome.step)]
    for output, digest in sorted(outcome.outputs.items()):
        keys.append(keyspace.lineage_producer(namespace, _hex(digest), dna, output))
    for name, digest in sorted(input_digests.items()):
        keys.append(keyspace.lineage_consumed(namespace, _hex(digest), dna, name))
        producer = producers.get(name)
        if producer:
            keys.append(keyspace.lineage_consumer(namespace, _hex(producer), dna, name))
    return keys


async def index_outcome(
    store: Store,
    keyspace: Keyspace,
    namespace: str,
    outcome: run_pb2.Outcome,
    input_digests: Mapping[str, str],
    input_outcomes: Mapping[str, str] | None = None,
) -> int:
    """Writes the lineage index of a committed outcome; returns the number of keys written.

    The executor calls this once its commit of a new outcome won.
    """
    keys = lineage_keys(keyspace, namespace, outcome, input_digests, input_outcomes)
    for start in range(0, len(keys), MAX_TXN_OPS):
        await store.txn([], [op_put(key, b"") for key in keys[start : start + MAX_TXN_OPS]])
    return len(keys)
