"""The executor's presence in etcd: its lease and its registration record.

An executor's claims and its record `executors/{id}` are bound to one etcd lease, kept
alive by a task of our own every TTL/6 (aetcd has no background keep-alive). When the
executor dies the lease expires and every claim vanishes with it, which is how other
executors learn to take its steps over (invariant 4).

Etcd may expire the lease TTL seconds after the last refresh it applied, and from then
on another executor may run our steps. So the lease counts as lost, and `on_lost` stops
every attempt of ours, at (send time of the last successful refresh, or of the grant)
+ TTL - margin, *before* etcd can have given the steps away, even when etcd is silently
unreachable and no call fails; each refresh call is bounded by TTL/3 and the time left, so a
hung call cannot push the decision past that moment; a refresh finding the lease gone is a
loss at once. Only then do we register again with a new lease. Nothing here decides
anything about steps.

A failed refresh is retried quickly (`RETRY_FIRST_SECONDS`, doubling up to
`RETRY_MAX_SECONDS`) for as long as the deadline allows, not after another interval, and
refreshes come every TTL/6 rather than TTL/3, because the deadline runs from the last
refresh *before* an outage: an etcd restart shorter than TTL - margin - TTL/6 - (a retry
pause and a reconnect, about 0.5 s) costs no attempt whenever it starts (etcd keeps leases
across a restart), and one up to TTL - margin when it starts just after a refresh. Such
an outage is expected: it is logged as one WARNING when it starts and one INFO line when
it ends, never as an ERROR or a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from weft_core import metrics
from weft_core.errors import ServiceError
from weft_core.keyspace import Keyspace
from weft_core.store import Store

log = logging.getLogger(__name__)

#: The lease counts as lost this long (at least) before etcd could expire it: covers the
#: time `on_lost` needs to kill attempts and clock-rate differences between hosts.
LOSS_MARGIN_SECONDS = 0.3
LOSS_MARGIN_FRACTION = 0.2
#: After a failed refresh, the next try comes this soon, doubling up to RETRY_MAX_SECONDS.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 0.25
#: Refreshes come every TTL * REFRESH_FRACTION (a lease keep-alive is one small request).
REFRESH_FRACTION = 1 / 6
#: Pause between tries to register again after a loss, while etcd does not answer.
REREGISTER_SECONDS = 0.5


def registration_record(executor_id: str, address: str, runtime: str) -> bytes:
    """The JSON value of `executors/{id}` (the format other components read)."""
    return json.dumps(
        {
            "id": executor_id,
            "address": address,
            "runtime": runtime,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start_time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        },
        sort_keys=True,
    ).encode()


class Registration:
    """Holds the executor's lease and record (see the module docstring).

    Args:
        store: etcd.
        keyspace: Where the record lives.
        executor_id: This executor's id.
        ttl: Lease TTL in seconds.
        record: The registration record's value.
    """

    def __init__(self, store: Store, keyspace: Keyspace, executor_id: str, ttl: int, record: bytes) -> None:
        self.store = store
        self.keyspace = keyspace
        self.executor_id = executor_id
        self.ttl = ttl
        self.record = record
        self.lease = 0
        #: Set while the lease is known to be alive; claims are made only then.
        self.valid = asyncio.Event()
        #: time.monotonic() at which the last successful refresh was sent.
        self.last_ok = time.monotonic()
        #: time.monotonic() at which the lease was last declared lost (0: never).
        self.lost_at = 0.0

    async def register(self) -> int:
        """Grants a new lease and writes the record bound to it; returns the lease id.

        The lease's deadline (`last_ok`) is the moment the grant was *sent*: etcd starts the
        TTL when it grants, which is no earlier than that, and the record put after it may
        take a while.
        """
        sent = time.monotonic()
        lease = await self.store.grant_lease(self.ttl)
        await self.store.put(self.keyspace.executor(self.executor_id), self.record, lease=lease)
        self.lease = lease
        self.last_ok = sent
        self.valid.set()
        log.info("executor %s registered with lease %x (ttl %ds)", self.executor_id, lease, self.ttl)
        return lease

    @property
    def margin(self) -> float:
        """Seconds before the lease could expire at which our attempts stop."""
        return max(LOSS_MARGIN_SECONDS, self.ttl * LOSS_MARGIN_FRACTION)

    async def keep_alive(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        """Refreshes the lease every TTL/6 forever (quickly again after a failure, while the
        deadline allows); on loss, calls `on_lost` then re-registers."""
        interval = self.ttl * REFRESH_FRACTION
        failures = 0
        outage_since = 0.0
        while True:
            deadline = self.last_ok + self.ttl - self.margin
            pause = interval if not failures else min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (failures - 1))
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            left = deadline - time.monotonic()
            reason = ""
            if left <= 0:
                reason = f"no refresh succeeded for {self.ttl - self.margin:.1f}s; etcd may expire it any moment"
            else:
                sent = time.monotonic()
                try:
                    remaining = await asyncio.wait_for(self.store.refresh_lease(self.lease), min(self.ttl / 3, left))
                except (ServiceError, TimeoutError) as error:
                    # Any error, not only Unavailable: the loop must never die (a zombie
                    # executor whose claims expire while it keeps running their attempts).
                    metrics.lease_renewed(False)
                    if not failures:
                        outage_since = sent
                        detail = error.message if isinstance(error, ServiceError) else "no answer in time"
                        log.warning(
                            "executor %s could not refresh its lease (%s); retrying for up to %.1fs before "
                            "it counts as lost",
                            self.executor_id,
                            detail,
                            max(0.0, left),
                        )
                    failures += 1
                    continue
                if remaining > 0:
                    if failures:
                        log.info(
                            "executor %s refreshed its lease again after %.1fs (%d failed tries); nothing was lost",
                            self.executor_id,
                            time.monotonic() - outage_since,
                            failures,
                        )
                    failures = 0
                    self.last_ok = sent  # etcd's clock started no earlier than our send
                    metrics.lease_renewed(True)
                    continue
                reason = "the lease expired"
            failures = 0
            log.warning(
                "executor %s lost its lease: %s; stopping its attempts and registering again", self.executor_id, reason
            )
            self.lost_at = time.monotonic()
            self.valid.clear()
            metrics.lease_lost()
            await on_lost()
            await self._register_again()

    async def _register_again(self) -> None:
        old = self.lease
        tries = 0
        while True:
            try:
                # Revoking drops any claim the old lease still holds (if etcd kept it alive).
                with contextlib.suppress(ServiceError):
                    await self.store.revoke_lease(old)
                await self.register()
                return
            except ServiceError as error:
                # One warning per outage; the retries themselves are no news.
                (log.debug if tries else log.warning)(
                    "cannot register executor %s yet (%s); retrying every %.1fs",
                    self.executor_id,
                    error.message,
                    REREGISTER_SECONDS,
                )
                tries += 1
                await asyncio.sleep(REREGISTER_SECONDS)

    async def unregister(self) -> None:
        """Revokes the lease: the record and every claim vanish at once."""
        self.valid.clear()
        if self.lease:
            with contextlib.suppress(ServiceError):
                await self.store.revoke_lease(self.lease)
