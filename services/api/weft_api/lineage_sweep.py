"""The lineage sweep of weft-api: indexes committed outcomes that lack their lineage edges.

The executor writes an outcome's lineage index after its commit (`weft_core.lineage`), so
an executor that stops in between leaves the outcome unindexed, and outcomes committed
before the index existed never had one. This sweep makes the index whole: it walks every
run (the run index, `runindex/{ns}/{run}`, in key order), reads each run's done records,
and for every outcome its run produced (SUCCEEDED) whose `made` key is absent (the key
`index_outcome` writes last) writes the whole index again: idempotent puts, so a sweep
racing the executor, another api replica's sweep, or itself, is harmless.

It is bounded and resumable: a tick checks at most `runs_per_tick` runs, then saves its
position (`lineagesweep/cursor`, the last run checked) in etcd, so a restarted api goes on
where the last one stopped instead of starting over. The first pass after a start runs
tick after tick (with `TICK_PAUSE` between them, so it never hogs etcd) until it reaches
the end; later passes start every `interval` seconds. Each tick logs what it checked and
indexed. Replicas share the cursor: two sweeps may check the same runs, never skip one.

Meanwhile GetLineage falls back (`weft_api.lineage`): an unindexed outcome is found through
the outcome cache or its run's records and marked `unindexed`.

It writes only lineage keys and its cursor, and reads nothing it does not need: keys only
of the run index, and done records one run at a time, in pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from weft.v1 import run_pb2
from weft_core.errors import ServiceError
from weft_core.keyspace import Keyspace
from weft_core.lineage import index_outcome, input_digests_of, made_key, produced_outcome
from weft_core.provenance import BlobReader, restore_spilled
from weft_core.store import Store

log = logging.getLogger(__name__)

#: Seconds between two passes once the first one is done (the api's default).
DEFAULT_INTERVAL = 600.0
#: Runs checked per tick; the cursor is saved after each.
RUNS_PER_TICK = 200
#: Done records read per range read of one run.
DONE_PAGE = 100
#: Seconds between the ticks of one pass.
TICK_PAUSE = 0.05


@dataclass
class TickResult:
    """What one tick did."""

    runs: int = 0
    outcomes: int = 0
    indexed: int = 0
    cursor: str = ""
    #: The tick reached the last run: the pass is over and the cursor is back at the start.
    finished: bool = False


class LineageSweep:
    """Indexes outcomes lacking their lineage edges (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        keyspace: Keyspace,
        blobs: BlobReader,
        *,
        interval: float = DEFAULT_INTERVAL,
        runs_per_tick: int = RUNS_PER_TICK,
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.blobs = blobs
        self.interval = interval
        self.runs_per_tick = runs_per_tick
        self._task: asyncio.Task[None] | None = None

    async def cursor(self) -> str:
        """The run-index tail (`{ns}/{run}`) the sweep has checked up to; "" at a pass's start."""
        kv = await self.store.get(self.keyspace.lineage_sweep_cursor())
        return kv.value.decode() if kv is not None else ""

    async def tick(self) -> TickResult:
        """Checks the next `runs_per_tick` runs after the cursor and moves it on."""
        ks = self.keyspace
        prefix = ks.run_index_all()
        cursor = await self.cursor()
        start = prefix + cursor.encode() + b"\0" if cursor else None
        page = await self.store.range(prefix, start=start, limit=self.runs_per_tick, keys_only=True)
        result = TickResult()
        for kv in page.kvs:
            ns, _, run_id = ks.tail(kv.key, prefix).partition("/")
            outcomes, indexed = await self._sweep_run(ns, run_id)
            result.runs += 1
            result.outcomes += outcomes
            result.indexed += indexed
        result.finished = not page.more or not page.kvs
        result.cursor = "" if result.finished else ks.tail(page.kvs[-1].key, prefix)
        if result.cursor != cursor:
            await self.store.put(ks.lineage_sweep_cursor(), result.cursor.encode())
        return result

    async def _sweep_run(self, ns: str, run_id: str) -> tuple[int, int]:
        """(outcomes produced by the run, outcomes indexed now) for one run."""
        ks = self.keyspace
        prefix = ks.done_prefix(ns, run_id)
        produced: list[run_pb2.StepRun] = []
        start: bytes | None = None
        while True:
            page = await self.store.range(prefix, start=start, limit=DONE_PAGE)
            for kv in page.kvs:
                record = run_pb2.StepRun()
                try:
                    record.ParseFromString(kv.value)
                except Exception:  # protobuf raises DecodeError (or others) on garbage
                    log.warning("lineage sweep: the record at %s does not parse; skipped", kv.key.decode())
                    continue
                if not record.step:
                    record.step = ks.tail(kv.key, prefix)
                if produced_outcome(record):
                    produced.append(record)
            if not page.more or not page.kvs:
                break
            start = page.kvs[-1].key + b"\0"
        if not produced:
            return 0, 0
        found = await self.store.get_many([made_key(ks, ns, r, run_id) for r in produced])
        missing = [r for r in produced if made_key(ks, ns, r, run_id) not in found]
        for record in missing:
            await restore_spilled(record, self.blobs)
            await index_outcome(self.store, ks, ns, record.outcome, input_digests_of(record))
            log.info("lineage sweep: indexed the outcome of step %s of run %s/%s", record.step, ns, run_id)
        return len(produced), len(missing)

    async def sweep_pass(self) -> TickResult:
        """Ticks until the pass reaches the last run; returns the totals."""
        total = TickResult()
        while True:
            result = await self.tick()
            total.runs += result.runs
            total.outcomes += result.outcomes
            total.indexed += result.indexed
            log.info(
                "lineage sweep: checked %d runs (%d outcomes), indexed %d; %s",
                result.runs,
                result.outcomes,
                result.indexed,
                "pass done" if result.finished else f"next after {result.cursor}",
            )
            if result.finished:
                total.finished = True
                return total
            await asyncio.sleep(TICK_PAUSE)

    async def _loop(self) -> None:
        while True:
            try:
                total = await self.sweep_pass()
                log.info(
                    "lineage sweep pass: %d runs, %d outcomes checked, %d indexed; next in %gs",
                    total.runs,
                    total.outcomes,
                    total.indexed,
                    self.interval,
                )
            except (ServiceError, OSError) as error:
                # etcd or the artifact store unreachable: the cursor holds the progress.
                log.warning("lineage sweep: %s; trying again in %gs", error, self.interval)
            except Exception:
                # A bug must not end the sweep for the api's lifetime: say it, go on later.
                log.exception("lineage sweep failed; trying again in %gs", self.interval)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Starts sweeping in the background: a pass now, then one every `interval` seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="lineage sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
