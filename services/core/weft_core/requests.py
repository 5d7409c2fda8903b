"""How long weft remembers a request_id, and the etcd lease that makes it forget.

A mutation that carries a `request_id` records `{root}/requests/{ns}/{id}` in the same
transaction as its change, so a retry returns the first result instead of doing the work
again. Those keys are bound to a lease so that etcd deletes them by itself: without one
they would pile up forever (one per CreateRun). A key lives at least `RETENTION` and at most
`RETENTION + ROTATION`: the lease is granted for their sum and replaced by a fresh one every
`ROTATION`, so one lease grant serves every request of an hour.

This module never writes request keys itself; the services do, with `await lease()`.
"""

from __future__ import annotations

import asyncio
import time

from weft_core.store import Store

#: A retry with the same request_id returns the first result for at least this long.
RETENTION = 24 * 3600
#: A new lease is granted this often; keys written under the old one expire with it.
ROTATION = 3600


class RequestIdLeases:
    """Hands out the lease request-id keys are bound to, granting a new one every ROTATION."""

    def __init__(self, store: Store, *, retention: int = RETENTION, rotation: int = ROTATION) -> None:
        self.store = store
        self.retention = retention
        self.rotation = rotation
        self._lease = 0
        self._granted_at = 0.0
        self._lock = asyncio.Lock()

    async def lease(self) -> int:
        """A lease that lives at least `retention` seconds from now."""
        if self._lease and time.monotonic() - self._granted_at < self.rotation:
            return self._lease
        async with self._lock:
            if not self._lease or time.monotonic() - self._granted_at >= self.rotation:
                self._lease = await self.store.grant_lease(self.retention + self.rotation)
                self._granted_at = time.monotonic()
            return self._lease

    def forget(self) -> None:
        """Drops the current lease: etcd no longer knows it (revoked, or etcd restored from a
        backup); the next `lease()` grants a new one."""
        self._lease = 0
