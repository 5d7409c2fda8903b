"""weft_core.server options an operator relies on: connections age out (so clients behind a
Service re-balance over new replicas), and every call is counted by method and code."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from prometheus_client import REGISTRY

from weft_core.server import ServiceBinding, create_server


def peer_service() -> ServiceBinding:
    """A service whose one method answers the caller's address as the server sees it."""

    async def peer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return context.peer().encode()

    handler = grpc.method_handlers_generic_handler("test.Peer", {"Get": grpc.unary_unary_rpc_method_handler(peer)})
    return ServiceBinding("test.Peer", None, lambda _servicer, server: server.add_generic_rpc_handlers((handler,)))


async def test_client_connections_are_asked_to_reconnect_after_max_connection_age() -> None:
    server, port = create_server("127.0.0.1:0", [peer_service()], max_connection_age=0.5)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            get = channel.unary_unary("/test.Peer/Get", None, None)
            first = await get(b"", timeout=5)
            assert await get(b"", timeout=5) == first  # one connection while it is young
            await asyncio.sleep(1.5)  # older than 0.5 s (+10% jitter, + the grace)
            later = await get(b"", timeout=5)
            assert later != first, "the client kept its first connection past max_connection_age"
    finally:
        await server.stop(grace=0.5)


async def test_every_call_is_counted_by_method_and_code() -> None:
    server, port = create_server("127.0.0.1:0", [peer_service()])
    await server.start()

    def handled(code: str) -> float:
        labels = {"grpc_service": "test.Peer", "grpc_method": "Get", "grpc_type": "unary", "grpc_code": code}
        return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0

    before = handled("OK")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(3):
                await channel.unary_unary("/test.Peer/Get", None, None)(b"", timeout=5)
    finally:
        await server.stop(grace=0.5)
    assert handled("OK") == before + 3
