"""Soak: interviews back to back for a while against `server.py`; memory, descriptors, threads and lost finals.

    python -m benchmarks.soak [--rooms 10] [--minutes 30] [--json PATH]

`--rooms` interview slots run at once for `--minutes`; each slot holds one interview after another (a new
interview and join tokens each time, the two channels of a shared dialogue played by a candidate and an
interviewer peer at real-time pace, both leave), so rooms open and close all through the run. The peers run in a
process of their own (`--worker`), as in `benchmarks.latency`, whose room set-up this reuses.

Every `--sample-s` (10 s) it samples the server's process tree (server.py, its STT worker processes and the
embedded MongoDB): resident memory, open file descriptors and threads. Reported against targets:

* RSS growth over the last 2/3 of the run: median of the first three samples of that window against median of
  the last three (target <= 5 %);
* RSS after everyone left (all participants gone, `--after-s` of quiet) against the baseline (<= 10 %). The
  baseline is taken after a warm-up round (`--rooms` interviews at once, `--warmup-s` of audio each) has left, so
  thread pools grown to their working size, the revision process and caches are in it;
* descriptors and threads after everyone left against the baseline (back to it: not more);
* lost finals (0): per interview, the finals with text the interviewer received and the segments the store
  holds (`GET /api/interviews/{id}/transcript`, by speaker role and seq) must be the same set, and every ground-truth
  turn must have a final.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.latency import create_room, default_audio, load_dialogue, parse_metrics
from benchmarks.report import environment, format_environment, print_table, progress_printer
from testing.server_process import ServerProcess, process_tree

ROOT = Path(__file__).resolve().parents[1]
RSS_GROWTH_MAX_PCT = 5.0
RSS_AFTER_MAX_PCT = 10.0

progress = progress_printer("soak")


# ---------------------------------------------------------------------------------------------------------
# The server's footprint


@dataclass(slots=True)
class Footprint:
    t: float  # monotonic
    rss_mb: float  # the whole process tree
    rss_server_mb: float  # server.py alone
    fds: int
    threads: int
    processes: int
    participants: float | None  # interview_participants_active, summed over roles
    by_process: dict[str, list[float]] = field(default_factory=dict)  # "pid name" -> [RSS MB, fds, threads]


def footprint(pid: int) -> Footprint:
    rss_kb = server_kb = threads = fds = 0
    pids = process_tree(pid)
    by_process: dict[str, list[float]] = {}
    for p in pids:
        with contextlib.suppress(OSError):
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if ":" in line)  # fmt: skip
            kb = int(status.get("VmRSS", "0 kB").split()[0])
            n_threads, n_fds = int(status.get("Threads", "0")), len(os.listdir(f"/proc/{p}/fd"))
            rss_kb += kb
            server_kb += kb if p == pid else 0
            threads += n_threads
            fds += n_fds
            by_process[f"{p} {status.get('Name', '?').strip()}"] = [round(kb / 1024, 1), n_fds, n_threads]
    return Footprint(time.monotonic(), round(rss_kb / 1024, 1), round(server_kb / 1024, 1), fds, threads, len(pids),
                     None, by_process)  # fmt: skip


async def sample(pid: int, base: str, http: httpx.AsyncClient) -> Footprint:
    fp = await asyncio.to_thread(footprint, pid)
    with contextlib.suppress(httpx.HTTPError):
        m = parse_metrics((await http.get(f"{base}/metrics")).text)
        fp.participants = m.get("interview_participants_active", 0.0)
    return fp


async def participants_gone(base: str, http: httpx.AsyncClient, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if parse_metrics((await http.get(f"{base}/metrics")).text).get("interview_participants_active", 0) == 0:
                return True
        await asyncio.sleep(0.5)  # polling another process's metrics
    return False


# ---------------------------------------------------------------------------------------------------------
# The peer worker (a process of its own): slots of back-to-back interviews


def _emit(kind: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **data}) + "\n")
    sys.stdout.flush()


async def one_interview(http: httpx.AsyncClient, spec: dict[str, Any], audio: str, n: int) -> dict[str, Any]:
    """One interview: both peers play the dialogue, the candidate leaves (its stream drains), then the
    interviewer; what the interviewer received and what the store holds."""
    from testing.whip_client import WavChannelTrack, whip_publish

    dialogue = load_dialogue(Path(audio))
    limit = spec.get("limit_s")
    turns = [t for t in dialogue.turns if limit is None or t.end_s <= limit]
    room = await create_room(http, spec["base"], spec["admin_key"], n)
    out: dict[str, Any] = {"interview": room["interview_id"], "audio": Path(audio).name, "turns": len(turns),
                           "error": None}  # fmt: skip
    tracks = {role: WavChannelTrack(audio, ch, tail_s=spec["tail_s"], limit_s=limit, encoded=True)
              for role, ch in (("interviewer", 0), ("candidate", 1))}  # fmt: skip
    received: list[dict[str, Any]] = []
    sessions = []
    try:
        intv = await whip_publish(room["whip_url"], room["interviewer_token"], track=tracks["interviewer"],
                                  analysis=True, session=http)  # fmt: skip
        sessions.append(intv)
        cand = await whip_publish(room["whip_url"], room["candidate_token"], track=tracks["candidate"], session=http)
        sessions.append(cand)
        async with asyncio.timeout(30):
            await intv.wait_channel_open()

        async def collect(until: Any, within_s: float) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within_s):
                    while not until():
                        received.append(await intv.events.get())

        await asyncio.gather(*(t.wait_finished() for t in tracks.values()))
        await collect(lambda: covered_turns(turns, received) == len(turns), spec["settle_s"])
        await cand.close()  # leaving drains the candidate's stream: its last final comes before participant.left
        await collect(lambda: any(e["type"] == "participant.left" and e["speaker"]["role"] == "candidate"
                                  for e in received), 60)  # fmt: skip
        while not intv.events.empty():
            received.append(intv.events.get_nowait())
    except Exception as exc:  # one interview failing is reported, the soak goes on
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for s in sessions:
            await s.close()
    finals = {(e["speaker"]["role"], e["seq"]) for e in received if e["type"] == "segment.final" and e["text"]}
    stored: set[tuple[str, int]] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # finals are persisted behind a queue: give it time to catch up
        r = await http.get(f"{spec['base']}/api/interviews/{room['interview_id']}/transcript",
                           headers={"Authorization": f"Bearer {spec['admin_key']}"})  # fmt: skip
        if r.status_code == 200:
            stored = {(s["speaker"]["role"], s["seq"]) for s in r.json()["segments"]}
            if stored >= finals:
                break
        await asyncio.sleep(0.5)  # polling the store through the API
    out.update(covered=covered_turns(turns, received), received=len(finals), stored=len(stored),
               received_not_stored=len(finals - stored), stored_not_received=len(stored - finals),
               errors=[e.get("code") for e in received if e["type"] == "error"])  # fmt: skip
    return out


def covered_turns(turns: list[Any], received: list[dict[str, Any]]) -> int:
    """How many of the ground-truth turns a final with text overlaps (same speaker)."""
    finals = [e for e in received if e["type"] == "segment.final" and e["text"]]
    return sum(any(e["speaker"]["role"] == t.speaker and e["start_s"] < t.end_s and e["end_s"] > t.start_s
                   for e in finals) for t in turns)  # fmt: skip


async def worker_main(spec: dict[str, Any]) -> None:
    t_end = time.monotonic() + spec["minutes"] * 60
    counter = iter(range(1 << 30))

    async def slot(i: int) -> None:
        await asyncio.sleep(spec["stagger_s"] * i / max(1, spec["rooms"]))  # the slot's place in the stagger
        k = 0
        while True:
            audio = spec["audio"][(i + k) % len(spec["audio"])]
            _emit("interview", slot=i, **await one_interview(http, spec, audio, next(counter)))
            k += 1
            if time.monotonic() >= t_end:
                return

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(slot(i) for i in range(spec["rooms"])))
    _emit("done")


async def run_worker(spec: dict[str, Any], on_line: Any = None) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.soak", "--worker", cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec).encode())
    await proc.stdin.drain()
    proc.stdin.close()
    interviews = []
    async for line in proc.stdout:
        msg = json.loads(line)
        if msg["kind"] == "interview":
            interviews.append(msg)
            if on_line is not None:
                on_line(msg)
    if await proc.wait() != 0:
        raise SystemExit(f"peer worker exited with {proc.returncode}")
    return interviews


# ---------------------------------------------------------------------------------------------------------
# One soak


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _pct(now: float, before: float) -> float:
    return round(100.0 * (now - before) / before, 2) if before else float("nan")


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    audio = args.audio
    tmp = tempfile.TemporaryDirectory(prefix="soak-")
    server = ServerProcess(Path(tmp.name) / "data", admin_key=secrets.token_urlsafe(24), nice=args.nice)
    spec = {"base": server.url, "admin_key": server.admin_key, "audio": audio, "tail_s": 2.0, "settle_s": 30.0,
            "stagger_s": args.stagger}  # fmt: skip
    samples: list[Footprint] = []
    try:
        server.launch()
        progress(f"server pid {server.proc and server.proc.pid} on {server.url}, log {server.log_path}")
        await server.wait_ready()
        async with httpx.AsyncClient(timeout=10) as http:
            progress(f"warm-up: {args.rooms} interview(s) at once, {args.warmup_s:.0f} s of audio")
            warm = await run_worker({**spec, "rooms": args.rooms, "minutes": 0, "limit_s": args.warmup_s})
            await participants_gone(server.url, http)
            await asyncio.sleep(args.after_s)  # quiet period before the baseline: what is measured
            baseline = await sample(server.pid, server.url, http)
            progress(f"baseline: RSS {baseline.rss_mb} MB, {baseline.fds} fds, {baseline.threads} threads, "
                     f"{baseline.processes} processes")  # fmt: skip
            stop = asyncio.Event()

            async def sampler() -> None:
                while not stop.is_set():
                    samples.append(await sample(server.pid, server.url, http))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), args.sample_s)

            def report_line(msg: dict[str, Any]) -> None:
                last = samples[-1] if samples else baseline
                progress(f"slot {msg['slot']}: interview {msg['interview'][:8]} {msg['covered']}/{msg['turns']} turns,"
                         f" {msg['received']} finals, {msg['stored']} stored{', ' + msg['error'] if msg['error'] else ''}"
                         f"; RSS {last.rss_mb} MB, {last.fds} fds, {last.threads} threads")  # fmt: skip

            t0 = time.monotonic()
            task = asyncio.create_task(sampler())
            try:
                interviews = await run_worker({**spec, "rooms": args.rooms, "minutes": args.minutes}, report_line)
            finally:
                t1 = time.monotonic()
                stop.set()
                await task
            gone = await participants_gone(server.url, http)
            await asyncio.sleep(args.after_s)  # the same quiet period as before the baseline
            after = await sample(server.pid, server.url, http)
    finally:
        server.stop()
        tmp.cleanup()
    window = [s for s in samples if s.t >= t0 + (t1 - t0) / 3]
    head, tail = [s.rss_mb for s in window[:3]], [s.rss_mb for s in window[-3:]]
    growth = _pct(_median(tail), _median(head))
    turns = sum(i["turns"] for i in interviews)
    lost = sum(i["received_not_stored"] + i["stored_not_received"] for i in interviews)
    missed = turns - sum(i["covered"] for i in interviews)
    summary = {
        "rooms": args.rooms, "minutes": args.minutes, "run_s": round(t1 - t0, 1), "interviews": len(interviews),
        "failed_interviews": sum(1 for i in interviews if i["error"]), "warmup_interviews": len(warm),
        "turns": turns, "missed_turns": missed, "finals_received": sum(i["received"] for i in interviews),
        "segments_stored": sum(i["stored"] for i in interviews), "lost_finals": lost,
        "error_events": sorted({c for i in interviews for c in i["errors"]}),
        "rss_baseline_mb": baseline.rss_mb, "rss_peak_mb": max((s.rss_mb for s in samples), default=None),
        "rss_window_start_mb": _median(head), "rss_window_end_mb": _median(tail), "rss_growth_pct": growth,
        "rss_after_mb": after.rss_mb, "rss_after_vs_baseline_pct": _pct(after.rss_mb, baseline.rss_mb),
        "rss_server_baseline_mb": baseline.rss_server_mb, "rss_server_after_mb": after.rss_server_mb,
        "fds_baseline": baseline.fds, "fds_peak": max((s.fds for s in samples), default=None), "fds_after": after.fds,
        "threads_baseline": baseline.threads, "threads_peak": max((s.threads for s in samples), default=None),
        "threads_after": after.threads, "processes_baseline": baseline.processes, "processes_after": after.processes,
        "participants_gone": gone,
    }  # fmt: skip
    summary["ok"] = {
        "rss_growth": growth <= RSS_GROWTH_MAX_PCT,
        "rss_after": summary["rss_after_vs_baseline_pct"] <= RSS_AFTER_MAX_PCT,
        "fds_back": after.fds <= baseline.fds, "threads_back": after.threads <= baseline.threads,
        "no_lost_finals": lost == 0 and missed == 0 and not summary["failed_interviews"],
    }  # fmt: skip
    return {"summary": summary, "samples": [asdict(s) | {"t": round(s.t - t0, 1)} for s in samples],
            "baseline": asdict(baseline), "after": asdict(after), "interviews": interviews}  # fmt: skip


def table(s: dict[str, Any]) -> list[list[Any]]:
    ok = s["ok"]

    def mark(flag: bool) -> str:
        return "yes" if flag else "NO"

    return [
        ["RSS growth, last 2/3 of the run", f"{s['rss_window_start_mb']} -> {s['rss_window_end_mb']} MB",
         f"{s['rss_growth_pct']} %", f"<= {RSS_GROWTH_MAX_PCT} %", mark(ok["rss_growth"])],
        ["RSS after all left vs baseline", f"{s['rss_baseline_mb']} -> {s['rss_after_mb']} MB (peak {s['rss_peak_mb']})",
         f"{s['rss_after_vs_baseline_pct']} %", f"<= {RSS_AFTER_MAX_PCT} %", mark(ok["rss_after"])],
        ["open fds", f"{s['fds_baseline']} -> {s['fds_after']} (peak {s['fds_peak']})", "", "back to baseline",
         mark(ok["fds_back"])],
        ["threads", f"{s['threads_baseline']} -> {s['threads_after']} (peak {s['threads_peak']})", "",
         "back to baseline", mark(ok["threads_back"])],
        ["lost finals", f"{s['finals_received']} received, {s['segments_stored']} stored, {s['turns']} turns "
         f"({s['missed_turns']} without a final) in {s['interviews']} interviews", str(s["lost_finals"]), "0",
         mark(ok["no_lost_finals"])],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rooms", type=int, default=10, help="interviews at once (10)")
    ap.add_argument("--minutes", type=float, default=30.0, help="how long new interviews keep starting (30)")
    ap.add_argument("--audio", nargs="+", help="stereo dialogues (interviewer left) with <name>.json beside")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between footprint samples (10)")
    ap.add_argument("--after-s", type=float, default=10.0, help="quiet seconds before the baseline and the after sample")
    ap.add_argument("--warmup-s", type=float, default=25.0,
                    help="audio of the warm-up interview, s (25: a few turns, so that revisions run)")
    ap.add_argument("--stagger", type=float, default=6.0, help="spread slot starts over this many s (6)")
    ap.add_argument("--nice", type=int, default=0, help="run the server at this niceness")
    ap.add_argument("--json", help="write the summary, every sample and every interview here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.worker:
        asyncio.run(worker_main(json.loads(sys.stdin.read())))
        return
    if args.rooms < 1 or args.minutes < 0:
        raise SystemExit("--rooms must be >= 1 and --minutes >= 0")
    args.audio = [str(Path(p).resolve()) for p in args.audio] if args.audio else [str(p) for p in default_audio()]
    try:
        for a in args.audio:
            load_dialogue(Path(a))  # ground truth beside each recording, or a clear error now
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    env = environment(("aiortc", "aioice", "av", "starlette", "uvicorn", "httpx"))
    report = asyncio.run(soak(args))
    report["env"] = env
    print(format_environment(env))
    print_table(table(report["summary"]), ["check", "measured", "value", "target", "ok"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        progress(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
