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
unindexed until weft-api's sweep (`weft_api.lineage_sweep`) finds it: the `made` key of
an outcome is written last, so its absence marks an outcome whose index is missing or
incomplete, and the sweep writes them all again (idempotent puts). Nothing here reads etcd.
"""

from __future__ import annotations

from collections.abc import Mapping

from weft.v1 import run_pb2
from weft_core.dna import SHA256_PREFIX
from weft_core.keyspace import Keyspace
from weft_core.provenance import INPUT_PREFIX
from weft_core.spec import parse_run_name
from weft_core.store import MAX_TXN_OPS, Store, op_put


def _hex(digest: str) -> str:
    return digest.removeprefix(SHA256_PREFIX)


def lineage_keys(
    keyspace: Keyspace, namespace: str, outcome: run_pb2.Outcome, input_digests: Mapping[str, str]
) -> list[bytes]:
    """Every index key of a committed outcome.

    Args:
        keyspace: Where weft's keys live.
        namespace: The namespace of the outcome's run.
        outcome: The committed outcome (its run, step, DNA, outputs and input outcomes).
        input_digests: The content digest of each input by input name.
    """
    _, run_id = parse_run_name(outcome.run, "outcome.run")
    dna = _hex(outcome.dna)
    keys = []
    for output, digest in sorted(outcome.outputs.items()):
        keys.append(keyspace.lineage_producer(namespace, _hex(digest), dna, output))
    for name, digest in sorted(input_digests.items()):
        keys.append(keyspace.lineage_consumed(namespace, _hex(digest), dna, name))
        producer = outcome.input_outcomes.get(name)
        if producer:
            keys.append(keyspace.lineage_consumer(namespace, _hex(producer), dna, name))
    # Last: its presence says every edge before it was written (the sweep's test).
    keys.append(keyspace.lineage_made(namespace, dna, run_id, outcome.step))
    return keys


def made_key(keyspace: Keyspace, namespace: str, record: run_pb2.StepRun, run_id: str) -> bytes:
    """The `made` key of a SUCCEEDED step record's outcome: present once it is fully indexed."""
    return keyspace.lineage_made(namespace, _hex(record.outcome.dna), run_id, record.step)


def produced_outcome(record: run_pb2.StepRun) -> bool:
    """Whether a done record holds an outcome its own run produced (and so must be indexed):
    SUCCEEDED; a CACHED step reused another run's outcome, which that run indexed."""
    return record.state == run_pb2.StepRun.STATE_SUCCEEDED and bool(record.outcome.dna)


def input_digests_of(record: run_pb2.StepRun) -> dict[str, str]:
    """The content digest of each input, from a done record's DNA components (restored
    first when a wide join spilled them, `weft_core.provenance.restore_spilled`)."""
    return {
        c.name.removeprefix(INPUT_PREFIX): c.value
        for c in record.explanation.components
        if c.name.startswith(INPUT_PREFIX)
    }


async def index_outcome(
    store: Store, keyspace: Keyspace, namespace: str, outcome: run_pb2.Outcome, input_digests: Mapping[str, str]
) -> int:
    """Writes the lineage index of a committed outcome; returns the number of keys written.

    The executor calls this once its commit of a new outcome won; weft-api's sweep
    (`weft_api.lineage_sweep`) calls it for an outcome it finds without its `made` key.
    The `made` key goes last, so a cut-short indexing stays visibly incomplete.
    """
    keys = lineage_keys(keyspace, namespace, outcome, input_digests)
    for start in range(0, len(keys), MAX_TXN_OPS):
        await store.txn([], [op_put(key, b"") for key in keys[start : start + MAX_TXN_OPS]])
    return len(keys)
