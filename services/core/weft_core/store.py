"""weft's access to etcd: reads, transactions within etcd's limits, resumable watches, leases.

Built on aetcd's generated etcd stubs over a channel we own, because weft needs what
aetcd's high-level client does not expose (range limits and revisions, count-only ranges,
watch resumption from a revision) and must never hide an etcd outage behind a hang:
every call has a deadline and an unreachable etcd raises `Unavailable` with a message
that says so. The channel reconnects by itself when etcd comes back, so callers need no
restart logic.

With `group_commit`, transactions submitted at about the same moment by independent
callers travel to etcd as one transaction (`TxnGroup`): a wide fan-out's claims, step
records and commits cost a few round trips per batch instead of one per step. Grouping
never weakens a caller's transaction: the group is applied atomically only when every
member's compares hold, and otherwise each member is sent again on its own, so every
caller sees exactly the answer its own transaction would have had.

Never import a second etcd client library in the same process: their descriptors collide.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from weft_core import metrics
from weft_core.errors import FailedPrecondition, Internal, ResourceExhausted, Unavailable
from weft_core.keyspace import prefix_end
from weft_core.tls import ClientTls

log = logging.getLogger(__name__)

#: etcd's default `--max-txn-ops`; a transaction may hold at most this many operations
#: (and as many compares). Batches stay below it.
MAX_TXN_OPS = 128
#: Keys written per batched transaction: half the limit leaves room for a compare per key.
TXN_BATCH = 64
#: etcd's default `--max-request-bytes` is 1.5 MiB; weft keeps each request under 1 MiB.
MAX_REQUEST_BYTES = 1024 * 1024
#: Deadline of one unary etcd call.
CALL_TIMEOUT = 5.0
#: Largest message weft accepts from etcd (a page of runs, a batch of step records).
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd stores it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: Any) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True)
class RangeResult:
    """A page of keys, whether more follow, and the store revision it was read at."""

    kvs: list[KeyValue]
    more: bool
    revision: int
    count: int


@dataclass(frozen=True)
class TxnResult:
    """Whether the compares held, the responses of the branch taken, and the revision."""

    succeeded: bool
    responses: list[Any]
    revision: int

    def range_kvs(self, index: int) -> list[KeyValue]:
        """The keys read by the `index`-th operation (a `get`) of the branch taken."""
        return [KeyValue.from_pb(kv) for kv in self.responses[index].response_range.kvs]


@dataclass(frozen=True)
class WatchEvent:
    """A change of one key. `deleted` events carry the key and the revision only."""

    key: bytes
    value: bytes
    revision: int
    deleted: bool
    create_revision: int


class ResponseTooLarge(Internal):
    """etcd's answer exceeded the client's receive limit: ask for fewer keys at a time.

    Not `Unavailable`: the same read fails the same way on every retry.
    """


class LeaseNotFound(Internal):
    """A write named a lease etcd no longer has (expired, revoked, or etcd was restored)."""


class Compacted(Exception):
    """The requested start revision was compacted; re-list and watch from the list's revision."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted below {compact_revision}")
        self.compact_revision = compact_revision


# Operations and compares for `Store.txn`, built as etcd's own request messages.


def op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def op_delete(key: bytes, *, prefix: bool = False) -> Any:
    request = rpc.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
    return rpc.RequestOp(request_delete_range=request)


def op_get(key: bytes, *, prefix: bool = False, count_only: bool = False) -> Any:
    request = rpc.RangeRequest(key=key, range_end=prefix_end(key) if prefix else b"", count_only=count_only)
    return rpc.RequestOp(request_range=request)


def op_txn(compare: Iterable[Any], success: Iterable[Any], failure: Iterable[Any] = ()) -> Any:
    """A transaction nested in another one: its compares are evaluated when the enclosing
    transaction reaches it, so it sees the enclosing transaction's earlier writes."""
    request = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
    return rpc.RequestOp(request_txn=request)


def _compare(key: bytes, target: Any, result: Any, **value: Any) -> Any:
    return rpc.Compare(key=key, target=target, result=result, **value)


