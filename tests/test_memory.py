"""adapters.memory: glibc's heap statistics and `malloc_trim`, which server.py runs after a room closes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
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


_ARENAS_SCRIPT = """
import ctypes, sys, tempfile, threading
from adapters import memory
memory.limit_arenas(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
together = threading.Barrier(8)
def allocate():
    together.wait()  # all alive at once: an exited thread's arena would be handed to the next one
    ptr = libc.malloc(100_000)  # a thread's first malloc picks its arena
    together.wait()
    libc.free(ptr)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
with tempfile.NamedTemporaryFile() as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(open(f.name).read().count("<heap nr="))
"""


def test_limit_arenas_caps_the_arenas_of_threads_that_allocate_at_once() -> None:
    # glibc's malloc_info lists one <heap> per arena; eight threads allocating together get one each unless capped
    def arenas(cap: int) -> int:
        out = subprocess.run([sys.executable, "-c", _ARENAS_SCRIPT, str(cap)], capture_output=True, text=True,
                             check=True, timeout=60)  # fmt: skip
        return int(out.stdout)

    assert arenas(0) >= 8  # glibc's default: up to 8 x cores
    assert arenas(2) == 2
    with pytest.raises(ValueError, match="arenas"):
        memory.limit_arenas(-1)


def test_a_whisper_worker_hands_its_heap_back_once_idle(shared_data: Path) -> None:
    # Decodes of long windows leave tens of MB free in the worker's arenas. The same decodes in two workers, one
    # trimming once idle and one not: the trimmed one must end well below the other (measured: 169 against 208 MB
    # after three of these windows, 161 against 244 MB after six; README "Soak").
    from adapters.stt_process import WhisperProcesses
    from pipeline.audio_file import read_audio

    audio = read_audio(shared_data / "mobile_mixed.wav", rate=16000, mono=True).pcm.astype(np.float32) / 32768
    windows = [audio[s * 16000 : (s + length) * 16000] for s, length in ((0, 28), (9, 27), (4, 26), (10, 25))]
    assert all(len(w) > 20 * 16000 for w in windows)
    trimming = WhisperProcesses(processes=1, trim_idle_s=0.3)
    keeping = WhisperProcesses(processes=1, trim_idle_s=None)
    try:
        for p in (trimming, keeping):
            for w in windows:
                assert p.transcribe(w).text.strip()
        deadline = time.monotonic() + 30
        while (trimmed := trimming.worker_memory())["trims"] < 1:
            assert time.monotonic() < deadline, trimmed
            time.sleep(0.2)
        kept = keeping.worker_memory()
    finally:
        trimming.close()
        keeping.close()
    assert kept["trims"] is None
    assert trimmed["rss_mb"] < kept["rss_mb"] - 20, (trimmed, kept)
    with pytest.raises(ValueError, match="trim_idle_s"):
        WhisperProcesses(processes=1, trim_idle_s=0)
