"""Soak: interviews back to back for a while against `server.py`; memory, descriptors, threads and lost finals.

    python -m benchmarks.soak [--rooms 10] [--minutes 30] [--json PATH]

`--rooms` interview slots run at once for `--minutes`; each slot holds one interview after another (a new
interview and join tokens each time, the two channels of a shared dialogue played by a candidate and an
interviewer peer at real-time pace, both leave), so rooms open and close all through the run. The peers run in a
process of their own (`--worker`), as in `benchmarks.latency`, whose room set-up this reuses.

Every `--sample-s` (10 s) it samples the server's process tree (server.py, its STT worker processes and the
embedded MongoDB and NATS): resident memory, open file descriptors and threads. Three quiet snapshots (all
participants gone, `--after-s` of quiet) are taken with an inventory of what holds them (descriptors by kind per
process: a file, pipe, eventfd, `tcp in` / `tcp out to <process>` / udp / unix sockets; server.py's Python threads
by pool, from its `python_threads` metric): the baseline before the first join, after round 1 (a warm-up: `--rooms`
interviews at once, `--warmup-s` of audio each) and after round 2 (the soak itself). Reported against targets:

* RSS growth over the last 2/3 of round 2: median of the first three samples of that window against median of
  the last three (target <= 5 %);
* RSS after everyone left round 2 against after round 1 (<= 10 %), and against before the first join (shown only:
  round 1 starts the revision process and the STT processes' first decodes allocate, once);
* descriptors and threads back to baseline: no growth from after round 1 to after round 2 (a leak grows with
  every room, and round 2 holds many more rooms than round 1) but in pools that grow on demand up to a bound
  (`POOLS`, `FD_POOLS`: executors, the MongoDB connection pool), each judged against its bound; what round 1 added
  to the baseline is listed by name: pools and connections created once, on first use;
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
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
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


def rss_of_first_processes(before: dict[str, list[float]], after: dict[str, list[float]]) -> tuple[float, float]:
    """Tree RSS (MB) before the first join and after everyone left, counting only the processes that ran before the
    first join (keys "pid what" of `Snapshot.by_process`): the issue's "RSS after all leave within 10 % of before
    the first join" without what starts on first use (the revision process, a third Whisper model of ~250 MB)."""
    same = [k for k in before if k in after]
    return round(sum(before[k][0] for k in same), 1), round(sum(after[k][0] for k in same), 1)


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
    by_process: dict[str, list[float]] = field(default_factory=dict)  # "pid what" -> [RSS MB, fds, threads]
    # What holds them, when asked for: "<process> fd <kind>", "<process> threads", "server.py thread <pool>" -> n
    inventory: dict[str, int] = field(default_factory=dict)


_TCP_STATES = {"01": "", "02": " SYN_SENT", "03": " SYN_RECV", "04": " FIN_WAIT1", "05": " FIN_WAIT2",
               "06": " TIME_WAIT", "07": " CLOSE", "08": " CLOSE_WAIT", "09": " LAST_ACK", "0A": " LISTEN",
               "0B": " CLOSING"}  # fmt: skip


def _sockets(pid: int) -> tuple[dict[str, tuple[str, int, int, str]], set[int]]:
    """socket inode -> (protocol, local port, remote port, TCP state) in `pid`'s network namespace, and the TCP
    ports listened on there."""
    rows: dict[str, tuple[str, int, int, str]] = {}
    for proto in ("tcp", "tcp6", "udp", "udp6", "unix"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
                f = line.split()
                if proto == "unix":
                    rows[f[6]] = ("unix", 0, 0, "")
                elif len(f) > 9:
                    rows[f[9]] = (proto.rstrip("6"), int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16),
                                  f[3])  # fmt: skip
    return rows, {local for proto, local, _, state in rows.values() if proto == "tcp" and state == "0A"}


def _fd_kind(target: str, sockets: dict[str, tuple[str, int, int, str]], listening: set[int],
             owners: dict[int, str], data_dir: str) -> str:
    """What an fd (its /proc link) is: a file (DATA_DIR relative), `pipe`, `eventfd`/`eventpoll`, `udp`, `unix`,
    `tcp listen`, `tcp in` (accepted), `tcp out to <process>` (a process of the tree listening on that port, e.g.
    the embedded store) or `tcp out to :PORT`; TCP states other than established are named."""
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return target.removeprefix("anon_inode:").strip("[]")
    if not target.startswith("socket:["):
        return target.replace(data_dir, "DATA_DIR") if data_dir else target
    if (row := sockets.get(target[8:-1])) is None:
        return "socket"
    proto, local, remote, state = row
    if proto != "tcp":
        return proto
    if state == "0A":
        return "tcp listen"
    way = "in" if local in listening else f"out to {owners.get(remote, f':{remote}')}"
    return f"tcp {way}{_TCP_STATES.get(state, ' ' + state)}"


