"""Helpers shared by weft's tests: waiting for a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def assert_eventually(check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Calls `check` until it returns a truthy value without raising; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what or check}") from last
        time.sleep(interval)


async def assert_eventually_async(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "",
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
) -> T:
    """Awaits `check` until it returns a truthy value without raising; fails after `timeout`.

    Exceptions of the `retry_on` types count as "not yet"; any other propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = await check()
            if value:
                return value
        except retry_on as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what or check}") from last
        await asyncio.sleep(interval)
