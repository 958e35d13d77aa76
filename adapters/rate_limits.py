"""Abuse limits (the `limits` library, moving windows): in memory, or in Redis when `REDIS_URL` is set so every
process of the service shares the counts.

Kinds, each with its rate (settings, `limits` notation such as "5/minute"):
    login_account   failed logins per email (then 429 for that account, whoever asks)
    login_address   login attempts per client address
    token_mint      join tokens minted per caller
    whip_join       WHIP joins per join token
    api_key         requests per API key

`hit(kind, key)` counts one and returns None, or the seconds until one is allowed again (the `Retry-After`).
A limiter that cannot reach Redis lets the request through and says so in the log once per outage: a broken
counter must not lock everybody out of a live interview.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)

SWEEP_S = 1.0  # how often, at most, the in-memory storage drops expired entries


class SweptMemoryStorage(MemoryStorage):
    """`limits`' asyncio in-memory storage, sweeping expired entries at most once per `SWEEP_S`.

    Upstream (limits 5.x, `limits/aio/storage/memory.py`) starts a sweep task after every hit once the previous one
    finished, and the sweep hops to a thread (`asyncio.to_thread`) for each key: at 200 API requests/s that is a
    task and a thread hop per request, ~0.2 ms of CPU each. The counts never depend on the sweep (`acquire_entry`
    and `get_moving_window` compare each entry's own time, `get` drops an expired counter itself); it only frees
    memory, which once a second does as well. Overrides the name-mangled `__schedule_expiry` (the only hook);
    tests/test_rate_limits.py fails if a new `limits` renames it."""

    def __init__(self) -> None:
        super().__init__()
        self._swept_at = -SWEEP_S

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_S:
            self._swept_at = now
            await MemoryStorage._MemoryStorage__schedule_expiry(self)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Rates:
    login_account: str = "5/minute"
    login_address: str = "30/minute"
    token_mint: str = "60/minute"
    whip_join: str = "10/minute"
    api_key: str = "600/minute"

    def parsed(self) -> dict[str, RateLimitItem]:
        return {name: parse(getattr(self, name)) for name in self.__slots__}


class RateLimits:
    def __init__(self, rates: Rates | None = None, redis_url: str | None = None) -> None:
        self.items = (rates or Rates()).parsed()
        self._pool: redis.asyncio.ConnectionPool | None = None
        if redis_url:
            # our own pool, so that closing the limiter closes its connections (the storage has no close)
            self._pool = redis.asyncio.ConnectionPool.from_url(redis_url)
            self.storage: Storage = RedisStorage(redis_url.replace("redis://", "async+redis://", 1),
                                                 implementation="redispy", key_prefix="interview_worker",
                                                 connection_pool=self._pool)  # type: ignore[arg-type]
        else:
            self.storage = SweptMemoryStorage()
        self.limiter = MovingWindowRateLimiter(self.storage)
        self._failing = False

    async def hit(self, kind: str, key: str) -> float | None:
        """Counts one `kind` event for `key`: None if allowed, else seconds until it would be."""
        item = self.items[kind]
        try:
            if await self.limiter.hit(item, kind, key):
                self._failing = False
                return None
            return await self._retry_after(item, kind, key)
        except Exception as exc:  # noqa: BLE001 - storage down: let the request through, say so once
            self._failed(exc)
            return None

    async def exhausted(self, kind: str, key: str) -> float | None:
        """Without counting: None if another `kind` event for `key` would be allowed, else the Retry-After."""
        item = self.items[kind]
        try:
            if await self.limiter.test(item, kind, key):
                return None
            return await self._retry_after(item, kind, key)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return None

    async def _retry_after(self, item: RateLimitItem, kind: str, key: str) -> float:
        stats = await self.limiter.get_window_stats(item, kind, key)
        return max(1.0, float(math.ceil(stats.reset_time - time.time())))

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("rate limit storage unavailable, not limiting until it is back: %s", exc)
        return None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