def _process_label(p: int, name: str) -> str:
    """What a process of the tree is, from its command line: `-m nx_27017.nx_27017` (the embedded store), the
    multiprocessing workers (STT decodes, revisions) and resource tracker, else its name (nats-server)."""
    try:
        argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return name
    text = b" ".join(argv).decode(errors="replace")
    if "spawn_main" in text:
        return "multiprocessing worker"
    if "resource_tracker" in text:
        return "multiprocessing resource tracker"
    if b"-m" in argv and argv.index(b"-m") + 1 < len(argv):
        return argv[argv.index(b"-m") + 1].decode(errors="replace")
    return name


def footprint(pid: int, *, inventory: bool = False, data_dir: str = "") -> Footprint:
    rss_kb = server_kb = threads = fds = 0
    pids = process_tree(pid)
    by_process: dict[str, list[float]] = {}
    links: dict[str, list[str]] = {}  # process label -> its fds' /proc links
    held: Counter[str] = Counter()
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
            who = "server.py" if p == pid else _process_label(p, status.get("Name", "?").strip())
            by_process[f"{p} {who}"] = [round(kb / 1024, 1), n_fds, n_threads]
            if inventory:
                held[f"{who} threads"] += n_threads
                for fd in os.listdir(f"/proc/{p}/fd"):
                    with contextlib.suppress(OSError):
                        links.setdefault(who, []).append(os.readlink(f"/proc/{p}/fd/{fd}"))
    if inventory:
        sockets, listening = _sockets(pid)
        owners = {sockets[t[8:-1]][1]: who for who, targets in links.items() for t in targets
                  if t.startswith("socket:[") and sockets.get(t[8:-1], ("", 0, 0, ""))[3] == "0A"
                  and sockets[t[8:-1]][0] == "tcp"}  # fmt: skip
        for who, targets in links.items():
            for t in targets:
                held[f"{who} fd {_fd_kind(t, sockets, listening, owners, data_dir)}"] += 1
    return Footprint(time.monotonic(), round(rss_kb / 1024, 1), round(server_kb / 1024, 1), fds, threads, len(pids),
                     None, by_process, dict(held))  # fmt: skip


_THREADS_RE = re.compile(r'^python_threads\{name="((?:[^"\\]|\\.)*)"\}\s+(\S+)', re.M)


async def sample(pid: int, base: str, http: httpx.AsyncClient, *, inventory: bool = False,
                 data_dir: str = "") -> Footprint:
    fp = await asyncio.to_thread(footprint, pid, inventory=inventory, data_dir=data_dir)
    with contextlib.suppress(httpx.HTTPError):
        text = (await http.get(f"{base}/metrics")).text
        fp.participants = parse_metrics(text).get("interview_participants_active", 0.0)
        if inventory:
            for name, n in _THREADS_RE.findall(text):
                fp.inventory[f"server.py thread {name}"] = int(float(n))
    return fp


def _dumps(directory: Path) -> int:
    return len(list(directory.glob("memory-*.json")))


async def quiet_sample(pid: int, base: str, http: httpx.AsyncClient, after_s: float, data_dir: str) -> Footprint:
    """Once every participant has left and `after_s` passed: the footprint with its inventory."""
    await participants_gone(base, http)
    await asyncio.sleep(after_s)  # quiet period: what lingers briefly after a room (keep-alives, closing sockets)
    fp = await sample(pid, base, http, inventory=True, data_dir=data_dir)
    if debug_dir := os.environ.get("MEMORY_DEBUG_DIR"):  # server.py inherits it: a tracemalloc dump per snapshot
        dumps = partial(_dumps, Path(debug_dir))
        done = await asyncio.to_thread(dumps)
        os.kill(pid, signal.SIGUSR2)
        for _ in range(600):  # the dump collects and walks the whole heap: seconds on a loaded machine
            if await asyncio.to_thread(dumps) > done:
                break
            await asyncio.sleep(0.5)  # polling for the other process's file
        progress(f"memory dump {done} in {debug_dir}")
    return fp


