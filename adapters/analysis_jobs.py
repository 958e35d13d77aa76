"""The analysis of a completed interview as a background job: providers in parallel, evidence verified, aggregated,
persisted, published.

A job is one document per interview in the `analyses` collection (`_id` = interviewId), its `status` pending ->
running -> completed | partial | failed. `request()` stores it pending before anything runs, so a restart finds it:
`resume()` (called once the service is built) re-runs every pending or running job. Each run:

1. reads the stored transcript (revisions applied) and the interview's questions; builds the pseudonymised turns,
   the Q<->A structure and the rubric (`domain.analysis`);
2. runs the local heuristic analyser and every configured provider at once (`asyncio.gather`, each in its own
   try: one failing, slow or open-circuited provider never blocks or fails the others);
3. verifies each provider's evidence against the turn it cites (rejections counted in
   `analysis_evidence_rejected_total{provider}`) and aggregates the verified scorecards (the heuristic's only when
   no configured provider answered);
4. stores the result and publishes `interviews.<id>.analysis.completed` or `.failed` through the interview's
   outbox (`.requested` when it was asked for).

`PUT /api/interviews/{id}/analysis` (an analysis computed elsewhere) is kept as the provider entry "manual".

Human review (`review()`): hr/admin edit, confirm or reject; the document's `review` keeps the status, the
reviewer's scorecard and every change (who, when, before, after). What a view shows follows the organisation's
`OrgPolicy` (`domain.analysis.policy_view`). Everything in the document that holds transcript or reviewer text
(`ANALYSIS_SEALED`) is sealed with the candidate's data key, like the transcript: erasing the candidate makes it
unreadable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from adapters.analysis_providers import HeuristicProvider, ProviderAnswer, ProviderError
from domain.analysis import (
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    Competency,
    CompetencyScore,
    GuideQuestion,
    OrgPolicy,
    ProviderRun,
    Scorecard,
    Structure,
    Turn,
    aggregate,
    conversation,
    input_hash,
    job_status,
    new_review,
    policy_view,
    quote_in,
    review_change,
    rubric_for,
    structure,
    verify,
)
from domain.commands import InterviewService
from domain.events import AnalysisFailed, AnalysisRequested, AnalysisSucceeded, iso
from domain.model import COMPLETED as INTERVIEW_COMPLETED
from domain.model import Conflict, NotFound, ValidationError, utc_now

log = logging.getLogger(__name__)


class AnalysisProvider(Protocol):
    """A scorecard provider (`adapters.analysis_providers`): hosted LLMs and the local heuristic analyser."""

    name: str
    model: str
    kind: str

    async def analyse(self, turns: Sequence[Turn], rubric: Sequence[Competency]) -> ProviderAnswer: ...


class AnalysisRecords(Protocol):
    """Where jobs are kept: `MongoAnalysisRecords` in the service, `MemoryAnalysisRecords` where there is no
    database (a bare `api_routes` in tests)."""

    async def get(self, interview_id: str) -> dict[str, Any] | None: ...

    async def put(self, doc: dict[str, Any]) -> None: ...

    async def unfinished(self) -> list[str]: ...


# Fields of an analysis document holding transcript or reviewer text: sealed with the candidate's data key.
ANALYSIS_SEALED = ("turns", "structure", "runs", "manual", "aggregate", "review.scorecard", "review.note",
                   "review.history")


def _unreadable_as(path: str) -> Any:
    return [] if path.rsplit(".", 1)[-1] in ("turns", "runs", "history") else None


class Sealer(Protocol):
    """Field encryption with an interview's candidate's key (`adapters.mongo.MongoStore`)."""

    async def seal_for_interview(self, interview_id: str, doc: dict[str, Any], paths: tuple[str, ...]) -> None: ...

    async def open_sealed(self, doc: dict[str, Any], paths: tuple[str, ...],
                          empty: Callable[[str], Any]) -> list[str]: ...


class MongoAnalysisRecords:
    """The `analyses` collection. Whole documents are replaced (nx-27017 0.8.1 stores a `$set` top-level date as a
    naive string); `AnalysisJobs` serialises the writes of one interview's document. With `sealer` the fields of
    `ANALYSIS_SEALED` are encrypted at rest."""

    def __init__(self, collection: Any, sealer: Sealer | None = None) -> None:
        self.collection = collection
        self.sealer = sealer

    async def get(self, interview_id: str) -> dict[str, Any] | None:
        from pymongo.errors import PyMongoError

        from domain.model import Unavailable

        try:
            doc: dict[str, Any] | None = await self.collection.find_one({"_id": interview_id})
        except PyMongoError as exc:
            raise Unavailable(f"database error: {type(exc).__name__}: {exc}") from exc
        if doc is not None and self.sealer is not None:
            await self.sealer.open_sealed(doc, ANALYSIS_SEALED, _unreadable_as)
        return doc

    async def put(self, doc: dict[str, Any]) -> None:
        from pymongo.errors import PyMongoError

        from domain.model import Unavailable

        if self.sealer is not None:  # sealed in a copy: the caller keeps reading its document
            doc = dict(doc)
            if isinstance(doc.get("review"), dict):
                doc["review"] = dict(doc["review"])
            await self.sealer.seal_for_interview(doc["_id"], doc, ANALYSIS_SEALED)
        try:
            await self.collection.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise Unavailable(f"database error: {type(exc).__name__}: {exc}") from exc

    async def unfinished(self) -> list[str]:
        cursor = self.collection.find({"status": {"$in": [PENDING, RUNNING]}}, {"_id": 1})
        return [str(d["_id"]) async for d in cursor]


class MemoryAnalysisRecords:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    async def get(self, interview_id: str) -> dict[str, Any] | None:
        doc = self.docs.get(interview_id)
        return dict(doc) if doc is not None else None

    async def put(self, doc: dict[str, Any]) -> None:
        self.docs[doc["_id"]] = dict(doc)

    async def unfinished(self) -> list[str]:
        return [k for k, d in self.docs.items() if d["status"] in (PENDING, RUNNING)]


def _guide(interview: dict[str, Any]) -> list[GuideQuestion]:
    return [GuideQuestion(q["questionId"], q["text"], q.get("category", ""), tuple(q.get("expectedKeywords", ())))
            for q in interview.get("questions", ())]


KEYWORDS_PER_SPEAKER = 12


def interview_structure(interview: dict[str, Any], segments: Sequence[dict[str, Any]], *,
                        tone: bool) -> dict[str, Any]:
    """GET /api/interviews/{id}/structure: the stored transcript's Q<->A pairs, talk time, and per speaker the tone
    of their words (VADER on each sentence's text, smoothed as the live overlay does; only with `tone`) and their
    keywords. Text only; segments marked crosstalk (someone else's voice) or hallucination are left out, as the
    analysers leave them out. Every item names its segments as (participantId, seq). CPU work: call it in a thread.

    Tone and keywords read the stored text (what the report shows); the pairs come from `domain.analysis`'s
    turns, whose pseudonymised text is not returned."""
    from pipeline.analysis import KeywordTracker, SentimentTracker

    kept = [s for s in segments if s.get("text") and not s.get("crosstalk") and not s.get("hallucination")]
    guide = _guide(interview)
    turns = conversation(kept, ())
    shape = structure(turns, guide)
    text_of = {(str(s["participantId"]), int(s["seq"])): str(s["text"]) for s in kept}

    def ref(index: int) -> dict[str, Any]:
        return {"participantId": turns[index].participant_id, "seq": turns[index].seq}

    def exchange(ex: Any) -> dict[str, Any]:
        d = ex.to_dict()
        d["questionText"] = " ".join(text_of[(turns[i].participant_id, turns[i].seq)] for i in ex.question)
        d["answerText"] = " ".join(text_of[(turns[i].participant_id, turns[i].seq)] for i in ex.answer)
        d["question"], d["answer"] = [ref(i) for i in ex.question], [ref(i) for i in ex.answer]
        return d

    pairs = [{**p.to_dict(), "question": exchange(p.exchanges[0]), "followUps": [exchange(e) for e in p.exchanges[1:]]}
             for p in shape.pairs]
    coverage = [{"questionId": g["questionId"], "text": g["text"], "asked": g["asked"], "match": g["match"],
                 "at": ref(g["turn"]) if g["turn"] is not None else None} for g in shape.guide]
    skills = [k for g in guide for k in g.expected_keywords]
    speakers: dict[str, dict[str, Any]] = {}
    trackers: dict[str, tuple[SentimentTracker, KeywordTracker]] = {}
    names = {str(s["participantId"]): (s.get("speaker") or {}).get("name") for s in kept}
    total = sum(t.end_s - t.start_s for t in turns)
    for t in turns:
        sp = speakers.get(t.participant_id)
        if sp is None:
            sp = speakers[t.participant_id] = {
                "participantId": t.participant_id, "name": names.get(t.participant_id), "role": t.role,
                "label": t.label, "talkSeconds": 0.0, "talkShare": 0.0, "turns": 0, "words": 0,
                "tone": [] if tone else None, "keywords": []}
            trackers[t.participant_id] = (SentimentTracker(), KeywordTracker(skills=skills))
        text = text_of[(t.participant_id, t.seq)]
        sp["talkSeconds"] += t.end_s - t.start_s
        sp["turns"] += 1
        sp["words"] += len(text.split())
        sentiment, keywords = trackers[t.participant_id]
        if tone:
            score, rolling = sentiment.update(text, t.seq)
            sp["tone"].append({"seq": t.seq, "at_s": round(t.end_s, 2), "score": round(score, 3),
                               "rolling": round(rolling, 3)})
        keywords.update(text, t.seq)
    for pid, sp in speakers.items():
        sp["talkShare"] = round(sp["talkSeconds"] / total, 3) if total else 0.0
        sp["talkSeconds"] = round(sp["talkSeconds"], 2)
        sp["keywords"] = [k.to_dict() for k in trackers[pid][1].top(KEYWORDS_PER_SPEAKER)]
    return {"interviewId": interview["interviewId"], "basis": "text", "tone": tone, "speakers": list(speakers.values()),
            "pairs": pairs, "guide": coverage, "candidateShare": round(shape.candidate_share, 3),
            "responseDelayMedianSeconds": None if shape.response_delay_median_s is None
            else round(shape.response_delay_median_s, 2), "answerWordsMedian": shape.answer_words_median}


class AnalysisJobs:
    def __init__(self, service: InterviewService, records: AnalysisRecords,
                 providers: Sequence[AnalysisProvider] = (), *, heuristic: AnalysisProvider | None = None,
                 on_rejected: Callable[[str, int], None] | None = None,
                 on_run: Callable[[str, str], None] | None = None, jurisdiction: str = "eu",
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.service = service
        self.records = records
        self.providers = list(providers)
        self.heuristic = heuristic or HeuristicProvider()
        self.on_rejected = on_rejected or (lambda provider, n: None)
        self.on_run = on_run or (lambda provider, status: None)
        self.default_policy = OrgPolicy(jurisdiction)  # for a view not told the organisation's policy
        self.clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # one read-modify-write of an interview's document at a time: a review during a run is never lost
        self._locks: dict[str, asyncio.Lock] = {}
        self._requesting: set[str] = set()  # requests between their check and their task's start

    @property
    def configured(self) -> list[str]:
        return [p.name for p in self.providers]

    async def _update(self, interview_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read the interview's document (or a new one), `change` it, store it; one change at a time."""
        lock = self._locks.setdefault(interview_id, asyncio.Lock())
        async with lock:
            doc = await self.records.get(interview_id) or {"_id": interview_id, "interviewId": interview_id}
            change(doc)
            await self.records.put(doc)
            return doc

    # -- commands ---------------------------------------------------------------------------------------------

    async def request(self, interview_id: str, trigger: str = "completed", skills: Sequence[str] = ()) -> None:
        """Store the job pending, publish AnalysisRequested, start it. A job already running: `Conflict`."""
        # Claimed before the first await: two requests at once (a double click, /run beside /complete) would
        # otherwise both pass the check below and start two jobs, the first one never cancelled at shutdown.
        if interview_id in self._requesting:
            raise Conflict(f"the analysis of interview {interview_id} is already being requested",
                           code="analysis_running")
        self._requesting.add(interview_id)
        try:
            await self._request(interview_id, trigger, skills)
        finally:
            self._requesting.discard(interview_id)

    async def _request(self, interview_id: str, trigger: str, skills: Sequence[str]) -> None:
        interview = await self.service.get_interview(interview_id, with_segments=False)
        if interview["status"] != INTERVIEW_COMPLETED:
            raise Conflict(f"interview {interview_id} is {interview['status']}; analysis follows completion",
                           code="illegal_transition")
        doc = await self.records.get(interview_id) or {"_id": interview_id, "interviewId": interview_id}
        task = self._tasks.get(interview_id)
        if task is not None and not task.done():
            if doc.get("status") in (PENDING, RUNNING):
                raise Conflict(f"the analysis of interview {interview_id} is already running",
                               code="analysis_running")
            await asyncio.shield(task)  # its result is stored; it is only publishing its event
        await self._update(interview_id, lambda d: d.update(
            status=PENDING, trigger=trigger, skills=list(skills), requestedAt=self.clock(), startedAt=None,
            finishedAt=None, configured=self.configured, error=""))
        await self.service.note_analysis(interview_id, lambda now: AnalysisRequested(
            interview_id=interview_id, occurred_at=now, trigger=trigger, providers=self.configured or ["heuristic"]))
        self._start(interview_id)

    async def resume(self) -> int:
        """Re-run every job a previous process left pending or running. Returns how many."""
        ids = await self.records.unfinished()
        for interview_id in ids:
            log.info("analysis of interview %s resumed after a restart", interview_id)
            self._start(interview_id)
        return len(ids)

    def _start(self, interview_id: str) -> None:
        task = asyncio.create_task(self._run(interview_id), name=f"analysis-{interview_id}")
        self._tasks[interview_id] = task
        task.add_done_callback(lambda t: self._tasks.pop(interview_id, None) if self._tasks.get(
            interview_id) is t else None)

    async def wait(self, interview_id: str) -> None:
        """Until the interview's running job (if any) is done."""
        task = self._tasks.get(interview_id)
        if task is not None:
            await asyncio.shield(task)

    async def aclose(self) -> None:
        """Stop running jobs; they stay pending/running in the store and are resumed on the next start."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self.providers:
            close = getattr(p, "aclose", None)  # the SDK clients' connection pools
            if close is not None:
                await close()

    async def _run(self, interview_id: str) -> None:
        try:
            await self._analyse(interview_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a job that cannot run is stored failed, never lost silently
            log.exception("analysis of interview %s failed", interview_id)
            try:
                error = f"{type(exc).__name__}: {exc}"[:500]
                await self._update(interview_id, lambda d: d.update(status=FAILED, finishedAt=self.clock(),
                                                                    error=error))
            except Exception:  # noqa: BLE001 - the store itself is down: the job stays unfinished, resumed later
                log.warning("analysis of interview %s: failure not recorded", interview_id)

    async def _analyse(self, interview_id: str) -> None:
        doc = await self.records.get(interview_id)
        if doc is None:
            return
        interview = await self.service.get_interview(interview_id, with_segments=False)
        if interview["status"] != INTERVIEW_COMPLETED:  # stored just before a completion that never committed
            await self._update(interview_id, lambda d: d.update(status=FAILED, finishedAt=self.clock(),
                                                                error="interview not completed"))
            return
        await self._update(interview_id, lambda d: d.update(status=RUNNING, startedAt=self.clock()))
        transcript = await self.service.get_transcript(interview_id)
        personal: list[str] = []
        try:
            candidate = await self.service.get_candidate(interview["candidateId"])
            personal = [candidate["name"], candidate["email"], candidate.get("phone", "")]
        except NotFound:
            pass
        guide = _guide(interview)
        rubric = rubric_for(guide, doc.get("skills", ()))

        def prepare() -> tuple[list[Turn], Structure, str]:
            turns = conversation(transcript["segments"], personal)
            return turns, structure(turns, guide), input_hash(turns, rubric)

        # CPU work (~70 ms for a 45-minute transcript): in a thread, so live rooms' audio is not held up
        turns, shape, digest = await asyncio.to_thread(prepare)
        configured = list(self.providers)
        runs = list(await asyncio.gather(*(self._one(p, turns, rubric, digest)
                                           for p in [*configured, self.heuristic])))
        status = job_status(runs[:-1], [p.name for p in configured]) if configured else job_status(runs, [])
        machine = [r for r in runs if r.kind != "heuristic"] if configured else runs
        agg = aggregate(machine, rubric) or aggregate(runs, rubric)
        await self._update(interview_id, lambda d: d.update(
            status=status, finishedAt=self.clock(), rubric=[c.to_dict() for c in rubric],
            structure=shape.to_dict(), turns=[t.to_dict() for t in turns], inputHash=digest,
            runs=[r.to_dict() for r in runs], aggregate=agg))
        if agg is not None and status != FAILED:
            await self.service.note_analysis(interview_id, lambda now: AnalysisSucceeded(
                interview_id=interview_id, occurred_at=now, status=status, overall=agg["overall"],
                recommendation=agg["recommendation"], basis=agg["basis"], flagged=agg["flagged"]))
        else:
            await self.service.note_analysis(interview_id, lambda now: AnalysisFailed(
                interview_id=interview_id, occurred_at=now,
                errors={r.provider: r.error for r in runs if r.status != COMPLETED}))
        log.info("analysis of interview %s %s (%s)", interview_id, status,
                 ", ".join(f"{r.provider}: {r.status}" for r in runs))

    async def _one(self, provider: AnalysisProvider, turns: list[Turn], rubric: list[Competency],
                   digest: str) -> ProviderRun:
        run = ProviderRun(provider.name, provider.model, provider.kind, FAILED, input_hash=digest)
        t0 = time.perf_counter()
        try:
            answer = await provider.analyse(turns, rubric)
        except ProviderError as exc:
            run.error, run.attempts = f"{exc.kind}: {exc.message}"[:500], exc.attempts
            log.warning("analysis provider %s failed: %s", provider.name, run.error)
        except Exception as exc:  # noqa: BLE001 - one provider's bug must not fail the others
            run.error = f"internal: {type(exc).__name__}"
            log.exception("analysis provider %s crashed", provider.name)
        else:
            card, rejected = verify(answer.scorecard, turns, rubric)
            run.status, run.scorecard, run.evidence_rejected = COMPLETED, card, rejected
            run.tokens_in, run.tokens_out, run.attempts = answer.tokens_in, answer.tokens_out, answer.attempts
            if rejected:
                self.on_rejected(provider.name, rejected)
        run.latency_s = time.perf_counter() - t0
        self.on_run(provider.name, run.status)
        return run

    # -- PUT (an analysis computed elsewhere) -------------------------------------------------------------------

    async def record_manual(self, interview_id: str, legacy: dict[str, Any]) -> None:
        """Keep a PUT analysis as the provider entry "manual" (scores as given: a person's, not verified)."""
        overall = legacy.get("overall") or {}
        card = Scorecard([CompetencyScore(name, score, "", []) for name, score in legacy["competency"].items()],
                         [], [], overall.get("recommendation", "undecided"), overall.get("score"))
        manual = ProviderRun("manual", "", "manual", COMPLETED, prompt_version="", scorecard=card).to_dict()

        def put_manual(doc: dict[str, Any]) -> None:
            doc.setdefault("status", COMPLETED)
            doc.setdefault("requestedAt", self.clock())
            doc["manual"] = manual

        await self._update(interview_id, put_manual)

    # -- queries ------------------------------------------------------------------------------------------------

    async def view(self, interview_id: str, legacy: dict[str, Any], version: str = "confirmed",
                   policy: OrgPolicy | None = None) -> dict[str, Any]:
        """GET /api/interviews/{id}/analysis: the job's status, the aggregate (the confirmed scorecard by default
        when there is one; `version="machine"`: the providers'), per-provider runs and the review, shown as the
        organisation's `policy` allows, plus the fields of a PUT analysis (`legacy`, the interview's own)."""
        if version not in ("confirmed", "machine"):
            raise ValidationError({"version": "expected confirmed or machine"})
        policy = policy or self.default_policy
        doc = await self.records.get(interview_id) or {}
        runs = [ProviderRun.from_dict(r) for r in doc.get("runs", ())]
        if doc.get("manual"):
            runs.append(ProviderRun.from_dict(doc["manual"]))
        agg = doc.get("aggregate")
        if agg is None and doc.get("manual"):
            agg = aggregate([ProviderRun.from_dict(doc["manual"])], [])
        review = doc.get("review") or new_review()
        shown = policy_view(policy, agg, review, [r.to_dict() for r in runs], version)
        status = doc.get("status") or legacy.get("status", PENDING)
        if not policy.tone and isinstance(legacy.get("sentiment"), dict):  # the tone of words is off
            legacy = {**legacy, "sentiment": {"overall": None, "timeline": []}}
        return {**legacy, "status": status, **shown, "review": review,
                "structure": doc.get("structure"), "turns": doc.get("turns", []), "rubric": doc.get("rubric", []),
                "inputHash": doc.get("inputHash"), "requestedAt": doc.get("requestedAt"),
                "finishedAt": doc.get("finishedAt"), "error": doc.get("error", "")}

    # -- human review -------------------------------------------------------------------------------------------

    async def review(self, interview_id: str, action: str, scorecard: dict[str, Any] | None, note: str,
                     by: str) -> dict[str, Any]:
        """A reviewer's edit, confirmation or rejection (`scorecard`: already schema-valid, for edit or confirm).
        Its evidence must be in the turns it cites (422 otherwise); its competencies those of the analysis.
        Returns the new review. 409 before there is an analysis to review."""
        at = iso(self.clock()) or ""

        def change(doc: dict[str, Any]) -> None:
            if not doc.get("aggregate") and not doc.get("manual") and not (doc.get("review") or {}).get("scorecard"):
                raise Conflict(f"interview {interview_id} has no analysis to review yet", code="nothing_to_review")
            card = _checked(scorecard, doc) if scorecard is not None else None
            machine = doc.get("aggregate") or (aggregate([ProviderRun.from_dict(doc["manual"])], [])
                                               if doc.get("manual") else None)
            doc["review"] = review_change(doc.get("review"), action, card, note, by, at, machine)

        doc = await self._update_existing(interview_id, change)
        review: dict[str, Any] = doc["review"]
        log.info("analysis of interview %s: review %s by %s -> %s", interview_id, action, by, review["status"])
        return review

    async def _update_existing(self, interview_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        lock = self._locks.setdefault(interview_id, asyncio.Lock())
        async with lock:
            doc = await self.records.get(interview_id)
            if doc is None:
                raise Conflict(f"interview {interview_id} has no analysis to review yet", code="nothing_to_review")
            change(doc)
            await self.records.put(doc)
            return doc

    # -- export -------------------------------------------------------------------------------------------------

    async def export_rows(self, interviews: Sequence[dict[str, Any]], policy: OrgPolicy) -> list[dict[str, Any]]:
        """One row per interview with an analysis: what its default view shows (the confirmed scorecard when
        there is one), as the organisation's policy allows."""
        rows = []
        for interview in interviews:
            iid = interview["interviewId"]
            doc = await self.records.get(iid)
            if not doc or not (doc.get("aggregate") or doc.get("manual")):
                continue
            view = await self.view(iid, {}, "confirmed", policy)
            agg = view["aggregate"] or {}
            rows.append({"interviewId": iid, "candidateId": interview["candidateId"], "jobId": interview["jobId"],
                         "scheduledAt": interview["scheduledAt"], "completedAt": interview.get("completedAt"),
                         "analysisStatus": view["status"], "reviewStatus": view["review"]["status"],
                         "version": view["version"], "final": view["policy"]["final"],
                         "advisory": True, "overall": agg.get("overall"),
                         "recommendation": agg.get("recommendation"),
                         "competencies": {c["name"]: c.get("score") for c in agg.get("competencies", ())},
                         "basis": agg.get("basis", [])})
        return rows


def _checked(card: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """A reviewer's scorecard checked against the analysis: competencies of its rubric or aggregate, each once;
    every evidence quote in the turn (participantId, seq) it cites. The scorecard as kept, or ValidationError."""
    known = {c["name"] for c in doc.get("rubric", ())} | {c["name"] for c in (doc.get("aggregate") or {}).get(
        "competencies", ())}
    turns = {(t["participantId"], t["seq"]): t for t in doc.get("turns", ())}
    problems: dict[str, str] = {}
    seen: set[str] = set()
    competencies = []
    for i, c in enumerate(card["competencies"]):
        where = f"scorecard.competencies.{i}"
        if known and c["name"] not in known:
            problems[f"{where}.name"] = "not a competency of this analysis: " + ", ".join(sorted(known))
        if c["name"] in seen:
            problems[f"{where}.name"] = "named twice"
        seen.add(c["name"])
        evidence = []
        for j, e in enumerate(c.get("evidence") or ()):
            turn = turns.get((e["participantId"], e["seq"]))
            if turn is None or not quote_in(e["quote"], turn["text"]):
                problems[f"{where}.evidence.{j}.quote"] = "not in the segment it cites"
                continue
            evidence.append({"participantId": e["participantId"], "seq": e["seq"], "quote": e["quote"].strip(),
                             "turn": turn["index"]})
        competencies.append({"name": c["name"], "score": c.get("score"), "rationale": (c.get("rationale") or "").strip(),
                             "evidence": evidence})
    if problems:
        raise ValidationError(problems)
    return {"competencies": competencies, "strengths": [s.strip() for s in card.get("strengths") or () if s.strip()],
            "improvements": [s.strip() for s in card.get("improvements") or () if s.strip()],
            "recommendation": card.get("recommendation") or "undecided", "overall": card.get("overall")}
