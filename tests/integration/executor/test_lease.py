"""An executor stops its attempts before etcd can expire its lease, even when etcd goes
silent (a partition: no answer, no error), and the keep-alive survives any error."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from weft.localstack import EtcdProcess
from weft_core.keyspace import Keyspace
from weft_core.store import Store
from weft_executor.registration import Registration


async def test_a_silent_etcd_makes_the_executor_stop_its_attempts_before_the_lease_can_expire(
    private_etcd: EtcdProcess, keyspace: Keyspace
) -> None:
    store = Store(private_etcd.endpoint)
    ttl = 3
    registration = Registration(store, keyspace, "silent", ttl, b"{}")
    await registration.register()
    lost = asyncio.Event()

    async def on_lost() -> None:
        lost.set()

    keep_alive = asyncio.create_task(registration.keep_alive(on_lost))
    await asyncio.sleep(1.2)  # at least one refresh went through
    os.kill(private_etcd.child.pid, signal.SIGSTOP)  # silent: calls hang, nothing fails
    try:
        await asyncio.wait_for(lost.wait(), ttl + 6)
        # etcd expires the lease `ttl` after the last refresh it applied, which it received
        # no earlier than we sent it: our attempts must be stopped before that.
        assert registration.lost_at - registration.last_ok < ttl
        assert not registration.valid.is_set()
    finally:
        os.kill(private_etcd.child.pid, signal.SIGCONT)
        keep_alive.cancel()
        await asyncio.gather(keep_alive, return_exceptions=True)
        await store.close()


async def test_a_failed_refresh_is_retried_at_once_so_a_short_etcd_restart_loses_no_lease(
    private_etcd: EtcdProcess, keyspace: Keyspace
) -> None:
    store = Store(private_etcd.endpoint)
    ttl = 8  # margin 1.6 s: the lease counts as lost 6.4 s after the last refresh
    registration = Registration(store, keyspace, "blip", ttl, b"{}")
    await registration.register()
    lease = registration.lease
    lost = asyncio.Event()

    async def on_lost() -> None:
        lost.set()

    keep_alive = asyncio.create_task(registration.keep_alive(on_lost))
    try:
        await _refreshed_after(registration, time.monotonic())
        # The outage starts right after a refresh: the next ones fail until etcd is back.
        private_etcd.stop()
        await asyncio.sleep(3.0)
        private_etcd.start()
        back = time.monotonic()
        # Refreshed again soon after etcd is back, not a whole refresh interval after the
        # failed one (TTL/3 = 2.7 s: the next try would come about 2 s after etcd is back).
        await asyncio.wait_for(_refreshed_after(registration, back), 1.0)
        await asyncio.sleep(2.0)
        assert not lost.is_set()
        assert registration.lease == lease
        assert registration.lost_at == 0.0
    finally:
        keep_alive.cancel()
        await asyncio.gather(keep_alive, return_exceptions=True)
        await store.close()


async def _refreshed_after(registration: Registration, moment: float) -> None:
    while registration.last_ok < moment:
        await asyncio.sleep(0.02)


class _SlowPuts(Store):
    """A real etcd client whose puts take a second: a slow registration record write."""

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        await asyncio.sleep(1.0)
        return await super().put(key, value, lease=lease)


async def test_the_lease_deadline_runs_from_when_the_grant_was_sent(etcd: EtcdProcess, keyspace: Keyspace) -> None:
    store = _SlowPuts(etcd.endpoint)
    registration = Registration(store, keyspace, "slow-put", 5, b"{}")
    try:
        before = time.monotonic()
        await registration.register()
        after = time.monotonic()
        assert after - before >= 1.0
        # etcd's TTL started at the grant, before the slow put: so does our deadline.
        assert before <= registration.last_ok < before + 0.5
        await registration.unregister()
    finally:
        await store.close()
