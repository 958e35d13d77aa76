"""CPU per API request, by kind, without HTTP or concurrency: `python -m benchmarks.api_cpu [--requests 300]`.

The /api app (`testing.api.api_app`, as `benchmarks.api` serves it, `ADMIN_API_KEY` as the credential) is called
directly as an ASGI app, one request at a time, over an embedded nx-27017 holding 50 scheduled interviews (their
events already published): `--requests` GETs of an interview, listings (`status=scheduled&limit=20`), creates and
starts of what was created, `--repeats` times. For each kind: CPU of this process (the app, Motor's threads) and
of nx-27017 per request; the minimum over the repeats, then the benchmark's mix (50 % get, 20 % list, 15 % create,
15 % start). `benchmarks.api` measures the same under load, where CPU per request also depends on how saturated
the server is (a queue amortises the event loop's work over more requests); this measures the work itself.

`--audit off,on,on,off` (or `--audit-pairs N`: N pairs in ABBA order) alternates rounds without and with the audit
trail (`adapters.audit.AuditLog` in a database of its own, as the server runs it): in a round with it, each kind's
CPU includes writing that kind's entries (the writer is flushed before the kind's clock stops), so the difference is
what auditing costs per request, in the app and in nx-27017 separately. CPU time, not wall time: a busy shared
machine stretches a round but changes the work little. Reported per mode: the median over its rounds of the mix;
per pair: on minus off, and their median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import (
    abba,
    environment,
    format_environment,
    print_table,
    progress_printer,
    run_program,
)

progress = progress_printer("api_cpu")
MIX = {"get": 0.50, "list": 0.20, "create": 0.15, "start": 0.15}


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _call(app: Any, method: str, target: str, body: dict[str, Any] | None, key: str) -> int:
    """One request through the ASGI app; returns its status."""
    path, _, query = target.partition("?")
    raw = json.dumps(body).encode() if body else b""
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())]
    if raw:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the app never waits for one here
        raise AssertionError("unreachable")

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def _round(app: Any, key: str, seeds: list[str], n: int, tag: str, proc_pid: int,
                 audit: Any | None) -> dict[str, tuple[float, float]]:
    """One round: `n` requests of each kind; CPU ms per request (app, nx-27017) by kind. With `audit`, each kind's
    clock stops once its entries are written."""
    out: dict[str, tuple[float, float]] = {}
    for kind in MIX:
        cpu0, db0 = time.process_time(), _proc_cpu_s(proc_pid)
        for i in range(n):
            if kind == "get":
                status = await _call(app, "GET", f"/api/interviews/{seeds[i % len(seeds)]}", None, key)
            elif kind == "list":
                status = await _call(app, "GET", "/api/interviews?status=scheduled&limit=20", None, key)
            elif kind == "create":
                status = await _call(app, "POST", "/api/interviews", {
                    "interviewId": f"{tag}-{i}", "candidateId": "bench-candidate", "jobId": "bench-job",
                    "scheduledAt": "2026-12-01T10:00:00Z"}, key)
            else:
                status = await _call(app, "POST", f"/api/interviews/{tag}-{i}/start", None, key)
            if status not in (200, 201):
                raise RuntimeError(f"{kind} request {i} answered {status}")
        if audit is not None:
            await audit.flush()
        out[kind] = ((time.process_time() - cpu0) * 1e3 / n, (_proc_cpu_s(proc_pid) - db0) * 1e3 / n)
    return out


def _mix(by_kind: dict[str, tuple[float, float]]) -> tuple[float, float]:
    return sum(MIX[k] * a for k, (a, _) in by_kind.items()), sum(MIX[k] * b for k, (_, b) in by_kind.items())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from adapters.audit import AuditEntry, AuditLog
    from adapters.mongo import EmbeddedMongo, MongoStore
    from domain.commands import CreateCandidate, CreateInterview, InterviewService
    from testing.api import ADMIN_KEY, api_app

    modes = abba("off", "on", args.audit_pairs) if args.audit_pairs else args.audit.split(",")
    if not modes or any(m not in ("off", "on") for m in modes):
        raise SystemExit(f"--audit takes off/on rounds, e.g. off,on,on,off (got {args.audit!r})")
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-cpu-"))
    embedded = EmbeddedMongo(tmp / "mongo")
    url = await embedded.start()
    assert embedded.proc is not None
    pid = embedded.proc.pid
    store = await MongoStore.connect(url, db_name="bench")
    try:
        service = InterviewService(store)
        await service.create_candidate(CreateCandidate.parse(
            {"candidateId": "bench-candidate", "name": "Bench Candidate", "email": "b@example.com"}))
        seeds = [(await service.create_interview(CreateInterview.parse(
            {"candidateId": "bench-candidate", "jobId": "bench-job", "scheduledAt": "2026-12-01T09:00:00Z"}
        )))["interviewId"] for _ in range(50)]
        # as the relay leaves them once published (no relay runs here)
        await store.interviews.update_many({}, {"$set": {"outbox": {}, "outboxCount": 0}})
        n = args.requests
        rounds: list[dict[str, Any]] = []
        for r, mode in enumerate(modes):
            progress(f"round {r + 1} of {len(modes)}: auditing {mode}")
            audit = None
            if mode == "on":  # as server.py runs it: the trail in a database of its own (AUDIT_DB)
                audit = AuditLog(store.client["bench_audit"])
                await audit.start()
            app = (await api_app(store, service, tmp / f"api-{r}", audit=audit, entry_type=AuditEntry)).app
            for i in range(20):  # warm-up: caches, connections
                await _call(app, "GET", f"/api/interviews/{seeds[i % 50]}", None, ADMIN_KEY)
            if audit is not None:
                await audit.flush()
            by_kind = [await _round(app, ADMIN_KEY, seeds, n, f"r{r}-{rep}", pid, audit)
                       for rep in range(args.repeats)]
            best = {k: (min(b[k][0] for b in by_kind), min(b[k][1] for b in by_kind)) for k in MIX}
            entry: dict[str, Any] = {"audit": mode, "cpu_ms": {k: {"app": a, "nx_27017": b} for k, (a, b) in
                                                               best.items()}}
            entry["mix_cpu_ms"] = dict(zip(("app", "nx_27017"), _mix(best), strict=True))
            if audit is not None:
                await audit.aclose()
                entry["audit_entries"] = {"requests_made": 20 + 4 * n * args.repeats, "written": audit.written,
                                          "batches": audit.batches, "failures": audit.failures}
            rounds.append(entry)
            for rep in range(args.repeats):
                await store.interviews.delete_many({"_id": {"$in": [f"r{r}-{rep}-{i}" for i in range(n)]}})
        verified = await AuditLog(store.client["bench_audit"]).verify() if "on" in modes else None
        return {"requests_per_kind": n, "repeats": args.repeats, "modes": modes,
                "load_average": list(os.getloadavg()), "rounds": rounds, "summary": _summary(rounds),
                "chain_intact": None if verified is None else verified.ok}
    finally:
        await store.close()
        await embedded.stop()


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: the median over its rounds of each kind and of the mix; per off/on pair (the n-th of each):
    on minus off for the mix, and the median of those differences."""
    out: dict[str, Any] = {}
    for mode in ("off", "on"):
        mine = [r for r in rounds if r["audit"] == mode]
        if not mine:
            continue
        out[mode] = {k: {p: statistics.median(r["cpu_ms"][k][p] for r in mine) for p in ("app", "nx_27017")}
                     for k in MIX}
        out[mode]["mix"] = {p: statistics.median(r["mix_cpu_ms"][p] for r in mine) for p in ("app", "nx_27017")}
    offs = [r for r in rounds if r["audit"] == "off"]
    ons = [r for r in rounds if r["audit"] == "on"]
    pairs = [{p: on["mix_cpu_ms"][p] - off["mix_cpu_ms"][p] for p in ("app", "nx_27017")}
             for off, on in zip(offs, ons, strict=False)]
    if pairs:
        out["pairs_on_minus_off_mix"] = pairs
        out["median_on_minus_off_mix"] = {p: statistics.median(d[p] for d in pairs) for p in ("app", "nx_27017")}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="requests per kind and repeat")
    p.add_argument("--repeats", type=int, default=2, help="repeats per round (the minimum per kind is reported)")
    p.add_argument("--audit", default="off",
                   help="rounds without and with the audit trail, in this order (e.g. off,on,on,off)")
    p.add_argument("--audit-pairs", type=int, default=0,
                   help="instead of --audit: this many off/on pairs in ABBA order (off,on,on,off,off,on,...)")
    p.add_argument("--json", help="also write the results here")
    env = environment(extra_packages=("starlette", "motor", "pymongo", "nx-27017", "limits"))

    async def go(args: argparse.Namespace) -> dict[str, Any]:
        out = await run(args)
        print(format_environment(env))
        print(f"load average at the end: {out['load_average']}")
        rows: list[list[Any]] = []
        for i, r in enumerate(out["rounds"]):
            mix = r["mix_cpu_ms"]
            written = r.get("audit_entries")
            rows.append([f"round {i + 1}, auditing {r['audit']}",
                         *(f"{r['cpu_ms'][k]['app']:.2f} + {r['cpu_ms'][k]['nx_27017']:.2f}" for k in MIX),
                         f"{mix['app']:.3f} + {mix['nx_27017']:.3f}",
                         "" if written is None else f"{written['written']} / {written['requests_made']} "
                         f"in {written['batches']} batches"])
        print_table(rows, ["round", *(f"{k} app + nx ms" for k in MIX), "mix app + nx ms",
                           "audit entries written / requests"])
        summary = out["summary"]
        if "median_on_minus_off_mix" in summary:
            d = summary["median_on_minus_off_mix"]
            off, on = summary["off"]["mix"], summary["on"]["mix"]
            pairs = ", ".join(f"{x['app']:+.3f} + {x['nx_27017']:+.3f}" for x in summary["pairs_on_minus_off_mix"])
            print(f"\nmix CPU ms per request, median of rounds: off {off['app']:.3f} + {off['nx_27017']:.3f}, "
                  f"on {on['app']:.3f} + {on['nx_27017']:.3f} (app + nx-27017)")
            print(f"auditing costs per request (on - off, per pair: {pairs}): median app {d['app']:+.3f} ms, "
                  f"nx-27017 {d['nx_27017']:+.3f} ms, total {d['app'] + d['nx_27017']:+.3f} ms "
                  f"({(d['app'] + d['nx_27017']) / (off['app'] + off['nx_27017']):+.1%} of the mix without); "
                  f"chain intact: {out['chain_intact']}")
        return {"environment": env, **out}

    run_program(p, go, argv)


if __name__ == "__main__":
    main()
