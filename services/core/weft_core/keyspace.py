"""The etcd keyspace: every key weft writes, what its value is, and who writes it.

All keys live under one root (default `/weft`, so several installations can share an etcd).
Values are serialized `weft.v1` protobuf messages unless noted. Every record is small
(invariant 6): step records hold digests, never blob content, and specs too large for one
value are stored in the artifact store and referenced by digest.

Pipelines
    {root}/pipelines/{ns}/{pipeline}/head              PipelineHead (JSON): latest version digest,
                                                       version count, create time
    {root}/pipelines/{ns}/{pipeline}/versions/{hex}    PipelineVersionRecord (JSON): the Pipeline
                                                       message (base64) or the spec's blob digest
                                                       when the spec is too large, plus a
                                                       sequence number for ordering
    {root}/pipelines/{ns}/{pipeline}/seq/{sequence:010d}  PipelineVersionOrder (JSON): digest and
                                                       create time of the sequence-th version, so
                                                       versions list newest first in pages
Runs
    {root}/runs/{ns}/{run}/run                         Run (no step runs inside); the record
                                                       CreateRun writes atomically
    {root}/runs/{ns}/{run}/steps/{step}                StepRun: written on each transition of the
                                                       step (claimed/attempt started, finished);
                                                       absent means WAITING (or READY if a ready
                                                       mark exists)
    {root}/runs/{ns}/{run}/done/{step}                 StepRun, terminal: created exactly once per
                                                       step run (create-if-absent; the first
                                                       commit wins, invariant 2). Counting this
                                                       prefix tells when the run is complete.
    {root}/runs/{ns}/{run}/ok/{step}                   empty; created in the transaction that commits
                                                       the step SUCCEEDED or CACHED, so another
                                                       step's commit can check "this upstream is
                                                       committed" with one compare (done records
                                                       exist for failed and skipped steps too)
    {root}/runindex/{ns}/{run}                         Run summary (`weft_core.runs.run_summary`:
                                                       no parameters, parameter digests or
                                                       traceparent): written in the same
                                                       transaction as every write of the run
                                                       record, so ListRuns and executors read one
                                                       small key per run instead of every step key;
                                                       whoever needs parameters reads the run key
    {root}/runorder/{ns}/{inverted create time}/{run}  empty; written once, in CreateRun's
                                                       transaction. The key sorts newest first
                                                       (19 digits of 10^19 - 1 - create time in
                                                       ns), so ListRuns pages are range reads with
                                                       a limit, never a read of the whole index
    {root}/requests/{ns}/{request_id}                  RequestRecord (JSON): the resource a request_id
                                                       created and the digest of that request
                                                       (retried with the same request_id and body
                                                       return it; another body is refused);
                                                       bound to a lease, so etcd forgets it after
                                                       24-25 h (weft_core/requests.py)
Scheduling (both under `{root}/sched/`, so one etcd watch delivers a transaction that
deletes a ready mark and a claim together as one batch, in revision order: a released
step never looks unclaimed-but-ready to another executor in between)
    {root}/sched/ready/{ns}/{run}/{step}               Timestamp of readiness (`ready_mark`); created
                                                       if absent when every upstream of
                                                       the step has a done record. Executors watch
                                                       this prefix. Deleted only after the step's
                                                       successors were derived, so a crash between
                                                       commit and derivation leaves the mark for
                                                       another executor to finish (invariant 3).
    {root}/sched/claims/{ns}/{run}/{step}              executor id; bound to the executor's lease, so
                                                       it vanishes when the executor dies
                                                       (invariant 4)
    {root}/executors/{executor_id}                     ExecutorRecord (JSON): address for
                                                       ReadAttemptLogs, runtime; bound to its lease
Outcomes (the cache)
    {root}/outcomes/{ns}/{dna_hex}                     Outcome: the latest committed outcome with
                                                       that DNA in namespace ns, reused by later
                                                       runs of that namespace only (the DNA has no
                                                       namespace; an outcome computed with one
                                                       namespace's secrets must not serve another)
Lineage (written when a step commits a new outcome, `weft_core.lineage`; empty values:
the key says everything, so every write is an idempotent put, safe alone and in any order)
    {root}/lineage/{ns}/made/{dna_hex}/{run}/{step}     the outcome with that DNA was produced by
                                                       step of run (its done record has the rest)
    {root}/lineage/{ns}/producer/{blob_hex}/{dna_hex}/{output}  the blob is that output of the outcome
    {root}/lineage/{ns}/consumer/{producer_hex}/{consumer_hex}/{input}  the consumer outcome read its
                                                       input from the producer outcome
    {root}/lineage/{ns}/consumed/{blob_hex}/{consumer_hex}/{input}  the consumer outcome read the blob
                                                       (a step output, parameter or literal) as input
    {root}/lineagesweep/cursor                          the run-index tail ({ns}/{run}) up to which
                                                       weft-api's sweep has indexed outcomes the
                                                       executor left unindexed ("" between passes)

Access
    {root}/blobrefs/{ns}/{hex}                          empty; the blob sha256:{hex} was uploaded for
                                                       namespace ns (PutBlob with a namespace), so
                                                       ns's viewers may read it. Written by weft-api
                                                       only while authentication is on: a digest
                                                       alone is no capability (weft_api.artifacts).
                                                       Blobs an outcome of ns produced or read are
                                                       readable in ns through its lineage keys

A WatchRun is one etcd watch of the prefix `{root}/runs/{ns}/{run}/`, so run and step events
come in commit order and resume by revision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

DEFAULT_ROOT = "/weft"
#: Run order keys hold this minus the create time (ns since the epoch; 19 digits until 2286).
RUN_ORDER_LATEST = 10**19 - 1


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd range_end)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def ready_mark() -> bytes:
    """The value of a ready mark created now: when the step became ready (StepRun.ready_time)."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp.SerializeToString()


