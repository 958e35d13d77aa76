"""Waiting on state another process (or a TTL, or a store behind a queue) owns: nothing to await, so it is polled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], Awaitable[bool]], within_s: float = 20.0, every_s: float = 0.1) -> None:
    """Polls the async `condition()` until it is true; TimeoutError after `within_s`."""
    async with asyncio.timeout(within_s):
        while True:
            if await condition():
                return
            await asyncio.sleep(every_s)
