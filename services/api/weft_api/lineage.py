"""GetLineage: walks committed outcomes upstream and downstream through the lineage index.

The executor writes the index when it commits a new outcome (`weft_core.lineage`); this
module only reads it. An outcome the index lacks (an executor stopped between commit and
index; committed before the index existed) is still found, through the outcome cache or
the records of the run that consumed it, and marked `unindexed` until the api's sweep
(`weft_api.lineage_sweep`) indexes it; until then its producers' consumer lists miss it.
Every node costs a few small reads: one limited range read of
`made/{dna}` (which run and step produced it) and a get of that step's done record (its
outputs, input digests, input outcomes and DNA components); a downstream step is one
range read of `consumer/{dna}`; a blob start is a range read of `producer/{blob}` and
`consumed/{blob}`. Nothing scans runs (an unindexed outcome missing from the outcome
cache costs a read of its consumer's run's done records), so the cost follows the size
of the answer, not of the store.

A page is a slice of one deterministic walk (start nodes, then upstream by distance,
then downstream, then by DNA): the token holds the offset, and the next page walks
again (the index only grows, so a page never loses a node an earlier page showed). A walk
stops at `MAX_NODES` and says so (`truncated`). It must never write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from weft.v1 import run_pb2
from weft_core.dna import SHA256_PREFIX
from weft_core.errors import FailedPrecondition, InvalidArgument, NotFound
from weft_core.keyspace import Keyspace
from weft_core.provenance import COMMITTED_STEP_STATES, INPUT_PREFIX, BlobReader, dna_components, restore_spilled
from weft_core.spec import parse_namespace, parse_run_name, run_name
from weft_core.store import MAX_TXN_OPS, Store, op_get

#: Depth of a walk when the request leaves it 0.
DEFAULT_DEPTH = 3
#: Deepest walk allowed.
MAX_DEPTH = 20
#: Nodes per page when the request leaves it 0, and the most allowed.
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
#: Most nodes one walk visits before it stops and says `truncated`.
MAX_NODES = 10_000
#: Keys read per page of a consumer or blob range.
RANGE_PAGE = 1000

Direction = run_pb2.LineageDirection


def _hex_of(digest: str, field: str) -> str:
    value = digest.removeprefix(SHA256_PREFIX)
    if not digest.startswith(SHA256_PREFIX) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidArgument(
            f"{field}: {digest!r} is not a digest; give it as sha256:<64 lower-case hex>", field=field
        )
    return value


@dataclass
class _Start:
    """Where a walk starts: the namespace, the start outcomes (DNA hex) and, from a blob,
    the outcomes that produced it and the (outcome, input name) pairs that read it."""

    namespace: str
    outcomes: list[str]
    blob_producers: list[str] = field(default_factory=list)
    blob_reads: list[tuple[str, str]] = field(default_factory=list)
    #: For an unindexed start outcome: the run whose records hold it.
    hints: dict[str, str] = field(default_factory=dict)


@dataclass
class _Walk:
    nodes: dict[str, run_pb2.LineageNode]
    edges: list[run_pb2.LineageEdge]
    truncated: bool = False


class LineageReader:
    """Answers GetLineage from the lineage index and the done records it points at."""

    def __init__(self, store: Store, keyspace: Keyspace, blobs: BlobReader) -> None:
        self.store = store
        self.keyspace = keyspace
        self.blobs = blobs

    async def _range_tails(self, prefix: bytes) -> list[str]:
        """The key tails under `prefix` (keys only, paged)."""
        tails: list[str] = []
        start: bytes | None = None
        while True:
            page = await self.store.range(prefix, start=start, limit=RANGE_PAGE, keys_only=True)
            tails.extend(self.keyspace.tail(kv.key, prefix) for kv in page.kvs)
            if not page.more or not page.kvs:
                return tails
            start = page.kvs[-1].key + b"\0"

    async def nodes(
        self, ns: str, dna_hexes: list[str], distance: int, hints: Mapping[str, str] | None = None
    ) -> list[run_pb2.LineageNode]:
        """The outcomes with these DNAs, from the done records of the steps that made them.

        Two batched reads per `MAX_TXN_OPS` nodes: the `made` prefixes in one transaction
        of range reads, then the done records they name. An outcome without a `made` key
        (unindexed, see `weft_api.lineage_sweep`) is looked for in the outcome cache, then
        among the done records of the run `hints` names for it (the run that consumed it,
        or the run a walk started from), and marked `unindexed`.
        """
        ks = self.keyspace
        made: dict[str, tuple[str, str]] = {}
        for first in range(0, len(dna_hexes), MAX_TXN_OPS):
            batch = dna_hexes[first : first + MAX_TXN_OPS]
            result = await self.store.txn([], [op_get(ks.lineage_made(ns, dna), prefix=True) for dna in batch])
            for i, dna in enumerate(batch):
                kvs = result.range_kvs(i)
                if kvs:  # the first producer of that DNA (by run id) stands for all of them
                    run_id, _, step = ks.tail(kvs[0].key, ks.lineage_made(ns, dna)).partition("/")
                    made[dna] = (run_id, step)
        found = await self.store.get_many([ks.done(ns, run_id, step) for run_id, step in made.values()])
        records: dict[str, run_pb2.StepRun] = {}
        for dna, (run_id, step) in made.items():
            kv = found.get(ks.done(ns, run_id, step))
            if kv is not None:
                records[dna] = _parse_step(kv.value)
        unindexed = [dna for dna in dna_hexes if dna not in made]
        if unindexed:
            records.update(await self._unindexed(ns, unindexed, hints or {}))
        nodes = []
        for dna in dna_hexes:
            node = run_pb2.LineageNode(dna=SHA256_PREFIX + dna, distance=distance, unindexed=dna not in made)
            nodes.append(node)
            if dna in made:
                run_id, step = made[dna]
                node.run, node.step = run_name(ns, run_id), step
            record = records.get(dna)
            if record is None:
                continue  # its run is gone, or nothing records it any more
            # A wide join keeps its components and input outcomes in blobs (weft_core.dna).
            await restore_spilled(record, self.blobs)
            outcome = record.outcome
            if not node.run:
                node.run, node.step = outcome.run, outcome.step
            node.outputs.update(outcome.outputs)
            node.input_outcomes.update(outcome.input_outcomes)
            if outcome.HasField("end_time"):
                node.end_time.CopyFrom(outcome.end_time)
            for name, value in dna_components(record):
                if name.startswith(INPUT_PREFIX):
                    node.inputs[name.removeprefix(INPUT_PREFIX)] = value
                node.components.add(name=name, value=value)
        return nodes

    async def _unindexed(self, ns: str, dnas: list[str], hints: Mapping[str, str]) -> dict[str, run_pb2.StepRun]:
        """Done records of outcomes that have no `made` key: through the outcome cache
        (`outcomes/{ns}/{dna}` names run and step), else among the hinted run's records
        (a CACHED record there holds the producing run's outcome)."""
        ks = self.keyspace
        records: dict[str, run_pb2.StepRun] = {}
        cached = await self.store.get_many([ks.outcome(ns, dna) for dna in dnas])
        producers: dict[str, tuple[str, str]] = {}
        for dna in dnas:
            kv = cached.get(ks.outcome(ns, dna))
            if kv is None:
                continue
            outcome = run_pb2.Outcome()
            outcome.ParseFromString(kv.value)
            with contextlib.suppress(InvalidArgument):
                producers[dna] = (parse_run_name(outcome.run, "outcome.run")[1], outcome.step)
        found = await self.store.get_many([ks.done(ns, run_id, step) for run_id, step in producers.values()])
        for dna, (run_id, step) in producers.items():
            kv = found.get(ks.done(ns, run_id, step))
            if kv is not None and (record := _parse_step(kv.value)).outcome.dna == SHA256_PREFIX + dna:
                records[dna] = record
        by_run: dict[str, list[str]] = {}
        for dna in dnas:
            if dna not in records and dna in hints:
                by_run.setdefault(hints[dna], []).append(dna)
        for run_id, wanted in by_run.items():
            listed = await self.store.range_all(ks.done_prefix(ns, run_id))
            for kv in listed.kvs:
                record = _parse_step(kv.value)
                dna = record.outcome.dna.removeprefix(SHA256_PREFIX)
                if dna in wanted and dna not in records and record.state in COMMITTED_STEP_STATES:
                    records[dna] = record
        return records

    async def _start(self, request: run_pb2.GetLineageRequest) -> _Start:
        """Where a request starts."""
        given = [f for f, v in (("step", request.step), ("outcome", request.outcome), ("blob", request.blob)) if v]
        if len(given) != 1:
            field = "step" if not given else given[1]
            raise InvalidArgument(
                f"{field}: give exactly one start: `run` and `step`, `outcome` (a DNA) or `blob` (a digest)"
                + (f"; got {', '.join(given)}" if given else ""),
                field=field,
            )
        if request.step:
            if not request.run:
                raise InvalidArgument("run: is required with step; name the step's run", field="run")
            ns, run_id = parse_run_name(request.run, "run")
            kv = await self.store.get(self.keyspace.done(ns, run_id, request.step))
            if kv is None:
                raise NotFound(f'step "{request.step}" of run "{run_name(ns, run_id)}" has no outcome (yet)')
            record = run_pb2.StepRun()
            record.ParseFromString(kv.value)
            if record.state not in COMMITTED_STEP_STATES:
                state = run_pb2.StepRun.State.Name(record.state).removeprefix("STATE_")
                raise FailedPrecondition(
                    f'step "{request.step}" of run "{run_name(ns, run_id)}" is {state}: it has no outcome'
                )
            return _Start(ns, [_hex_of(record.outcome.dna, "step")], hints={
                record.outcome.dna.removeprefix(SHA256_PREFIX): run_id})  # fmt: skip
        ns = parse_namespace(request.parent)
        if request.outcome:
            return _Start(ns, [_hex_of(request.outcome, "outcome")])
        blob = _hex_of(request.blob, "blob")
        producers = sorted({tail.partition("/")[0] for tail in await self._range_tails(
            self.keyspace.lineage_producer(ns, blob))})  # fmt: skip
        reads = [tail.partition("/") for tail in await self._range_tails(self.keyspace.lineage_consumed(ns, blob))]
        return _Start(ns, producers, producers, [(dna, input_name) for dna, _, input_name in reads])

    async def _add(
        self, walk: _Walk, ns: str, dnas: list[str], distance: int, hints: Mapping[str, str] | None = None
    ) -> list[str]:
        """Adds the nodes not met yet (up to MAX_NODES); returns those added."""
        new = list(dict.fromkeys(d for d in dnas if d not in walk.nodes))
        room = MAX_NODES - len(walk.nodes)
        if len(new) > room:
            new, walk.truncated = new[:room], True
        for node in await self.nodes(ns, new, distance, hints):
            walk.nodes[node.dna.removeprefix(SHA256_PREFIX)] = node
        return new

    async def _consumers(self, ns: str, dna: str) -> list[tuple[str, str]]:
        return [
            (consumer, input_name)
            for consumer, _, input_name in (
                tail.partition("/") for tail in await self._range_tails(self.keyspace.lineage_consumer(ns, dna))
            )
        ]

    async def _walk(
        self,
        ns: str,
        starts: list[str],
        downstream_starts: list[str],
        blob_reads: list[tuple[str, str]],
        direction: int,
        depth: int,
        start_hints: Mapping[str, str],
    ) -> _Walk:
        walk = _Walk({}, [])
        await self._add(walk, ns, starts, 0, start_hints)
        if direction in (Direction.LINEAGE_DIRECTION_UPSTREAM, Direction.LINEAGE_DIRECTION_BOTH):
            frontier = list(starts)
            for distance in range(1, depth + 1):
                if not frontier or walk.truncated:
                    break
                producers: list[str] = []
                hints: dict[str, str] = {}
                for dna in frontier:
                    reader = walk.nodes[dna]
                    for input_name, producer in sorted(reader.input_outcomes.items()):
                        walk.edges.append(
                            run_pb2.LineageEdge(producer=producer, consumer=SHA256_PREFIX + dna, input=input_name)
                        )
                        producers.append(producer.removeprefix(SHA256_PREFIX))
                        if reader.run:
                            # An unindexed producer is found among its consumer's run's records.
                            hints.setdefault(producer.removeprefix(SHA256_PREFIX), reader.run.rsplit("/", 1)[-1])
                frontier = await self._add(walk, ns, producers, -distance, hints)
        if direction in (Direction.LINEAGE_DIRECTION_DOWNSTREAM, Direction.LINEAGE_DIRECTION_BOTH):
            frontier, first = list(starts), 1
            if downstream_starts:
                # From a blob: its consumers are one edge away, whoever produced it.
                await self._add(walk, ns, downstream_starts, 1)
                walk.edges += [
                    run_pb2.LineageEdge(producer=SHA256_PREFIX + p, consumer=SHA256_PREFIX + c, input=i)
                    for p in starts
                    for c, i in blob_reads
                ]
                frontier, first = list(downstream_starts), 2
            for distance in range(first, depth + 1):
                if not frontier or walk.truncated:
                    break
                found = await asyncio.gather(*(self._consumers(ns, dna) for dna in frontier))
                consumers: list[str] = []
                for dna, pairs in zip(frontier, found, strict=True):
                    for consumer, input_name in pairs:
                        walk.edges.append(
                            run_pb2.LineageEdge(
                                producer=SHA256_PREFIX + dna, consumer=SHA256_PREFIX + consumer, input=input_name
                            )
                        )
                        consumers.append(consumer)
                frontier = await self._add(walk, ns, consumers, distance)
        return walk

    async def get_lineage(self, request: run_pb2.GetLineageRequest) -> run_pb2.Lineage:
        """The lineage page `request` asks for (see the module docstring)."""
        if request.depth < 0 or request.depth > MAX_DEPTH:
            raise InvalidArgument(f"depth: must be 0 (meaning {DEFAULT_DEPTH}) to {MAX_DEPTH}", field="depth")
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size: must be 0 (meaning 100) to {MAX_PAGE_SIZE}", field="page_size")
        offset = _decode_offset(request.page_token)
        depth = request.depth or DEFAULT_DEPTH
        size = request.page_size or DEFAULT_PAGE_SIZE
        direction = request.direction or Direction.LINEAGE_DIRECTION_BOTH
        start = await self._start(request)
        consumers = sorted({dna for dna, _ in start.blob_reads})
        walk = await self._walk(
            start.namespace, start.outcomes, consumers, start.blob_reads, direction, depth, start.hints
        )

        def order(node: run_pb2.LineageNode) -> tuple[int, int, str]:
            side = 0 if node.distance == 0 else 1 if node.distance < 0 else 2
            return side, abs(node.distance), node.dna

        ordered = sorted(walk.nodes.values(), key=order)
        page = ordered[offset : offset + size]
        shown = {n.dna for n in page}
        edges = [e for e in walk.edges if e.consumer in shown or e.producer in shown]
        token = _encode_offset(offset + size) if offset + size < len(ordered) else ""
        return run_pb2.Lineage(
            nodes=page,
            edges=edges,
            blob_producers=[SHA256_PREFIX + p for p in start.blob_producers],
            blob_consumers=[SHA256_PREFIX + c for c in consumers],
            next_page_token=token,
            truncated=walk.truncated,
        )


def _parse_step(value: bytes) -> run_pb2.StepRun:
    record = run_pb2.StepRun()
    record.ParseFromString(value)
    return record


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"lineage:{offset}".encode()).decode()


def _decode_offset(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, offset = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "lineage" and offset.isdigit():
            return int(offset)
    except ValueError:
        pass
    raise InvalidArgument("page_token: not a token of this listing; leave it empty to start over", field="page_token")
