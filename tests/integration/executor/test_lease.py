"""An executor stops its attempts before etcd can expire its lease, even when etcd goes
silent (a partition: no answer, no error), and the keep-alive survives any error."""

from __future__ import annotations

import asyncio
import os
import signal

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
