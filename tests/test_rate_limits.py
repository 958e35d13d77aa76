"""The in-memory rate limiter (adapters.rate_limits without REDIS_URL): moving-window counts as `limits` keeps
them, with expired entries swept at most once per `SWEEP_S` instead of after every hit."""

from __future__ import annotations

import asyncio

from adapters.rate_limits import SWEEP_S, RateLimits, Rates, SweptMemoryStorage


async def test_counts_are_a_moving_window_whatever_the_sweep() -> None:
    limits = RateLimits(Rates(api_key="3/second"))
    assert isinstance(limits.storage, SweptMemoryStorage)
    assert [await limits.hit("api_key", "k") for _ in range(3)] == [None, None, None]
    retry = await limits.hit("api_key", "k")
    assert retry is not None and retry >= 1
    assert await limits.hit("api_key", "other") is None  # per key
    await asyncio.sleep(1.05)  # the window moved on: allowed again, though no sweep ran since
    assert await limits.hit("api_key", "k") is None


async def test_the_sweep_runs_at_most_once_per_period_and_still_frees_memory() -> None:
    limits = RateLimits(Rates(api_key="1000/second"))
    storage = limits.storage
    assert isinstance(storage, SweptMemoryStorage)
    await limits.hit("api_key", "first")
    sweep = storage.timer  # upstream's sweep task: a new one after every hit unless ours throttles it
    assert sweep is not None
    await sweep
    for i in range(50):
        await limits.hit("api_key", f"key-{i}")
    assert storage.timer is sweep  # no new sweep within the period
    assert any("first" in key for key in storage.events)
    await asyncio.sleep(max(SWEEP_S, 1.0) + 0.1)  # the entries (1 s windows) expired, and the period passed
    await limits.hit("api_key", "later")
    assert storage.timer is not sweep
    await storage.timer
    assert [key for key in storage.events if "later" not in key] == []  # expired entries dropped