def ready_time_of(value: bytes) -> Timestamp:
    """When a ready mark says its step became ready (unset for a mark without a time)."""
    stamp = Timestamp()
    with contextlib.suppress(DecodeError):
        stamp.ParseFromString(value)
    return stamp


@dataclass(frozen=True)
class Keyspace:
    """Builds weft's etcd keys under one root."""

    root: str = DEFAULT_ROOT

    def _key(self, *parts: str) -> bytes:
        return "/".join((self.root, *parts)).encode()

    # Pipelines
    def pipeline_prefix(self, ns: str) -> bytes:
        return self._key("pipelines", ns, "")

    def pipeline_head(self, ns: str, pipeline: str) -> bytes:
        return self._key("pipelines", ns, pipeline, "head")

    def pipeline_versions(self, ns: str, pipeline: str) -> bytes:
        return self._key("pipelines", ns, pipeline, "versions", "")

    def pipeline_version(self, ns: str, pipeline: str, digest_hex: str) -> bytes:
        return self._key("pipelines", ns, pipeline, "versions", digest_hex)

    def pipeline_all(self, ns: str, pipeline: str) -> bytes:
        return self._key("pipelines", ns, pipeline, "")

    def pipeline_version_order(self, ns: str, pipeline: str, sequence: int) -> bytes:
        """The key ordering versions by creation: sequence 1 is the first version."""
        return self._key("pipelines", ns, pipeline, "seq", f"{sequence:010d}")

    def pipeline_version_orders(self, ns: str, pipeline: str) -> bytes:
        return self._key("pipelines", ns, pipeline, "seq", "")

    # Runs
    def run_prefix(self, ns: str, run: str) -> bytes:
        """Everything of one run: the run record, step records and done records."""
        return self._key("runs", ns, run, "")

    def run(self, ns: str, run: str) -> bytes:
        return self._key("runs", ns, run, "run")

    def step(self, ns: str, run: str, step: str) -> bytes:
        return self._key("runs", ns, run, "steps", step)

    def steps_prefix(self, ns: str, run: str) -> bytes:
        return self._key("runs", ns, run, "steps", "")

    def done(self, ns: str, run: str, step: str) -> bytes:
        return self._key("runs", ns, run, "done", step)

    def done_prefix(self, ns: str, run: str) -> bytes:
        return self._key("runs", ns, run, "done", "")

    def committed(self, ns: str, run: str, step: str) -> bytes:
        return self._key("runs", ns, run, "ok", step)

    def run_index(self, ns: str, run: str) -> bytes:
        return self._key("runindex", ns, run)

    def run_index_prefix(self, ns: str) -> bytes:
        return self._key("runindex", ns, "")

    def run_index_all(self) -> bytes:
        return self._key("runindex", "")

    def run_order(self, ns: str, create_time_nanos: int, run: str) -> bytes:
        """The key that orders run `run` (created at `create_time_nanos`) newest first."""
        return self._key("runorder", ns, f"{RUN_ORDER_LATEST - create_time_nanos:019d}", run)

    def run_order_prefix(self, ns: str) -> bytes:
        return self._key("runorder", ns, "")

    def parse_run_order(self, key: bytes, ns: str) -> tuple[int, str]:
        """(create time in ns, run id) of a run order key of namespace `ns`."""
        inverted, _, run = self.tail(key, self.run_order_prefix(ns)).partition("/")
        return RUN_ORDER_LATEST - int(inverted), run

    def request(self, ns: str, request_id: str) -> bytes:
        return self._key("requests", ns, request_id)

    # Scheduling
    def scheduling_all(self) -> bytes:
        """Every ready mark and claim (executors watch this one prefix)."""
        return self._key("sched", "")

    def ready(self, ns: str, run: str, step: str) -> bytes:
        return self._key("sched", "ready", ns, run, step)

    def ready_run_prefix(self, ns: str, run: str) -> bytes:
        return self._key("sched", "ready", ns, run, "")

    def ready_all(self) -> bytes:
        return self._key("sched", "ready", "")

    def claim(self, ns: str, run: str, step: str) -> bytes:
        return self._key("sched", "claims", ns, run, step)

    def claims_run_prefix(self, ns: str, run: str) -> bytes:
        return self._key("sched", "claims", ns, run, "")

    def claims_all(self) -> bytes:
        """Every claim of every run (executors watch it to re-claim a dead executor's steps)."""
        return self._key("sched", "claims", "")

    def parse_claim(self, key: bytes) -> tuple[str, str, str]:
        """(namespace, run, step) of a claim key."""
        ns, run, step = key[len(self.claims_all()) :].decode().split("/", 2)
        return ns, run, step

    def executor(self, executor_id: str) -> bytes:
        return self._key("executors", executor_id)

    def executors_prefix(self) -> bytes:
        return self._key("executors", "")

    # Access
    def blob_ref(self, ns: str, digest_hex: str) -> bytes:
        return self._key("blobrefs", ns, digest_hex)

    # Outcomes
    def outcome(self, namespace: str, dna_hex: str) -> bytes:
        return self._key("outcomes", namespace, dna_hex)

    # Lineage
    def lineage_made(self, ns: str, dna_hex: str, run: str = "", step: str = "") -> bytes:
        """Without run and step: the prefix of every producer record of the outcome."""
        return self._key("lineage", ns, "made", dna_hex, *((run, step) if run else ("",)))

    def lineage_producer(self, ns: str, blob_hex: str, dna_hex: str = "", output: str = "") -> bytes:
        """Without dna and output: the prefix of every outcome that produced the blob."""
        return self._key("lineage", ns, "producer", blob_hex, *((dna_hex, output) if dna_hex else ("",)))

    def lineage_consumer(self, ns: str, producer_hex: str, consumer_hex: str = "", input_name: str = "") -> bytes:
        """Without consumer and input: the prefix of every consumer of the producer outcome."""
        return self._key(
            "lineage", ns, "consumer", producer_hex, *((consumer_hex, input_name) if consumer_hex else ("",))
        )

    def lineage_consumed(self, ns: str, blob_hex: str, consumer_hex: str = "", input_name: str = "") -> bytes:
        """Without consumer and input: the prefix of every outcome that read the blob."""
        return self._key("lineage", ns, "consumed", blob_hex, *((consumer_hex, input_name) if consumer_hex else ("",)))

    def lineage_sweep_cursor(self) -> bytes:
        """The run-index key (tail) up to which weft-api's lineage sweep has checked outcomes."""
        return self._key("lineagesweep", "cursor")

    def parse_ready(self, key: bytes) -> tuple[str, str, str]:
        """(namespace, run, step) of a ready-mark key."""
        ns, run, step = key[len(self.ready_all()) :].decode().split("/", 2)
        return ns, run, step

    def tail(self, key: bytes, prefix: bytes) -> str:
        """The part of `key` after `prefix`, decoded."""
        return key[len(prefix) :].decode()