def absent(key: bytes) -> Any:
    """Holds when `key` does not exist (create revision 0)."""
    return _compare(key, rpc.Compare.CREATE, rpc.Compare.EQUAL, create_revision=0)


def present(key: bytes) -> Any:
    """Holds when `key` exists."""
    return _compare(key, rpc.Compare.CREATE, rpc.Compare.GREATER, create_revision=0)


def unchanged_since(key: bytes, mod_revision: int) -> Any:
    """Holds when `key` was last modified at `mod_revision` (0: it does not exist)."""
    return _compare(key, rpc.Compare.MOD, rpc.Compare.EQUAL, mod_revision=mod_revision)


def value_is(key: bytes, value: bytes) -> Any:
    """Holds when `key` holds exactly `value`."""
    return _compare(key, rpc.Compare.VALUE, rpc.Compare.EQUAL, value=value)


def lease_is(key: bytes, lease: int) -> Any:
    """Holds when `key` is bound to `lease`."""
    return _compare(key, rpc.Compare.LEASE, rpc.Compare.EQUAL, lease=lease)


class Store:
    """An etcd connection with weft's error handling. Cheap to share within a process."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = CALL_TIMEOUT,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
        tls: ClientTls | None = None,
        group_commit: bool = False,
    ) -> None:
        """Opens a channel to etcd (connecting lazily).

        Args:
            endpoints: `http://host:port` URLs, a list or one comma-separated string.
            timeout: Deadline of each unary call, in seconds.
            max_receive_bytes: Largest etcd response accepted; a larger one raises
                `ResponseTooLarge`.
            tls: Talk TLS to etcd (its CA, and a client certificate when etcd asks for
                one); None is plaintext. `https://` endpoints need it.
            group_commit: Send concurrent transactions together (see the module docstring).
        """
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise ValueError("no etcd endpoint given (e.g. http://127.0.0.1:2379)")
        self.endpoints = [e.strip() for e in endpoints]
        self.timeout = timeout
        targets = [e.removeprefix("http://").removeprefix("https://") for e in self.endpoints]
        # One channel over all endpoints: gRPC's round_robin policy moves on when one dies.
        target = targets[0] if len(targets) == 1 else "ipv4:" + ",".join(targets)
        options = [
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.lb_policy_name", "round_robin"),
            # Reconnect quickly after an etcd restart instead of backing off for minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            # (a lease must be refreshed within a fraction of its TTL once etcd is back).
            ("grpc.max_reconnect_backoff_ms", 250),
        ]
        if tls is None:
            if any(e.startswith("https://") for e in self.endpoints):
                raise ValueError("https:// etcd endpoints need TLS settings (--etcd-ca-cert)")
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)
        self._group = TxnGroup(self) if group_commit else None
        #: Transactions sent to etcd, and how many callers' transactions they carried.
        self.txns_sent = 0
        self.txns_grouped = 0

    async def close(self) -> None:
        await self._channel.close(None)

    def _unavailable(self, error: grpc.aio.AioRpcError) -> Exception:
        code = error.code()
        details = error.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT and "too many operations" in details:
            return ResourceExhausted(f"etcd refused a transaction: {details}")
        if code == grpc.StatusCode.INVALID_ARGUMENT and "request is too large" in details:
            return ResourceExhausted(f"etcd refused a request as too large: {details}")
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            return Compacted(0)
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return LeaseNotFound(f"etcd does not know the lease of this write ({details})")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            # Our own client refused etcd's answer: retrying reads the same keys again, so this
            # is no outage that passes by itself but a read that must ask for less at a time.
            return ResponseTooLarge(
                f"an etcd response was larger than this client accepts ({details}); this is a weft bug: "
                "the read must use smaller pages (or the records it reads are larger than they should be)"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "space" in details:
            return FailedPrecondition(f"etcd is out of space ({details}); compact and defragment it")
        return Unavailable(
            f"etcd at {', '.join(self.endpoints)} is unavailable ({code.name}: {details}); "
            "the service keeps running and recovers by itself once etcd is reachable again"
        )

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        # The request type names the etcd method (RangeRequest → Range) for the metrics.
        name = type(request).__name__.removesuffix("Request")
        started = time.monotonic()
        try:
            response = await method(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as error:
            metrics.etcd_request(name, time.monotonic() - started, error.code().name)
            raise self._unavailable(error) from error
        metrics.etcd_request(name, time.monotonic() - started)
        return response

    async def status(self) -> int:
        """Checks that etcd answers; returns its current revision."""
        response = await self._call(self._maintenance.Status, rpc.StatusRequest())
        return int(response.header.revision)

    async def reachable(self, timeout: float = 2.0) -> bool:
        """Whether etcd answers a status request within `timeout` seconds (readiness)."""
        try:
            await self._call(self._maintenance.Status, rpc.StatusRequest(), timeout)
        except Exception:
            return False
        return True

    async def get(self, key: bytes, *, revision: int = 0) -> KeyValue | None:
        if self._group is not None and not revision:
            # A read-only transaction joins the group of concurrent ones.
            kvs = (await self.txn([], [op_get(key)])).range_kvs(0)
            return kvs[0] if kvs else None
        response = await self._call(self._kv.Range, rpc.RangeRequest(key=key, revision=revision))
        return KeyValue.from_pb(response.kvs[0]) if response.kvs else None

    async def get_many(self, keys: Sequence[bytes]) -> dict[bytes, KeyValue]:
        """Reads several keys in as few transactions as etcd's limits allow (one snapshot each)."""
        found: dict[bytes, KeyValue] = {}
        for start in range(0, len(keys), MAX_TXN_OPS):
            batch = keys[start : start + MAX_TXN_OPS]
            result = await self.txn([], [op_get(k) for k in batch])
            for i in range(len(batch)):
                for kv in result.range_kvs(i):
                    found[kv.key] = kv
        return found

    async def range(
        self,
        prefix: bytes,
        *,
        start: bytes | None = None,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        descending: bool = False,
    ) -> RangeResult:
        """Keys with `prefix`, from `start` (inclusive) if given, at most `limit` of them."""
        end = prefix_end(prefix)
        request = rpc.RangeRequest(
            key=start or prefix,
            range_end=end,
            limit=limit,
            revision=revision,
            keys_only=keys_only,
        )
        if descending:
            request = rpc.RangeRequest(
                key=prefix,
                range_end=(start + b"\0") if start else end,
                limit=limit,
                revision=revision,
                keys_only=keys_only,
                sort_order=rpc.RangeRequest.DESCEND,
                sort_target=rpc.RangeRequest.KEY,
            )
        response = await self._call(self._kv.Range, request)
        kvs = [KeyValue.from_pb(kv) for kv in response.kvs]
        return RangeResult(kvs, bool(response.more), int(response.header.revision), int(response.count))

    async def range_all(self, prefix: bytes, *, page: int = 1000, keys_only: bool = False) -> RangeResult:
        """Every key with `prefix`, read in pages at one revision (a consistent snapshot).

        A page whose answer is too large for the client (large values) is read again in
        halves, down to one key per read, so large records slow the listing down instead of
        making it fail forever.
        """
        kvs: list[KeyValue] = []
        revision = 0
        start: bytes | None = None
        while True:
            try:
                result = await self.range(prefix, start=start, limit=page, revision=revision, keys_only=keys_only)
            except ResponseTooLarge:
                if page <= 1:
                    raise
                page = max(1, page // 2)
                log.warning("a page of %r was too large for one etcd response; reading %d keys at a time", prefix, page)
                continue
            revision = result.revision
            kvs.extend(result.kvs)
            if not result.more or not result.kvs:
                return RangeResult(kvs, False, revision, len(kvs))
            start = result.kvs[-1].key + b"\0"

    async def count(self, prefix: bytes) -> int:
        if self._group is not None:
            result = await self.txn([], [op_get(prefix, prefix=True, count_only=True)])
            return int(result.responses[0].response_range.count)
        request = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)
        response = await self._call(self._kv.Range, request)
        return int(response.count)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        response = await self._call(self._kv.Put, rpc.PutRequest(key=key, value=value, lease=lease))
        return int(response.header.revision)

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Deletes `key` (or every key under it); returns how many keys were deleted."""
        request = rpc.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        response = await self._call(self._kv.DeleteRange, request)
        return int(response.deleted)

    async def txn(self, compare: Iterable[Any], success: Iterable[Any], failure: Iterable[Any] = ()) -> TxnResult:
        """One etcd transaction (grouped with concurrent ones when `group_commit` is on)."""
        request = txn_request(compare, success, failure)
        if self._group is not None:
            return await self._group.submit(request)
        return await self.send_txn(request)

    async def send_txn(self, request: Any) -> TxnResult:
        """Sends one prepared TxnRequest as it is (never grouped)."""
        response = await self._call(self._kv.Txn, request)
        return TxnResult(bool(response.succeeded), list(response.responses), int(response.header.revision))

    async def create_if_absent(self, key: bytes, value: bytes, *, lease: int = 0) -> bool:
        """Creates `key` unless it exists; True if this call created it."""
        result = await self.txn([absent(key)], [op_put(key, value, lease)])
        return result.succeeded

    async def create_many_if_absent(
        self, items: Sequence[tuple[bytes, bytes]], *, lease: int = 0, unless: Sequence[bytes] | None = None
    ) -> list[bytes]:
        """Creates every absent key of `items`, in transactions within etcd's limits.

        Keys that already exist are left alone, so deriving the same marks twice (two
        executors, a restart) is harmless. With `unless` (one key per item), an item is
        also left alone while its `unless` key exists. Returns the keys this call created.
        """
        created: list[bytes] = []
        guards = list(unless) if unless is not None else None
        per_txn = TXN_BATCH // 2 if guards is not None else TXN_BATCH
        for start in range(0, len(items), per_txn):
            batch = list(items[start : start + per_txn])
            blockers = guards[start : start + per_txn] if guards is not None else []
            while batch:
                compares = [absent(k) for k, _ in batch] + [absent(k) for k in blockers]
                checks = [op_get(k, count_only=True) for k, _ in batch]
                checks += [op_get(k, count_only=True) for k in blockers]
                result = await self.txn(compares, [op_put(k, v, lease) for k, v in batch], checks)
                if result.succeeded:
                    created.extend(k for k, _ in batch)
                    break
                # Someone created some of them meanwhile: keep only those still absent.
                counts = [r.response_range.count for r in result.responses]
                keep = [
                    i for i in range(len(batch)) if counts[i] == 0 and (not blockers or counts[len(batch) + i] == 0)
                ]
                batch = [batch[i] for i in keep]
                blockers = [blockers[i] for i in keep] if blockers else []
        return created

    async def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Writes `items` in transactions within etcd's limits; returns the last revision."""
        revision = 0
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for key, value in [*items, (b"", b"")]:
            flush = not key or len(batch) >= MAX_TXN_OPS or size + len(key) + len(value) > MAX_REQUEST_BYTES
            if flush and batch:
                revision = (await self.txn([], [op_put(k, v) for k, v in batch])).revision
                batch, size = [], 0
            if key:
                batch.append((key, value))
                size += len(key) + len(value)
        return revision

    # Leases

    async def grant_lease(self, ttl: int) -> int:
        response = await self._call(self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        if response.error:
            raise Unavailable(f"etcd refused a lease: {response.error}")
        return int(response.ID)

    async def refresh_lease(self, lease: int) -> int:
        """Renews `lease`; returns its remaining TTL (0 or less: it has expired)."""

        async def one() -> int:
            async for response in self._lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease)])):
                return int(response.TTL)
            return 0

        try:
            return await asyncio.wait_for(one(), self.timeout)
        except grpc.aio.AioRpcError as error:
            raise self._unavailable(error) from error
        except TimeoutError as error:
            raise Unavailable(f"etcd did not answer a lease keep-alive within {self.timeout}s") from error

    async def lease_time_to_live(self, lease: int) -> int:
        """Seconds `lease` has left (-1: etcd does not know it)."""
        response = await self._call(self._lease.LeaseTimeToLive, rpc.LeaseTimeToLiveRequest(ID=lease))
        return int(response.TTL)

    async def revoke_lease(self, lease: int) -> None:
        await self._call(self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease))

    # Watches

    async def watch(
        self, prefix: bytes, start_revision: int, *, progress_notify: bool = False
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Yields batches of changes under `prefix` from `start_revision` on, forever.

        A dropped connection (etcd restart, network) is resumed from the revision after the
        last delivered event, so callers see every change exactly once and in order. A
        compacted start revision raises `Compacted`: the caller must re-list.
        With `progress_notify`, etcd sends empty batches now and then; they are yielded so
        the caller can notice that the stream is alive.
        """
        next_revision = start_revision
        dropped_at = 0.0  # when the current outage began (0: none); it is logged once
        while True:
            create = rpc.WatchCreateRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                start_revision=next_revision,
                progress_notify=progress_notify,
            )
            # The one request is written on the call, not fed from a request iterator: grpc
            # would consume an iterator in a task of its own, which it leaves pending when the
            # call ends by itself (etcd gone) and which the garbage collector then destroys.
            call = self._watch.Watch()
            try:
                await call.write(rpc.WatchRequest(create_request=create))
                async for response in call:
                    if dropped_at:
                        log.info(
                            "etcd watch of %r resumed from revision %d after %.1fs",
                            prefix,
                            next_revision,
                            time.monotonic() - dropped_at,
                        )
                        dropped_at = 0.0
                    if response.compact_revision:
                        raise Compacted(int(response.compact_revision))
                    if response.canceled:
                        raise Unavailable(f"etcd cancelled the watch of {prefix!r}: {response.cancel_reason}")
                    if response.created and not response.events:
                        continue
                    batch = [
                        WatchEvent(
                            key=e.kv.key,
                            value=e.kv.value,
                            revision=int(e.kv.mod_revision),
                            deleted=e.type == rpc.Event.DELETE,
                            create_revision=int(e.kv.create_revision),
                        )
                        for e in response.events
                    ]
                    if batch:
                        next_revision = batch[-1].revision + 1
                    elif response.header.revision >= next_revision:
                        next_revision = int(response.header.revision) + 1
                    yield batch
                # The server ended the stream without an error: reconnect.
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                # InvalidStateError: the call ended before the request could be written.
                if (
                    isinstance(error, grpc.aio.AioRpcError)
                    and error.code() == grpc.StatusCode.CANCELLED
                    and call.cancelled()
                ):
                    raise
                code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "ended"
                if not dropped_at:
                    # One line per outage: the retries every 0.2 s until etcd is back are DEBUG.
                    dropped_at = time.monotonic()
                    log.warning(
                        "etcd watch of %r dropped (%s); retrying until etcd answers, from revision %d",
                        prefix,
                        code,
                        next_revision,
                    )
                else:
                    log.debug("etcd watch of %r still down (%s)", prefix, code)
                await asyncio.sleep(0.2)
            finally:
                call.cancel()


def txn_request(compare: Iterable[Any], success: Iterable[Any], failure: Iterable[Any] = ()) -> Any:
    """The TxnRequest of these branches; ResourceExhausted past etcd's operation limit."""
    request = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
    for branch in (request.compare, request.success, request.failure):
        if len(branch) > MAX_TXN_OPS:
            raise ResourceExhausted(
                f"a transaction of {len(branch)} operations exceeds etcd's limit of {MAX_TXN_OPS}; "
                "this is a weft bug: batch the writes"
            )
    return request


def _written_keys(request: Any) -> set[bytes] | None:
    """The keys a transaction may write (nested ones included), or None when it writes a
    range (never grouped)."""
    keys: set[bytes] = set()
    for op in (*request.success, *request.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put":
            keys.add(op.request_put.key)
        elif kind == "request_delete_range":
            if op.request_delete_range.range_end:
                return None
            keys.add(op.request_delete_range.key)
        elif kind == "request_txn":
            nested = _written_keys(op.request_txn)
            if nested is None:
                return None
            keys |= nested
    return keys


@dataclass
class _Member:
    request: Any
    answer: asyncio.Future[TxnResult]
    writes: set[bytes]
    compared: set[bytes]
    size: int


class TxnGroup:
    """Group commit: concurrent independent transactions sent to etcd as one.

    A member joins the next group unless the group would pass etcd's limits (128
    operations per branch, the request size), the member writes a key an earlier member
    writes (etcd refuses a key twice in one transaction), or its compares look at a key
    an earlier member writes (etcd evaluates every compare before any write, so that
    member would not see the earlier one's effect). Under these rules a group that
    succeeds is exactly the members applied one after the other in group order: each
    member gets the responses of its own operations, as if it had been applied alone.
    When a group's compares fail, its members are sent one by one (each gets its own
    failure branch's answer). At most `in_flight` groups are in flight; while they are,
    new members wait and form the next group.
    """

    def __init__(self, store: Store, *, in_flight: int = 2) -> None:
        self.store = store
        self.in_flight = in_flight
        self._waiting: list[_Member] = []
        self._flying = 0
        # Senders in flight (asyncio keeps only weak references to tasks).
        self._senders: set[asyncio.Task[None]] = set()

    async def txn(self, compare: Iterable[Any], success: Iterable[Any], failure: Iterable[Any] = ()) -> TxnResult:
        """Like `Store.txn`, sent with the next group (for a caller whose Store does not
        group every transaction, e.g. weft-api's CreateRun)."""
        return await self.submit(txn_request(compare, success, failure))

    async def submit(self, request: Any) -> TxnResult:
        """Sends `request` with the next group; returns its own answer."""
        writes = _written_keys(request)
        size = request.ByteSize()
        if writes is None or size > MAX_REQUEST_BYTES // 4:
            return await self.store.send_txn(request)
        answer: asyncio.Future[TxnResult] = asyncio.get_running_loop().create_future()
        compared = {c.key for c in request.compare}
        self._waiting.append(_Member(request, answer, writes, compared, size))
        if self._flying < self.in_flight:
            self._flying += 1
            # Started on the next turn of the loop, so that callers woken by the same
            # event (one etcd answer, one watch batch) join the same group.
            sender = asyncio.get_running_loop().create_task(self._send_groups())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await answer

    def _next_group(self) -> list[_Member]:
        group: list[_Member] = []
        compares = successes = size = 0
        written: set[bytes] = set()
        rest: list[_Member] = []
        for member in self._waiting:
            if member.answer.done():  # its caller was cancelled
                continue
            request = member.request
            fits = (
                compares + len(request.compare) <= MAX_TXN_OPS
                and successes + len(request.success) <= MAX_TXN_OPS
                and size + member.size <= MAX_REQUEST_BYTES
                and not (written & member.writes)
                and not (written & member.compared)
            )
            if not fits:
                rest.append(member)
                continue
            group.append(member)
            compares += len(request.compare)
            successes += len(request.success)
            size += member.size
            written |= member.writes
        self._waiting = rest
        return group

    async def _send_groups(self) -> None:
        try:
            while self._waiting:
                group = self._next_group()
                if group:
                    await self._send(group)
        finally:
            self._flying -= 1

    async def _send(self, group: list[_Member]) -> None:
        if len(group) == 1:
            await self._send_alone(group[0])
            return
        request = rpc.TxnRequest(
            compare=[c for m in group for c in m.request.compare],
            success=[op for m in group for op in m.request.success],
        )
        try:
            self.store.txns_sent += 1
            self.store.txns_grouped += len(group)
            result = await self.store.send_txn(request)
        except Unavailable as error:
            # Applied or not, as for a lone transaction: every member's caller decides.
            for member in group:
                if not member.answer.done():
                    member.answer.set_exception(error)
            return
        except Exception:
            # e.g. refused as too large together: each alone gets its own answer.
            await asyncio.gather(*(self._send_alone(m) for m in group))
            return
        if not result.succeeded:
            await asyncio.gather(*(self._send_alone(m) for m in group))
            return
        start = 0
        for member in group:
            count = len(member.request.success)
            if not member.answer.done():
                member.answer.set_result(TxnResult(True, result.responses[start : start + count], result.revision))
            start += count

    async def _send_alone(self, member: _Member) -> None:
        try:
            self.store.txns_sent += 1
            self.store.txns_grouped += 1
            result = await self.store.send_txn(member.request)
        except Exception as error:
            if not member.answer.done():
                member.answer.set_exception(error)
            return
        if not member.answer.done():
            member.answer.set_result(result)
