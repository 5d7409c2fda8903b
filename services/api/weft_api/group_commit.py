"""Group commit: concurrent independent transactions sent to etcd as one.

CreateRun's transaction is small (a few compares and puts), and under load weft-api has
many of them in flight at once: each costs a client call in the api and a transaction in
etcd. `GroupCommit.txn` sends the first one at once and gathers those that arrive while it
is in flight into one transaction that holds all their compares and all their success
operations, within etcd's limits (operations per transaction, request size).

That one transaction is all-or-nothing, so nothing changes for a caller:
- if every compare holds, every member's writes are made together and each member gets
  a result as if its own transaction had succeeded (at the group's revision);
- if any compare fails (or the group fails in any other way), nothing was written and
  every member runs its own transaction, failure branch included, exactly as it would
  have without the group.

Members of a group are independent by construction: a transaction joins a group only if
no key it writes is written or compared by another member, and no key it compares is
written by another (two CreateRuns of one request id, or of one run id, never share a
group, so the first-writer-wins outcome is the one each would get alone). Compares on a
key nobody in the group writes (the pipeline's head) are shared freely. Only puts and
compares of single keys are grouped; any other transaction is sent alone. This module
never retries a member's own transaction and never changes what a member writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from weft_core.store import MAX_REQUEST_BYTES, MAX_TXN_OPS, Store, TxnResult

log = logging.getLogger(__name__)

#: Most bytes of compares and operations in one group (weft keeps each request under this).
MAX_GROUP_BYTES = MAX_REQUEST_BYTES


@dataclass
class _Member:
    compares: Sequence[Any]
    success: Sequence[Any]
    failure: Sequence[Any]
    size: int
    compared: frozenset[bytes]
    written: frozenset[bytes]
    done: asyncio.Future[TxnResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _size(ops: Sequence[Any]) -> int:
    return sum(op.ByteSize() for op in ops)


def _groupable(compares: Sequence[Any], success: Sequence[Any]) -> bool:
    """Only single-key compares and puts: their keys say exactly what a member touches."""
    return all(not c.range_end for c in compares) and all(op.WhichOneof("request") == "request_put" for op in success)


class GroupCommit:
    """Sends concurrent independent transactions to etcd as few transactions (see above)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[_Member] = []
        self._flusher: asyncio.Task[None] | None = None

    async def txn(self, compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> TxnResult:
        """Like `Store.txn`, possibly together with other callers' transactions.

        A member of a group that succeeded gets a result without `responses` (the success
        branch's answers are not split up): use it for writes whose answer is the revision.
        """
        size = _size(compares) + _size(success)
        if (
            size > MAX_GROUP_BYTES // 2
            or max(len(compares), len(success)) > MAX_TXN_OPS // 2
            or not _groupable(compares, success)
        ):
            return await self.store.txn(compares, success, failure)  # not for sharing
        member = _Member(
            compares,
            success,
            failure,
            size,
            compared=frozenset(c.key for c in compares),
            written=frozenset(op.request_put.key for op in success),
        )
        self._queue.append(member)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        # A caller cancelled meanwhile cancels its future: it is then left out, or, if its
        # group is already on its way, written without anyone waiting for the answer.
        return await member.done

    async def _flush(self) -> None:
        # Whatever queued while a group was in flight forms the next group, so a lone call
        # is sent at once and waits for nobody.
        group: list[_Member] = []
        try:
            while self._queue:
                group = self._take_group()
                await self._commit(group)
        finally:
            self._flusher = None
            for member in group + self._queue:  # only when this task itself was cancelled
                member.done.cancel()

    def _take_group(self) -> list[_Member]:
        """The next group, in arrival order; a member that conflicts with it waits for the next."""
        group: list[_Member] = []
        later: list[_Member] = []
        compares = operations = size = 0
        compared: set[bytes] = set()
        written: set[bytes] = set()
        while self._queue:
            member = self._queue.pop(0)
            if member.done.done():  # its caller went away before it was sent
                continue
            if group and (
                compares + len(member.compares) > MAX_TXN_OPS
                or operations + len(member.success) > MAX_TXN_OPS
                or size + member.size > MAX_GROUP_BYTES
            ):
                self._queue.insert(0, member)
                break
            if member.written & (written | compared) or member.compared & written:
                later.append(member)
                continue
            group.append(member)
            compares += len(member.compares)
            operations += len(member.success)
            size += member.size
            compared |= member.compared
            written |= member.written
        self._queue[:0] = later
        return group

    async def _commit(self, group: list[_Member]) -> None:
        if len(group) > 1:
            try:
                result = await self.store.txn(
                    [c for m in group for c in m.compares], [op for m in group for op in m.success]
                )
            except Exception as error:  # any failure of the group: each member goes alone
                log.debug("a group of %d transactions failed (%s); sending them one by one", len(group), error)
            else:
                if result.succeeded:
                    for member in group:
                        if not member.done.done():
                            member.done.set_result(TxnResult(True, [], result.revision))
                    return
        await asyncio.gather(*(self._alone(member) for member in group))

    async def _alone(self, member: _Member) -> None:
        try:
            result = await self.store.txn(member.compares, member.success, member.failure)
        except Exception as error:
            if not member.done.done():
                member.done.set_exception(error)
            return
        if not member.done.done():
            member.done.set_result(result)
