"""The rule that picks the winner among the replicas of a redundant step.

A step with `redundancy` runs each of its attempts as several replicas at once (or, with
`hedge_after`, as one replica plus a backup launched when the first runs too long). Each
replica ends with its own create-if-absent result record
(`runs/{ns}/{run}/replicas/{step}/{attempt}/result/{replica}`), so etcd gives the results a
total order: their create revisions. `decide` is a pure function of that order:

- FIRST: the first successful result wins. Once every planned replica has a result and
  none succeeded, no replica can win.
- MAJORITY: the outputs that a strict majority of the planned replicas produced win, as
  soon as that many results agree; the winner is the earliest of them. When the results
  so far plus the replicas still to finish can no longer make a majority, no replica can
  win: "nondeterministic step: replicas disagree", with every replica's digests.

A later result never changes an earlier decision (revisions only grow, and each rule looks
at a prefix of the order), so any executor that reads the records at any revision after
the deciding one derives the same decision: an executor that dies while deciding leaves
nothing half-decided, and the next reader completes it. An undecidable attempt with a
replica LOST with its executor is "lost", not failed: a crash must not fail a step.

This module only reads and decides; it never writes to etcd nor launches anything
(`weft_executor.races` does, the api reads tables through it for ExplainStep and WatchRun).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from weft.v1 import pipeline_pb2, run_pb2
from weft_core.keyspace import Keyspace
from weft_core.store import KeyValue

Attempt = run_pb2.Attempt

#: Separates a step's name from the attempt and replica of a replica item's name
#: (`train#1.2`): never part of a step name (a DNS label).
ITEM_SEPARATOR = "#"
#: Hex digits of a digest shown in decisions and tables.
SHORT_DIGEST = 12


def replica_item(step: str, attempt: int, replica: int) -> str:
    """The name under which replica `replica` of attempt `attempt` is marked ready and claimed."""
    return f"{step}{ITEM_SEPARATOR}{attempt}.{replica}"


def parse_replica_item(name: str) -> tuple[str, int, int] | None:
    """(step, attempt, replica) of a replica item's name, or None for a step's own name."""
    step, separator, rest = name.partition(ITEM_SEPARATOR)
    attempt, dot, replica = rest.partition(".")
    if not separator or not dot or not attempt.isdigit() or not replica.isdigit():
        return None
    return step, int(attempt), int(replica)


@dataclass(frozen=True)
class Redundancy:
    """A step's redundancy policy with the proto's defaults applied."""

    replicas: int
    majority: bool
    hedge_after: float | None

    @staticmethod
    def of(step: pipeline_pb2.Step) -> Redundancy | None:
        """The policy of a redundant step, or None when the step runs one replica."""
        policy = step.redundancy
        hedge = policy.hedge_after.seconds + policy.hedge_after.nanos / 1e9 if policy.HasField("hedge_after") else 0
        replicas = max(1, policy.replicas)
        if replicas == 1 and hedge <= 0:
            return None
        return Redundancy(replicas, policy.select == pipeline_pb2.Redundancy.SELECT_MAJORITY, hedge or None)

    @property
    def launched_at_once(self) -> int:
        """Replicas planned when the attempt starts (a hedge adds one later)."""
        return 1 if self.hedge_after else self.replicas

    @property
    def needed(self) -> int:
        """Agreeing results that make a majority of the replicas."""
        return self.replicas // 2 + 1


@dataclass
class Round:
    """The replica records of one attempt of a redundant step, as read at `revision`.

    Attributes:
        attempt: The attempt number.
        planned: Replicas planned (0 when the attempt was never started).
        planned_revision: Mod revision of the planned record (0 when absent).
        running: Replicas as launched, by replica index.
        results: (create revision, result) of every finished replica, in commit order.
        decided: Why the winner won, once the step was committed from this attempt.
    """

    attempt: int
    planned: int = 0
    planned_revision: int = 0
    running: dict[int, Attempt] = field(default_factory=dict)
    results: list[tuple[int, Attempt]] = field(default_factory=list)
    decided: str = ""

    def result_of(self, replica: int) -> Attempt | None:
        return next((a for _, a in self.results if a.replica == replica), None)


def parse_rounds(kvs: Iterable[KeyValue], keyspace: Keyspace, ns: str, run: str, step: str) -> dict[int, Round]:
    """Every attempt's replica records from a read of `keyspace.replicas(ns, run, step)`."""
    prefix = keyspace.replicas(ns, run, step)
    rounds: dict[int, Round] = {}
    for kv in kvs:
        parts = keyspace.tail(kv.key, prefix).split("/")
        if not parts[0].isdigit():
            continue
        found = rounds.setdefault(int(parts[0]), Round(int(parts[0])))
        if parts[1:] == ["planned"]:
            found.planned = int(kv.value or b"0")
            found.planned_revision = kv.mod_revision
        elif parts[1:] == ["decided"]:
            found.decided = kv.value.decode()
        elif len(parts) == 3 and parts[1] in ("running", "result"):
            attempt = Attempt()
            attempt.ParseFromString(kv.value)
            if parts[1] == "running":
                found.running[attempt.replica] = attempt
            else:
                found.results.append((kv.create_revision, attempt))
    for found in rounds.values():
        found.results.sort(key=lambda item: item[0])
    return rounds