def grew(before: Footprint, after: Footprint) -> dict[str, int]:
    """What `after` holds more of than `before`, by inventory entry."""
    return {k: n - before.inventory.get(k, 0) for k, n in sorted(after.inventory.items())
            if n > before.inventory.get(k, 0)}  # fmt: skip


def shrank(before: Footprint, after: Footprint) -> dict[str, int]:
    """What `after` holds less of than `before` (negative counts)."""
    return {k: -n for k, n in grew(after, before).items()}


# Thread pools that start empty and grow on demand up to a bound, then keep their threads: more of them after
# round 2 than after round 1 is no leak while under the bound (round 2's bursts can be bigger than round 1's).
# In server.py: asyncio's default executor (`to_thread`, DNS; threads named `asyncio_N`), Motor's executor,
# which runs every MongoDB call (motor/frameworks/asyncio: an unnamed ThreadPoolExecutor created when Motor is
# imported, the first unnamed one, so `ThreadPoolExecutor-0`), and the STT scheduler's and smart-turn's own. The embedded store (nx_27017, asyncio) runs each
# command through `asyncio.to_thread`. The embedded nats-server is not judged (shown only): the Go runtime keeps
# the OS threads it started for blocking file I/O; in production NATS is a server of its own.
ASYNCIO_EXECUTOR_MAX = min(32, (os.cpu_count() or 1) + 4)  # concurrent.futures.ThreadPoolExecutor's default
MOTOR_EXECUTOR_MAX = int(os.environ.get("MOTOR_MAX_WORKERS", 0)) or (os.cpu_count() or 1) * 5  # Motor's default
STT_WORKERS = int(os.environ.get("STT_WORKERS", "2"))  # server.py's setting (it inherits this environment)
SERVER_POOLS = {"server.py thread asyncio": ASYNCIO_EXECUTOR_MAX,
                "server.py thread ThreadPoolExecutor-0": MOTOR_EXECUTOR_MAX,
                "server.py thread stt": STT_WORKERS, "server.py thread stt-revision": 1,
                "server.py thread smart-turn": 1}  # fmt: skip
POOLS: dict[str, str] = {
    "server.py thread asyncio": f"asyncio's default executor in server.py (<= {ASYNCIO_EXECUTOR_MAX})",
    "server.py thread ThreadPoolExecutor-0": f"Motor's executor in server.py (<= {MOTOR_EXECUTOR_MAX})",
    "server.py thread stt": f"the STT scheduler's decode threads (<= STT_WORKERS, {STT_WORKERS})",
    "server.py thread stt-revision / smart-turn": "the revision and end-of-turn model threads (<= 1 each)",
    "nx_27017.nx_27017 threads": f"the embedded store's asyncio.to_thread executor (<= {ASYNCIO_EXECUTOR_MAX} more "
                                 "than before the first join)",
    "nats-server threads": "the embedded nats-server's Go runtime threads (not judged)",
}


# Descriptors that may be more after round 2 without a leak: the MongoDB driver's connection pool (an fd on each
# side per connection, up to pymongo's maxPoolSize, 100, grown by round 2's bigger bursts) and JetStream's block
# files (a stream's file is replaced by the next as it grows).
FD_POOLS: dict[str, str] = {
    "server.py fd tcp out to nx_27017.nx_27017": "the MongoDB driver's connection pool (<= maxPoolSize 100)",
    "nx_27017.nx_27017 fd tcp in": "the same connections, the store's side",
    "nats-server fd DATA_DIR/nats/": "JetStream's block files, rotated as streams grow",
}


def fd_growth(round1: Footprint, after: Footprint) -> dict[str, str]:
    """Descriptors more after round 2 than after round 1, by kind; "ok: ..." when a bounded pool explains it."""
    out = {}
    for key, more in grew(round1, after).items():
        if " fd " in key:
            pool = next((what for prefix, what in FD_POOLS.items() if key.startswith(prefix)), None)
            out[key] = f"ok: +{more} ({pool})" if pool else f"+{more}"
    return out


