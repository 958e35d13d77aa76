"""CPU per API request, by kind, without HTTP or concurrency: `python -m benchmarks.api_cpu [--requests 300]
[--audit-pairs 40]`.

The /api app (`testing.api.api_app`, as `benchmarks.api` serves it, `ADMIN_API_KEY` as the credential) is called
directly as an ASGI app, one request at a time, over an embedded nx-27017 holding 50 scheduled interviews (their
events already published): `--requests` GETs of an interview, listings (`status=scheduled&limit=20`), creates and
starts of what was created, `--repeats` times. For each kind: CPU of this process (the app, Motor's threads) and
of nx-27017 per request; the minimum over the repeats, then the benchmark's mix (50 % get, 20 % list, 15 % create,
15 % start). `benchmarks.api` measures the same under load, where CPU per request also depends on how saturated
the server is (a queue amortises the event loop's work over more requests); this measures the work itself.

**Auditing on vs off** (`--audit-pairs N`): two apps over the same store, one without the audit trail and one with
it (`adapters.audit.AuditLog` in a database of its own, as the server runs it), take turns block by block: a block
is `--block` requests of the mix (20 gets, 8 listings, 6 creates and the 6 starts of those, for 40), N pairs of
blocks in ABBA order (off, on, on, off, ...). A block with the trail ends once its entries are written (`flush`),
so its CPU includes the writes, in the server's batches (`AuditLog`'s default: 10 entries, 4 per block).
Turns of a fraction of a second cancel what drifts on a shared machine (other work, CPU clocks, the store's
growth), which whole rounds minutes apart do not: rounds of the same mode differed by up to 50 %, more than the
trail costs. CPU time, not wall time. Reported: per mode, CPU per request (app, nx-27017); per pair of blocks, on
minus off, with their median and a 95 % bootstrap interval of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import (
    abba,
    environment,
    format_environment,
    median_summary,
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


def _threads_cpu_s(pid: int) -> float:
    """CPU of `pid`'s live threads in nanoseconds' resolution (schedstat), where /proc/PID/stat counts clock ticks
    (10 ms: 2-3 per block of the audit comparison). nx-27017's threads live as long as it does (its thread pool
    keeps them), so none of the time is lost with an exited thread."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total / 1e9


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


async def _request(app: Any, kind: str, i: int, seeds: list[str], tag: str, key: str) -> None:
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


