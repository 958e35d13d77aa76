"""The analysis in the running service: `POST .../complete` starts it, three loopback providers answer, the evidence
of `GET .../analysis` resolves to the stored segments of a shared dialogue; a job left unfinished by a stopped
server is resumed by the next start; events leave through the outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.mongo import MongoStore
from testing.live_server import LiveServer, live_server, test_settings
from testing.llm_servers import ScriptedLLM


async def test_completion_analyses_with_three_providers_and_evidence_resolves(tmp_path: Path, mongo_url: str) -> None:
    with (ScriptedLLM("openai") as o, ScriptedLLM("anthropic", default=("429", 0.2), score=3) as a,
          ScriptedLLM("huggingface", default="invented") as h):
        a.script.extend([("429", 0.2), "good"])  # rate limited once, then answers
        a.default = "good"
        settings = test_settings(tmp_path, mongo_url, analysis_providers=("openai", "anthropic", "huggingface"),
                                 openai_base_url=o.base_url, openai_api_key=o.api_key, anthropic_base_url=a.base_url,
                                 anthropic_api_key=a.api_key, hf_base_url=h.base_url, hf_token=h.api_key)
        async with live_server(settings) as server:
            iid, segments = await server.dialogue_interview()
            assert (await server.http.post(f"/api/interviews/{iid}/complete")).status_code == 200
            view = await server.analysis_done(iid)
            assert view["status"] == "completed"
            runs = {r["provider"]: r for r in view["providers"]}
            assert runs["anthropic"]["attempts"] == 2 and runs["huggingface"]["evidenceRejected"] > 0
            by_key = {(s["participantId"], s["seq"]): s["text"] for s in segments}
            quotes = [e for c in view["aggregate"]["competencies"] for e in c["evidence"]]
            assert quotes and all(e["quote"].lower() in by_key[(e["participantId"], e["seq"])].lower()
                                  for e in quotes)
            assert view["structure"]["candidateShare"] > 0.5 and len(view["structure"]["pairs"]) == 3
            assert view["structure"]["guide"][0]["asked"]
            assert await server.metric("analysis_evidence_rejected_total", provider="huggingface") > 0
            sent = json.dumps([r["body"] for r in o.requests])
            assert "Cam" not in sent and "Ivy" not in sent and "p_candidate" not in sent
            store = server.components.store
            assert store is not None
            kinds = [e["type"] for e in await published(store, iid, server)]
            assert "AnalysisRequested" in kinds and "AnalysisSucceeded" in kinds


async def published(store: MongoStore, iid: str, server: LiveServer) -> list[dict[str, Any]]:
    """The interview's published events, once the relay has sent the analysis outcome."""
    import asyncio

    for _ in range(200):
        events = await store.published_events(iid)
        if any(e["type"] == "AnalysisSucceeded" for e in events):
            return events
        await asyncio.sleep(0.05)
    return await store.published_events(iid)


async def test_an_unfinished_job_is_resumed_after_a_restart(tmp_path: Path, mongo_url: str) -> None:
    settings = test_settings(tmp_path, mongo_url)
    async with live_server(settings) as server:
        iid, _ = await server.dialogue_interview()
        assert (await server.http.post(f"/api/interviews/{iid}/complete")).status_code == 200
        await server.analysis_done(iid)
        store = server.components.store
        assert store is not None
        # as if the process had died mid-run: the job is stored running, with nothing computed
        await store.db["analyses"].replace_one({"_id": iid}, {"_id": iid, "interviewId": iid, "status": "running",
                                                              "trigger": "completed", "skills": []})
    async with live_server(settings) as server:
        view = await server.analysis_done(iid)
        assert view["status"] == "completed" and view["aggregate"]["basis"] == ["heuristic"]
        assert view["policy"]["advisory"] and not view["policy"]["final"]  # eu: until a human confirms
