"""The executor's presence in etcd: its lease and its registration record.

An executor's claims and its record `executors/{id}` are bound to one etcd lease, kept
alive by a task of our own every TTL/3 (aetcd has no background keep-alive). When the
executor dies the lease expires and every claim vanishes with it, which is how other
executors learn to take its steps over (invariant 4).

If a refresh finds the lease gone, or etcd stays unreachable for longer than the TTL,
other executors may already run this executor's steps: `on_lost` must stop every
attempt of ours *before* we register again with a new lease. Nothing here decides
anything about steps.
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

from weft_core.errors import ServiceError, Unavailable
from weft_core.keyspace import Keyspace
from weft_core.store import Store

log = logging.getLogger(__name__)


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

    async def register(self) -> int:
        """Grants a new lease and writes the record bound to it; returns the lease id."""
        lease = await self.store.grant_lease(self.ttl)
        await self.store.put(self.keyspace.executor(self.executor_id), self.record, lease=lease)
        self.lease = lease
        self.valid.set()
        log.info("executor %s registered with lease %x (ttl %ds)", self.executor_id, lease, self.ttl)
        return lease

    async def keep_alive(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        """Refreshes the lease every TTL/3 forever; on loss, calls `on_lost` then re-registers."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                remaining = await self.store.refresh_lease(self.lease)
                if remaining > 0:
                    last_ok = time.monotonic()
                    continue
                reason = "the lease expired"
            except Unavailable as error:
                if time.monotonic() - last_ok < self.ttl:
                    continue
                reason = f"etcd was unreachable for more than the lease TTL ({error.message})"
            log.warning(
                "executor %s lost its lease: %s; stopping its attempts and registering again", self.executor_id, reason
            )
            self.valid.clear()
            await on_lost()
            await self._register_again()
            last_ok = time.monotonic()

    async def _register_again(self) -> None:
        old = self.lease
        while True:
            try:
                # Revoking drops any claim the old lease still holds (if etcd kept it alive).
                with contextlib.suppress(ServiceError):
                    await self.store.revoke_lease(old)
                await self.register()
                return
            except ServiceError as error:
                log.warning("cannot register executor %s yet: %s", self.executor_id, error.message)
                await asyncio.sleep(1.0)

    async def unregister(self) -> None:
        """Revokes the lease: the record and every claim vanish at once."""
        self.valid.clear()
        if self.lease:
            with contextlib.suppress(ServiceError):
                await self.store.revoke_lease(self.lease)
