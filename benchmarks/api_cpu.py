"""CPU per API request, by kind, without HTTP or concurrency: `python -m benchmarks.api_cpu [--requests 300]`.

The /api app (`testing.api.api_app`, as `benchmarks.api` serves it, `ADMIN_API_KEY` as the credential) is called
directly as an ASGI app, one request at a time, over an embedded nx-27017 holding 50 scheduled interviews (their
events already published): `--requests` GETs of an interview, listings (`status=scheduled&limit=20`), creates and
starts of what was created, `--repeats` times. For each kind: CPU of this process (the app, Motor's threads) and
of nx-27017 per request; the minimum over the repeats, then the benchmark's mix (50 % get, 20 % list, 15 % create,
15 % start). `benchmarks.api` measures the same under load, where CPU per request also depends on how saturated
the server is (a queue amortises the event loop's work over more requests); this measures the work itself.
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

from benchmarks.report import environment, format_environment, print_table, progress_printer, run_program

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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from adapters.mongo import EmbeddedMongo, MongoStore
    from domain.commands import CreateCandidate, CreateInterview, InterviewService
    from testing.api import ADMIN_KEY, api_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-cpu-"))
    embedded = EmbeddedMongo(tmp / "mongo")
    url = await embedded.start()
    assert embedded.proc is not None
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
        app = (await api_app(store, service, tmp / "api")).app
        for i in range(20):  # warm-up: caches, connections
            await _call(app, "GET", f"/api/interviews/{seeds[i % 50]}", None, ADMIN_KEY)
        n = args.requests
        per_kind: dict[str, list[tuple[float, float]]] = {k: [] for k in MIX}
        for rep in range(args.repeats):
            progress(f"repeat {rep + 1} of {args.repeats}")
            for kind in MIX:
                cpu0, db0 = time.process_time(), _proc_cpu_s(embedded.proc.pid)
                for i in range(n):
                    if kind == "get":
                        status = await _call(app, "GET", f"/api/interviews/{seeds[i % 50]}", None, ADMIN_KEY)
                    elif kind == "list":
                        status = await _call(app, "GET", "/api/interviews?status=scheduled&limit=20", None, ADMIN_KEY)
                    elif kind == "create":
                        status = await _call(app, "POST", "/api/interviews", {
                            "interviewId": f"r{rep}-{i}", "candidateId": "bench-candidate", "jobId": "bench-job",
                            "scheduledAt": "2026-12-01T10:00:00Z"}, ADMIN_KEY)
                    else:
                        status = await _call(app, "POST", f"/api/interviews/r{rep}-{i}/start", None, ADMIN_KEY)
                    if status not in (200, 201):
                        raise RuntimeError(f"{kind} request {i} answered {status}")
                per_kind[kind].append(((time.process_time() - cpu0) * 1e3 / n,
                                       (_proc_cpu_s(embedded.proc.pid) - db0) * 1e3 / n))
            await store.interviews.delete_many({"_id": {"$in": [f"r{rep}-{i}" for i in range(n)]}})
        best = {k: (min(a for a, _ in v), min(b for _, b in v)) for k, v in per_kind.items()}
        return {"requests_per_kind": n, "repeats": args.repeats, "load_average": list(os.getloadavg()),
                "cpu_ms": {k: {"app": a, "nx_27017": b, "all_repeats": per_kind[k]} for k, (a, b) in best.items()},
                "mix_cpu_ms": {"app": sum(MIX[k] * a for k, (a, _) in best.items()),
                               "nx_27017": sum(MIX[k] * b for k, (_, b) in best.items())}}
    finally:
        await store.close()
        await embedded.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="requests per kind and repeat")
    p.add_argument("--repeats", type=int, default=2, help="repeats (the minimum per kind is reported)")
    p.add_argument("--json", help="also write the results here")
    env = environment(extra_packages=("starlette", "motor", "pymongo", "nx-27017", "limits"))

    async def go(args: argparse.Namespace) -> dict[str, Any]:
        out = await run(args)
        print(format_environment(env))
        rows: list[list[Any]] = [[k, f"{v['app']:.2f}", f"{v['nx_27017']:.2f}", f"{v['app'] + v['nx_27017']:.2f}"]
                                 for k, v in out["cpu_ms"].items()]
        mix = out["mix_cpu_ms"]
        rows.append(["mix (50/20/15/15)", f"{mix['app']:.2f}", f"{mix['nx_27017']:.2f}",
                     f"{mix['app'] + mix['nx_27017']:.2f}"])
        print(f"load average at the end: {out['load_average']}")
        print_table(rows, ["request", "app CPU ms", "nx-27017 CPU ms", "total"])
        return {"environment": env, **out}

    run_program(p, go, argv)


if __name__ == "__main__":
    main()
