"""Time to a scorecard, and how much the evidence of each provider can be trusted.

    python -m benchmarks.analysis [--repeats 3] [--minutes 45] [--json PATH]

1. Time to analysis: a 45-minute interview (the dialogue turns repeated) stored in an embedded nx-27017, completed
   and analysed by three loopback providers speaking the OpenAI, Anthropic and TGI protocols through their SDKs,
   answering after 0.5 / 1.0 / 1.5 s (target: at most the slowest + 1 s), against the same with no provider (the
   local heuristic analyser alone).
2. Evidence precision of each scripted provider: the share of its quotes that verification keeps (good,
   inventing, and the heuristic).
3. The heuristic against the dialogues' ground truth: a rubric of every dialogue's topic keywords (40 terms), and
   which of them the heuristic credits each candidate with, against that dialogue's own 5 keywords.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.analysis_jobs import AnalysisJobs, MongoAnalysisRecords
from adapters.analysis_providers import (
    Breakers,
    HeuristicProvider,
    Resilience,
    anthropic_provider,
    huggingface_provider,
    openai_provider,
)
from adapters.mongo import EmbeddedMongo, MongoStore
from domain.analysis import Competency, content_tokens, conversation, stem, verify
from domain.commands import CreateInterview, InterviewService
from domain.events import SegmentEvent, Speaker
from testing.data import SHARED_DATA, SHARED_DIALOGUES
from testing.dialogues import EXTRA
from testing.llm_servers import ScriptedLLM


def dialogues() -> dict[str, tuple[list[str], list[tuple[str, str, str]]]]:
    out = {}
    for name in SHARED_DIALOGUES:
        truth = json.loads((SHARED_DATA / f"{name}.json").read_text())
        out[name] = (truth["keywords"], [(t["speaker"], t["text"], t["sentiment"]) for t in truth["turns"]])
    out.update(EXTRA)
    return out


def long_transcript(minutes: float) -> list[tuple[str, str, float, float]]:
    """(role, text, start_s, end_s) for `minutes` of conversation: every dialogue's turns, repeated, ~2.5 words/s."""
    turns = [t for _, (_, ts, *_) in dialogues().items() for t in ts]
    out: list[tuple[str, str, float, float]] = []
    at = 0.0
    while at < minutes * 60:
        for role, text, _ in turns:
            dur = len(text.split()) / 2.5
            out.append((role, text, at, at + dur))
            at += dur + 1.0
    return out


async def time_to_analysis(store: MongoStore, providers: list[Any], minutes: float) -> tuple[float, dict[str, Any]]:
    service = InterviewService(store)
    doc = await service.create_interview(CreateInterview.parse({
        "candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2030-01-01T09:00:00Z",
        "questions": [{"text": t, "category": "engineering", "expectedKeywords": kw[:5]}
                      for kw, ts in dialogues().values() for r, t, _ in ts[:1] if r == "interviewer"]}))
    iid = doc["interviewId"]
    await service.start_interview(iid)
    seqs = {"interviewer": 0, "candidate": 0}
    for role, text, start, end in long_transcript(minutes):
        await service.record_segment(iid, SegmentEvent(Speaker(role, role.title(), f"p_{role}"), seqs[role], start,
                                                       end, text, final=True))
        seqs[role] += 1
    await service.complete_interview(iid)
    jobs = AnalysisJobs(service, MongoAnalysisRecords(store.db["analyses"]), providers)
    t0 = time.perf_counter()
    await jobs.request(iid)
    await jobs.wait(iid)
    took = time.perf_counter() - t0
    view = await jobs.view(iid, await service.get_analysis(iid), "machine")
    return took, view


