"""What holds this process's memory: glibc's heap statistics, `malloc_trim`, and a debug dump on a signal.

`heap()` reads glibc's `mallinfo2()`: bytes in use by live allocations against bytes glibc holds free in its arenas
(freed by Python or native code but not handed back to the kernel). RSS growing while `in_use` stays flat is
allocator retention, not a leak; `trim()` (glibc's `malloc_trim(0)`) hands the free pages back.

glibc gives every thread that allocates an arena of its own, up to 8 x cores, and each keeps the free memory of its
busiest moment: `limit_arenas()` (`MALLOC_ARENAS`) caps them at start, before the threads exist. `IdleTrim` trims
once a process has gone quiet after work (the Whisper worker processes: a decode's buffers grow with its window,
up to 30 s, and are freed into the arenas, not to the kernel).

`MEMORY_DEBUG_DIR` (a debug setting, off in production) makes server.py start `tracemalloc` (`MEMORY_DEBUG_FRAMES`
frames, 10; 0: off, only glibc's figures and object counts, at no cost until dumped) and, on `SIGUSR2`,
write `<dir>/memory-<n>.json` (RSS, `heap()`, live objects by type) and `<dir>/memory-<n>.tracemalloc` (a snapshot
for `python -m adapters.memory diff A B`). `benchmarks.soak` sends the signal at each quiet snapshot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]  # fmt: skip


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS), or glibc < 2.33
        return None


_LIBC = _libc()


def heap() -> dict[str, float] | None:
    """glibc's heap in MB: `in_use` (live allocations, arenas and mmapped), `free` (held free in the arenas),
    `mmapped`. None without glibc."""
    if _LIBC is None:
        return None
    mi = _LIBC.mallinfo2()
    mb = 2.0**20
    return {"in_use": round((mi.uordblks + mi.hblkhd) / mb, 1), "free": round(mi.fordblks / mb, 1),
            "mmapped": round(mi.hblkhd / mb, 1), "arena": round(mi.arena / mb, 1)}  # fmt: skip


def trim() -> bool:
    """Hands the free pages of every glibc arena back to the kernel (`malloc_trim(0)`). It walks every arena under
    its lock: call it from a worker thread, and rarely (when a room closes, not per frame)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(arenas: int) -> bool:
    """At most `arenas` glibc arenas in this process (`mallopt(M_ARENA_MAX)`; 0: glibc's choice, 8 x cores or its
    own `MALLOC_ARENA_MAX`). Threads beyond the cap share arenas (their `malloc`s may wait on each other's lock),
    so the free memory that stays resident is that of `arenas` busy moments, not of every thread's. Call it first
    thing: an arena, once made, stays. False without glibc."""
    if arenas < 0:
        raise ValueError(f"arenas must be >= 0, not {arenas}")
    if _LIBC is None or arenas == 0:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


class IdleTrim:
    """`trim()` once the work done `with idle.working():` has stopped for `idle_s`, in a thread of its own.

    Trimming after every piece of work would make the next one fault its pages in again; waiting for a quiet
    moment hands back what a burst left free when the burst is over (and costs nothing while work keeps coming)."""

    def __init__(self, idle_s: float = 1.0) -> None:
        if idle_s <= 0:
            raise ValueError(f"idle_s must be > 0, not {idle_s}")
        self.idle_s = idle_s
        self.trims = 0
        self._cond = threading.Condition()
        self._active = 0
        self._dirty = False  # work ended since the last trim
        self._last = 0.0
        threading.Thread(target=self._run, name="malloc-trim", daemon=True).start()

    @contextmanager
    def working(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._dirty = True
                self._last = time.monotonic()
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty or self._active:
                    self._cond.wait()
                quiet_in = self._last + self.idle_s - time.monotonic()
                if quiet_in > 0:
                    self._cond.wait(quiet_in)  # new work, or the quiet period over: look again
                    continue
                self._dirty = False
            trim()
            self.trims += 1


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def install_debug_dump(directory: Path, frames: int = 10) -> None:
    """`MEMORY_DEBUG_DIR`: tracemalloc on, `SIGUSR2` writes a dump. Costs CPU and memory: debugging only."""
    directory.mkdir(parents=True, exist_ok=True)
    if frames:
        tracemalloc.start(frames)
    count = iter(range(1 << 30))

    def dump(*_: Any) -> None:
        n = next(count)
        gc.collect()
        objects = Counter(type(o).__qualname__ for o in gc.get_objects())
        info = {"rss_mb": rss_mb(), "heap_mb": heap(), "tracemalloc_mb": round(tracemalloc.get_traced_memory()[0]
                / 2**20, 1), "objects": dict(objects.most_common(80))}  # fmt: skip
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(directory / f"memory-{n}.tracemalloc"))
        (directory / f"memory-{n}.json").write_text(json.dumps(info, indent=1))
        log.warning("memory dump %d written to %s (RSS %s MB, heap %s)", n, directory, info["rss_mb"], info["heap_mb"])

    signal.signal(signal.SIGUSR2, dump)
    log.warning("MEMORY_DEBUG_DIR set: tracemalloc on (%d frames), `kill -USR2 %d` dumps to %s", frames, os.getpid(),
                directory)  # fmt: skip


def diff(a: Path, b: Path, top: int = 25) -> str:
    """The largest growths from dump A to dump B: Python allocations by place, live objects by type, glibc's heap."""
    lines = []
    ja, jb = (json.loads(p.with_suffix(".json").read_text()) for p in (a, b))
    lines.append(f"RSS {ja['rss_mb']} -> {jb['rss_mb']} MB; glibc heap {ja['heap_mb']} -> {jb['heap_mb']}; "
                 f"traced by tracemalloc {ja['tracemalloc_mb']} -> {jb['tracemalloc_mb']} MB")  # fmt: skip
    grown = Counter(jb["objects"])
    grown.subtract(Counter(ja["objects"]))
    lines.append("objects by type, more: " + ", ".join(f"{k} +{v}" for k, v in grown.most_common(20) if v > 0))
    if not a.with_suffix(".tracemalloc").exists():  # MEMORY_DEBUG_FRAMES=0
        return "\n".join(lines)
    sa, sb = (tracemalloc.Snapshot.load(str(p.with_suffix(".tracemalloc"))) for p in (a, b))
    for stat in sb.compare_to(sa, "traceback")[:top]:
        if stat.size_diff <= 0:
            continue
        lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
                     + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[::-1][:4]))  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "diff":
        sys.exit("usage: python -m adapters.memory diff DIR/memory-0 DIR/memory-1")
    print(diff(Path(sys.argv[2]), Path(sys.argv[3])))
