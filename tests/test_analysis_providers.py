"""The three scorecard providers through their official SDKs against loopback servers that speak their wire
protocols (testing/llm_servers.py), and the job runner over them: retries honouring Retry-After, the circuit
breaker, malformed answers, invented evidence dropped, one failing provider never blocking the others."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from adapters.analysis_jobs import AnalysisJobs, MemoryAnalysisRecords
from adapters.analysis_providers import (
    Breakers,
    HeuristicProvider,
    LlmProvider,
    ProviderError,
    Resilience,
    anthropic_provider,
    huggingface_provider,
    openai_provider,
)
from domain.analysis import conversation, rubric_for
from domain.commands import CreateInterview, InterviewService
from domain.events import SegmentEvent, Speaker
from testing.llm_servers import INVENTED, ScriptedLLM

FACTORIES: dict[str, Callable[..., LlmProvider]] = {
    "openai": openai_provider, "anthropic": anthropic_provider, "huggingface": huggingface_provider}
TURNS = [("interviewer", "How does your team handle authentication?"),
         ("candidate", "We moved every service to short lived tokens with key rotation."),
         ("interviewer", "Tell me about an incident you handled."),
         ("candidate", "A leaked test credential was found within minutes and rotated automatically.")]
GUIDE_SEGMENTS = [{"participantId": "p_iv" if role == "interviewer" else "p_cand",
                   "speaker": {"role": role, "name": "Ivy" if role == "interviewer" else "Cam",
                               "participantId": "p_iv" if role == "interviewer" else "p_cand"},
                   "seq": i, "start_s": 10.0 * i, "end_s": 10.0 * i + 5, "text": text}
                  for i, (role, text) in enumerate(TURNS)]


OPEN: list[LlmProvider] = []


def provider(server: ScriptedLLM, **resilience: Any) -> LlmProvider:
    r = Resilience(**{"timeout_s": 5.0, "min_wait_s": 0.01, "max_wait_s": 2.0, **resilience})
    p = FACTORIES[server.protocol](server.base_url, server.api_key, server.model, r,
                                   Breakers(r.breaker_threshold, r.breaker_ttl_s))
    OPEN.append(p)
    return p


@pytest.fixture(autouse=True)
async def close_clients() -> Any:
    yield
    while OPEN:
        await OPEN.pop().aclose()


@pytest.fixture(params=["openai", "anthropic", "huggingface"])
def llm(request: pytest.FixtureRequest) -> Iterator[ScriptedLLM]:
    with ScriptedLLM(request.param) as server:
        yield server


def inputs() -> tuple[Any, Any]:
    turns = conversation(GUIDE_SEGMENTS)
    return turns, rubric_for([], skills=["rotation", "authentication"])


async def test_a_good_answer_through_the_official_sdk(llm: ScriptedLLM) -> None:
    turns, rubric = inputs()
    answer = await provider(llm).analyse(turns, rubric)
    assert [c.name for c in answer.scorecard.competencies] == ["technical skills", "communication"]
    assert answer.scorecard.competencies[0].evidence[0].turn == 1
    assert answer.tokens_in == 1200 and answer.tokens_out == 300 and answer.attempts == 1
    sent = llm.requests[0]["body"]
    text = str(sent)
    assert "Candidate" in text and "Cam" not in text and "p_cand" not in text  # pseudonymised, no ids
    assert sent["model"] == llm.model


async def test_429_is_retried_after_the_time_retry_after_asks(llm: ScriptedLLM) -> None:
    llm.then(("429", 1.0))
    answer = await provider(llm).analyse(*inputs())
    assert answer.attempts == 2 and len(llm.requests) == 2
    assert llm.requests[1]["at"] - llm.requests[0]["at"] >= 1.0  # waited what Retry-After said, not min_wait


async def test_500s_are_retried_then_fail(llm: ScriptedLLM) -> None:
    llm.default = "500"
    with pytest.raises(ProviderError) as err:
        await provider(llm, attempts=3).analyse(*inputs())
    assert err.value.kind == "server_error" and err.value.attempts == 3 and len(llm.requests) == 3


async def test_a_malformed_answer_fails_without_retrying(llm: ScriptedLLM) -> None:
    llm.then("malformed")
    with pytest.raises(ProviderError) as err:
        await provider(llm).analyse(*inputs())
    assert err.value.kind == "malformed" and len(llm.requests) == 1


async def test_a_slow_provider_times_out() -> None:
    with ScriptedLLM("openai", default=("slow", 2.0)) as server:
        with pytest.raises(ProviderError) as err:
            await provider(server, timeout_s=0.3, attempts=1).analyse(*inputs())
    assert err.value.kind == "timeout"


async def test_the_breaker_opens_after_repeated_failures_and_closes_after_its_ttl() -> None:
    with ScriptedLLM("anthropic", default="500") as server:
        p = provider(server, attempts=1, breaker_threshold=2, breaker_ttl_s=0.5)
        for _ in range(2):
            with pytest.raises(ProviderError, match="server_error"):
                await p.analyse(*inputs())
        with pytest.raises(ProviderError) as err:
            await p.analyse(*inputs())
        assert err.value.kind == "circuit_open" and len(server.requests) == 2  # not called while open
        assert await p.breakers.state("anthropic") == "opened"
        server.default = "good"
        await asyncio.sleep(0.6)  # the breaker's ttl is the behaviour under test
        answer = await p.analyse(*inputs())
        assert answer.scorecard.competencies and len(server.requests) == 3
        assert await p.breakers.state("anthropic") == "closed"


# ---- the job runner over real providers ------------------------------------------------------------------


async def completed_interview(service: InterviewService) -> str:
    doc = await service.create_interview(CreateInterview.parse({
        "candidateId": "cand-1", "jobId": "job-1", "scheduledAt": "2026-12-01T09:00:00Z",
        "questions": [{"text": "How does your team handle authentication?", "category": "security",
                       "expectedKeywords": ["authentication", "rotation"]},
                      {"text": "Tell me about an incident you handled.", "category": "operations",
                       "expectedKeywords": ["incident", "credential"]}]}))
    iid = doc["interviewId"]
    await service.start_interview(iid)
    for seg in GUIDE_SEGMENTS:
        await service.record_segment(iid, SegmentEvent(
            speaker=Speaker(seg["speaker"]["role"], seg["speaker"]["name"], seg["participantId"]), seq=seg["seq"],
            start_s=seg["start_s"], end_s=seg["end_s"], text=seg["text"], final=True))
    await service.complete_interview(iid)
    return str(iid)


async def test_the_analysis_completes_from_the_providers_that_answered(service: InterviewService) -> None:
    rejected: dict[str, int] = {}
    with (ScriptedLLM("openai", default="invented") as good, ScriptedLLM("anthropic", default="500") as broken,
          ScriptedLLM("huggingface", default=("slow", 0.3)) as slow):
        jobs = AnalysisJobs(service, MemoryAnalysisRecords(), [provider(s, attempts=2) for s in (good, broken, slow)],
                            on_rejected=lambda p, n: rejected.__setitem__(p, rejected.get(p, 0) + n))
        iid = await completed_interview(service)
        await jobs.request(iid)
        await jobs.wait(iid)
        view = await jobs.view(iid, await service.get_analysis(iid), "machine")
    assert view["status"] == "partial"
    runs = {r["provider"]: r for r in view["providers"]}
    assert runs["anthropic"]["status"] == "failed" and "server_error" in runs["anthropic"]["error"]
    assert runs["openai"]["status"] == runs["huggingface"]["status"] == "completed"
    assert runs["heuristic"]["kind"] == "heuristic"
    # invented quotes are dropped and counted; a competency left without evidence has no score
    assert rejected == {"openai": 3} and runs["openai"]["evidenceRejected"] == 3
    openai_card = {c["name"]: c for c in runs["openai"]["scorecard"]["competencies"]}
    assert openai_card["security"]["score"] == 4 and openai_card["operations"]["score"] is None
    agg = view["aggregate"]
    assert agg["basis"] == ["openai", "huggingface"]
    for comp in agg["competencies"]:
        for ev in comp["evidence"]:
            assert INVENTED not in ev["quote"]
            seg = next(s for s in GUIDE_SEGMENTS if (s["participantId"], s["seq"]) == (ev["participantId"], ev["seq"]))
            assert ev["quote"].lower()[:20] in seg["text"].lower()
    assert all(r["inputHash"] == view["inputHash"] for r in view["providers"] if r["kind"] != "manual")
    events = [e for e in (await service.store.pending(100)) if ".analysis." in e.subject]  # type: ignore[attr-defined]
    assert [e.subject.rsplit(".", 1)[1] for e in events] == ["requested", "completed"]


async def test_with_no_provider_the_heuristic_scores_with_real_quotes(service: InterviewService) -> None:
    jobs = AnalysisJobs(service, MemoryAnalysisRecords())
    iid = await completed_interview(service)
    await jobs.request(iid)
    await jobs.wait(iid)
    view = await jobs.view(iid, await service.get_analysis(iid))
    assert view["status"] == "completed" and [r["provider"] for r in view["providers"]] == ["heuristic"]
    security = next(c for c in view["aggregate"]["competencies"] if c["name"] == "security")
    assert security["score"] and security["evidence"][0]["participantId"] == "p_cand"
    assert view["policy"] == {"jurisdiction": "eu", "advisory": True, "final": False, "scoresHidden": False,
                              "label": "advisory: not final until a reviewer confirms it", "tone": False}


async def test_two_requests_at_once_start_one_job(service: InterviewService) -> None:
    jobs = AnalysisJobs(service, MemoryAnalysisRecords())
    iid = await completed_interview(service)
    first, second = await asyncio.gather(jobs.request(iid, "on_demand"), jobs.request(iid, "on_demand"),
                                         return_exceptions=True)
    refused = [r for r in (first, second) if r is not None]
    assert len(refused) == 1 and getattr(refused[0], "code", "") == "analysis_running", refused
    await jobs.wait(iid)
    events = [e for e in (await service.store.pending(100)) if ".analysis." in e.subject]  # type: ignore[attr-defined]
    assert [e.subject.rsplit(".", 1)[1] for e in events] == ["requested", "completed"]
    await jobs.aclose()


def test_the_heuristic_reads_terms_not_meaning() -> None:
    turns, rubric = inputs()
    card = HeuristicProvider().score(turns, rubric)
    tech = card.competencies[0]
    # the candidate says "rotation" but not "authentication" (the interviewer does): half the terms
    assert tech.score == 3.5 and {c.turn for c in tech.evidence} == {1} and "not authentication" in tech.rationale
