"""The loop thread that gives the async client its blocking face."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from weft._sync import EventLoopThread


async def _numbers(closed: list[bool]) -> AsyncIterator[int]:
    try:
        for n in range(5):
            await asyncio.sleep(0)
            yield n
    finally:
        closed.append(True)


def test_run_returns_results_and_raises_errors_from_the_loop_thread() -> None:
    bridge = EventLoopThread()
    try:

        async def where() -> str:
            return threading.current_thread().name

        assert bridge.run(where()) == "weft-client"

        async def fail() -> None:
            raise KeyError("x")

        with pytest.raises(KeyError):
            bridge.run(fail())
    finally:
        bridge.close()


def test_iterate_closes_the_async_iterator_on_break() -> None:
    bridge = EventLoopThread()
    try:
        closed: list[bool] = []
        assert list(bridge.iterate(_numbers(closed))) == [0, 1, 2, 3, 4]
        assert closed == [True]
        closed.clear()
        iterator = bridge.iterate(_numbers(closed))
        for n in iterator:
            if n == 1:
                break
        iterator.close()
        assert closed == [True]
    finally:
        bridge.close()


def test_close_cancels_pending_work_and_refuses_more() -> None:
    bridge = EventLoopThread()
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.run_coroutine_threadsafe(forever(), bridge.loop)
    bridge.close()
    assert cancelled.is_set()

    async def nothing() -> None:
        return None

    with pytest.raises(RuntimeError, match="closed"):
        bridge.run(nothing())
