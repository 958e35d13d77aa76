"""adapters.memory: glibc's heap statistics and `malloc_trim`, which server.py runs after a room closes."""

from __future__ import annotations

import asyncio
import os
import signal
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters import memory
from testing.live_server import LiveServer, live_server, test_settings
from testing.whip_client import WavChannelTrack, whip_publish

pytestmark = pytest.mark.skipif(memory.heap() is None, reason="glibc only (mallinfo2, malloc_trim)")


def test_freed_memory_stays_with_glibc_until_trimmed() -> None:
    # 100 MB of small objects (as frames, packets and stream buffers are): freed, glibc keeps the pages in its
    # arenas (counted free, still resident); trimming hands them back to the kernel.
    objects = [bytes(500) + str(i).encode() for i in range(200_000)]
    held = memory.heap()
    assert held is not None
    del objects
    freed, rss_freed = memory.heap(), memory.rss_mb()
    assert freed is not None and freed["in_use"] < held["in_use"] - 80
    assert freed["free"] > 80, freed  # not returned: free in the arenas
    assert memory.trim() is True
    trimmed, rss_trimmed = memory.heap(), memory.rss_mb()
    assert trimmed is not None and trimmed["in_use"] == pytest.approx(freed["in_use"], abs=5)
    assert rss_trimmed < rss_freed - 80, (rss_freed, rss_trimmed)


class Kept:
    def __init__(self) -> None:
        self.buffer = bytearray(1000)


def test_a_dump_diff_names_what_grew_and_where(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        memory.install_debug_dump(tmp_path, frames=4)
        os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs before the next bytecode
        kept = [Kept() for _ in range(3000)]
        os.kill(os.getpid(), signal.SIGUSR2)
        report = memory.diff(tmp_path / "memory-0", tmp_path / "memory-1")
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGUSR2, previous)
    assert len(kept) == 3000
    assert "Kept +3000" in report, report
    line = next(ln for ln in report.splitlines() if "KiB" in ln)  # the largest growth comes first
    assert "test_memory.py" in line and float(line.split()[0]) > 2900, report


@pytest.fixture
async def live(tmp_path: Path, mongo_url: str) -> AsyncIterator[LiveServer]:
    async with live_server(test_settings(tmp_path, mongo_url)) as server:
        yield server


async def test_the_server_trims_the_heap_once_a_room_closes(live: LiveServer, shared_data: Path) -> None:
    trims = live.components.metrics.malloc_trims
    iid = await live.create_interview()
    token = (await live.token(iid, "candidate", "Cat"))["token"]
    track = WavChannelTrack(shared_data / "jfk.flac", limit_s=1, tail_s=0.5, encoded=True)
    session = await whip_publish(f"{live.url}/whip/{iid}", token, track=track)
    try:
        async with asyncio.timeout(60):
            await session.wait_connected()
            await track.wait_finished()
        assert trims._value.get() == 0  # the room is open
    finally:
        await session.close()
    async with asyncio.timeout(30):
        while trims._value.get() == 0:  # noqa: ASYNC110 - no event announces it
            await asyncio.sleep(0.05)
    registry = live.components.registry
    assert registry is not None and not registry.rooms
