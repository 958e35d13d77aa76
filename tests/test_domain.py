"""The domain model and application layer without I/O: status machine, value rules, events, command parsing,
and InterviewService over an in-memory InterviewStore (the port's second implementation)."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from domain.commands import (
    AddQuestion,
    CandidateQuery,
    CreateCandidate,
    CreateInterview,
    Cursor,
    InterviewQuery,
    InterviewService,
    InterviewStore,
    RecordAnalysis,
    transcript_stamp,
)
from domain.events import (
    DomainEvent,
    GuidanceRecorded,
    SegmentEvent,
    SegmentRevised,
    SegmentTranscribed,
    Speaker,
    StoredSegment,
    guidance_key,
)
from domain.model import (
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    Candidate,
    Conflict,
    Interview,
    NotFound,
    ValidationError,
    parse_time,
)

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def scheduled() -> Interview:
    return Interview.schedule(interview_id="iv-1", candidate_id="c-1", job_id="j-1", scheduled_at=NOW, now=NOW,
                              created_by="test")


def in_status(status: str) -> Interview:
    i = scheduled()
    if status in (IN_PROGRESS, COMPLETED):
        i.start(NOW)
    if status == COMPLETED:
        i.complete(NOW + timedelta(minutes=30))
    if status == CANCELLED:
        i.cancel(NOW)
    i.take_events()
    return i


MOVES = {"start": IN_PROGRESS, "complete": COMPLETED, "cancel": CANCELLED}
ALLOWED = {(SCHEDULED, "start"), (SCHEDULED, "cancel"), (IN_PROGRESS, "complete"), (IN_PROGRESS, "cancel")}


@pytest.mark.parametrize("status", [SCHEDULED, IN_PROGRESS, COMPLETED, CANCELLED])
@pytest.mark.parametrize("move", list(MOVES))
def test_status_machine_allows_only_its_moves(status: str, move: str) -> None:
    interview = in_status(status)
    if (status, move) in ALLOWED:
        getattr(interview, move)(NOW + timedelta(hours=1))
        assert interview.status == MOVES[move]
        [event] = interview.take_events()
        assert event.subject == f"interviews.iv-1.{event.SUBJECT}"
    else:
        with pytest.raises(Conflict) as info:
            getattr(interview, move)(NOW + timedelta(hours=1))
        assert info.value.code == "illegal_transition" and interview.status == status
        assert interview.take_events() == []


def test_lifecycle_records_events_with_the_wire_shape() -> None:
    interview = scheduled()
    interview.start(NOW + timedelta(minutes=1))
    interview.complete(NOW + timedelta(minutes=46, milliseconds=500))
    assert interview.duration_s == 2700.5
    events = interview.take_events()
    assert [type(e).__name__ for e in events] == ["InterviewScheduled", "InterviewStarted", "InterviewCompleted"]
    assert len({e.id for e in events}) == 3
    d = json.loads(events[0].to_json_bytes())
    assert d == {"type": "InterviewScheduled", "id": events[0].id, "interviewId": "iv-1",
                 "occurredAt": "2026-12-01T10:00:00.000Z", "candidateId": "c-1", "jobId": "j-1",
                 "scheduledAt": "2026-12-01T10:00:00.000Z"}
    assert json.loads(events[2].to_json_bytes())["duration"] == 2700.5


def test_segment_event_payload() -> None:
    seg = SegmentEvent(speaker=Speaker("candidate", "Ada", "p1"), seq=3, start_s=1.0, end_s=2.0, text="Hi.",
                       final=True)
    event = SegmentTranscribed(interview_id="iv-1", occurred_at=NOW, segment=seg)
    d = event.to_dict()
    assert event.subject == "interviews.iv-1.segment"
    assert d["type"] == "SegmentTranscribed" and d["participantId"] == "p1" and d["seq"] == 3
    assert d["segment"]["text"] == "Hi." and "type" not in d["segment"]


def test_revised_segment_wire_form_and_event_payload() -> None:
    seg = SegmentEvent(speaker=Speaker("candidate", "Ada", "p1"), seq=3, start_s=1.0, end_s=2.0, text="Hi there.",
                       final=True, revision=1)
    assert seg.type == "segment.revised" and seg.to_dict()["revision"] == 1
    assert "revision" not in SegmentEvent(seg.speaker, 3, 1.0, 2.0, "Hi.", final=True).to_dict()
    event = SegmentRevised(interview_id="iv-1", occurred_at=NOW, segment=seg)
    d = event.to_dict()
    assert event.subject == "interviews.iv-1.revision"
    assert d["type"] == "SegmentRevised" and (d["participantId"], d["seq"], d["revision"]) == ("p1", 3, 1)
    assert d["segment"]["text"] == "Hi there." and "type" not in d["segment"]


def test_questions_and_analysis_rules() -> None:
    interview = scheduled()
    from domain.model import Analysis, Question

    interview.add_question(Question("q1", "Why us?"), NOW)
    with pytest.raises(Conflict):
        interview.add_question(Question("q1", "Again"), NOW)
    with pytest.raises(Conflict):
        interview.ask_question("q1", NOW)  # not in progress
    interview.start(NOW)
    with pytest.raises(NotFound):
        interview.ask_question("q9", NOW)
    assert interview.ask_question("q1", NOW).asked_at == NOW
    with pytest.raises(Conflict):
        interview.record_analysis(Analysis(sentiment_overall=0.1), NOW)
    interview.complete(NOW)
    interview.record_analysis(Analysis(sentiment_overall=0.1), NOW)
    assert interview.analysis.status == "completed"
    assert type(interview.take_events()[-1]).__name__ == "AnalysisCompleted"


def test_documents_round_trip() -> None:
    interview = in_status(COMPLETED)
    again = Interview.from_document(copy.deepcopy(interview.to_document()))
    assert again.to_document() == interview.to_document()


@pytest.mark.parametrize("text,expected", [
    ("2026-12-01T10:00:00Z", NOW),
    ("2026-12-01T11:00:00+01:00", NOW),
    ("2026-12-01T10:00:00.123456Z", NOW + timedelta(milliseconds=123)),
])
def test_parse_time_accepts_zoned_iso(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected and parse_time(text).tzinfo == UTC


@pytest.mark.parametrize("value", ["2026-12-01T10:00:00", "tomorrow", "", 1700000000, None,
                                   datetime(2026, 1, 1), "0001-01-01T00:00:00+14:00"])
def test_parse_time_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_time(value)


def test_parse_time_keeps_offsets_exact() -> None:
    assert parse_time(datetime(2026, 12, 1, 5, 0, tzinfo=timezone(timedelta(hours=-5)))) == NOW


def test_create_interview_names_every_bad_field() -> None:
    with pytest.raises(ValidationError) as info:
        CreateInterview.parse({"candidateId": "", "jobId": ["j"], "scheduledAt": 5, "format": "fax",
                               "questions": "q", "extra": 1})
    assert set(info.value.fields) == {"candidateId", "jobId", "scheduledAt", "format", "questions", "extra"}
    with pytest.raises(ValidationError) as info:
        CreateInterview.parse("not an object")
    assert info.value.fields == {"body": "expected a JSON object"}
    ok = CreateInterview.parse({"candidateId": "c-1", "jobId": "j-1", "scheduledAt": "2026-12-01T10:00:00Z",
                                "questions": [{"text": "  Why?  "}]})
    assert ok.questions[0].text == "Why?" and ok.type == "screening" and ok.scheduled_at == NOW


@pytest.mark.parametrize("budget", [10**400, -(10**400), 28801, 0.5],
                         ids=["huge", "huge-negative", "above", "below"])
def test_a_question_budget_out_of_range_is_named_whatever_its_size(budget: int | float) -> None:
    with pytest.raises(ValidationError) as info:
        AddQuestion.parse({"text": "x", "budgetS": budget})
    assert info.value.fields == {"budgetS": "must be between 1 and 28800"}
    assert AddQuestion.parse({"text": "x", "budgetS": 28800}).budget_s == 28800.0


def test_analysis_ranges() -> None:
    with pytest.raises(ValidationError) as info:
        RecordAnalysis.parse({"sentiment": {"overall": float("nan")}, "competency": {"x": True},
                              "overall": {"score": 101}, "keywords": "kw"})
    assert set(info.value.fields) == {"sentiment.overall", "competency.x", "overall.score", "keywords"}
    parsed = RecordAnalysis.parse({"sentiment": {"overall": -1, "timeline": [{"at_s": 0, "score": 1}]}})
    assert parsed.analysis.sentiment_overall == -1.0


def test_cursor_round_trip_and_garbage() -> None:
    cursor = Cursor(NOW, "iv-1")
    assert Cursor.decode(cursor.encode()) == cursor
    for junk in ("", "abc", "eyJ0IjoxfQ", Cursor(NOW, "bad.id").encode()):
        with pytest.raises(ValueError):
            Cursor.decode(junk)
    with pytest.raises(ValidationError) as info:
        InterviewQuery.parse({"cursor": "abc", "limit": "x", "status": "paused"})
    assert set(info.value.fields) == {"cursor", "limit", "status"}


# ---------------------------------------------------------------------------------------------------------
# The service over an in-memory store (documents deep-copied in and out, like a database would).


class MemoryStore:
    def __init__(self) -> None:
        self.interviews: dict[str, dict[str, Any]] = {}
        self.candidates: dict[str, dict[str, Any]] = {}
        self.segments: dict[tuple[str, str, int], StoredSegment] = {}
        self.revisions: dict[tuple[str, str, int, int], SegmentEvent] = {}
        self.outbox: list[DomainEvent] = []
        self.guidance: dict[tuple[str, str], GuidanceRecorded] = {}

    async def add_interview(self, interview: Interview, events: list[DomainEvent]) -> None:
        if interview.interview_id in self.interviews:
            raise Conflict("exists", code="duplicate")
        self.interviews[interview.interview_id] = copy.deepcopy(interview.to_document())
        self.outbox += events

    async def get_interview(self, interview_id: str) -> Interview:
        if interview_id not in self.interviews:
            raise NotFound("interview", interview_id)
        await asyncio.sleep(0)  # a real store yields here: lets concurrent handlers interleave
        return Interview.from_document(copy.deepcopy(self.interviews[interview_id]))

    async def save_interview(self, interview: Interview, expected_version: int, events: list[DomainEvent]) -> None:
        current = self.interviews.get(interview.interview_id)
        if current is None:
            raise NotFound("interview", interview.interview_id)
        if current["metadata"]["version"] != expected_version:
            raise Conflict("stale", code="version_conflict")
        interview.metadata.version = expected_version + 1
        self.interviews[interview.interview_id] = copy.deepcopy(interview.to_document())
        self.outbox += events

    async def find_interviews(self, query: InterviewQuery, limit: int) -> list[Interview]:
        docs = sorted(self.interviews.values(), key=lambda d: (d["scheduledAt"], d["interviewId"]))
        if query.after:
            docs = [d for d in docs if (d["scheduledAt"], d["interviewId"]) > (query.after.at, query.after.ident)]
        docs = [d for d in docs if query.status in (None, d["status"]) and d["orgId"] == query.org_id
                and query.interviewer in (None, *d["interviewers"])]
        return [Interview.from_document(copy.deepcopy(d)) for d in docs[:limit]]

    async def add_segment(self, event: SegmentTranscribed) -> bool:
        key = (event.interview_id, event.segment.speaker.participant_id, event.segment.seq)
        if key in self.segments:
            return False
        self.segments[key] = StoredSegment(event.interview_id, copy.deepcopy(event.segment), event.occurred_at)
        self.outbox.append(event)
        return True

    async def add_revision(self, event: SegmentRevised) -> bool:
        seg = event.segment
        key = (event.interview_id, seg.speaker.participant_id, seg.seq)
        if key not in self.segments:
            raise NotFound("segment", ":".join(map(str, key)))
        if (*key, seg.revision) in self.revisions:
            return False
        self.revisions[(*key, seg.revision)] = copy.deepcopy(seg)
        self.outbox.append(event)
        return True

    async def list_segments(self, interview_id: str) -> list[StoredSegment]:
        out = []
        for key, stored in self.segments.items():
            if key[0] != interview_id:
                continue
            s = copy.deepcopy(stored)
            revisions = [r for k, r in self.revisions.items() if k[:3] == key]
            if revisions:
                s = s.revised_by(copy.deepcopy(max(revisions, key=lambda r: r.revision)))
            out.append(s)
        return out

    async def last_segment_seq(self, interview_id: str, participant_id: str) -> int | None:
        return max((k[2] for k in self.segments if k[:2] == (interview_id, participant_id)), default=None)

    async def transcript_stamp(self, interview_id: str) -> tuple[int, int]:
        return transcript_stamp({k[1:] for k in self.segments if k[0] == interview_id},
                                [k[1:] for k in self.revisions if k[0] == interview_id])

    async def add_guidance(self, event: GuidanceRecorded) -> None:
        self.guidance[(event.interview_id, guidance_key(event.guidance))] = event
        self.outbox.append(event)

    async def add_candidate(self, candidate: Candidate) -> None:
        if candidate.candidate_id in self.candidates or any(
                c["email"] == candidate.email for c in self.candidates.values()):
            raise Conflict("exists", code="duplicate")
        self.candidates[candidate.candidate_id] = copy.deepcopy(candidate.to_document())

    async def get_candidate(self, candidate_id: str) -> Candidate:
        if candidate_id not in self.candidates:
            raise NotFound("candidate", candidate_id)
        return Candidate.from_document(copy.deepcopy(self.candidates[candidate_id]))

    async def save_candidate(self, candidate: Candidate, expected_version: int) -> None:
        if self.candidates[candidate.candidate_id]["metadata"]["version"] != expected_version:
            raise Conflict("stale", code="version_conflict")
        candidate.metadata.version = expected_version + 1
        self.candidates[candidate.candidate_id] = copy.deepcopy(candidate.to_document())

    async def find_candidates(self, query: CandidateQuery, limit: int) -> list[Candidate]:
        return [Candidate.from_document(copy.deepcopy(c)) for c in self.candidates.values()
                if c["orgId"] == query.org_id][:limit]

    async def interview_ids_of(self, candidate_id: str) -> list[str]:
        return [i for i, d in self.interviews.items() if d["candidateId"] == candidate_id]


def test_memory_store_satisfies_the_port() -> None:
    store: InterviewStore = MemoryStore()  # type-checks against the Protocol (mypy); runtime smoke below
    assert callable(store.add_segment)


async def test_service_over_memory_store() -> None:
    store = MemoryStore()
    ticks = iter(NOW + timedelta(seconds=s) for s in range(1000))
    service = InterviewService(store, clock=lambda: next(ticks))
    doc = await service.create_interview(CreateInterview.parse(
        {"interviewId": "iv-9", "candidateId": "c-1", "jobId": "j-1", "scheduledAt": "2026-12-02T09:00:00Z"}))
    assert doc["interviewId"] == "iv-9" and doc["metadata"]["createdAt"] == NOW
    with pytest.raises(Conflict):
        await service.create_interview(CreateInterview.parse(
            {"interviewId": "iv-9", "candidateId": "c-1", "jobId": "j-1", "scheduledAt": "2026-12-02T09:00:00Z"}))
    # Concurrent compatible commands: all land through the version-race retry.
    await asyncio.gather(*(service.add_question("iv-9", AddQuestion.parse({"text": f"Q{i}"})) for i in range(5)))
    # Concurrent incompatible commands: one winner, one Conflict.
    results = await asyncio.gather(service.start_interview("iv-9"), service.start_interview("iv-9"),
                                   return_exceptions=True)
    assert sum(isinstance(r, Conflict) for r in results) == 1
    got = await service.get_interview("iv-9")
    assert len(got["questions"]) == 5 and got["status"] in (IN_PROGRESS, CANCELLED)
    seg = SegmentEvent(speaker=Speaker("candidate", "Ada", "p1"), seq=0, start_s=0, end_s=1, text="Hi.", final=True)
    if got["status"] == IN_PROGRESS:
        assert await service.record_segment("iv-9", seg) is True
        assert await service.record_segment("iv-9", seg) is False
        better = SegmentEvent(speaker=seg.speaker, seq=0, start_s=0, end_s=1, text="Hi!", final=True, revision=1)
        assert await service.record_revision("iv-9", better) is True
        assert await service.record_revision("iv-9", better) is False
        with pytest.raises(NotFound):
            await service.record_revision("iv-9", SegmentEvent(seg.speaker, 7, 0, 1, "Hm.", final=True, revision=1))
        [shown] = (await service.get_transcript("iv-9"))["segments"]
        assert (shown["text"], shown["originalText"], shown["revision"]) == ("Hi!", "Hi.", 1)
    else:
        with pytest.raises(Conflict):
            await service.record_segment("iv-9", seg)
    with pytest.raises(NotFound):
        await service.get_interview("nope")
    with pytest.raises(NotFound):
        await service.start_interview("../etc")
    # Events: exactly one per committed change (no event from the losing command).
    names = [type(e).__name__ for e in store.outbox]
    assert names.count("InterviewScheduled") == 1
    assert names.count("InterviewStarted") + names.count("InterviewCancelled") == 1
    cand = await service.create_candidate(CreateCandidate.parse({"name": "Ada", "email": "ada@example.com"}))
    assert (await service.get_candidate(cand["candidateId"]))["interviews"] == []


async def test_on_commit_wakes_the_relay_only_after_writes_that_committed_events() -> None:
    commits: list[int] = []
    store = MemoryStore()
    service = InterviewService(store, on_commit=lambda: commits.append(len(store.outbox)))
    await service.create_interview(CreateInterview.parse(
        {"interviewId": "iv-1", "candidateId": "c-1", "jobId": "j-1", "scheduledAt": "2026-12-02T09:00:00Z"}))
    await service.start_interview("iv-1")
    seg = SegmentEvent(speaker=Speaker("candidate", "Ada", "p1"), seq=0, start_s=0, end_s=1, text="Hi.", final=True)
    await service.record_segment("iv-1", seg)
    await service.record_segment("iv-1", seg)  # duplicate: nothing new to publish
    seg.revision = 1
    await service.record_revision("iv-1", seg)
    await service.record_revision("iv-1", seg)  # duplicate
    with pytest.raises(Conflict):
        await service.start_interview("iv-1")  # illegal move: no commit
    # each wake-up came after its events were in the outbox
    assert commits == [1, 2, 3, 4]


async def test_a_cached_transcript_is_served_only_while_the_store_holds_the_same_finals_and_revisions() -> None:
    from adapters.shared_state import MemoryTranscripts

    store, cache = MemoryStore(), MemoryTranscripts()
    reader, writer = InterviewService(store, transcripts=cache), InterviewService(store)  # the writer: another node
    await writer.create_interview(CreateInterview.parse(
        {"interviewId": "iv-1", "candidateId": "c-1", "jobId": "j-1", "scheduledAt": "2026-12-02T09:00:00Z"}))
    await writer.start_interview("iv-1")

    def seg(seq: int, text: str, revision: int = 0) -> SegmentEvent:
        return SegmentEvent(speaker=Speaker("candidate", "Ada", "p1"), seq=seq, start_s=seq, end_s=seq + 1,
                            text=text, final=True, revision=revision)

    async def texts() -> list[str]:
        return [s["text"] for s in (await reader.get_transcript("iv-1"))["segments"]]

    await writer.record_segment("iv-1", seg(0, "Hi."))
    await writer.record_segment("iv-1", seg(1, "I am Ada."))
    assert await texts() == ["Hi.", "I am Ada."] and await texts() == ["Hi.", "I am Ada."]
    assert (cache.hits, cache.misses) == (1, 1)
    await writer.record_revision("iv-1", seg(1, "I'm Ada.", revision=2))
    assert await texts() == ["Hi.", "I'm Ada."]
    await writer.record_revision("iv-1", seg(1, "I am Adda.", revision=1))  # late and lower: the transcript keeps 2
    assert await texts() == ["Hi.", "I'm Ada."] and cache.hits == 2
    await writer.record_segment("iv-1", seg(2, "Yes."))
    assert await texts() == ["Hi.", "I'm Ada.", "Yes."] and cache.hits == 2
    assert transcript_stamp({("p1", 0)}, [("p1", 0, 1), ("p1", 0, 3), ("p2", 0, 5)]) == (1, 3)