def thread_growth(baseline: Footprint, round1: Footprint, after: Footprint) -> dict[str, str]:
    """Threads more after round 2 than after round 1, per process; "ok: ..." when bounded pools explain it."""

    def threads(fp: Footprint) -> dict[str, int]:
        return {k.removesuffix(" threads"): n for k, n in fp.inventory.items() if k.endswith(" threads")}

    before, now, base = threads(round1), threads(after), threads(baseline)
    out = {}
    for who in sorted(now):
        more = now[who] - before.get(who, 0)
        if more <= 0:
            continue
        explained = 0
        if who == "server.py":
            explained = sum(max(0, min(after.inventory.get(pool, 0), bound) - round1.inventory.get(pool, 0))
                            for pool, bound in SERVER_POOLS.items())  # fmt: skip
        elif who == "nx_27017.nx_27017" and now[who] <= base.get(who, 0) + ASYNCIO_EXECUTOR_MAX:
            explained = more
        elif who == "nats-server":
            explained = more
        out[who] = ("ok: " if explained >= more else "") + f"+{more}" + \
            (f" ({explained} in bounded pools)" if explained else "")
    return out


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
    out: dict[str, Any] = {"interview": None, "audio": Path(audio).name, "turns": len(turns), "error": None,
                           "covered": 0, "received": 0, "stored": 0, "received_not_stored": 0,
                           "stored_not_received": 0, "stored_after_overlay_closed": 0,
                           "errors": []}  # fmt: skip
    try:
        room = await create_room(http, spec["base"], spec["admin_key"], n)
    except httpx.HTTPError as exc:  # reported as a failed interview; the soak goes on
        out["error"] = f"creating the interview: {type(exc).__name__}: {exc}"
        return out
    out["interview"] = room["interview_id"]
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
    # Finals are sent in seq order on an ordered, reliable channel: a stored final after the last one received of
    # its speaker came once the interviewer's overlay had closed (the interviewer's own last turn is drained when
    # it leaves, after its connection closed; or the candidate's, when the wait for its leave ran out on a slow
    # machine). Nobody could receive it live: stored, not lost. One missing between received ones is lost.
    last = {role: max(seq for r, seq in finals if r == role) for role, _ in finals}
    after_close = {(r, seq) for r, seq in stored - finals if r in last and seq > last[r]}
    out.update(covered=covered_turns(turns, received), received=len(finals), stored=len(stored),
               received_not_stored=len(finals - stored), stored_not_received=len(stored - finals - after_close),
               stored_after_overlay_closed=len(after_close),
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

    # Idle connections are dropped after 2 s, before server.py's keep-alive timeout (5 s) closes them: with both at
    # 5 s (httpx's default), a request can go out on a connection the server is closing (a ReadError, seen once at
    # load average 18, which ended the whole peer worker).
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(keepalive_expiry=2.0)) as http:
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
    data_dir = str(Path(tmp.name) / "data")
    try:
        server.launch()
        progress(f"server pid {server.proc and server.proc.pid} on {server.url}, log {server.log_path}")
        await server.wait_ready()
        async with httpx.AsyncClient(timeout=10) as http:
            baseline = await quiet_sample(server.pid, server.url, http, args.after_s, data_dir)
            progress(f"baseline, before the first join: RSS {baseline.rss_mb} MB, {baseline.fds} fds, "
                     f"{baseline.threads} threads, {baseline.processes} processes")  # fmt: skip
            progress(f"round 1 (warm-up): {args.rooms} interview(s) at once, {args.warmup_s:.0f} s of audio")
            warm = await run_worker({**spec, "rooms": args.rooms, "minutes": 0, "limit_s": args.warmup_s})
            round1 = await quiet_sample(server.pid, server.url, http, args.after_s, data_dir)
            progress(f"after round 1: RSS {round1.rss_mb} MB, {round1.fds} fds, {round1.threads} threads; "
                     f"added to the baseline: {grew(baseline, round1)}")  # fmt: skip
            stop = asyncio.Event()

            async def sampler() -> None:
                while not stop.is_set():
                    samples.append(await sample(server.pid, server.url, http))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), args.sample_s)

            def report_line(msg: dict[str, Any]) -> None:
                last = samples[-1] if samples else round1
                progress(f"slot {msg['slot']}: interview {(msg['interview'] or '-')[:8]} {msg['covered']}/{msg['turns']} turns,"
                         f" {msg['received']} finals, {msg['stored']} stored{', ' + msg['error'] if msg['error'] else ''}"
                         f"; RSS {last.rss_mb} MB, {last.fds} fds, {last.threads} threads")  # fmt: skip

            progress(f"round 2: {args.rooms} slot(s) of back-to-back interviews for {args.minutes:g} min")
            t0 = time.monotonic()
            task = asyncio.create_task(sampler())
            try:
                interviews = await run_worker({**spec, "rooms": args.rooms, "minutes": args.minutes}, report_line)
            finally:
                t1 = time.monotonic()
                stop.set()
                await task
            gone = await participants_gone(server.url, http)
            after = await quiet_sample(server.pid, server.url, http, args.after_s, data_dir)
            progress(f"after round 2: RSS {after.rss_mb} MB, {after.fds} fds, {after.threads} threads; "
                     f"more than after round 1: {grew(round1, after)}")  # fmt: skip
    finally:
        server.stop()
        if args.json and server.log_path.exists():  # the server's log outlives its temporary DATA_DIR
            shutil.copyfile(server.log_path, Path(args.json).with_suffix(".server.log"))
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
        "stored_after_overlay_closed": sum(i.get("stored_after_overlay_closed", 0) for i in interviews),
        "error_events": sorted({c for i in interviews for c in i["errors"]}),
        "rss_baseline_mb": baseline.rss_mb, "rss_round1_mb": round1.rss_mb,
        "rss_peak_mb": max((s.rss_mb for s in samples), default=None),
        "rss_window_start_mb": _median(head), "rss_window_end_mb": _median(tail), "rss_growth_pct": growth,
        "rss_after_mb": after.rss_mb, "rss_after_vs_baseline_pct": _pct(after.rss_mb, baseline.rss_mb),
        "rss_after_vs_round1_pct": _pct(after.rss_mb, round1.rss_mb),
        "rss_server_baseline_mb": baseline.rss_server_mb, "rss_server_round1_mb": round1.rss_server_mb,
        "rss_server_after_mb": after.rss_server_mb,
        "fds_baseline": baseline.fds, "fds_round1": round1.fds, "fds_peak": max((s.fds for s in samples), default=None),
        "fds_after": after.fds,
        "threads_baseline": baseline.threads, "threads_round1": round1.threads,
        "threads_peak": max((s.threads for s in samples), default=None), "threads_after": after.threads,
        "processes_baseline": baseline.processes, "processes_round1": round1.processes,
        "processes_after": after.processes, "participants_gone": gone,
        # Named: what the first rooms created once (pools, connections), and what grew or shrank after that.
        "created_in_round1": grew(baseline, round1), "grew_in_round2": grew(round1, after),
        "shrank_in_round2": shrank(round1, after), "thread_growth": thread_growth(baseline, round1, after),
        "fd_growth": fd_growth(round1, after),
        "by_process": {"baseline": baseline.by_process, "round1": round1.by_process, "after": after.by_process},
    }  # fmt: skip
    first_before, first_after = rss_of_first_processes(baseline.by_process, after.by_process)
    summary |= {"rss_first_processes_baseline_mb": first_before, "rss_first_processes_after_mb": first_after,
                "rss_first_processes_after_vs_baseline_pct": _pct(first_after, first_before)}
    summary["ok"] = {
        "rss_growth": growth <= RSS_GROWTH_MAX_PCT,
        "rss_after": summary["rss_after_vs_round1_pct"] <= RSS_AFTER_MAX_PCT,
        "rss_after_first_processes": summary["rss_first_processes_after_vs_baseline_pct"] <= RSS_AFTER_MAX_PCT,
        "fds_back": all(v.startswith("ok: ") for v in summary["fd_growth"].values()),
        "threads_back": all(v.startswith("ok: ") for v in summary["thread_growth"].values()),
        "no_lost_finals": lost == 0 and missed == 0 and not summary["failed_interviews"],
    }  # fmt: skip
    return {"summary": summary, "samples": [asdict(s) | {"t": round(s.t - t0, 1)} for s in samples],
            "baseline": asdict(baseline), "round1": asdict(round1), "after": asdict(after),
            "interviews": interviews}  # fmt: skip


