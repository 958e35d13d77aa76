"""What the transcript cache saves a read of a stored transcript (`InterviewService.get_transcript`).

    python -m benchmarks.transcript_cache [--finals 300] [--reads 30] [--json PATH]

One sealed interview (a master key file, as the server runs) with `--finals` finals of ~25 words each, and a
revision of every tenth, in an embedded nx-27017; then `--reads` reads of its transcript, side by side in rounds:
    store        no cache: every final and revision read and decrypted
    stamp only   the light query every cached read makes first (participant, seq, revision of each document)
    memory hit   the stamp, then the entry kept in this process (no REDIS_URL)
    redis hit    the stamp, then the sealed entry in a local redis-server (REDIS_URL), opened and parsed
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from adapters.mongo import EmbeddedMongo, MongoStore
from adapters.shared_state import MemoryTranscripts, RedisState
from benchmarks.report import (
    environment,
    format_environment,
    percentile,
    print_table,
    progress_printer,
    run_program,
)
from domain.commands import CreateInterview, InterviewService
from domain.events import SegmentEvent, Speaker, Word
from testing.redis import RedisServer, redis_server_binary

progress = progress_printer("transcript_cache")
WORDS = ("so in my last role I owned the billing service and we moved it from a monolith to three smaller "
         "services which cut our deploy time from an hour to ten minutes").split()


def _final(seq: int, revision: int = 0) -> SegmentEvent:
    words = [Word(w, seq * 10 + i * 0.3, seq * 10 + i * 0.3 + 0.25, 0.9) for i, w in enumerate(WORDS)]
    return SegmentEvent(speaker=Speaker("candidate", "Cam", "p1"), seq=seq, start_s=seq * 10.0,
                        end_s=seq * 10.0 + 8.0, text=" ".join(WORDS), final=True, words=words, revision=revision)


async def _timed(read: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await read()
    return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment(["pymongo", "redis", "cryptography"])
    samples: dict[str, list[float]] = {}
    redis_binary = redis_server_binary()
    with tempfile.TemporaryDirectory(prefix="bench-transcripts-") as tmp:
        mongo = EmbeddedMongo(Path(tmp) / "mongo")
        url = await mongo.start()
        store = await MongoStore.connect(url, db_name=f"bench_{uuid.uuid4().hex[:8]}",
                                         key_file=Path(tmp) / "master_key")
        redis_server = RedisServer(redis_binary) if redis_binary else None
        shared: RedisState | None = None
        try:
            plain = InterviewService(store)
            iid = (await plain.create_interview(CreateInterview.parse(
                {"candidateId": "c1", "jobId": "j1", "scheduledAt": "2026-12-01T09:00:00Z"})))["interviewId"]
            await plain.start_interview(iid)
            for seq in range(args.finals):
                await plain.record_segment(iid, _final(seq))
                if seq % 10 == 0:
                    await plain.record_revision(iid, _final(seq, revision=1))
            progress(f"{args.finals} finals stored")
            reads: dict[str, Callable[[], Awaitable[Any]]] = {
                "store": lambda: plain.get_transcript(iid),
                "stamp only": lambda: store.transcript_stamp(iid),
            }
            memory = InterviewService(store, transcripts=MemoryTranscripts())
            await memory.get_transcript(iid)
            reads["memory hit"] = lambda: memory.get_transcript(iid)
            if redis_server is not None:
                redis_server.start()
                assert store.keyring is not None
                shared = RedisState(redis_server.url, key=store.keyring.master.shared_state_key())
                in_redis = InterviewService(store, transcripts=shared)
                await in_redis.get_transcript(iid)
                reads["redis hit"] = lambda: in_redis.get_transcript(iid)
            samples = {name: [] for name in reads}
            for n in range(args.reads):  # in rounds: the machine's load falls on every alternative alike
                for name, read in reads.items():
                    samples[name].append(await _timed(read))
                if n % 10 == 9:
                    progress(f"round {n + 1}: store p50 {statistics.median(samples['store']) * 1000:.1f} ms")
            if shared is not None:
                assert shared.hits >= args.reads  # every timed read was a hit
        finally:
            if shared is not None:
                await shared.aclose()
            if redis_server is not None:
                redis_server.stop()
            await store.drop_database()
            await store.close()
            await mongo.stop()
    print(format_environment(env))
    print(f"({args.finals} finals, {args.finals // 10 + (args.finals % 10 > 0)} revised, {args.reads} reads each; "
          "embedded nx-27017 and redis-server on loopback; machine shared with other work: see load)")
    rows = []
    for name, xs in samples.items():
        ms = [x * 1000 for x in xs]
        rows.append([name, len(ms), f"{statistics.median(ms):.2f}", f"{percentile(ms, 95):.2f}"])
    print_table(rows, ["read", "n", "p50 (ms)", "p95 (ms)"])
    return {"environment": env, "finals": args.finals, "reads": args.reads, "samples_s": samples}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transcript_cache",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--finals", type=int, default=300, help="finals in the interview (300: about an hour)")
    parser.add_argument("--reads", type=int, default=30, help="reads of each kind (30)")
    parser.add_argument("--json", help="write the results as JSON here")
    run_program(parser, run, argv)


if __name__ == "__main__":
    main()
