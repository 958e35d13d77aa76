"""Memory after rooms close: `python -m benchmarks.rooms_memory [--rooms N] [--rounds R] [--json PATH]`.

Runs the service in this process (`testing.live_server`, embedded nx-27017, local STT in its child processes)
and, round after round, opens `--rooms` interviews with two real aiortc peers each (`testing.whip_client`,
a few seconds of `jfk.flac`), lets them talk, and has everyone leave. After each round (all rooms closed,
`gc.collect()`), it records:

* RSS of this process (server and peers: the peers live here too, so their share is in it), first as it is
  (what reference counting freed when the rooms closed), then after `gc.collect()`;
* live objects of the types a room holds (rooms, participants, WHIP sessions, peer connections and their
  transports, pipeline streams, tasks), found with `gc.get_objects()` before the forced collection: what is
  still there lives on until the cyclic collector's next full pass, which on a big heap comes rarely;
* the largest tracemalloc growths since the first round (file:line), which point at what is kept.

Named alternatives, each in a child process of its own so the allocator starts fresh: glibc's default malloc,
`MALLOC_ARENA_MAX=2`, and `malloc_trim(0)` after each round (glibc keeps freed memory in its arenas; trimming
returns it to the kernel). The STT worker processes are not in these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.report import environment, format_environment, print_table

REPO = str(Path(__file__).resolve().parents[1])
# The types of one room's live state, by class name (the service's own and aiortc/aioice's per connection).
WATCHED = ("Room", "Participant", "WhipSession", "RTCPeerConnection", "RTCDtlsTransport", "RTCIceTransport",
           "RTCSctpTransport", "RTCRtpReceiver", "Connection", "ParticipantStream", "Task")
VARIANTS = {
    "glibc default": ({}, False),
    "MALLOC_ARENA_MAX=2": ({"MALLOC_ARENA_MAX": "2"}, False),
    "malloc_trim after each round": ({}, True),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_objects() -> dict[str, int]:
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    return {name: counts.get(name, 0) for name in WATCHED}


async def one_round(live: Any, rooms: int, audio: Path, seconds: float) -> None:
    from testing.whip_client import WavChannelTrack, whip_publish

    peers = []
    for _ in range(rooms):
        iid = await live.create_interview()
        for role, name in (("interviewer", "Ivy"), ("candidate", "Cat")):
            token = (await live.token(iid, role, name))["token"]
            track = WavChannelTrack(audio, limit_s=seconds, tail_s=0.5, encoded=True)
            peers.append((await whip_publish(f"{live.url}/whip/{iid}", token, track=track,
                                             analysis=role == "interviewer"), track))
    async with asyncio.timeout(60 + 4 * seconds):
        await asyncio.gather(*(session.wait_connected() for session, _ in peers))
        await asyncio.gather(*(track.wait_finished() for _, track in peers))
    await asyncio.gather(*(session.close() for session, _ in peers))
    registry = live.components.registry
    async with asyncio.timeout(60):
        while registry.rooms or live.components.whip.sessions:  # noqa: ASYNC110 - leaving drains each stream first; nothing announces the end
            await asyncio.sleep(0.1)


async def measure(rooms: int, rounds: int, seconds: float, trim: bool) -> dict[str, Any]:
    from adapters.mongo import EmbeddedMongo
    from testing.data import JFK_AUDIO
    from testing.live_server import live_server, test_settings

    libc = ctypes.CDLL("libc.so.6") if trim else None
    tmp = Path(tempfile.mkdtemp(prefix="rooms_memory_"))
    mongo = EmbeddedMongo(tmp / "mongo")
    url = await mongo.start()
    rows = []
    try:
        async with live_server(test_settings(tmp, url, resume_grace_s=0.2)) as live:
            await one_round(live, 1, JFK_AUDIO, seconds)  # warm-up: imports, codecs, STT workers, first caches
            print("warmed up", file=sys.stderr, flush=True)
            gc.collect()
            tracemalloc.start(1)
            first: tracemalloc.Snapshot | None = None
            rows.append({"round": 0, "rss_mb": rss_mb(), "objects": live_objects(), "rss_after_gc_mb": rss_mb()})
            for k in range(1, rounds + 1):
                await one_round(live, rooms, JFK_AUDIO, seconds)
                # As production runs: whatever reference counting freed when the rooms closed, no forced collection.
                row: dict[str, Any] = {"round": k, "rss_mb": rss_mb(), "objects": live_objects()}
                gc.collect()
                if libc is not None:
                    libc.malloc_trim(0)
                row.update(rss_after_gc_mb=rss_mb(), objects_after_gc=live_objects(),
                           traced_mb=tracemalloc.get_traced_memory()[0] / 2**20)
                rows.append(row)
                snapshot = tracemalloc.take_snapshot()
                first = first or snapshot
                print(f"round {k}: rss {row['rss_mb']:.0f} MB ({row['rss_after_gc_mb']:.0f} after gc), live objects "
                      f"{row['objects']}", file=sys.stderr, flush=True)
            growth = [f"{s.traceback[0].filename.rsplit('site-packages/', 1)[-1]}:{s.traceback[0].lineno} "
                      f"{s.size_diff / 1024:+.0f} KiB ({s.count_diff:+d})"
                      for s in snapshot.compare_to(first, "lineno")[:8]] if first is not None else []
    finally:
        await mongo.stop()
    return {"rows": rows, "growth_since_round_1": growth}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rooms_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=10, help="rooms per round (2 peers each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="audio each peer plays per round")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one child's run
    parser.add_argument("--only", choices=list(VARIANTS), action="append", help="run only these variants")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.variant:
        result = asyncio.run(measure(args.rooms, args.rounds, args.seconds, VARIANTS[args.variant][1]))
        print(json.dumps(result))
        return 0
    results: dict[str, Any] = {}
    for name in args.only or list(VARIANTS):
        env, _ = VARIANTS[name]
        print(f"-- {name}", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-m", "benchmarks.rooms_memory", "--variant", name,
                              "--rooms", str(args.rooms), "--rounds", str(args.rounds), "--seconds", str(args.seconds)],
                             cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(format_environment(environment()))
    print(f"{args.rooms} rooms x 2 peers per round, {args.rounds} rounds; RSS in MB of the process holding the "
          "server and the peers once everyone left: as is / after gc.collect() (and malloc_trim where named)")
    headers = ["variant", "after warm-up", *(f"after round {k}" for k in range(1, args.rounds + 1)),
               "room objects alive after the last round (no forced gc)"]
    table = []
    for name, result in results.items():
        rows = result["rows"]
        left = {k: v for k, v in rows[-1]["objects"].items() if v and k not in ("Task", "Connection")}
        table.append([name, *(f"{r['rss_mb']:.0f} / {r['rss_after_gc_mb']:.0f}" for r in rows),
                      json.dumps(left) if left else "none"])
    print_table(table, headers)
    for name, result in results.items():
        print(f"\n{name}: largest tracemalloc growth since round 1:")
        for line in result["growth_since_round_1"]:
            print(f"  {line}")
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