def table(s: dict[str, Any]) -> list[list[Any]]:
    ok = s["ok"]

    def mark(flag: bool) -> str:
        return "yes" if flag else "NO"

    return [
        ["RSS growth, last 2/3 of round 2", f"{s['rss_window_start_mb']} -> {s['rss_window_end_mb']} MB",
         f"{s['rss_growth_pct']} %", f"<= {RSS_GROWTH_MAX_PCT} %", mark(ok["rss_growth"])],
        ["RSS: before 1st join / round 1 / round 2", f"{s['rss_baseline_mb']} / {s['rss_round1_mb']} / "
         f"{s['rss_after_mb']} MB (peak {s['rss_peak_mb']}; vs before 1st join {s['rss_after_vs_baseline_pct']} %)",
         f"{s['rss_after_vs_round1_pct']} %", f"round 2 <= round 1 + {RSS_AFTER_MAX_PCT} %", mark(ok["rss_after"])],
        ["RSS after all left vs before the 1st join, processes running before it",
         f"{s['rss_first_processes_baseline_mb']} -> {s['rss_first_processes_after_mb']} MB",
         f"{s['rss_first_processes_after_vs_baseline_pct']} %", f"<= {RSS_AFTER_MAX_PCT} %",
         mark(ok["rss_after_first_processes"])],
        ["open fds: baseline / round 1 / round 2", f"{s['fds_baseline']} / {s['fds_round1']} / {s['fds_after']} "
         f"(peak {s['fds_peak']})", f"{s['fds_after'] - s['fds_round1']:+d}", "round 2 <= round 1, but bounded pools",
         mark(ok["fds_back"])],
        ["threads: baseline / round 1 / round 2", f"{s['threads_baseline']} / {s['threads_round1']} / "
         f"{s['threads_after']} (peak {s['threads_peak']})", f"{s['threads_after'] - s['threads_round1']:+d}",
         "round 2 <= round 1, but bounded pools", mark(ok["threads_back"])],
        ["lost finals", f"{s['finals_received']} received, {s['segments_stored']} stored, {s['turns']} turns "
         f"({s['missed_turns']} without a final) in {s['interviews']} interviews; {s['stored_after_overlay_closed']} "
         "stored after the interviewer's overlay closed (not lost)", str(s["lost_finals"]), "0",
         mark(ok["no_lost_finals"])],
    ]  # fmt: skip


