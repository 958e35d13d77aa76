"""Interviews API, persistence and events under load: `python -m benchmarks.api [--json PATH]`.

Measures, on one machine with everything on loopback:

1. **segment persist**: `InterviewService.record_segment` latency (one final segment: the interview read plus
   the append-only segment insert carrying its outbox flag) against an embedded nx-27017 (or `MONGODB_URL`);
2. **API**: latency of a request mix (reads, listings, creates, starts) sent open-loop at a fixed rate by a
   load generator in a second process (httpx), measured from each request's *scheduled* send time so a slow
   server cannot hide behind a slow client; the server is the same Starlette app `server.py` serves, under
   uvicorn, sharing its event loop with the outbox relay as in production;
3. **events across a NATS restart**: the benchmark's own nats-server is stopped in the middle of the load and
   started again; every committed write's event must then be in the stream exactly once (counted by id).

Targets (issue 4): segment persist p95 <= 20 ms; API p95 <= 25 ms at 200 req/s; zero lost or duplicated events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("benchmarks.api")

REPO = str(Path(__file__).resolve().parents[1])
TARGET_SEGMENT_P95_MS = 20.0
TARGET_API_P95_MS = 25.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


# --------------------------------------------------------------------------------------------------------
# Load generator (runs as `python -m benchmarks.api --loadgen CONFIG_JSON` in its own process)


def _plan(i: int, run: str, seed_ids: list[str], lag: int) -> tuple[str, str, str, dict[str, Any] | None]:
    """Request i of the mix: 50% get, 20% list, 15% create, 15% start (of one created `lag` requests earlier;
    lag = 20k + 3 maps start slots 17-19 onto create slots 14-16)."""
    slot = i % 20
    if slot >= 17 and i >= lag:
        return "start", "POST", f"/api/interviews/{run}-{i - lag}/start", None
    if slot >= 14 and slot < 17:
        body = {
            "interviewId": f"{run}-{i}",
            "candidateId": "bench-candidate",
            "jobId": "bench-job",
            "scheduledAt": "2026-12-01T10:00:00Z",
        }
        return "create", "POST", "/api/interviews", body
    if slot >= 10 and slot < 14:
        return "list", "GET", "/api/interviews?status=scheduled&limit=20", None
    return "get", "GET", f"/api/interviews/{seed_ids[i % len(seed_ids)]}", None


async def _loadgen(cfg: dict[str, Any]) -> dict[str, Any]:
    import httpx

    rate, n = float(cfg["rate"]), int(cfg["requests"])
    lag = 20 * max(1, round(rate / 20)) + 3  # start what was created about a second earlier
    headers = {"Authorization": f"Bearer {cfg['key']}"}
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    results: list[tuple[str, float, float, int]] = []  # kind, scheduled offset s, latency s, status
    async with httpx.AsyncClient(
        base_url=cfg["base_url"], headers=headers, limits=limits, timeout=30
    ) as client:
        for _ in range(20):  # warm the connection pool and the server's code paths; not measured
            await client.get(f"/api/interviews/{cfg['seed_ids'][0]}")
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.2
        print(json.dumps({"start_unix": time.time() + 0.2}), flush=True)

        async def one(i: int) -> None:
            kind, method, url, body = _plan(i, cfg["run"], cfg["seed_ids"], lag)
            scheduled = t0 + i / rate
            try:
                r = await client.request(method, url, json=body)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            results.append((kind, scheduled - t0, loop.time() - scheduled, status))

        tasks = []
        for i in range(n):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return {"results": results}


# --------------------------------------------------------------------------------------------------------
# The benchmark


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


_LAGS: list[float] = []


async def _loop_lag() -> None:
    """Event-loop lag of the server process: how late a 50 ms timer fires (blocking work shows up here)."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.05)
        _LAGS.append(loop.time() - t - 0.05)


def _proc_cpu_s(embedded: Any) -> float:
    """user+system CPU seconds of the embedded nx-27017 process (NaN when not embedded or not on Linux)."""
    proc = getattr(embedded, "proc", None)
    try:
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as f:  # type: ignore[union-attr]
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError, IndexError):
        return math.nan


async def _segment_phase(service: Any, n: int) -> tuple[list[float], int]:
    from datetime import UTC, datetime

    from domain.commands import CreateInterview
    from domain.events import SegmentEvent, Speaker

    doc = await service.create_interview(
        CreateInterview.parse(
            {
                "candidateId": "bench-candidate",
                "jobId": "bench-job",
                "scheduledAt": datetime.now(UTC).isoformat(),
            }
        )
    )
    iid = doc["interviewId"]
    await service.start_interview(iid)
    speaker = Speaker(role="candidate", name="Bench", participant_id="cand-1")
    lat: list[float] = []
    stored = 0
    for seq in range(n):
        seg = SegmentEvent(
            speaker, seq, seq * 2.0, seq * 2.0 + 1.8, f"segment number {seq} of the benchmark", True
        )
        t = time.perf_counter()
        stored += bool(await service.record_segment(iid, seg))
        lat.append(time.perf_counter() - t)
    # 2 aggregate events (scheduled, started) + one per stored segment
    return lat, stored + 2


