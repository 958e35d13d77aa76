"""Privacy by construction, at the store boundary: personal fields sealed per candidate, blind-index lookups,
tampered fields reported unreadable, the master key checked at start and rotated without touching the data,
crypto-shredding erasure, export and signed receipts (over a real nx-27017)."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.crypto import MasterKeyRefused, MasterKeys, ReceiptSigner, verify_receipt
from adapters.mongo import MongoStore
from domain.commands import CandidateQuery, CreateCandidate, CreateInterview, InterviewService, RecordAnalysis
from domain.events import (
    AskedRef,
    GuideCoverageEvent,
    GuideItemStatus,
    ProtectedTopicAlert,
    QaPairEvent,
    SegmentEvent,
    Speaker,
    TalkBalanceEvent,
    Word,
)
from domain.model import Conflict

NAME, EMAIL, PHONE = "Zelda Quimby-Farnsworth", "zelda.qf@example.org", "+44 7700 900123"
PHRASE = "my favourite lighthouse in Reykjavik"


@pytest.fixture
async def sealed(mongo_url: str, tmp_path: Path) -> AsyncIterator[tuple[MongoStore, list[int]]]:
    unreadable: list[int] = []
    store = await MongoStore.connect(mongo_url, db_name=f"test_{uuid.uuid4().hex[:16]}",
                                     key_file=tmp_path / "master_key", on_unreadable=lambda: unreadable.append(1))
    try:
        yield store, unreadable
    finally:
        await store.drop_database()
        await store.close()


def segment(seq: int, text: str, name: str = NAME) -> SegmentEvent:
    return SegmentEvent(speaker=Speaker("candidate", name, "p1"), seq=seq, start_s=seq, end_s=seq + 1, text=text,
                        final=True, words=[Word(w, seq, seq + 0.5, 0.9) for w in text.split()])


async def raw_docs(store: MongoStore) -> str:
    """Every document of every collection, as one string (what someone with the database files sees)."""
    out = []
    for name in await store.db.list_collection_names():
        out += [json.dumps(d, default=str) async for d in store.db[name].find({})]
    return "\n".join(out)


async def a_candidate_with_an_interview(service: InterviewService) -> tuple[str, str]:
    cand = await service.create_candidate(CreateCandidate.parse({
        "personalInfo": {"name": NAME, "email": EMAIL, "phone": PHONE, "location": "Reykjavik"},
        "resume": {"text": "Keeper of lighthouses", "url": "https://cv.example/z.pdf"},
        "skills": ["optics"], "notes": "asked about night shifts",
        "experience": [{"company": "Lighthouse Board", "role": "keeper", "from": "2019-01", "to": "2024-06"}],
        "education": [{"institution": "University of Iceland", "degree": "BSc", "year": 2018}],
        "applications": [{"jobId": "job-1", "status": "interviewing", "appliedAt": "2026-01-02T09:00:00Z"}]}))
    interview = await service.create_interview(CreateInterview.parse({
        "candidateId": cand["candidateId"], "jobId": "job-1", "scheduledAt": "2026-12-01T09:00:00Z"}))
    return cand["candidateId"], interview["interviewId"]


async def test_personal_fields_are_sealed_at_rest_and_read_back(sealed: tuple[MongoStore, list[int]]) -> None:
    store, _ = sealed
    service = InterviewService(store)
    cid, iid = await a_candidate_with_an_interview(service)
    await service.start_interview(iid)
    await service.record_segment(iid, segment(0, PHRASE))
    await service.complete_interview(iid)
    await service.record_analysis(iid, RecordAnalysis.parse({"keywords": [{"term": "lighthouse"}],
                                                             "overall": {"summary": "Calm about Reykjavik"}}))
    raw = await raw_docs(store)
    for secret in (NAME, EMAIL, PHONE, "Reykjavik", "lighthouse", "Keeper", "night shifts", "Lighthouse Board",
                   "University of Iceland"):
        assert secret.lower() not in raw.lower(), f"{secret!r} is stored in plain text"
    # ... and the API reads it all back
    got = await service.get_candidate(cid)
    assert (got["name"], got["email"], got["phone"]) == (NAME, EMAIL, PHONE)
    assert got["personalInfo"]["location"] == "Reykjavik" and got["resume"]["text"] == "Keeper of lighthouses"
    assert got["experience"][0]["company"] == "Lighthouse Board" and got["applications"][0]["jobId"] == "job-1"
    transcript = await service.get_transcript(iid)
    assert transcript["segments"][0]["text"] == PHRASE and transcript["segments"][0]["speaker"]["name"] == NAME
    assert [w["word"] for w in transcript["segments"][0]["words"]] == PHRASE.split()
    analysis = await service.get_analysis(iid)
    assert analysis["overall"]["summary"] == "Calm about Reykjavik" and analysis["keywords"][0]["term"] == "lighthouse"


async def test_email_lookups_use_the_blind_index(sealed: tuple[MongoStore, list[int]]) -> None:
    store, _ = sealed
    service = InterviewService(store)
    cid, _ = await a_candidate_with_an_interview(service)
    with pytest.raises(Conflict) as refused:
        await service.create_candidate(CreateCandidate.parse({"name": "Other", "email": EMAIL.upper()}))
    assert EMAIL not in refused.value.message
    found = await service.list_candidates(CandidateQuery.parse({"email": " Zelda.QF@example.org"}))
    assert [c["candidateId"] for c in found["items"]] == [cid]
    assert (await service.list_candidates(CandidateQuery.parse({"email": "nobody@example.org"})))["items"] == []


async def test_a_tampered_field_is_reported_unreadable_not_a_failure(sealed: tuple[MongoStore, list[int]]) -> None:
    store, unreadable = sealed
    service = InterviewService(store)
    cid, iid = await a_candidate_with_an_interview(service)
    await service.record_segment(iid, segment(0, PHRASE))
    doc = await store.candidates.find_one({"_id": cid})
    sealed_name = doc["name"]
    flipped = sealed_name[:-3] + ("A" if sealed_name[-3] != "A" else "B") + sealed_name[-2:]
    await store.candidates.update_one({"_id": cid}, {"$set": {"name": flipped, "phone": doc["email"]}})
    got = await service.get_candidate(cid)
    assert got["name"] is None and got["phone"] is None and got["email"] == EMAIL
    assert sorted(got["unreadable"]) == ["name", "phone"]  # the email's ciphertext does not open as the phone
    (segments,) = await store.partitions("segments")
    seg = await segments.find_one({"interviewId": iid})
    await segments.update_one({"_id": seg["_id"]}, {"$set": {"text": seg["text"][:-4] + "AAAA"}})
    got_segment = (await service.get_transcript(iid))["segments"][0]
    assert got_segment["text"] is None and got_segment["unreadable"] == ["text"]
    assert len(unreadable) == 3


async def test_segment_events_carry_ciphertext_only(sealed: tuple[MongoStore, list[int]]) -> None:
    store, _ = sealed
    service = InterviewService(store)
    _, iid = await a_candidate_with_an_interview(service)
    await service.record_segment(iid, segment(0, PHRASE))
    records = await store.pending(100)
    payloads = [json.loads(r.payload) for r in records]
    seg = next(p for p in payloads if p["type"] == "SegmentTranscribed")
    assert seg["segment"]["text"].startswith("enc1:") and seg["segment"]["speaker"]["name"].startswith("enc1:")
    assert all(NAME not in r.payload.decode() and "lighthouse" not in r.payload.decode() for r in records)


async def test_live_guidance_is_stored_sealed_and_published_latest_first(
        sealed: tuple[MongoStore, list[int]]) -> None:
    """Guidance events are stored with the interview (the latest state of each item) and published as
    GuidanceRecorded on interviews.<id>.guidance.<kind>, the words sealed in both places; erasure deletes them."""
    store, _ = sealed
    service = InterviewService(store)
    _, iid = await a_candidate_with_an_interview(service)
    asked = AskedRef("p-int", 3, "So how old are you, Zelda?")
    alert = ProtectedTopicAlert("p-int", 3, asked.text, "age", 1.0, "Ask about relevant experience instead.")
    guide = [GuideItemStatus("q1", "Tell me about a lighthouse you kept.", "operations")]
    await service.record_guidance(iid, alert)
    await service.record_guidance(iid, GuideCoverageEvent(guide, [], []))
    guide[0].covered_by = AskedRef("p-int", 4, "Which lighthouse in Reykjavik did you keep?")
    await service.record_guidance(iid, GuideCoverageEvent(guide, [asked], []))  # replaces the first, unpublished
    await service.record_guidance(iid, QaPairEvent(asked, [AskedRef("p-cand", 2, PHRASE)], 5, 2.0, None))
    await service.record_guidance(iid, TalkBalanceEvent([{"participantId": "p-cand", "role": "candidate",
                                                          "speakingSeconds": 2.0, "share": 1.0,
                                                          "interruptions": 0}], None))
    raw = await raw_docs(store)
    for said in ("how old", "Zelda", "lighthouse", "Reykjavik"):
        assert said.lower() not in raw.lower(), f"{said!r} is stored in plain text"
    records = [r for r in await store.pending(100) if r.subject.startswith(f"interviews.{iid}.guidance.")]
    assert sorted(r.subject.rsplit(".", 1)[1] for r in records) == ["alert", "balance", "coverage", "qa"]
    payloads = {json.loads(r.payload)["kind"]: json.loads(r.payload) for r in records}
    assert payloads["alert"]["type"] == "GuidanceRecorded" and payloads["alert"]["key"] == "alert:p-int:3"
    assert payloads["alert"]["guidance"]["text"].startswith("enc1:") and payloads["alert"]["guidance"]["seq"] == 3
    assert payloads["coverage"]["guidance"]["left"] == []  # the latest state, its ids and counts in clear
    await store.mark_published([r.id for r in records])
    assert [r for r in await store.pending(100) if "guidance" in r.subject] == []

    stored = {g["kind"]: g["guidance"] for g in await store.list_guidance(iid)}
    assert stored["alert"] == alert.to_dict()
    assert stored["coverage"]["items"][0]["coveredBy"]["text"] == "Which lighthouse in Reykjavik did you keep?"
    assert stored["qa"]["answer"][0]["text"] == PHRASE
    assert (await store.delete_interview_data([iid]))["guidance"] == 4
    assert await store.list_guidance(iid) == []


async def test_master_key_missing_or_wrong_refuses_and_never_replaces(mongo_url: str, tmp_path: Path) -> None:
    db = f"test_{uuid.uuid4().hex[:16]}"
    key_file = tmp_path / "master_key"
    store = await MongoStore.connect(mongo_url, db_name=db, key_file=key_file)
    try:
        await InterviewService(store).create_candidate(CreateCandidate.parse({"name": NAME, "email": EMAIL}))
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        original = key_file.read_bytes()
        key_file.rename(tmp_path / "kept")
        with pytest.raises(MasterKeyRefused, match="missing"):
            await MongoStore.connect(mongo_url, db_name=db, key_file=key_file)
        assert not key_file.exists()  # no new key was made
        MasterKeys.generate(key_file).save()
        with pytest.raises(MasterKeyRefused, match="does not belong to this database"):
            await MongoStore.connect(mongo_url, db_name=db, key_file=key_file)
        key_file.write_bytes(original)
        again = await MongoStore.connect(mongo_url, db_name=db, key_file=key_file)
        assert (await InterviewService(again).list_candidates(CandidateQuery()))["items"][0]["name"] == NAME
        await again.close()
    finally:
        await store.drop_database()
        await store.close()


async def test_rotating_the_master_key_rewraps_data_keys_only(mongo_url: str, tmp_path: Path) -> None:
    db = f"test_{uuid.uuid4().hex[:16]}"
    key_file = tmp_path / "master_key"
    store = await MongoStore.connect(mongo_url, db_name=db, key_file=key_file)
    try:
        service = InterviewService(store)
        cid, _ = await a_candidate_with_an_interview(service)
        before = await store.candidates.find_one({"_id": cid})
        assert store.keyring is not None
        old_kid = store.keyring.master.current
        new_kid, count = await store.keyring.rotate_master_key()
        assert count == 1 and new_kid != old_kid
        assert list(MasterKeys.load(key_file).keks) == [new_kid]
        assert await store.candidates.find_one({"_id": cid}) == before  # the data is untouched
        again = await MongoStore.connect(mongo_url, db_name=db, key_file=key_file)
        assert (await InterviewService(again).get_candidate(cid))["email"] == EMAIL
        await again.close()
    finally:
        await store.drop_database()
        await store.close()


def test_receipts_verify_and_a_changed_byte_fails(tmp_path: Path) -> None:
    signer = ReceiptSigner.load_or_create(tmp_path / "receipt_key.pem")
    assert stat.S_IMODE(os.stat(tmp_path / "receipt_key.pem").st_mode) == 0o600
    signed = signer.sign({"what": "erasure", "candidateId": "c1", "at": datetime.now(UTC).isoformat()})
    assert verify_receipt(signed, [signer.jwk()])
    assert ReceiptSigner.load_or_create(tmp_path / "receipt_key.pem").kid == signer.kid
    tampered = json.loads(json.dumps(signed).replace('"c1"', '"c2"'))
    assert not verify_receipt(tampered, [signer.jwk()])
    assert not verify_receipt({"receipt": signed["receipt"]}, [signer.jwk()])
    assert not verify_receipt(signed, [ReceiptSigner.load_or_create(tmp_path / "other.pem").jwk()])


async def test_retention_erases_what_expired_and_reports_counts(sealed: tuple[MongoStore, list[int]],
                                                               tmp_path: Path) -> None:
    from datetime import timedelta

    from adapters.privacy import Privacy

    store, _ = sealed
    service = InterviewService(store)
    gone, gone_iid = await a_candidate_with_an_interview(service)
    kept = (await service.create_candidate(CreateCandidate.parse({"name": "Kept", "email": "kept@example.org"})))[
        "candidateId"]
    iids = [(await service.create_interview(CreateInterview.parse({
        "candidateId": kept, "jobId": "job-1", "scheduledAt": "2026-12-01T09:00:00Z"})))["interviewId"]
        for _ in range(2)]
    for iid in (gone_iid, iids[0]):
        await service.start_interview(iid)
        await service.record_segment(iid, segment(0, PHRASE))
        await service.complete_interview(iid)
    later = datetime.now(UTC) + timedelta(days=181)
    privacy = Privacy(store, service, ReceiptSigner.load_or_create(tmp_path / "r.pem"), retention_days=180,
                      clock=lambda: later)
    dry = await privacy.retention(dry_run=True)
    assert (dry["candidatesErased"], dry["interviewsCleared"], dry["expiredInterviews"]) == (1, 1, 2)
    assert (await service.get_transcript(gone_iid))["segments"]  # a dry run changes nothing
    report = await privacy.retention()
    assert (report["candidatesErased"], report["interviewsCleared"], report["segments"]) == (1, 1, 2)
    assert (await store.erasure_of(gone)) is not None and await store.erasure_of(kept) is None
    assert (await service.get_transcript(iids[0]))["segments"] == []
    assert (await service.get_interview(iids[0]))["dataErasedAt"] is not None
    assert (await service.get_candidate(kept))["name"] == "Kept"
    again = await privacy.retention()  # nothing left to do
    assert (again["candidatesErased"], again["interviewsCleared"]) == (0, 0)
    assert report["monthsDropped"] == [] == again["monthsDropped"]  # an interview of that month is still open
    # once every interview of the month expired, its partitions are dropped whole
    await service.cancel_interview(iids[1], "withdrawn")
    even_later = later + timedelta(days=181)
    privacy.clock = lambda: even_later
    dropped = await privacy.retention()
    assert dropped["monthsDropped"] == ["m2026_12"] and await store.months() == []
