"""Which ready steps nobody has claimed: an in-memory mirror of two etcd prefixes.

Executors learn about work only from etcd. `follow_prefix` lists a prefix, then watches
it from the list's revision (re-listing when the revision was compacted, retrying while
etcd is unreachable; `Store.watch` itself resumes a dropped stream from the last revision).
Two such mirrors feed a `ReadyQueue`: the ready marks and the claims. A step is a
candidate when it has a ready mark and no claim; when an executor dies its claims vanish
with its lease, the DELETE events make its steps candidates again, and any executor
claims them (failover within two lease TTLs, invariant 4). Finding work after a slot
frees costs no etcd read at all.

Replica items of a redundant step (`step#attempt.replica`, `weft_core.replicas`) are
candidates like steps, but an executor prefers those of steps it does not already work
on, and takes one of its own steps' replicas only when nothing else is offered and the
item has waited SIBLING_GRACE_SECONDS, so that an idle executor elsewhere gets it first:
replicas spread over executors when there are several.

The mirror may lag etcd: it only suggests candidates. The claim itself is a transaction
(claim absent and ready mark present → create the claim bound to the lease) and is the
only authority on who runs a step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence

from weft_core.errors import ServiceError
from weft_core.replicas import ITEM_SEPARATOR
from weft_core.store import Compacted, KeyValue, Store, WatchEvent

log = logging.getLogger(__name__)

#: (namespace, run, step): how the queue names a step.
StepKey = tuple[str, str, str]

#: Executors pick among this many of the oldest candidates at random, so several idle
#: executors do not all race for the same step.
PICK_SPREAD = 8
#: How long a replica item of a step this executor works on waits before this executor
#: takes it itself (another executor, idle, takes it at once).
SIBLING_GRACE_SECONDS = 0.1
#: Seconds between attempts to list a prefix while etcd is unreachable.
RETRY_SECONDS = 1.0


async def follow_prefix(
    store: Store,
    prefix: bytes,
    on_snapshot: Callable[[list[KeyValue]], Awaitable[None]],
    on_events: Callable[[list[WatchEvent]], Awaitable[None]],
    *,
    keys_only: bool = False,
) -> None:
    """Lists `prefix`, then delivers every change after the list, forever.

    `on_snapshot` receives the complete current content (again after a compaction or an
    outage that interrupted the listing); `on_events` receives each batch of changes.
    """
    while True:
        try:
            snapshot = await store.range_all(prefix, keys_only=keys_only)
            await on_snapshot(snapshot.kvs)
            async for batch in store.watch(prefix, snapshot.revision + 1):
                if batch:
                    await on_events(batch)
        except Compacted:
            log.info("watch of %r fell behind a compaction; listing again", prefix)
        except ServiceError as error:
            # Not only Unavailable: any error (an answer too large, a corrupt record) must
            # leave the loop alive, or this executor stops seeing runs or steps for good.
            log.warning("cannot follow %r: %s; retrying", prefix, error.message)
            await asyncio.sleep(RETRY_SECONDS)


class ReadyQueue:
    """Ready marks without a claim, as far as the watches have told (see module docstring).

    Steps whose claim vanished while their ready mark stayed (their executor died or let
    go without finishing) are offered before every other candidate: they were ready
    first, and taking them over within two lease TTLs (invariant 4) must not wait behind
    a wide fan-out's queue.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self._ready: set[StepKey] = set()
        self._claims: dict[StepKey, str] = {}
        # Insertion-ordered: older ready marks are offered first.
        self._candidates: dict[StepKey, None] = {}
        self._taken_over: dict[StepKey, None] = {}
        self._random = random.Random(seed)
        # When each replica item became a candidate (see SIBLING_GRACE_SECONDS).
        self._offered: dict[StepKey, float] = {}
        self._wake_pending = False
        #: Set whenever a candidate may have appeared.
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._candidates) + len(self._taken_over)

    def _update(self, key: StepKey, *, freed: bool = False) -> None:
        if key in self._ready and key not in self._claims:
            if key not in self._candidates and key not in self._taken_over:
                (self._taken_over if freed else self._candidates)[key] = None
                if ITEM_SEPARATOR in key[2]:
                    self._offered[key] = time.monotonic()
                self.changed.set()
        else:
            self._candidates.pop(key, None)
            self._taken_over.pop(key, None)
            self._offered.pop(key, None)

    def reset_ready(self, keys: Sequence[StepKey]) -> None:
        stale = self._ready - set(keys)
        self._ready = set(keys)
        for key in itertools.chain(stale, keys):
            self._update(key)

    def reset_claims(self, claims: Sequence[tuple[StepKey, str]]) -> None:
        before = set(self._claims)
        self._claims = dict(claims)
        for key in before | set(self._claims):
            self._update(key, freed=key in before)

    def ready_added(self, key: StepKey) -> None:
        self._ready.add(key)
        self._update(key)

    def ready_removed(self, key: StepKey) -> None:
        self._ready.discard(key)
        self._update(key)

    def claimed(self, key: StepKey, owner: str) -> None:
        self._claims[key] = owner
        self._update(key)

    def unclaimed(self, key: StepKey) -> None:
        self._claims.pop(key, None)
        self._update(key, freed=True)

    def claimed_by(self, owner: str) -> list[StepKey]:
        """Steps the mirror last saw claimed by `owner`."""
        return [key for key, holder in self._claims.items() if holder == owner]

    def owner(self, key: StepKey) -> str | None:
        """The executor the mirror last saw holding the claim, if any."""
        return self._claims.get(key)

    def pick(self, busy: Collection[StepKey]) -> StepKey | None:
        """A candidate not in `busy` (this executor's own steps), or None; a replica item
        of a step in `busy` only as a last resort (see the module docstring)."""
        held = {(ns, run, step.partition(ITEM_SEPARATOR)[0]) for ns, run, step in busy}
        deferred: list[StepKey] = []

        def sibling(key: StepKey) -> bool:
            ns, run, step = key
            if ITEM_SEPARATOR not in step or (ns, run, step.partition(ITEM_SEPARATOR)[0]) not in held:
                return False
            deferred.append(key)
            return True

        for pool in (self._taken_over, self._candidates):
            window = itertools.islice(pool, PICK_SPREAD * 4)
            choices = [key for key in window if key not in busy and not sibling(key)]
            if choices:
                return self._random.choice(choices[:PICK_SPREAD])
        now = time.monotonic()
        for key in deferred:
            if now - self._offered.get(key, 0.0) >= SIBLING_GRACE_SECONDS:
                return key
        if deferred and not self._wake_pending:
            # Look again once the grace has passed, should nothing else wake the dispatcher.
            self._wake_pending = True
            asyncio.get_running_loop().call_later(SIBLING_GRACE_SECONDS, self._wake)
        return None

    def _wake(self) -> None:
        self._wake_pending = False
        self.changed.set()