@dataclass(frozen=True)
class Decision:
    """What the replicas of one attempt decided.

    Attributes:
        outcome: "won" (commit `winner`), "failed" (no replica can win; counts as a
            failed attempt) or "lost" (no replica can win because some were lost with
            their executor; does not count against the retry budget).
        reason: Why, for people; recorded in the outcome and the step record.
        winner: The winning replica's result (for "won").
        revision: The create revision of the result that decided.
        table: Every planned replica: results in commit order, then those still running,
            then those never launched.
    """

    outcome: Literal["won", "failed", "lost"]
    reason: str
    winner: Attempt | None
    revision: int
    table: tuple[Attempt, ...]


def short_digest(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}:{hex_digest[:SHORT_DIGEST]}…" if hex_digest else digest


def outputs_summary(outputs: Mapping[str, str]) -> str:
    """`out=sha256:0123456789ab…`: a replica's outputs, short, in name order."""
    return ", ".join(f"{name}={short_digest(digest)}" for name, digest in sorted(outputs.items())) or "no outputs"


def replica_summary(attempt: Attempt) -> str:
    """One replica for a decision's message: its outputs when it succeeded, else its state."""
    if attempt.state == Attempt.STATE_SUCCEEDED:
        return f"replica {attempt.replica}: {outputs_summary(attempt.output_digests)}"
    state = Attempt.State.Name(attempt.state).removeprefix("STATE_").lower()
    first = attempt.message.splitlines()[0] if attempt.message else ""
    return f"replica {attempt.replica}: {state}{f' ({first})' if first else ''}"


def _agreement(attempt: Attempt) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(attempt.output_digests.items()))


def replica_table(found: Round) -> tuple[Attempt, ...]:
    """Every planned replica of the attempt: results in commit order, then the running,
    then those never launched (state unset, message "not launched")."""
    table = [result for _, result in found.results]
    finished = {a.replica for a in table}
    for replica in sorted(found.running):
        if replica not in finished:
            table.append(found.running[replica])
    for replica in range(1, found.planned + 1):
        if replica not in finished and replica not in found.running:
            table.append(Attempt(number=found.attempt, replica=replica, message="not launched"))
    return tuple(table)


def replica_event_of(keyspace: Keyspace, ns: str, run: str, key: bytes, value: bytes) -> run_pb2.ReplicaEvent | None:
    """The WatchRun event of a written replica record (None for the planned count)."""
    step, _, rest = keyspace.tail(key, keyspace.replicas_run_prefix(ns, run)).partition("/")
    parts = rest.split("/")
    if parts[1:] == ["decided"]:
        return run_pb2.ReplicaEvent(kind=run_pb2.ReplicaEvent.KIND_DECIDED, step=step, decision=value.decode())
    if len(parts) != 3 or parts[1] not in ("running", "result"):
        return None
    attempt = Attempt()
    attempt.ParseFromString(value)
    kind = run_pb2.ReplicaEvent.KIND_STARTED if parts[1] == "running" else run_pb2.ReplicaEvent.KIND_FINISHED
    return run_pb2.ReplicaEvent(kind=kind, step=step, attempt=attempt)


def latest_table(rounds: Mapping[int, Round]) -> tuple[tuple[Attempt, ...], str]:
    """The replica table of the latest attempt and its recorded decision ("" if open)."""
    if not rounds:
        return (), ""
    found = rounds[max(rounds)]
    return replica_table(found), found.decided


def decide(policy: Redundancy, found: Round) -> Decision | None:
    """The decision the results of `found` make, or None while it is open (module docstring)."""
    planned = found.planned or policy.launched_at_once
    results = found.results
    table = replica_table(found)
    if policy.majority:
        needed = policy.needed
        votes: dict[tuple[tuple[str, str], ...], int] = {}
        for revision, result in results:
            if result.state != Attempt.STATE_SUCCEEDED:
                continue
            key = _agreement(result)
            votes[key] = votes.get(key, 0) + 1
            if votes[key] == needed:
                winner = next(r for _, r in results if r.state == Attempt.STATE_SUCCEEDED and _agreement(r) == key)
                reason = (
                    f"{needed} of {planned} replicas agree on {outputs_summary(winner.output_digests)} at revision "
                    f"{revision}; replica {winner.replica} was the first of them"
                )
                return Decision("won", reason, winner, revision, table)
        still_running = planned - len(results)
        if max(votes.values(), default=0) + still_running >= needed:
            return None
        last = results[-1][0] if results else 0
        lost = any(r.state in (Attempt.STATE_LOST, Attempt.STATE_UNCONFIRMED) for _, r in results)
        listed = "; ".join(replica_summary(r) for _, r in results)
        if not votes:
            reason = f"no replica succeeded ({listed})"
        else:
            reason = f"nondeterministic step: replicas disagree, no {needed} of {planned} agree ({listed})"
        return Decision("lost" if lost else "failed", reason, None, last, table)
    for revision, result in results:
        if result.state == Attempt.STATE_SUCCEEDED:
            reason = f"first success at revision {revision} (replica {result.replica} of {planned})"
            if policy.hedge_after and result.replica > 1:
                reason = (
                    f"hedge overtook attempt {found.attempt} after {policy.hedge_after:g}s "
                    f"(first success at revision {revision})"
                )
            return Decision("won", reason, result, revision, table)
    if len(results) < planned:
        return None
    lost = any(r.state in (Attempt.STATE_LOST, Attempt.STATE_UNCONFIRMED) for _, r in results)
    listed = "; ".join(replica_summary(r) for _, r in results)
    return Decision("lost" if lost else "failed", f"no replica succeeded ({listed})", None, results[-1][0], table)