def print_inventory(s: dict[str, Any]) -> None:
    print("\nper process: RSS MB / fds / threads (before the first join | after round 1 | after round 2):")
    snaps = [{k.split(" ", 1)[1] + f" (pid {k.split(' ', 1)[0]})": v for k, v in s["by_process"][when].items()}
             for when in ("baseline", "round1", "after")]  # fmt: skip
    for who in sorted(set().union(*snaps)):
        print(f"  {who}: " + " | ".join("/".join(f"{x:g}" for x in snap[who]) if who in snap else "-"
                                        for snap in snaps))  # fmt: skip
    for what, key in (("threads", "thread_growth"), ("descriptors", "fd_growth")):
        growth = s[key]
        print(f"\n{what} more after round 2 than after round 1: " + (json.dumps(growth) if growth else "none"))
    print("pools that grow on demand to a bound:")
    for key, what in {**POOLS, **FD_POOLS}.items():
        print(f"  {key}: {what}")
    for title, key in (("created once, by round 1 (baseline -> after round 1)", "created_in_round1"),
                       ("grew in round 2 (after round 1 -> after round 2)", "grew_in_round2"),
                       ("shrank in round 2", "shrank_in_round2")):  # fmt: skip
        print(f"\n{title}:")
        for name, n in s[key].items():
            print(f"  {n:+4d}  {name}")
        if not s[key]:
            print("  nothing")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rooms", type=int, default=10, help="interviews at once (10)")
    ap.add_argument("--minutes", type=float, default=30.0, help="how long new interviews keep starting (30)")
    ap.add_argument("--audio", nargs="+", help="stereo dialogues (interviewer left) with <name>.json beside")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between footprint samples (10)")
    ap.add_argument("--after-s", type=float, default=10.0, help="quiet seconds before each of the three snapshots (10)")
    ap.add_argument("--warmup-s", type=float, default=25.0,
                    help="audio of each round-1 (warm-up) interview, s (25: a few turns, so that revisions run)")
    ap.add_argument("--stagger", type=float, default=6.0, help="spread slot starts over this many s (6)")
    ap.add_argument("--nice", type=int, default=0, help="run the server at this niceness")
    ap.add_argument("--json", help="write the summary, every sample and every interview here (and the server's log "
                    "beside it, as <name>.server.log)")
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
    print_inventory(report["summary"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        progress(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