def _block_plan(size: int) -> list[tuple[str, int]]:
    """`size` requests (a multiple of 20) in the mix's proportions, interleaved, each create's start after it."""
    if size < 20 or size % 20:
        raise SystemExit("--block must be a multiple of 20")
    k = size // 20
    gets, lists, creates = [("get", i) for i in range(10 * k)], [("list", i) for i in range(4 * k)], 3 * k
    plan: list[tuple[str, int]] = []
    for c in range(creates):
        plan += [("create", c), *gets[c * 10 // 3:(c + 1) * 10 // 3], *lists[c * 4 // 3:(c + 1) * 4 // 3]]
    plan += [("start", c) for c in range(creates)]
    return plan


async def _audit_phase(store: Any, service: Any, seeds: list[str], tmp: Path, pid: int, pairs: int,
                       block: int) -> dict[str, Any]:
    from adapters.audit import AuditEntry, AuditLog
    from testing.api import ADMIN_KEY, api_app

    audit = AuditLog(store.client[f"{store.db.name}_audit"])  # as server.py: a database of its own (AUDIT_DB)
    await audit.start()
    apps = {"off": (await api_app(store, service, tmp / "api-off")).app,
            "on": (await api_app(store, service, tmp / "api-on", audit=audit, entry_type=AuditEntry)).app}
    plan = _block_plan(block)
    cpu: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}  # per block: app s, nx-27017 s
    made = 0
    try:
        for b, mode in enumerate(["off", "on"] + abba("off", "on", pairs)):  # the first pair warms up
            if b % 20 == 0:
                progress(f"auditing off/on: block {b + 1} of {2 * pairs + 2}")
            tag = f"a{b}"
            app0, db0 = time.process_time(), _threads_cpu_s(pid)
            for kind, i in plan:
                await _request(apps[mode], kind, i, seeds, tag, ADMIN_KEY)
            if mode == "on":
                await audit.flush()
                made += len(plan)
            if b >= 2:
                cpu[mode].append((time.process_time() - app0, _threads_cpu_s(pid) - db0))
            await store.interviews.delete_many({"_id": {"$in": [f"{tag}-{c}" for c in range(block * 3 // 20)]}})
    finally:
        await audit.aclose()
    verified = await audit.verify()
    per_req = {m: {"app": sum(a for a, _ in v) * 1e3 / (len(v) * block),
                   "nx_27017": sum(d for _, d in v) * 1e3 / (len(v) * block)} for m, v in cpu.items()}
    # the n-th off block against the n-th on block: ABBA puts them side by side
    diffs = [((on[0] - off[0]) * 1e3 / block, (on[1] - off[1]) * 1e3 / block)
             for off, on in zip(cpu["off"], cpu["on"], strict=True)]
    return {
        "pairs": pairs, "block": block, "cpu_ms_per_request": per_req,
        "on_minus_off_ms": {"app": per_req["on"]["app"] - per_req["off"]["app"],
                            "nx_27017": per_req["on"]["nx_27017"] - per_req["off"]["nx_27017"]},
        "pair_differences_ms": {"app": median_summary([a for a, _ in diffs]),
                                "nx_27017": median_summary([d for _, d in diffs]),
                                "total": median_summary([a + d for a, d in diffs])},
        "audit_entries": {"requests_made": made, "written": audit.written, "batches": audit.batches,
                          "failures": audit.failures, "chain_intact": verified.ok},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from adapters.mongo import EmbeddedMongo, MongoStore
    from domain.commands import CreateCandidate, CreateInterview, InterviewService
    from testing.api import ADMIN_KEY, api_app

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
        out: dict[str, Any] = {"requests_per_kind": args.requests, "repeats": args.repeats}
        if args.repeats:
            app = (await api_app(store, service, tmp / "api")).app
            for i in range(20):  # warm-up: caches, connections
                await _call(app, "GET", f"/api/interviews/{seeds[i % 50]}", None, ADMIN_KEY)
            n = args.requests
            per_kind: dict[str, list[tuple[float, float]]] = {k: [] for k in MIX}
            for rep in range(args.repeats):
                progress(f"repeat {rep + 1} of {args.repeats}")
                for kind in MIX:
                    cpu0, db0 = time.process_time(), _proc_cpu_s(pid)
                    for i in range(n):
                        await _request(app, kind, i, seeds, f"r{rep}", ADMIN_KEY)
                    per_kind[kind].append(((time.process_time() - cpu0) * 1e3 / n,
                                           (_proc_cpu_s(pid) - db0) * 1e3 / n))
                await store.interviews.delete_many({"_id": {"$in": [f"r{rep}-{i}" for i in range(n)]}})
            best = {k: (min(a for a, _ in v), min(b for _, b in v)) for k, v in per_kind.items()}
            out["cpu_ms"] = {k: {"app": a, "nx_27017": b, "all_repeats": per_kind[k]} for k, (a, b) in best.items()}
            out["mix_cpu_ms"] = {"app": sum(MIX[k] * a for k, (a, _) in best.items()),
                                 "nx_27017": sum(MIX[k] * b for k, (_, b) in best.items())}
        if args.audit_pairs:
            out["audit"] = await _audit_phase(store, service, seeds, tmp, pid, args.audit_pairs, args.block)
        out["load_average"] = list(os.getloadavg())
        return out
    finally:
        await store.close()
        await embedded.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="requests per kind and repeat")
    p.add_argument("--repeats", type=int, default=2,
                   help="repeats (the minimum per kind is reported; 0: only the audit comparison)")
    p.add_argument("--audit-pairs", type=int, default=0,
                   help="pairs of blocks without and with the audit trail, in ABBA order (0: no comparison)")
    p.add_argument("--block", type=int, default=40, help="requests per block of the audit comparison (20, 40, ...)")
    p.add_argument("--json", help="also write the results here")
    env = environment(extra_packages=("starlette", "motor", "pymongo", "nx-27017", "limits"))

    async def go(args: argparse.Namespace) -> dict[str, Any]:
        out = await run(args)
        print(format_environment(env))
        print(f"load average at the end: {out['load_average']}")
        if "cpu_ms" in out:
            rows: list[list[Any]] = [[k, f"{v['app']:.2f}", f"{v['nx_27017']:.2f}", f"{v['app'] + v['nx_27017']:.2f}"]
                                     for k, v in out["cpu_ms"].items()]
            mix = out["mix_cpu_ms"]
            rows.append(["mix (50/20/15/15)", f"{mix['app']:.2f}", f"{mix['nx_27017']:.2f}",
                         f"{mix['app'] + mix['nx_27017']:.2f}"])
            print_table(rows, ["request", "app CPU ms", "nx-27017 CPU ms", "total"])
        if "audit" in out:
            _print_audit(out["audit"])
        return {"environment": env, **out}

    run_program(p, go, argv)


def _print_audit(a: dict[str, Any]) -> None:
    per, diff, pairs = a["cpu_ms_per_request"], a["on_minus_off_ms"], a["pair_differences_ms"]
    e = a["audit_entries"]
    print(f"\nAuditing off vs on, {a['pairs']} pairs of {a['block']}-request blocks (ABBA), CPU ms per request:")
    rows = [[mode, f"{per[mode]['app']:.3f}", f"{per[mode]['nx_27017']:.3f}",
             f"{per[mode]['app'] + per[mode]['nx_27017']:.3f}"] for mode in ("off", "on")]
    off_total = per["off"]["app"] + per["off"]["nx_27017"]
    rows.append(["on - off", f"{diff['app']:+.3f}", f"{diff['nx_27017']:+.3f}",
                 f"{diff['app'] + diff['nx_27017']:+.3f} ({(diff['app'] + diff['nx_27017']) / off_total:+.1%})"])
    for part in ("app", "nx_27017", "total"):
        s = pairs[part]
        rows.append([f"per pair, {part}: median [95 % CI] (min..max)",
                     f"{s['median']:+.3f} [{s['ci95_low']:+.3f}, {s['ci95_high']:+.3f}]",
                     f"({s['min']:+.3f}..{s['max']:+.3f})", ""])
    print_table(rows, ["auditing", "app", "nx-27017", "total"])
    print(f"audit entries written / requests made: {e['written']} / {e['requests_made']} in {e['batches']} batches, "
          f"{e['failures']} write failures, chain {'intact' if e['chain_intact'] else 'BROKEN'}")


if __name__ == "__main__":
    main()
