"""Runs the async client's coroutines for synchronous callers.

The SDK's logic is written once, in `AsyncClient`; `Client` drives it from a private event
loop on a background thread (the approach of flyte-sdk's `syncify`). A gRPC aio channel is
bound to the loop that created it, so each `Client` owns one loop thread for its whole
life. Nothing here knows about weft's API: it only moves coroutines and async iterators
across the thread boundary, and must never hold state beyond the loop itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """An asyncio event loop running on a daemon thread, with blocking entry points."""

    def __init__(self, name: str = "weft-client") -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the coroutines run on."""
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the loop thread and blocks until it finishes.

        If the caller is interrupted (Ctrl-C raises KeyboardInterrupt in the waiting
        thread), the coroutine is cancelled too, so no call is left running unseen.

        Raises:
            RuntimeError: Called from the loop thread itself, which would deadlock.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a weft.Client method was called from its own event loop; use weft.AsyncClient there")
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this weft.Client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def iterate(self, iterator: AsyncIterator[T]) -> Generator[T, None, None]:
        """A blocking iterator over an async iterator, each step run on the loop thread.

        Closing the returned generator (a `break` in the caller's loop) closes the async
        iterator on the loop, which cancels the gRPC stream behind it.
        """

        async def next_item() -> T:
            return await anext(iterator)

        try:
            while True:
                try:
                    item = self.run(next_item())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and not self._loop.is_closed():
                self.run(aclose())

    def close(self) -> None:
        """Stops the loop and joins its thread. Pending coroutines are cancelled."""
        if self._loop.is_closed():
            return

        async def cancel_pending() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if threading.current_thread() is not self._thread:
            asyncio.run_coroutine_threadsafe(cancel_pending(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
