"""What weft remembers of a request_id, for how long, and the etcd lease that makes it forget.

A mutation that carries a `request_id` records `{root}/requests/{ns}/{id}` in the same
transaction as its change, so a retry returns the first result instead of doing the work
again. The record (`RequestRecord`) keeps the resource the request created and a digest of
the request itself: a retry must resend the same request, and a request id reused with a
different body is refused with INVALID_ARGUMENT naming `request_id` (AIP-155) instead of
silently answering the first result. Those keys are bound to a lease so that etcd deletes them by itself: without one
they would pile up forever (one per CreateRun). A key lives at least `RETENTION` and at most
`RETENTION + ROTATION`: the lease is granted for their sum and replaced by a fresh one every
`ROTATION`, so one lease grant serves every request of an hour.

This module never writes request keys itself; the services do, with `await lease()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass

from google.protobuf.message import Message

from weft_core.errors import InvalidArgument
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


def request_digest(request: Message) -> str:
    """`sha256:<hex>` of a request without its `request_id`: what a retry must resend.

    The message's type is part of the digest, so a CreateRun and a ResumeRun that share an
    id never match. Map fields are encoded in key order (deterministic serialization).
    """
    body = type(request)()
    body.CopyFrom(request)
    body.ClearField("request_id")  # every mutation request has one
    hasher = hashlib.sha256(body.DESCRIPTOR.full_name.encode() + b"\0")
    hasher.update(body.SerializeToString(deterministic=True))
    return "sha256:" + hasher.hexdigest()


@dataclass(frozen=True)
class RequestRecord:
    """The value of a request key.

    Attributes:
        created: The resource the request created (a run, or a pipeline version).
        digest: `request_digest` of the request; "" in records written before digests
            were kept (they are trusted: they expire within a day).
    """

    created: str
    digest: str = ""

    def encode(self) -> bytes:
        return json.dumps({"created": self.created, "digest": self.digest}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RequestRecord:
        # Records written before digests were kept hold the bare resource name.
        if not raw.startswith(b"{"):
            return cls(raw.decode())
        try:
            value = json.loads(raw)
            return cls(str(value["created"]), str(value.get("digest", "")))
        except (ValueError, KeyError, TypeError):
            return cls(raw.decode(errors="replace"))

    def check_same(self, request_id: str, digest: str) -> None:
        """Refuses a request that reuses `request_id` with another body.

        Raises:
            InvalidArgument: Naming `request_id`, when the digests differ.
        """
        if self.digest and self.digest != digest:
            raise InvalidArgument(
                f'request_id: "{request_id}" was already used for a different request (the one that created '
                f"{self.created}); a retry must send the same request again, and a new request needs a fresh "
                "request id (a UUID)",
                field="request_id",
            )