async def _stream_counts(url: str) -> tuple[int, Counter[str]]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    from adapters.nats_bus import STREAM, SUBJECTS

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(STREAM)).state.messages
        sub = await js.pull_subscribe(
            SUBJECTS, stream=STREAM, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        ids: Counter[str] = Counter()
        got = 0
        while got < total:
            for m in await sub.fetch(min(total - got, 512), timeout=10):
                got += 1
                ids[json.loads(m.data)["id"]] += 1
        await sub.unsubscribe()
        return total, ids
    finally:
        await nc.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn
    from starlette.applications import Starlette

    from adapters.http_api import api_routes
    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.nats_bus import JetStreamBus, OutboxRelay
    from domain.commands import CreateCandidate, CreateInterview, InterviewService
    from tests.test_bus_nats import NatsServer, nats_server_binary

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    embedded: EmbeddedMongo | None = None
    mongo_url = os.environ.get("MONGODB_URL")
    if not mongo_url:
        embedded = EmbeddedMongo(tmp / "mongo")
        mongo_url = await embedded.start()
    nats_srv = NatsServer(tmp / "nats", nats_server_binary())
    await asyncio.to_thread(nats_srv.start)
    store = await MongoStore.connect(mongo_url, db_name=f"bench_{secrets.token_hex(4)}")
    bus = await JetStreamBus.open(nats_srv.url, wait_s=10)
    relay = OutboxRelay(store, bus)
    relay.start()
    service = InterviewService(store)
    out: dict[str, Any] = {"mongo": "MONGODB_URL" if embedded is None else "nx-27017 (embedded)"}
    server: Any = None
    serve_task: asyncio.Task[None] | None = None
    try:
        await service.create_candidate(
            CreateCandidate.parse(
                {"candidateId": "bench-candidate", "name": "Bench Candidate", "email": "b@example.com"}
            )
        )
        seg_lat, seg_events = await _segment_phase(service, args.segments)
        out["segment_persist_ms"] = {
            "n": len(seg_lat),
            "p50": percentile(seg_lat, 50) * 1e3,
            "p95": percentile(seg_lat, 95) * 1e3,
            "p99": percentile(seg_lat, 99) * 1e3,
        }

        seed_ids = []
        for _ in range(50):
            doc = await service.create_interview(
                CreateInterview.parse(
                    {
                        "candidateId": "bench-candidate",
                        "jobId": "bench-job",
                        "scheduledAt": "2026-12-01T09:00:00Z",
                    }
                )
            )
            seed_ids.append(doc["interviewId"])
        setup_events = seg_events + 50

        key = secrets.token_urlsafe(24)
        app = Starlette(routes=api_routes(service, key))
        sock = _free_socket()
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)

        n_req = int(args.rate * args.duration)
        cfg = {
            "rate": args.rate,
            "requests": n_req,
            "key": key,
            "base_url": f"http://127.0.0.1:{port}",
            "seed_ids": seed_ids,
            "run": "lg" + secrets.token_hex(3),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.api",
            "--loadgen",
            json.dumps(cfg),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        assert proc.stdout is not None
        start_unix = json.loads(await proc.stdout.readline())["start_unix"]
        cpu0, db_cpu0 = time.process_time(), _proc_cpu_s(embedded)

        async def outage() -> tuple[float, float]:
            await asyncio.sleep(max(0.0, start_unix + args.outage_at - time.time()))
            down = time.time() - start_unix
            await asyncio.to_thread(nats_srv.stop)
            await asyncio.sleep(args.outage)
            await asyncio.to_thread(nats_srv.start)
            return down, time.time() - start_unix

        outage_task = asyncio.create_task(outage()) if args.outage > 0 else None
        lag_task = asyncio.create_task(_loop_lag())
        raw = await proc.stdout.read()
        await proc.wait()
        cpu_s, db_cpu_s = time.process_time() - cpu0, _proc_cpu_s(embedded) - db_cpu0
        lag_task.cancel()
        await asyncio.gather(lag_task, return_exceptions=True)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed with exit code {proc.returncode}")
        results = json.loads(raw)["results"]
        down_at, up_at = await outage_task if outage_task else (math.nan, math.nan)

        lat = [r[2] for r in results]
        ok = [r for r in results if 200 <= r[3] < 300]
        writes_ok = sum(1 for r in ok if r[0] in ("create", "start"))
        during = [r[2] for r in results if down_at <= r[1] <= up_at]
        failed_during = sum(1 for r in results if down_at <= r[1] <= up_at and not 200 <= r[3] < 300)
        span = max(r[1] for r in results) if results else math.nan
        out["api"] = {
            "rate": args.rate,
            "requests": len(results),
            "achieved_rate": len(results) / span if span else math.nan,
            "errors": len(results) - len(ok),
            "statuses": dict(Counter(str(r[3]) for r in results)),
            "p50_ms": percentile(lat, 50) * 1e3,
            "p95_ms": percentile(lat, 95) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
            # CPU per request: this process (uvicorn + app + relay) and the nx-27017 process, if embedded.
            "server_loop_lag_ms": {"p99": percentile(_LAGS, 99) * 1e3, "max": max(_LAGS, default=math.nan) * 1e3},
            "server_cpu_ms_per_request": cpu_s / max(len(results), 1) * 1e3,
            "db_cpu_ms_per_request": db_cpu_s / max(len(results), 1) * 1e3,
            "by_kind_p95_ms": {
                k: percentile([r[2] for r in results if r[0] == k], 95) * 1e3
                for k in ("get", "list", "create", "start")
            },
            "during_outage": {
                "from_s": down_at,
                "to_s": up_at,
                "requests": len(during),
                "failed": failed_during,
                "p95_ms": percentile(during, 95) * 1e3,
            },
        }

        # Drain: every committed write's event must reach the stream once.
        expected = setup_events + writes_ok
        t_up = time.monotonic()
        relay.notify()
        async with asyncio.timeout(120):
            await relay.wait_until(lambda r: r.published >= expected)
        drain_s = time.monotonic() - t_up
        total, ids = await _stream_counts(nats_srv.url)
        out["events"] = {
            "expected": expected,
            "in_stream": total,
            "unique": len(ids),
            "lost": expected - len(ids),
            "duplicated": sum(c - 1 for c in ids.values()),
            "relay_published": relay.published,
            "relay_failures": relay.failures,
            "republished_dropped_by_jetstream": bus.duplicates,
            "drain_after_load_s": drain_s,
        }
        return out
    finally:
        if server is not None:
            server.should_exit = True
        if serve_task is not None:
            await serve_task
        await relay.aclose()
        await bus.close()
        await store.close()
        await asyncio.to_thread(nats_srv.stop)
        if embedded is not None:
            await embedded.stop()


def _table(out: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    seg, api, ev = out["segment_persist_ms"], out["api"], out["events"]
    rows: list[list[Any]] = [
        [
            f"segment persist ({out['mongo']})",
            seg["n"],
            seg["p50"],
            seg["p95"],
            seg["p99"],
            f"p95 <= {TARGET_SEGMENT_P95_MS:g} ms",
            "yes" if seg["p95"] <= TARGET_SEGMENT_P95_MS else "NO",
        ],
        [
            f"API mix at {api['rate']:g} req/s (achieved {api['achieved_rate']:.0f}, {api['errors']} errors)",
            api["requests"],
            api["p50_ms"],
            api["p95_ms"],
            api["p99_ms"],
            f"p95 <= {TARGET_API_P95_MS:g} ms",
            "yes" if api["p95_ms"] <= TARGET_API_P95_MS and api["errors"] == 0 else "NO",
        ],
    ]
    for kind, p95 in api["by_kind_p95_ms"].items():
        rows.append([f"  {kind}", "", "", p95, "", "", ""])
    rows.append(
        [
            f"  CPU per request: app+relay {api['server_cpu_ms_per_request']:.2f} ms, "
            f"nx-27017 {api['db_cpu_ms_per_request']:.2f} ms",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    d = api["during_outage"]
    rows.append(
        [
            f"  while NATS down ({d['from_s']:.1f}-{d['to_s']:.1f} s, {d['failed']} failed)",
            d["requests"],
            "",
            d["p95_ms"],
            "",
            "",
            "",
        ]
    )
    rows.append(
        [
            f"events across NATS restart: {ev['unique']}/{ev['expected']} arrived, drained {ev['drain_after_load_s']:.2f} s after load",
            ev["in_stream"],
            "",
            "",
            "",
            "0 lost, 0 duplicated",
            "yes"
            if ev["lost"] == 0 and ev["duplicated"] == 0
            else f"NO ({ev['lost']} lost, {ev['duplicated']} dup)",
        ]
    )
    return rows, ["measure", "n", "p50 ms", "p95 ms", "p99 ms", "target", "met"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=200.0, help="API requests per second (open loop)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of API load")
    p.add_argument("--segments", type=int, default=300, help="segments persisted in the persist phase")
    p.add_argument("--outage-at", type=float, default=5.0, help="seconds into the load when NATS is stopped")
    p.add_argument("--outage", type=float, default=4.0, help="seconds NATS stays down (0: no restart)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loadgen:
        res = asyncio.run(_loadgen(json.loads(args.loadgen)))
        print(json.dumps(res), flush=True)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks._env import environment, format_environment, print_table

    env = environment(
        extra_packages=("starlette", "uvicorn", "httpx", "motor", "pymongo", "nx-27017", "nats-py")
    )
    out = asyncio.run(run(args))
    print(format_environment(env))
    print("Note: shared machine; other processes may be running (see load average).\n")
    rows, headers = _table(out)
    print_table(rows, headers)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, **out}, indent=2))
    met = (
        out["segment_persist_ms"]["p95"] <= TARGET_SEGMENT_P95_MS
        and out["api"]["p95_ms"] <= TARGET_API_P95_MS
        and out["events"]["lost"] == 0
        and out["events"]["duplicated"] == 0
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
