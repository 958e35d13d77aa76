"""MongoStore over the real wire protocol (nx-27017 by default; a real MongoDB when MONGODB_URL is set)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.mongo import EmbeddedMongo, MongoStore
from domain.commands import (
    AddQuestion,
    CandidateQuery,
    CreateCandidate,
    CreateInterview,
    InterviewQuery,
    InterviewService,
    RecordAnalysis,
    UpdateCandidate,
)
from domain.events import SegmentEvent, Speaker, Word
from domain.model import Conflict, DomainError, NotFound, Unavailable, ValidationError

ROOT = Path(__file__).resolve().parent.parent

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def segment(seq: int, pid: str = "cand1", text: str = "I led the migration to Kubernetes.") -> SegmentEvent:
    return SegmentEvent(
        speaker=Speaker(role="candidate", name="Ada", participant_id=pid), seq=seq, start_s=1.0 + seq,
        end_s=2.5 + seq, text=text, final=True,
        words=[Word("I", 1.0, 1.1, 0.99), Word("led", 1.1, 1.4, 0.97)], confidence=0.91, engine="local",
        model="tiny.en")


def revised(seq: int, revision: int = 1, pid: str = "cand1",
            text: str = "I led the migration to Kubernetes at Acme.") -> SegmentEvent:
    seg = segment(seq, pid, text)
    seg.revision = revision
    seg.words = [Word("I", 1.0, 1.1, 0.99), Word("led", 1.1, 1.4, 0.98), Word("Acme.", 2.2, 2.5, 0.9)]
    seg.confidence = 0.95
    seg.no_speech_prob = 0.01
    return seg


def new_interview(candidate: str = "cand-1", job: str = "job-1", at: datetime = T0, **kw: object) -> CreateInterview:
    return CreateInterview.parse({"candidateId": candidate, "jobId": job, "scheduledAt": at.isoformat(), **kw})


async def test_interview_round_trip_keeps_arrays_of_subdocuments(service: InterviewService, store: MongoStore) -> None:
    # Catches nx-27017's $push corruption (pushed subdocuments come back as JSON strings): every array of
    # subdocuments we write must read back as dicts with the same values, after several successive writes.
    cmd = new_interview(interviewers=["int-1", "int-2"],
                        questions=[{"text": "Tell me about a hard bug.", "expectedKeywords": ["debugging", "root cause"]}])
    created = await service.create_interview(cmd)
    iid = created["interviewId"]
    await service.add_question(iid, AddQuestion.parse({"text": "Why this team?", "category": "motivation"}))
    await service.start_interview(iid)
    q2 = await service.add_question(iid, AddQuestion.parse({"text": "Design a rate limiter.", "questionId": "q-rl"}))
    assert q2["order"] == 3
    await service.ask_question(iid, "q-rl")
    await service.complete_interview(iid)
    await service.record_analysis(iid, RecordAnalysis.parse({
        "sentiment": {"overall": 0.4, "timeline": [{"at_s": 3.0, "score": 0.5, "participantId": "cand1"},
                                                   {"at_s": 9.5, "score": -0.2}]},
        "keywords": [{"term": "kubernetes", "count": 3, "relevance": 0.8}],
        "competency": {"communication": 4, "problem_solving": 3.5},
        "overall": {"score": 72, "recommendation": "hire", "summary": "Solid."}}))

    doc = await service.get_interview(iid)
    assert doc["status"] == "completed" and doc["metadata"]["version"] == 7
    assert [type(q) for q in doc["questions"]] == [dict, dict, dict]
    assert doc["questions"][0]["expectedKeywords"] == ["debugging", "root cause"]
    assert doc["questions"][1] == {"questionId": doc["questions"][1]["questionId"], "text": "Why this team?",
                                   "category": "motivation", "order": 2, "expectedKeywords": [], "askedAt": None}
    assert doc["questions"][2]["askedAt"] is not None and doc["questions"][2]["askedAt"].tzinfo is not None
    assert doc["interviewers"] == ["int-1", "int-2"]
    timeline = doc["analysis"]["sentiment"]["timeline"]
    assert timeline == [{"at_s": 3.0, "score": 0.5, "participantId": "cand1"},
                        {"at_s": 9.5, "score": -0.2, "participantId": None}]
    assert doc["analysis"]["keywords"] == [{"term": "kubernetes", "count": 3, "relevance": 0.8}]
    assert doc["analysis"]["competency"] == {"communication": 4.0, "problem_solving": 3.5}
    assert doc["scheduledAt"] == T0 and doc["duration"] is not None
    # Dates stay dates through every later write (nx-27017's $set turns top-level dates into naive strings).
    for key in ("scheduledAt", "startedAt", "completedAt"):
        assert isinstance(doc[key], datetime) and doc[key].utcoffset() == timedelta(0), key
    assert isinstance(doc["metadata"]["updatedAt"], datetime) and doc["metadata"]["updatedAt"] >= doc["completedAt"]

    # The raw stored document too (not only our mapping of it).
    raw = await store.interviews.find_one({"_id": iid})
    assert raw is not None
    assert all(isinstance(q, dict) for q in raw["questions"])
    assert all(isinstance(t, dict) for t in raw["analysis"]["sentiment"]["timeline"])


async def test_segment_words_survive_round_trip(service: InterviewService) -> None:
    iid = (await service.create_interview(new_interview()))["interviewId"]
    await service.start_interview(iid)
    assert await service.record_segment(iid, segment(0))
    transcript = await service.get_transcript(iid)
    [seg] = transcript["segments"]
    assert seg["words"] == [{"word": "I", "start_s": 1.0, "end_s": 1.1, "probability": 0.99},
                            {"word": "led", "start_s": 1.1, "end_s": 1.4, "probability": 0.97}]
    assert seg["speaker"] == {"role": "candidate", "name": "Ada", "participantId": "cand1"}
    assert seg["text"] == "I led the migration to Kubernetes." and seg["seq"] == 0


async def test_segment_writes_are_idempotent(service: InterviewService, store: MongoStore) -> None:
    iid = (await service.create_interview(new_interview()))["interviewId"]
    await service.start_interview(iid)
    results = await asyncio.gather(*(service.record_segment(iid, segment(s)) for s in (0, 1, 0, 1, 2)))
    assert sorted(results) == [False, False, True, True, True]
    assert await service.record_segment(iid, segment(1, text="a retry with different text")) is False
    assert await service.record_segment(iid, segment(1, pid="int1")) is True  # another participant's seq 1
    assert await service.last_segment_seq(iid, "cand1") == 2
    assert await service.last_segment_seq(iid, "int1") == 1
    assert await service.last_segment_seq(iid, "nobody") is None
    assert (await service.get_interview(iid, with_segments=False))["transcription"]["segments"] == []
    assert len((await service.get_interview(iid))["transcription"]["segments"]) == 4
    transcript = await service.get_transcript(iid)
    keys = [(s["participantId"], s["seq"]) for s in transcript["segments"]]
    assert sorted(keys) == [("cand1", 0), ("cand1", 1), ("cand1", 2), ("int1", 1)]
    assert all(s["text"] == "I led the migration to Kubernetes." for s in transcript["segments"])
    # One SegmentTranscribed per stored segment, none for the duplicates.
    subjects = [r.subject for r in await store.pending(100)]
    assert subjects.count(f"interviews.{iid}.segment") == 4


async def test_a_revision_replaces_its_final_in_the_transcript_and_keeps_the_live_text(
        service: InterviewService, store: MongoStore) -> None:
    iid = (await service.create_interview(new_interview()))["interviewId"]
    await service.start_interview(iid)
    for seq in (0, 1):
        assert await service.record_segment(iid, segment(seq))
    assert await service.record_revision(iid, revised(1)) is True
    [first, second] = (await service.get_transcript(iid))["segments"]
    assert "revision" not in first and "originalText" not in first
    assert first["text"] == "I led the migration to Kubernetes."
    assert second["revision"] == 1 and second["text"] == "I led the migration to Kubernetes at Acme."
    assert second["originalText"] == "I led the migration to Kubernetes."
    assert second["words"] == [w.to_dict() for w in revised(1).words]
    assert (second["confidence"], second["no_speech_prob"], second["hallucination"]) == (0.95, 0.01, False)
    assert (second["seq"], second["start_s"], second["end_s"]) == (1, 2.0, 3.5)  # still the utterance's
    assert (await service.get_interview(iid))["transcription"]["segments"] == [first, second]

    # The same revision again (a retried write, even with other text) changes nothing; a higher one wins, and a
    # lower one arriving late does not undo it.
    assert await service.record_revision(iid, revised(1, text="a retry with different text")) is False
    flagged = revised(1, revision=2, text="Thank you for watching.")
    flagged.hallucination = True
    assert await service.record_revision(iid, flagged) is True
    assert await service.record_revision(iid, revised(1)) is False
    second = (await service.get_transcript(iid))["segments"][1]
    assert (second["revision"], second["text"], second["hallucination"]) == (2, "Thank you for watching.", True)
    assert second["originalText"] == "I led the migration to Kubernetes."
    # Append-only: the stored final itself was never rewritten.
    raw = await store.segment_document(iid, f"{iid}:cand1:1")
    assert raw is not None and raw["text"] == "I led the migration to Kubernetes." and "revision" not in raw
    assert len(await store.list_revisions(iid)) == 2
    assert await service.last_segment_seq(iid, "cand1") == 1  # revisions are no new segments


async def test_segments_live_in_monthly_partitions_read_across_months_and_dropped_whole(
        service: InterviewService, store: MongoStore) -> None:
    """Each interview's segments and revisions go to the partition of its month; the outbox and erasure read every
    partition; dropping a month removes its partitions and nothing else."""
    months = {"m2026_11": datetime(2026, 11, 30, 23, 30, tzinfo=UTC), "m2026_12": T0}
    iids = {}
    for month, at in months.items():
        iids[month] = iid = (await service.create_interview(new_interview(at=at)))["interviewId"]
        await service.start_interview(iid)
        await service.record_segment(iid, segment(0))
        await service.record_revision(iid, revised(0))
    assert await store.months() == ["m2026_11", "m2026_12"]
    names = {c.name for base in ("segments", "revisions") for c in await store.partitions(base)}
    assert names == {"segments_2026_11", "segments_2026_12", "revisions_2026_11", "revisions_2026_12"}
    assert "segments" not in await store.db.list_collection_names()  # nothing outside a partition
    # the outbox spans the months, each revision after its final
    records = await store.pending(100)
    subjects = [r.subject.split(".", 1)[1] for r in records if ".segment" in r.subject or ".revision" in r.subject]
    assert sorted(subjects) == sorted(f"{iid}.{kind}" for iid in iids.values() for kind in ("segment", "revision"))
    for iid in iids.values():
        mine = [r.subject for r in records if r.subject.startswith(f"interviews.{iid}.")]
        assert mine.index(f"interviews.{iid}.segment") < mine.index(f"interviews.{iid}.revision")
    await store.mark_published([r.id for r in records])
    assert await store.pending(100) == []

    assert await store.drop_month("m2026_11") == {"segments": 1, "revisions": 1}
    assert await store.months() == ["m2026_12"]
    assert (await service.get_transcript(iids["m2026_11"]))["segments"] == []
    [kept] = (await service.get_transcript(iids["m2026_12"]))["segments"]
    assert kept["revision"] == 1
    assert (await store.delete_interview_data([iids["m2026_12"]]))["segments"] == 1


async def test_segments_stored_before_partitioning_are_moved_into_their_months(store: MongoStore) -> None:
    await store.db["segments"].insert_one({"_id": "iv-old:p1:0", "interviewId": "iv-old", "participantId": "p1",
                                           "seq": 0, "month": "m2025_03", "text": "hello"})
    await store.create_indexes()
    assert "segments" not in await store.db.list_collection_names()
    assert await store.db["segments_2025_03"].find_one({"_id": "iv-old:p1:0"}) is not None
    # a segment whose interview no longer exists goes to m0000_00, which the retention job drops (not trips on)
    await store.db["segments"].insert_one({"_id": "iv-gone:p1:0", "interviewId": "iv-gone", "participantId": "p1",
                                           "seq": 0, "text": "hello"})
    await store.create_indexes()
    assert await store.months() == ["m0000_00", "m2025_03"]
    assert await store.month_expired("m0000_00", datetime(2026, 1, 1, tzinfo=UTC))


async def test_revisions_rejected_without_their_final_or_for_a_cancelled_interview(service: InterviewService) -> None:
    iid = (await service.create_interview(new_interview()))["interviewId"]
    await service.start_interview(iid)
    with pytest.raises(NotFound) as info:
        await service.record_revision(iid, revised(0))  # its final is not stored
    assert info.value.kind == "segment"
    await service.record_segment(iid, segment(0))
    with pytest.raises(ValidationError, match="revision"):
        await service.record_revision(iid, segment(0))  # revision 0 is the final itself
    with pytest.raises(ValidationError, match="record_revision"):
        await service.record_segment(iid, revised(0))  # never stored as if it were a final
    with pytest.raises(NotFound):
        await service.record_revision(iid, revised(0, pid="int1"))  # another participant's seq 0 is not stored
    await service.cancel_interview(iid, "candidate withdrew")
    with pytest.raises(Conflict):
        await service.record_revision(iid, revised(0))
    assert all("revision" not in s for s in (await service.get_transcript(iid))["segments"])


async def test_segments_rejected_for_unknown_partial_or_cancelled(service: InterviewService) -> None:
    with pytest.raises(NotFound):
        await service.record_segment("nope", segment(0))
    iid = (await service.create_interview(new_interview()))["interviewId"]
    partial = segment(0)
    partial.final = False
    with pytest.raises(ValueError, match="final"):
        await service.record_segment(iid, partial)
    await service.cancel_interview(iid, "candidate withdrew")
    with pytest.raises(Conflict):
        await service.record_segment(iid, segment(0))


async def test_stale_version_conflicts_instead_of_losing_an_update(service: InterviewService,
                                                                   store: MongoStore) -> None:
    iid = (await service.create_interview(new_interview()))["interviewId"]
    a = await store.get_interview(iid)
    b = await store.get_interview(iid)
    now = datetime.now(UTC)
    a.start(now)
    await store.save_interview(a, 1, a.take_events())
    b.cancel(now, "stale reader")
    with pytest.raises(Conflict) as info:
        await store.save_interview(b, 1, b.take_events())
    assert info.value.code == "version_conflict"
    doc = await service.get_interview(iid)
    assert doc["status"] == "in_progress" and doc["metadata"]["version"] == 2
    # The failed write recorded no event: only Scheduled and Started are pending.
    types = [json.loads(r.payload)["type"] for r in await store.pending(100)]
    assert types == ["InterviewScheduled", "InterviewStarted"]


async def test_concurrent_commands_one_wins_one_conflicts(mongo_url: str, store: MongoStore) -> None:
    # Two service instances with their own connections, as two server processes would have.
    other = await MongoStore.connect(mongo_url, db_name=store.db.name)
    try:
        s1, s2 = InterviewService(store), InterviewService(other)
        iid = (await s1.create_interview(new_interview()))["interviewId"]
        results = await asyncio.gather(s1.start_interview(iid), s2.start_interview(iid), return_exceptions=True)
        assert sum(isinstance(r, dict) for r in results) == 1
        [err] = [r for r in results if isinstance(r, BaseException)]
        assert isinstance(err, Conflict)
        # Compatible concurrent changes both land (retry on version race), none lost.
        await asyncio.gather(*(s.add_question(iid, AddQuestion.parse({"text": f"Q{i}"}))
                               for i, s in enumerate([s1, s2, s1, s2])))
        doc = await s1.get_interview(iid)
        assert sorted(q["text"] for q in doc["questions"]) == ["Q0", "Q1", "Q2", "Q3"]
        assert sorted(q["order"] for q in doc["questions"]) == [1, 2, 3, 4]
        # With an explicit expected version, the stale one is refused.
        version = doc["metadata"]["version"]
        await s1.complete_interview(iid, expected_version=version)
        with pytest.raises(Conflict):
            await s2.cancel_interview(iid, expected_version=version)
    finally:
        await other.close()


async def test_a_request_reuses_its_read_once_and_never_loses_a_concurrent_change(mongo_url: str,
                                                                                 store: MongoStore) -> None:
    """Inside one API request (adapters.read_scope) the access check's read of an interview serves the handler:
    one query instead of two. If another process changed the interview in between, the handler's write still
    conflicts on the version and its retry reads the store again: the other change is kept, nothing is lost."""
    from pymongo import monitoring

    from adapters import read_scope

    class Finds(monitoring.CommandListener):
        n = 0

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "find" and event.command.get("find") == "interviews":
                Finds.n += 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    monitoring.register(Finds())
    mine = await MongoStore.connect(mongo_url, db_name=store.db.name)  # a client created after the listener
    other = await MongoStore.connect(mongo_url, db_name=store.db.name)  # another node
    try:
        service, elsewhere = InterviewService(mine), InterviewService(other)
        iid = (await service.create_interview(new_interview()))["interviewId"]
        with read_scope.scope():
            before = Finds.n
            await service.get_interview(iid, with_segments=False)  # the access check
            doc = await service.start_interview(iid)  # the handler: no second read, no read for the write
            assert Finds.n - before == 1 and doc["status"] == "in_progress"
        # the API's access check reads only what the policy needs, and the handler converts the same document
        second = (await service.create_interview(new_interview()))["interviewId"]
        with read_scope.scope():
            before = Finds.n
            assert await service.interview_access(second) == ("default", ())
            assert (await service.get_interview(second, with_segments=False))["interviewId"] == second
            assert Finds.n - before == 1
        with read_scope.scope():
            before = Finds.n
            await service.interview_access(second)
            assert (await service.start_interview(second))["metadata"]["version"] == 2
            assert Finds.n - before == 1
        with pytest.raises(NotFound):
            await service.interview_access("no-such-interview")
        with read_scope.scope():
            await service.get_interview(iid, with_segments=False)  # the access check reads version 2
            await elsewhere.add_question(iid, AddQuestion.parse({"text": "Asked on another node"}))  # version 3
            doc = await service.complete_interview(iid)  # kept read is stale: conflict, retry reads the store
        assert doc["status"] == "completed" and doc["metadata"]["version"] == 4
        assert [q["text"] for q in doc["questions"]] == ["Asked on another node"]
        # a task started inside a request (a background job) copies the context but not the request's reads
        with read_scope.scope():
            await service.get_interview(iid, with_segments=False)
            before = Finds.n
            await asyncio.create_task(service.get_interview(iid, with_segments=False))
            assert Finds.n - before == 1
        # outside a request nothing is kept: every read goes to the store
        before = Finds.n
        await service.get_interview(iid, with_segments=False)
        await service.get_interview(iid, with_segments=False)
        assert Finds.n - before == 2
    finally:
        await mine.close()
        await other.close()


async def test_outbox_pending_and_mark_published(service: InterviewService, store: MongoStore,
                                                 mongo_url: str) -> None:
    iid = (await service.create_interview(new_interview()))["interviewId"]
    await service.start_interview(iid)
    await service.record_segment(iid, segment(0))
    await service.complete_interview(iid)
    pending = await store.pending(100)
    payloads = [json.loads(r.payload) for r in pending]
    assert [p["type"] for p in payloads] == ["InterviewScheduled", "InterviewStarted", "SegmentTranscribed",
                                             "InterviewCompleted"]
    assert [r.subject for r in pending] == [f"interviews.{iid}.{s}" for s in
                                            ("scheduled", "started", "segment", "completed")]
    for r, p in zip(pending, payloads, strict=True):
        assert p["id"] == r.id and p["interviewId"] == iid and p["occurredAt"].endswith("Z")
    assert payloads[2]["segment"]["text"] == "I led the migration to Kubernetes."
    assert len(await store.pending(2)) == 2

    await store.mark_published([pending[0].id, pending[2].id])
    left = await store.pending(100)
    assert [r.id for r in left] == [pending[1].id, pending[3].id]
    # A second store (another process) marks ids it never read through pending(); repeating is harmless.
    other = await MongoStore.connect(mongo_url, db_name=store.db.name)
    try:
        await other.mark_published([r.id for r in left])
        await other.mark_published([r.id for r in left])
    finally:
        await other.close()
    assert await store.pending(100) == []
    log = await store.published_events(iid)
    assert sorted(e["id"] for e in log) == sorted(r.id for r in pending)
    raw = await store.interviews.find_one({"_id": iid})
    assert raw is not None and raw["outbox"] == {} and raw["outboxCount"] == 0
    # The relay's $unset left the interview's dates alone (no nx-27017 re-serialisation of the document).
    assert all(isinstance(raw[k], datetime) for k in ("scheduledAt", "startedAt", "completedAt"))


async def test_a_revision_event_is_published_after_its_final_even_when_the_clock_stepped_back(
        store: MongoStore) -> None:
    ticks = iter([T0, T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=5), T0 + timedelta(seconds=20)])
    service = InterviewService(store, clock=lambda: next(ticks))
    iid = (await service.create_interview(new_interview()))["interviewId"]
    await service.start_interview(iid)
    await service.record_segment(iid, segment(0))  # at T0 + 10 s
    await service.record_revision(iid, revised(0))  # at T0 + 5 s: the clock stepped back in between
    await service.record_segment(iid, segment(1))  # at T0 + 20 s
    # The revision sorts before its final by time; it waits until the final went out, whether the final is in the
    # same batch or beyond it.
    assert [json.loads(r.payload)["type"] for r in await store.pending(3)] == ["InterviewScheduled",
                                                                             "InterviewStarted"]
    first = await store.pending(100)
    assert [json.loads(r.payload)["type"] for r in first] == ["InterviewScheduled", "InterviewStarted",
                                                              "SegmentTranscribed", "SegmentTranscribed"]
    await store.mark_published([r.id for r in first[:3]])
    second = await store.pending(100)
    assert [r.subject for r in second] == [f"interviews.{iid}.revision", f"interviews.{iid}.segment"]
    payload = json.loads(second[0].payload)
    assert payload["type"] == "SegmentRevised" and (payload["participantId"], payload["seq"]) == ("cand1", 0)
    assert payload["revision"] == 1 and payload["segment"]["revision"] == 1
    assert payload["segment"]["text"] == "I led the migration to Kubernetes at Acme."
    await store.mark_published([r.id for r in second])
    assert await store.pending(100) == []
    assert [await c.count_documents({"published": False}) for c in await store.partitions("revisions")] == [0]
    assert [e["type"] for e in await store.published_events(iid)].count("SegmentRevised") == 1


async def test_list_interviews_filters_and_cursor_pagination(service: InterviewService) -> None:
    ids = []
    for i in range(7):
        cmd = new_interview(candidate="cand-a" if i % 2 == 0 else "cand-b", job="job-x" if i < 4 else "job-y",
                            at=T0 + timedelta(hours=i // 2))  # pairs share a scheduledAt: the id breaks ties
        ids.append((await service.create_interview(cmd))["interviewId"])
    await service.start_interview(ids[1])

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await service.list_interviews(InterviewQuery.parse(params))
        seen += [d["interviewId"] for d in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 3 and sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    keys = [(T0 + timedelta(hours=ids.index(i) // 2), i) for i in seen]
    assert keys == sorted(keys)

    async def query(**params: str) -> list[str]:
        return [d["interviewId"] for d in (await service.list_interviews(InterviewQuery.parse(params)))["items"]]

    assert await query(status="in_progress") == [ids[1]]
    assert set(await query(candidateId="cand-a")) == {ids[0], ids[2], ids[4], ids[6]}
    assert set(await query(jobId="job-y", candidateId="cand-b")) == {ids[5]}
    window = await query(**{"from": (T0 + timedelta(hours=1)).isoformat(), "to": (T0 + timedelta(hours=3)).isoformat()})
    assert set(window) == {ids[2], ids[3], ids[4], ids[5]}


async def test_candidates_unique_email_versioned_update_and_pagination(service: InterviewService) -> None:
    created = await service.create_candidate(CreateCandidate.parse({
        "name": "Ada Lovelace", "email": "Ada@Example.com", "phone": "+44 20 7946 0000",
        "resume": {"url": "https://cv.example/ada.pdf", "skills": ["python", "maths"], "experience": 12}}))
    cid = created["candidateId"]
    assert created["email"] == "ada@example.com" and created["metadata"]["version"] == 1
    with pytest.raises(Conflict):
        await service.create_candidate(CreateCandidate.parse({"name": "Other", "email": "ada@example.com"}))
    await service.create_interview(new_interview(candidate=cid))

    updated = await service.update_candidate(cid, UpdateCandidate.parse({"resume": {"parsed": True}, "version": 1}))
    assert updated["resume"] == {"url": "https://cv.example/ada.pdf", "parsed": True, "skills": ["python", "maths"],
                                 "text": "", "fileRef": "",
                                 "experience": 12.0}
    assert updated["metadata"]["version"] == 2 and len(updated["interviews"]) == 1
    with pytest.raises(Conflict):
        await service.update_candidate(cid, UpdateCandidate.parse({"name": "Stale", "version": 1}))
    for i in range(4):
        await service.create_candidate(CreateCandidate.parse({"name": f"C{i}", "email": f"c{i}@example.com"}))
    page1 = await service.list_candidates(CandidateQuery.parse({"limit": "3"}))
    page2 = await service.list_candidates(CandidateQuery.parse({"limit": "3", "cursor": page1["nextCursor"]}))
    names = [c["name"] for c in page1["items"] + page2["items"]]
    # creation order; candidates created within the same millisecond are ordered by id
    assert names[0] == "Ada Lovelace" and sorted(names[1:]) == ["C0", "C1", "C2", "C3"]
    assert page2["nextCursor"] is None


async def test_embedded_restart_keeps_data(tmp_path: Path) -> None:
    embedded = EmbeddedMongo(tmp_path)
    url = await embedded.start()
    store = await MongoStore.connect(url)
    try:
        iid = (await InterviewService(store).create_interview(new_interview()))["interviewId"]
        await InterviewService(store).record_segment(iid, segment(0))
    finally:
        await store.close()
        await embedded.stop()
    assert embedded.url is None

    url2 = await embedded.start()
    store = await MongoStore.connect(url2)
    try:
        service = InterviewService(store)
        doc = await service.get_interview(iid)
        assert doc["status"] == "scheduled" and len(doc["transcription"]["segments"]) == 1
        assert len(await store.pending(10)) == 2  # the outbox survived too
        assert await service.record_segment(iid, segment(0)) is False
    finally:
        await store.close()
        await embedded.stop()
    assert (tmp_path / "mongo").is_dir()


async def test_a_stale_embedded_server_left_by_a_killed_process_is_stopped_first(tmp_path: Path) -> None:
    # the embedded server runs in its own session (Ctrl-C must not reach it), so a server killed with SIGKILL
    # leaves it running; the next start on the same data dir stops it rather than share the SQLite files
    script = (
        "import asyncio, os, sys\n"
        "from adapters.mongo import EmbeddedMongo\n"
        "e = EmbeddedMongo(sys.argv[1])\n"
        "print(asyncio.run(e.start()), e.proc.pid, flush=True)\n"
        "os._exit(9)  # killed: no teardown\n"
    )
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url, stale_pid = out.stdout.split()
    store = await MongoStore.connect(url)  # the orphan still serves
    try:
        iid = (await InterviewService(store).create_interview(new_interview()))["interviewId"]
    finally:
        await store.close()
    fresh = EmbeddedMongo(tmp_path)
    store = await MongoStore.connect(await fresh.start())
    try:
        with pytest.raises(ProcessLookupError):  # stopped before the new one opened the files
            os.kill(int(stale_pid), 0)
        assert (await InterviewService(store).get_interview(iid))["status"] == "scheduled"
        with pytest.raises(RuntimeError, match="in use by another running server"):
            await EmbeddedMongo(tmp_path).start()  # a live server's data dir is not taken over
    finally:
        await store.close()
        await fresh.stop()


async def test_database_outage_is_unavailable_not_a_domain_error(tmp_path: Path) -> None:
    embedded = EmbeddedMongo(tmp_path)
    store = await MongoStore.connect(await embedded.start(), timeout_s=0.5)
    service = InterviewService(store)
    try:
        iid = (await service.create_interview(new_interview()))["interviewId"]
        await embedded.stop()
        for call in (service.get_interview(iid), service.record_segment(iid, segment(0)), store.pending(10)):
            with pytest.raises(Unavailable) as info:
                await call
            assert not isinstance(info.value, DomainError)  # callers retry it, never drop a final over it
        assert await store.ping() is False
    finally:
        await store.close()
        await embedded.stop()


async def test_outbox_drains_in_per_interview_order_with_small_batches(service: InterviewService,
                                                                       store: MongoStore) -> None:
    ids = [(await service.create_interview(new_interview()))["interviewId"] for _ in range(4)]
    for iid in reversed(ids):
        await service.start_interview(iid)
        for seq in range(2):
            await service.record_segment(iid, segment(seq))
        await service.record_revision(iid, revised(0))
    await service.complete_interview(ids[0])
    published: list[dict[str, object]] = []
    for _ in range(50):
        batch = await store.pending(3)
        if not batch:
            break
        published += [json.loads(r.payload) for r in batch]
        await store.mark_published([r.id for r in batch])
    assert len(published) == 4 * 5 + 1 and len({p["id"] for p in published}) == len(published)
    for iid in ids:
        types = [p["type"] for p in published if p["interviewId"] == iid]
        expected = ["InterviewScheduled", "InterviewStarted", "SegmentTranscribed", "SegmentTranscribed",
                    "SegmentRevised"]
        assert types == expected + (["InterviewCompleted"] if iid == ids[0] else []), iid


async def test_the_transcript_stamp_follows_finals_and_revisions(service: InterviewService, store: MongoStore) -> None:
    """The stamp the transcript cache is checked against (read without the segments' contents); with no final it
    is the empty transcript's (no revision can be stored without its final), and every final or revision moves it."""
    from domain.commands import transcript_stamp

    iid = (await service.create_interview(new_interview()))["interviewId"]
    empty = await store.transcript_stamp(iid)
    assert empty == transcript_stamp(set(), [])
    await service.start_interview(iid)
    assert await service.record_segment(iid, segment(0))
    one = await store.transcript_stamp(iid)
    assert one == transcript_stamp({("cand1", 0)}, []) and one != empty
    assert await service.record_revision(iid, revised(0, revision=2))
    assert await store.transcript_stamp(iid) == transcript_stamp({("cand1", 0)}, [("cand1", 0, 2)]) != one
