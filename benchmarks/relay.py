"""CPU of the server per relayed audio stream (adapters.call): the same rooms with the call peer to peer, then relayed.

    python -m benchmarks.relay [--pairs 1,4] [--seconds 20] [--rounds 2] [--json PATH]

Starts `python server.py` (embedded defaults) and, per round and pair count N, joins N rooms of a candidate and an
interviewer (aiortc WHIP peers with the `call` channel and the pages' relay slots, sending pre-encoded Opus at real
time, in this process). It measures the server process's user+sys CPU (/proc; its STT worker processes are
children, not counted) over `--seconds` twice: first with the call peer to peer (the server only ingests the two
microphones, as in production), then after every pair asked for the relay (each room: two relayed streams, one per
direction). The difference divided by 2N is the CPU per relayed stream. The microphones play silence, so
speech-to-text does not run and its noise stays out of the difference; the relay's cost does not depend on what
the packets say.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.latency import ServerProcess, cpu_seconds
from benchmarks.report import environment, format_environment, print_table, progress_printer, run_program
from testing.whip_client import WavChannelTrack, WhipSession, whip_publish

progress = progress_printer("relay")


def _silence(path: Path, seconds: float) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(np.zeros(int(seconds * 48_000), dtype="<i2").tobytes())


async def _cpu_over(pid: int, seconds: float) -> float:
    """% of one core the process used over the next `seconds`."""
    loop = asyncio.get_running_loop()
    c0, t0 = cpu_seconds(pid), loop.time()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - c0) / (loop.time() - t0)


async def _metric(http: httpx.AsyncClient, name: str) -> float:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def silence_file(directory: Path, seconds: float) -> Path:
    """A mono 48 kHz WAV of silence long enough for one round of `seconds` windows."""
    path = directory / "silence.wav"
    _silence(path, 2 * seconds + 30)
    return path


async def relay_round(url: str, pid: int, http: httpx.AsyncClient, pairs: int, wav: Path,
                      seconds: float) -> dict[str, float]:
    """One round on the server at `url` (process `pid`; `http` carries its admin key): `pairs` rooms peer to peer,
    then relayed; the server's CPU % over `seconds` each way and the difference per relayed stream."""
    sessions: list[tuple[WhipSession, WhipSession, str]] = []
    try:
        for _ in range(pairs):
            iid = (await http.post("/api/interviews", json={"candidateId": "c", "jobId": "j",
                                                            "scheduledAt": "2030-01-01T10:00:00Z"})).json()["interviewId"]
            peers = []
            for role in ("candidate", "interviewer"):
                token = (await http.post(f"/api/interviews/{iid}/tokens", json={"role": role, "name": role})).json()
                session = await whip_publish(f"{url}/whip/{iid}", token["token"], call=True, relay_slots=4,
                                             track=WavChannelTrack(wav, encoded=True, tail_s=0))
                peers.append((session, str(token["participantId"])))
            sessions.append((peers[0][0], peers[1][0], peers[1][1]))
        async with asyncio.timeout(60):
            for cand, ivo, _ in sessions:
                await cand.wait_connected()
                await ivo.wait_connected()
                while not (await cand.next_call_message("peers"))["peers"]:
                    pass
        await asyncio.sleep(2)  # let the joins' own work (stream set-up, backlog) pass before measuring
        p2p = await _cpu_over(pid, seconds)
        for cand, _, ivo_id in sessions:
            cand.send_call({"type": "relay", "to": ivo_id})
        async with asyncio.timeout(30):
            for cand, ivo, _ in sessions:
                await cand.next_call_message("relay")
                await ivo.next_call_message("relay")
        relayed_streams = await _metric(http, "call_relayed_streams")
        assert relayed_streams == 2 * pairs, relayed_streams
        await asyncio.sleep(1)
        relay = await _cpu_over(pid, seconds)
        return {"p2p_cpu_pct": p2p, "relay_cpu_pct": relay, "relayed_streams": relayed_streams,
                "per_stream_cpu_pct": (relay - p2p) / relayed_streams}
    finally:
        for cand, ivo, _ in sessions:
            await cand.close()
            await ivo.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pair_counts = [int(x) for x in args.pairs.split(",")]
    env = environment(["aiortc", "av"])
    server = ServerProcess()
    server.launch()
    results: list[dict[str, Any]] = []
    try:
        await server.wait_ready()
        with tempfile.TemporaryDirectory() as tmp:
            wav = silence_file(Path(tmp), args.seconds)
            async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                         headers={"Authorization": f"Bearer {server.admin_key}"}) as http:
                for round_no in range(1, args.rounds + 1):
                    for pairs in pair_counts:
                        progress(f"round {round_no}: {pairs} pair(s)")
                        r = await relay_round(server.url, server.pid, http, pairs, wav, args.seconds)
                        results.append({"round": round_no, "pairs": pairs, **r})
                        progress(f"  p2p {r['p2p_cpu_pct']:.1f}% relay {r['relay_cpu_pct']:.1f}% -> "
                                 f"{r['per_stream_cpu_pct']:.2f}% of a core per relayed stream")
    finally:
        server.stop()
    print(format_environment(env))
    print(f"(server process only; {args.seconds:g} s windows; machine shared with other work: see load)")
    rows = []
    for pairs in pair_counts:
        rs = [r for r in results if r["pairs"] == pairs]
        per = [r["per_stream_cpu_pct"] for r in rs]
        rows.append([pairs, 2 * pairs, statistics.mean(r["p2p_cpu_pct"] for r in rs),
                     statistics.mean(r["relay_cpu_pct"] for r in rs), statistics.mean(per), min(per), max(per)])
    print_table(rows, ["rooms", "relayed streams", "server CPU % p2p", "server CPU % relayed",
                       "CPU % per relayed stream (mean)", "min", "max"])
    return {"environment": env, "seconds": args.seconds, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="1,4", help="rooms (candidate + interviewer) at once, comma separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each CPU window, s (20)")
    parser.add_argument("--rounds", type=int, default=2, help="repeat everything this many times (2)")
    parser.add_argument("--json", help="write the results as JSON here")
    run_program(parser, run, argv)


if __name__ == "__main__":
    main()