async def precision(minutes: float) -> dict[str, float]:
    """Share of each scripted provider's quotes that verification keeps, on the long transcript."""
    segments = [{"participantId": f"p_{r}", "speaker": {"role": r, "name": r, "participantId": f"p_{r}"},
                 "seq": i, "start_s": s, "end_s": e, "text": t}
                for i, (r, t, s, e) in enumerate(long_transcript(minutes))]
    turns = conversation(segments)
    rubric = [Competency("topics", tuple(k for kw, _ in dialogues().values() for k in kw)),
              Competency("communication")]
    out: dict[str, float] = {}
    r = Resilience(timeout_s=30, attempts=1)
    for behaviour in ("good", "invented"):
        with ScriptedLLM("openai", default=behaviour) as server:
            p = openai_provider(server.base_url, server.api_key, "scripted", r, Breakers(3, 60))
            answer = await p.analyse(turns, rubric)
            await p.aclose()
        claimed = sum(len(c.evidence) for c in answer.scorecard.competencies)
        _, rejected = verify(answer.scorecard, turns, rubric)
        out[f"scripted {behaviour}"] = (claimed - rejected) / claimed if claimed else 0.0
    card = HeuristicProvider().score(turns, rubric)
    claimed = sum(len(c.evidence) for c in card.competencies)
    _, rejected = verify(card, turns, rubric)
    out["heuristic"] = (claimed - rejected) / claimed if claimed else 0.0
    return out


def heuristic_topics() -> dict[str, Any]:
    """Which ground-truth keywords the heuristic credits the candidate with (the rule of its scores)."""
    data = dialogues()
    all_terms = {stem(k) for kw, _ in data.values() for k in kw}
    tp = fp = fn = 0
    per: dict[str, Any] = {}
    for name, (keywords, turns) in data.items():
        said = set().union(*(content_tokens(t) for r, t, _ in turns if r == "candidate"))
        credited = said & all_terms
        truth = {stem(k) for k in keywords}
        per[name] = {"credited": sorted(credited), "truth": sorted(truth)}
        tp += len(credited & truth)
        fp += len(credited - truth)
        fn += len(truth - credited)
    return {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "dialogues": per}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"env": {"python": platform.python_version(), "cpu": platform.processor() or
                                       platform.machine(), "cores": os.cpu_count(),
                                       "load": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory() as tmp:
        embedded = EmbeddedMongo(Path(tmp))
        url = await embedded.start()
        store = await MongoStore.connect(url, db_name="bench_analysis")
        try:
            delays = {"openai": 0.5, "anthropic": 1.0, "huggingface": 1.5}
            servers = {name: ScriptedLLM(name, default=("slow", d)).start() for name, d in delays.items()}
            factories = {"openai": openai_provider, "anthropic": anthropic_provider,
                         "huggingface": huggingface_provider}
            rows = []
            for label, use in (("3 providers (0.5 / 1.0 / 1.5 s)", True), ("local heuristic only", False)):
                times = []
                for _ in range(args.repeats):
                    r = Resilience(timeout_s=30)
                    providers = [factories[n](s.base_url, s.api_key, "scripted", r, Breakers(3, 60))
                                 for n, s in servers.items()] if use else []
                    took, view = await time_to_analysis(store, providers, args.minutes)
                    for p in providers:
                        await p.aclose()
                    assert view["status"] == "completed", view["status"]
                    times.append(took)
                rows.append({"setup": label, "seconds": times, "median": statistics.median(times)})
            for s in servers.values():
                s.stop()
            results["time_to_analysis"] = rows
            results["turns"] = len(long_transcript(args.minutes))
        finally:
            await store.close()
            await embedded.stop()
    results["evidence_precision"] = await precision(args.minutes)
    results["heuristic_topics"] = heuristic_topics()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = asyncio.run(main_async(args))
    env = results["env"]
    print(f"# python {env['python']}, {env['cores']} cores ({env['cpu']}), load {env['load']:.1f}; "
          f"{results['turns']} turns ({args.minutes:g} min)")
    print("| setup | time to analysis, s (each run) | median |\n|---|---|---|")
    for row in results["time_to_analysis"]:
        print(f"| {row['setup']} | {' / '.join(f'{t:.2f}' for t in row['seconds'])} | {row['median']:.2f} |")
    print("\n| provider | evidence kept by verification |\n|---|---|")
    for name, p in results["evidence_precision"].items():
        print(f"| {name} | {p:.2f} |")
    h = results["heuristic_topics"]
    print(f"\nheuristic vs ground-truth topic keywords (8 dialogues): precision {h['precision']:.2f}, "
          f"recall {h['recall']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
