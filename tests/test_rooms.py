"""Room registry with the real pipeline (faster-whisper tiny.en) and the real store, without WebRTC.

Audio is pushed straight into participants (as the WHIP reader does, minus the network); viewers are
in-memory channels (the second implementation of `rooms.Channel`, next to aiortc's RTCDataChannel).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.embeddings_onnx import OnnxSentenceEmbedder
from adapters.metrics import Metrics
from adapters.mongo import MongoStore
from adapters.nats_bus import JetStreamBus
from adapters.rooms import Participant, RoomRegistry
from adapters.shared_journal import SharedJournal
from adapters.stt_whisper import LocalWhisper
from adapters.tokens import TokenSigner
from domain.commands import CreateInterview, InterviewService
from domain.events import (
    GuidanceEvent,
    GuideCoverageEvent,
    SegmentEvent,
    SentimentEvent,
    Speaker,
    StreamEvent,
    to_json,
)
from pipeline.guidance import Guidance, GuideItem, default_detector
from pipeline.scheduler import SttScheduler
from pipeline.stream import Conversation, ParticipantStream, StreamConfig
from server import audit_alert
from testing.fakes import MemoryAuditLog
from testing.nats import NatsServer
from testing.poll import until
from testing.whip_client import decode_audio

SECRET = b"rooms-test-secret-0123456789abcdef"


class MemoryChannel:
    """A data channel that keeps what it was sent, and lets a test wait for a condition on it."""

    def __init__(self) -> None:
        self.readyState = "open"
        self.bufferedAmount = 0
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def send(self, data: str) -> None:
        self.messages.append(json.loads(data))
        self._changed.set()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait_for(self, predicate: Callable[[MemoryChannel], bool], within_s: float = 60.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture(scope="module")
def whisper() -> LocalWhisper:
    return LocalWhisper(cpu_threads=2)


@pytest.fixture(scope="module")
def jfk(shared_data: Path) -> np.ndarray:
    return decode_audio(shared_data / "jfk.flac")[0]  # mono, 48 kHz int16


@pytest.fixture
async def scheduler(whisper: LocalWhisper) -> AsyncIterator[SttScheduler]:
    s = SttScheduler(whisper, workers=1)
    yield s
    await s.aclose()


class Harness:
    def __init__(self, service: InterviewService, scheduler: SttScheduler,
                 record: Callable[[str, SegmentEvent], Any] | None = None, resume_grace_s: float = 0.2,
                 record_revision: Callable[[str, SegmentEvent], Any] | None = None,
                 tone: Callable[[str], Any] | None = None, bleed_suppression: bool = True) -> None:
        self.service = service
        self.metrics = Metrics()
        self.signer = TokenSigner(SECRET)

        def factory(speaker: Speaker, emit: Callable[[StreamEvent], None], rate: int, channels: int,
                    conversation: Conversation) -> Any:
            return ParticipantStream(speaker, scheduler, emit, in_rate=rate, channels=channels,
                                     config=StreamConfig(partial_interval_s=0.5, bleed_suppression=bleed_suppression),
                                     conversation=conversation)

        async def last_seq(iid: str, pid: str) -> int | None:
            segs = (await service.get_transcript(iid))["segments"]
            seqs = [s["seq"] for s in segs if s["participantId"] == pid]
            return max(seqs) if seqs else None

        self.registry = RoomRegistry(stream_factory=factory, metrics=self.metrics,
                                     record_segment=record or service.record_segment,
                                     record_revision=record_revision or service.record_revision,
                                     last_seq=last_seq, resume_grace_s=resume_grace_s, tone=tone)
        self.registry.start()

    async def join(self, interview_id: str, role: str, name: str, session: str = "s1",
                   pid: str | None = None) -> Participant:
        _, claims = self.signer.issue(interview_id, role, name, participant_id=pid)
        participant, _ = await self.registry.join(claims, session)
        return participant


async def push(participant: Participant, audio: np.ndarray, *, tail_s: float = 1.0) -> None:
    """Feeds audio in 20 ms frames as fast as the loop allows, then `tail_s` of silence."""
    frames = np.concatenate([audio, np.zeros(int(48000 * tail_s), dtype=np.int16)])
    for i, start in enumerate(range(0, len(frames), 960)):
        participant.push_audio(frames[start:start + 960], 48000, 1)
        if i % 25 == 0:
            await asyncio.sleep(0)  # let STT results in between, as live audio would


async def new_interview(service: InterviewService) -> str:
    doc = await service.create_interview(CreateInterview.parse(
        {"candidateId": "cand-1", "jobId": "job-1", "scheduledAt": datetime.now(UTC).isoformat()}))
    return str(doc["interviewId"])


def words(text: str) -> set[str]:
    return {w.strip(".,!?;:").lower() for w in text.split()}


@pytest.fixture
def collect_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level("INFO", logger="adapters.rooms")
    yield caplog


@pytest.mark.slow
async def test_finals_fan_out_to_viewers_only_and_are_persisted(service: InterviewService,
                                                               scheduler: SttScheduler, jfk: np.ndarray) -> None:
    h = Harness(service, scheduler)
    iid = await new_interview(service)
    interviewer = await h.join(iid, "interviewer", "Ivy")
    candidate = await h.join(iid, "candidate", "Cat")
    viewer, sneaky = MemoryChannel(), MemoryChannel()
    h.registry.add_viewer(interviewer, viewer)
    with pytest.raises(PermissionError):
        h.registry.add_viewer(candidate, sneaky)

    await push(candidate, jfk)
    await viewer.wait_for(lambda ch: any(m["speaker"]["role"] == "candidate" for m in ch.of_type("keywords")))
    finals = [m for m in viewer.of_type("segment.final") if m["text"]]
    assert finals and all(m["speaker"] == candidate.speaker.to_dict() for m in finals)
    heard = set().union(*(words(m["text"]) for m in finals))
    assert {"country", "ask", "fellow", "americans"} <= heard
    assert [m["seq"] for m in finals] == sorted(m["seq"] for m in finals)
    assert viewer.of_type("sentiment") and viewer.of_type("level")
    assert [m["speaker"]["role"] for m in viewer.of_type("participant.joined")] == ["interviewer", "candidate"]
    assert sneaky.messages == []

    await h.registry.aclose()
    stored = (await service.get_transcript(iid))["segments"]
    assert [(s["participantId"], s["seq"], s["text"]) for s in stored] == \
        [(candidate.speaker.participant_id, m["seq"], m["text"]) for m in finals]
    assert h.metrics.final_latency.collect()[0].samples  # speech end -> final sent was measured


@pytest.mark.slow
async def test_late_viewer_gets_backlog_and_shutdown_drains_speech_in_progress(
        service: InterviewService, scheduler: SttScheduler, jfk: np.ndarray) -> None:
    h = Harness(service, scheduler)
    iid = await new_interview(service)
    candidate = await h.join(iid, "candidate", "Cat")
    await push(candidate, jfk[: 48000 * 4], tail_s=1.0)  # "And so my fellow Americans" + a pause
    first = MemoryChannel()
    observer = await h.join(iid, "observer", "Obi")
    h.registry.add_viewer(observer, first)
    await first.wait_for(lambda ch: any(m["text"] for m in ch.of_type("segment.final")))

    late = MemoryChannel()
    interviewer = await h.join(iid, "interviewer", "Ivy")
    h.registry.add_viewer(interviewer, late)
    assert {m["speaker"]["role"] for m in late.of_type("participant.joined")} == {"candidate", "observer",
                                                                                   "interviewer"}
    assert [m["seq"] for m in late.of_type("segment.final")] == [m["seq"] for m in first.of_type("segment.final")]

    # Speech still in progress when the service stops becomes a final, is sent and is persisted.
    start = 48000 * 4
    for i in range(start, start + 48000 * 3, 960):
        candidate.push_audio(jfk[i:i + 960], 48000, 1)
    await h.registry.aclose()
    shown = {m["seq"]: m["text"] for m in late.of_type("segment.final") if m["text"]}
    assert len(shown) >= 2
    shown.update({m["seq"]: m["text"] for m in late.of_type("segment.revised")})  # what the page ends up showing
    stored = (await service.get_transcript(iid))["segments"]
    assert [s["text"] for s in stored] == [shown[k] for k in sorted(shown)]
    assert late.of_type("participant.left")


@pytest.mark.slow
async def test_resume_keeps_the_stream_and_a_later_rejoin_continues_numbering(
        service: InterviewService, scheduler: SttScheduler, jfk: np.ndarray) -> None:
    h = Harness(service, scheduler, resume_grace_s=0.3)
    iid = await new_interview(service)
    viewer = MemoryChannel()
    interviewer = await h.join(iid, "interviewer", "Ivy")
    h.registry.add_viewer(interviewer, viewer)
    cand = await h.join(iid, "candidate", "Cat", session="a")
    pid = cand.speaker.participant_id
    await push(cand, jfk[: 48000 * 4])

    # The connection drops; a new session with the same token comes back within the grace period.
    h.registry.detach(cand, "a")
    again, replaced = await h.registry.join(cand.claims, "b")
    assert again is cand and replaced is None and cand.session_id == "b"
    await asyncio.sleep(0.5)  # longer than the grace period: the cancelled removal must not fire
    assert h.registry.get(iid, pid) is cand
    assert len([m for m in viewer.of_type("participant.joined") if m["speaker"]["participantId"] == pid]) == 1

    # Drop for good: after the grace period the stream is drained and the participant leaves.
    h.registry.detach(cand, "b")
    await viewer.wait_for(lambda ch: any(m["speaker"]["participantId"] == pid
                                         for m in ch.of_type("participant.left")), within_s=30)
    assert h.registry.get(iid, pid) is None
    before = [m["seq"] for m in viewer.of_type("segment.final") if m["speaker"]["participantId"] == pid]
    assert before

    # Rejoining later gets a fresh stream whose numbering continues after what is stored.
    # As after a graceful restart: what was sent is stored, and only the store remembers (the writer's queue
    # length is the thing to wait on; it has no event).
    async with asyncio.timeout(30):
        while h.registry.writer.pending:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    h.registry._next_seq.clear()
    back = await h.join(iid, "candidate", "Cat", session="c", pid=pid)
    assert back is not cand and back.seq_base == max(before) + 1
    await push(back, jfk[48000 * 4:])
    await h.registry.aclose()
    after = [m["seq"] for m in viewer.of_type("segment.final") if m["speaker"]["participantId"] == pid]
    assert after[len(before):] and min(after[len(before):]) > max(before)
    stored = [s["seq"] for s in (await service.get_transcript(iid))["segments"] if s["participantId"] == pid]
    texts = [m for m in viewer.of_type("segment.final") if m["speaker"]["participantId"] == pid and m["text"]]
    assert sorted(stored) == sorted(m["seq"] for m in texts)  # nothing lost as a "duplicate"


@pytest.mark.slow
async def test_failed_writes_are_retried_and_reported_never_dropped(
        service: InterviewService, scheduler: SttScheduler, jfk: np.ndarray,
        collect_logs: pytest.LogCaptureFixture) -> None:
    failures = {"left": 2}

    async def flaky_record(iid: str, seg: SegmentEvent) -> bool:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("store unreachable")
        return await service.record_segment(iid, seg)

    h = Harness(service, scheduler, record=flaky_record)
    iid = await new_interview(service)
    viewer = MemoryChannel()
    h.registry.add_viewer(await h.join(iid, "interviewer", "Ivy"), viewer)
    cand = await h.join(iid, "candidate", "Cat")
    await push(cand, jfk[: 48000 * 4])
    await viewer.wait_for(lambda ch: any(m["text"] for m in ch.of_type("segment.final")))
    await h.registry.aclose()
    errors = viewer.of_type("error")
    assert [e["code"] for e in errors] == ["persist_delayed"]
    assert errors[0]["affected"]["seq"] == viewer.of_type("segment.final")[0]["seq"]
    stored = (await service.get_transcript(iid))["segments"]
    assert [s["text"] for s in stored] == [m["text"] for m in viewer.of_type("segment.final") if m["text"]]
    assert sum("retrying" in r.getMessage() for r in collect_logs.records) == 1


@pytest.mark.slow
async def test_segments_of_a_cancelled_interview_are_reported_not_retried(
        service: InterviewService, scheduler: SttScheduler, jfk: np.ndarray,
        collect_logs: pytest.LogCaptureFixture) -> None:
    h = Harness(service, scheduler)
    iid = await new_interview(service)
    viewer = MemoryChannel()
    h.registry.add_viewer(await h.join(iid, "interviewer", "Ivy"), viewer)
    cand = await h.join(iid, "candidate", "Cat")
    await service.cancel_interview(iid, "no show")
    await push(cand, jfk[: 48000 * 4])
    await viewer.wait_for(lambda ch: bool(ch.of_type("error")))
    assert viewer.of_type("error")[0]["code"] == "persist_rejected"
    await h.registry.aclose(persist_timeout_s=5)
    assert (await service.get_transcript(iid))["segments"] == []
    assert h.registry.writer.pending == 0
    # said in the log, without the words (a log line is plain text at rest)
    rejected = [r.getMessage() for r in collect_logs.records if "rejected by the store" in r.getMessage()]
    spoken = {w for w in words(" ".join(m["text"] for m in viewer.of_type("segment.final"))) if len(w) > 3}
    assert rejected and spoken
    assert not spoken & words(" ".join(rejected)), rejected


async def test_slow_viewer_sheds_partials_and_levels_but_gets_finals(service: InterviewService,
                                                                    scheduler: SttScheduler) -> None:
    h = Harness(service, scheduler)
    iid = await new_interview(service)
    interviewer = await h.join(iid, "interviewer", "Ivy")
    cand = await h.join(iid, "candidate", "Cat")
    slow = MemoryChannel()
    h.registry.add_viewer(interviewer, slow)
    slow.bufferedAmount = 10 * 1024 * 1024
    from domain.events import LevelEvent

    room = cand.room
    speaker = cand.speaker
    room.publish(cand, LevelEvent(speaker, -20.0, -10.0, 0, True, 1.0))
    room.publish(cand, SegmentEvent(speaker, 0, 0.0, 1.0, "hello", final=False))
    room.publish(cand, SegmentEvent(speaker, 0, 0.0, 1.0, "hello there", final=True))
    assert [m["type"] for m in slow.messages if m["type"] != "participant.joined"] == ["segment.final"]
    await h.registry.aclose()
    assert [s["text"] for s in (await service.get_transcript(iid))["segments"]] == ["hello there"]


async def test_a_revision_reaches_viewers_the_backlog_and_the_store_behind_its_final(
        service: InterviewService, scheduler: SttScheduler) -> None:
    failures = {"final": 2, "revision": 1}

    async def flaky(kind: str, iid: str, seg: SegmentEvent) -> bool:
        if failures[kind] > 0:
            failures[kind] -= 1
            raise ConnectionError("store unreachable")
        return await (service.record_revision if seg.revision else service.record_segment)(iid, seg)

    h = Harness(service, scheduler, record=lambda i, s: flaky("final", i, s),
                record_revision=lambda i, s: flaky("revision", i, s))
    iid = await new_interview(service)
    interviewer = await h.join(iid, "interviewer", "Ivy")
    h.registry._next_seq[(iid, "cand-r")] = 3  # a rejoin: this stream's seq 0 is the interview's seq 3
    cand = await h.join(iid, "candidate", "Cat", pid="cand-r")
    slow = MemoryChannel()
    h.registry.add_viewer(interviewer, slow)
    slow.bufferedAmount = 10 * 1024 * 1024  # a revision is never shed
    await push(cand, np.zeros(48000 * 2, dtype=np.int16), tail_s=0)  # arrival times: the final's latency is known
    speaker = cand.speaker
    cand._on_event(SegmentEvent(speaker, 0, 0.0, 1.5, "I shipped the app.", final=True))
    cand._on_event(SentimentEvent(speaker, 0, 0.1, 0.1, 0.0, 1.5))
    cand._on_event(SegmentEvent(speaker, 0, 0.0, 1.5, "I shipped the iOS app.", final=True, confidence=0.9,
                                revision=1))
    cand._on_event(SentimentEvent(speaker, 0, 0.4, 0.4, 0.0, 1.5))
    room_events = [m for m in slow.messages if m["type"] in ("segment.final", "segment.revised", "sentiment")]
    assert [(m["type"], m["seq"]) for m in room_events] == [
        ("segment.final", 3), ("sentiment", 3), ("segment.revised", 3), ("sentiment", 3)]
    assert room_events[2]["revision"] == 1 and room_events[2]["text"] == "I shipped the iOS app."

    late = MemoryChannel()
    h.registry.add_viewer(await h.join(iid, "observer", "Obi"), late)
    assert [m for m in late.messages if m["type"] in ("segment.final", "segment.revised", "sentiment")] == room_events

    await slow.wait_for(lambda ch: len(ch.of_type("error")) == 2)  # both first failures said so
    await h.registry.aclose()
    delayed = [e["affected"] for e in slow.of_type("error")]
    assert [e["code"] for e in slow.of_type("error")] == ["persist_delayed"] * 2
    assert delayed[0] == {"seq": 3, "start_s": 0.0, "end_s": 1.5}
    assert delayed[1] == {"seq": 3, "start_s": 0.0, "end_s": 1.5, "revision": 1}
    # stored behind its final (written first, whatever its retries): otherwise the revision would be refused
    [stored] = (await service.get_transcript(iid))["segments"]
    assert (stored["seq"], stored["text"], stored["originalText"], stored["revision"]) == (
        3, "I shipped the iOS app.", "I shipped the app.", 1)
    sample = h.metrics.registry.get_sample_value
    assert sample("segments_final_total") == 1 and sample("segments_revised_total") == 1
    assert sample("final_latency_seconds_count") == 1  # the revision is no new final
    assert sample("segment_revisions_persisted_total", {"result": "created"}) == 1
    assert sample("segment_revisions_persisted_total", {"result": "error"}) == 1
    assert sample("segments_persisted_total", {"result": "created"}) == 1


@pytest.mark.slow
@pytest.mark.parametrize("suppression", [False, True])
async def test_a_microphone_hearing_the_other_participant_adds_no_sentence_of_its_own(
        service: InterviewService, scheduler: SttScheduler, jfk: np.ndarray, suppression: bool) -> None:
    """The candidate speaks; the interviewer's microphone picks it up 20 dB lower, 60 ms later. Their streams
    start at different times (the interviewer joins 0.5 s later): the room compares them on arrival time. The
    guard alone marks the copy; with bleed suppression (the candidate's stream as the reference, on the same
    arrival-time axis) the copy is taken out of the interviewer's audio and nothing of it is even decoded."""
    h = Harness(service, scheduler, bleed_suppression=suppression)
    iid = await new_interview(service)
    interviewer = await h.join(iid, "interviewer", "Ivy")
    candidate = await h.join(iid, "candidate", "Cat")
    viewer = MemoryChannel()
    h.registry.add_viewer(interviewer, viewer)
    voice = np.concatenate([np.zeros(48000, np.int16), jfk, np.zeros(48000, np.int16)])
    bleed = np.zeros_like(voice)
    bleed[2880:] = (voice[:-2880] * 0.1).astype(np.int16)  # -20 dB, 60 ms later
    for i, start in enumerate(range(0, len(voice), 960)):
        candidate.push_audio(voice[start:start + 960], 48000, 1)
        if start >= 24000:  # the interviewer's stream starts 0.5 s into the candidate's
            interviewer.push_audio(bleed[start:start + 960], 48000, 1)
        if i % 25 == 0:
            await asyncio.sleep(0)

    def marked(ch: MemoryChannel) -> list[dict[str, Any]]:
        return [m for m in ch.messages if m["type"] in ("segment.final", "segment.revised") and m["crosstalk"]]

    if suppression:
        await viewer.wait_for(lambda ch: bool(ch.of_type("segment.final")))
        await h.registry.aclose()  # drains the interviewer's stream: a final of its utterance would be out now
    else:
        await viewer.wait_for(lambda ch: bool(marked(ch)) and bool(ch.of_type("segment.final")))
        await h.registry.aclose()
    expected_marked = set() if suppression else {interviewer.speaker.participant_id}
    assert {m["speaker"]["participantId"] for m in marked(viewer)} == expected_marked
    shown = [m for m in viewer.of_type("segment.final") if not m["crosstalk"]]
    assert {m["speaker"]["participantId"] for m in shown} <= {candidate.speaker.participant_id}
    assert "country" in words(" ".join(m["text"] for m in shown))
    stored = (await service.get_transcript(iid))["segments"]
    assert {s["participantId"] for s in stored if not s["crosstalk"]} == {candidate.speaker.participant_id}
    assert {s["participantId"] for s in stored if s["crosstalk"]} == expected_marked


# ---- live guidance: the real embedder and detector, scripted finals (speech-to-text is covered above) ----

GUIDE = [GuideItem("q1", "Tell me about a distributed system you designed.", "system design", 60),
         GuideItem("q2", "How do you review a teammate's code?", "collaboration")]  # fmt: skip


class ScriptedStream:
    """A participant stream whose finals the test says (what `ParticipantStream` emits, minus the audio work)."""

    def __init__(self, speaker: Speaker, emit: Callable[[StreamEvent], None]) -> None:
        self.speaker, self.emit = speaker, emit
        self.lag_s = self.final_wait_s = 0.0
        self.conversation_time: Any = None
        self.seq = 0

    def push(self, pcm: np.ndarray) -> None:
        pass

    def say(self, text: str, start_s: float, end_s: float) -> None:
        self.emit(SegmentEvent(self.speaker, self.seq, start_s, end_s, text, final=True))
        self.seq += 1

    async def aclose(self, drain: bool = True) -> None:
        pass


@pytest.fixture(scope="module")
def guidance_embedder() -> OnnxSentenceEmbedder:
    return OnnxSentenceEmbedder(threads=1)


async def test_alert_reaches_interviewers_and_observers_never_the_candidate(
        guidance_embedder: OnnxSentenceEmbedder) -> None:
    embedder = guidance_embedder
    detector = default_detector(embedder, "us")

    async def guidance_for(interview_id: str) -> Guidance:
        return await asyncio.to_thread(Guidance, embedder, detector, GUIDE)

    streams: dict[str, ScriptedStream] = {}

    def factory(speaker: Speaker, emit: Callable[[StreamEvent], None], rate: int, channels: int,
                conversation: Conversation) -> Any:  # fmt: skip
        streams[speaker.role] = ScriptedStream(speaker, emit)
        return streams[speaker.role]

    registry = RoomRegistry(stream_factory=factory, metrics=Metrics(), guidance_factory=guidance_for)
    trail = MemoryAuditLog()
    registry.on_alert = partial(audit_alert, trail)  # what the server wires
    registry.start()
    signer = TokenSigner(SECRET)

    async def join(role: str, name: str) -> Participant:
        _, claims = signer.issue("iv-guidance", role, name, org_id="org_acme")
        participant, _ = await registry.join(claims, f"s-{role}")
        participant.push_audio(np.zeros(48000 * 10, dtype=np.int16), 48000, 1)  # 10 s of stream time
        return participant

    interviewer, candidate, observer = await join("interviewer", "Ivy"), await join("candidate", "Cat"), \
        await join("observer", "Olu")  # fmt: skip
    seen_by_interviewer, seen_by_observer, sneaky = MemoryChannel(), MemoryChannel(), MemoryChannel()
    registry.add_viewer(interviewer, seen_by_interviewer)
    registry.add_viewer(observer, seen_by_observer)
    with pytest.raises(PermissionError):
        registry.add_viewer(candidate, sneaky)

    streams["interviewer"].say("Walk me through a distributed system you've built.", 0.5, 3.0)
    streams["candidate"].say("I built a ledger on Kafka with three services.", 3.5, 8.0)
    streams["interviewer"].say("Can you work weekends?", 8.2, 9.0)
    streams["interviewer"].say("And how old are you?", 9.1, 9.8)
    await seen_by_interviewer.wait_for(lambda ch: bool(ch.of_type("alert.protected_topic")))
    await seen_by_interviewer.wait_for(lambda ch: len(ch.of_type("talk.balance")) >= 4)

    for channel in (seen_by_interviewer, seen_by_observer):
        alerts = channel.of_type("alert.protected_topic")
        assert [(a["seq"], a["topic"], a["participantId"]) for a in alerts] == [
            (2, "age", interviewer.speaker.participant_id)]
        assert alerts[0]["rephrase"] and 0 < alerts[0]["score"] <= 1
        coverage = channel.of_type("guide.coverage")[-1]
        assert coverage["left"] == ["q2"] and coverage["items"][0]["coveredBy"]["seq"] == 0
        # q1's time: from its question to "Can you work weekends?", against its budget (room time: not exact)
        assert coverage["items"][0]["budgetS"] == 60 and 0 < coverage["items"][0]["spentS"] < 60
        design = next(s for s in coverage["sections"] if s["category"] == "system design")
        assert design["budgetS"] == 60 and design["spentS"] == coverage["items"][0]["spentS"] and not design["over"]
        pair = [p for p in channel.of_type("qa.pair") if p["question"]["seq"] == 0][-1]
        assert pair["guideItem"] == "q1" and [a["seq"] for a in pair["answer"]] == [0]
        shares = {r["role"]: r["share"] for r in channel.of_type("talk.balance")[-1]["participants"]}
        assert shares["candidate"] > shares["interviewer"] > 0
    assert sneaky.messages == []
    # audited in the interview's organisation, naming who asked and the topic, never the words
    assert [(e.org_id, e.action, e.resource_id, e.actor_id, e.detail and e.detail["topic"], e.detail and e.detail["seq"])
            for e in trail.entries] == [("org_acme", "guidance.protected_topic", "iv-guidance",
                                          interviewer.speaker.participant_id, "age", 2)]
    assert "old are you" not in repr(trail.entries)

    late = MemoryChannel()  # a viewer joining later gets the alert and the latest guidance in its backlog
    registry.add_viewer(observer, late)
    assert [a["seq"] for a in late.of_type("alert.protected_topic")] == [2]
    assert late.of_type("guide.coverage") and late.of_type("talk.balance")
    await registry.aclose()


async def test_coverage_is_sent_on_every_final_and_stored_when_more_than_its_times_changed_and_at_the_end(
        service: InterviewService, store: MongoStore, guidance_embedder: OnnxSentenceEmbedder) -> None:
    """With budgets the coverage goes to viewers after every final while a guide question is open; the store gets
    it when a question is covered (or, not here, 30 s of room time after the last stored) and the last one when the
    room's guidance ends, so the stored coverage has the final times."""
    embedder = guidance_embedder
    detector = default_detector(embedder, "us")

    async def guidance_for(interview_id: str) -> Guidance:
        return await asyncio.to_thread(Guidance, embedder, detector, GUIDE)

    recorded: list[GuidanceEvent] = []

    async def record(interview_id: str, event: GuidanceEvent) -> None:  # the service's, counted
        recorded.append(event)
        await service.record_guidance(interview_id, event)

    streams: dict[str, ScriptedStream] = {}

    def factory(speaker: Speaker, emit: Callable[[StreamEvent], None], rate: int, channels: int,
                conversation: Conversation) -> Any:  # fmt: skip
        streams[speaker.role] = ScriptedStream(speaker, emit)
        return streams[speaker.role]

    registry = RoomRegistry(stream_factory=factory, metrics=Metrics(), guidance_factory=guidance_for,
                            record_guidance=record)  # fmt: skip
    registry.start()
    iid = await new_interview(service)
    signer = TokenSigner(SECRET)
    joined = {}
    for role, name in (("interviewer", "Ivy"), ("candidate", "Cat")):
        _, claims = signer.issue(iid, role, name)
        joined[role], _ = await registry.join(claims, f"s-{role}")
        joined[role].push_audio(np.zeros(960, dtype=np.int16), 48000, 1)  # opens its stream: 20 ms of audio
    viewer = MemoryChannel()
    registry.add_viewer(joined["interviewer"], viewer)

    # finals past the audio pushed: each one's room time ends when it is published and lasts its stream duration
    streams["interviewer"].say("Walk me through a distributed system you've built.", 0.0, 3.0)
    for k in range(5):
        streams["candidate"].say(f"Then part {k} of the ledger went live.", 4.0 + 3 * k, 6.0 + 3 * k)
    streams["interviewer"].say("How do you review a teammate's code?", 20.0, 22.0)
    for k in range(3):
        streams["candidate"].say(f"I read the tests first, then change {k}.", 23.0 + 3 * k, 25.0 + 3 * k)
    await viewer.wait_for(lambda ch: len(ch.of_type("talk.balance")) == 10)
    await registry.aclose()

    sent = viewer.of_type("guide.coverage")
    stored_coverages = [e.to_dict() for e in recorded if isinstance(e, GuideCoverageEvent)]
    assert len(sent) == 10 and len(stored_coverages) < len(sent) / 2
    # each question that covered a guide item is stored as it came; the last one sent is stored after it
    assert [c["left"] for c in stored_coverages[:2]] == [["q2"], []]
    assert stored_coverages[-1] == sent[-1]
    collaboration = next(s for s in sent[-1]["sections"] if s["category"] == "collaboration")
    assert collaboration["seconds"] == 6.0  # the three answers to q2
    stored = {g["kind"]: g["guidance"] for g in await store.list_guidance(iid)}
    assert stored["coverage"] == sent[-1]


async def test_an_organisation_that_does_not_show_the_tone_of_words_gets_no_sentiment(
        service: InterviewService, scheduler: SttScheduler) -> None:
    asked: list[str] = []

    async def tone(org_id: str) -> bool:  # the organisation's OrgPolicy.tone (eu: off unless turned on)
        asked.append(org_id)
        return False

    h = Harness(service, scheduler, tone=tone)
    iid = await new_interview(service)
    interviewer = await h.join(iid, "interviewer", "Ivy")
    cand = await h.join(iid, "candidate", "Cat", pid="cand-t")
    viewer = MemoryChannel()
    h.registry.add_viewer(interviewer, viewer)
    await push(cand, np.zeros(48000, dtype=np.int16), tail_s=0)
    cand._on_event(SegmentEvent(cand.speaker, 0, 0.0, 1.5, "I shipped the app.", final=True))
    cand._on_event(SentimentEvent(cand.speaker, 0, 0.4, 0.4, 0.0, 1.5))
    late = MemoryChannel()
    h.registry.add_viewer(await h.join(iid, "observer", "Obi"), late)
    for channel in (viewer, late):  # neither live nor in the backlog; the transcript as always
        assert channel.of_type("segment.final") and not channel.of_type("sentiment")
    assert asked == ["default"]  # asked once, when the room opened, for the join token's organisation
    await h.registry.aclose()


async def test_what_the_registry_remembers_of_people_who_left_is_bounded() -> None:
    """A long-running server sees participant after participant leave: the numbering it keeps for rejoins holds the
    most recent `left_kept` of them, not everyone since it started (the store knows the others')."""

    def factory(*_: Any) -> Any:
        raise AssertionError("nobody sends audio here")

    registry = RoomRegistry(stream_factory=factory, metrics=Metrics(), left_kept=3)
    registry.start()
    signer = TokenSigner(SECRET)
    left = []
    for n in range(5):
        for role, name in (("interviewer", "Ivy"), ("candidate", "Cat")):
            _, claims = signer.issue(f"iv-{n}", role, name)
            participant, _ = await registry.join(claims, f"s-{n}-{role}")
            assert await registry.leave(participant, f"s-{n}-{role}")
            left.append((f"iv-{n}", participant.speaker.participant_id))
    assert not registry.rooms
    assert list(registry._next_seq) == left[-3:]
    await registry.aclose()


# ------------------------------------------------------------------------- the shared segment journal (JetStream)


def _final(seq: int, text: str, revision: int = 0, pid: str = "cand-j") -> SegmentEvent:
    return SegmentEvent(Speaker("candidate", "Cat", pid), seq, 1.0 * seq, 1.0 * seq + 0.5, text, final=True,
                        revision=revision)


@pytest.fixture
async def journal_bus(nats_server: NatsServer) -> AsyncIterator[JetStreamBus]:
    bus = await JetStreamBus.open(nats_server.url)
    async with asyncio.timeout(15):
        await bus.wait_connected()
    try:
        yield bus
    finally:
        await bus.close()


async def test_the_shared_journal_keeps_each_interviews_entries_sealed_until_done(journal_bus: JetStreamBus) -> None:
    from adapters.crypto import MasterKeys
    from adapters.shared_journal import STREAM, SharedJournal

    keys = MasterKeys.generate()
    journal = SharedJournal(journal_bus, keys.journal_key())
    a, b = "iv-" + uuid.uuid4().hex[:8], "iv-" + uuid.uuid4().hex[:8]
    s0 = await journal.append(a, _final(0, "my lighthouse in Reykjavik"))
    await journal.append(b, _final(0, "another interview"))
    s1 = await journal.append(a, _final(1, "second answer"))
    s2 = await journal.append(a, _final(1, "second answer, revised", revision=1))
    assert await journal.append(a, _final(1, "second answer")) == s1  # a retried publish: JetStream drops it
    assert [(n, s.seq, s.revision, s.text) for n, s in await journal.entries(a)] == [
        (s0, 0, 0, "my lighthouse in Reykjavik"), (s1, 1, 0, "second answer"), (s2, 1, 1, "second answer, revised")]
    assert {a, b} <= set(await journal.interviews())
    raw = await journal_bus.jetstream().get_msg(STREAM, s0)
    assert raw.data is not None and b"Reykjavik" not in raw.data and b"Cat" not in raw.data
    # a node with another master key, or with none, cannot open them, but one with the right key can: left in place
    for other in (SharedJournal(journal_bus, MasterKeys.generate().journal_key()), SharedJournal(journal_bus, None)):
        assert await other.entries(a) == []
        await other.aclose()
    assert [n for n, _ in await journal.entries(a)] == [s0, s1, s2]

    await journal.done(s0)
    await journal.done(s0)  # deleted already (another node replayed it): nothing to do
    assert [n for n, _ in await journal.entries(a)] == [s1, s2]
    await journal.forget(a)  # erasure
    assert await journal.entries(a) == [] and a not in await journal.interviews()
    assert [s.text for _, s in await journal.entries(b)] == ["another interview"]


class _Node:
    """One node's registry on the shared store and NATS, without audio: finals are handed to the room as a stream
    would emit them."""

    def __init__(self, service: InterviewService, bus: JetStreamBus, tmp: Path, *, store_delay_s: float = 0.0) -> None:
        from adapters.rooms import SegmentJournal
        from adapters.shared_journal import SharedJournal

        def factory(*_: Any) -> Any:
            raise AssertionError("no audio in these tests")

        self.metrics = Metrics()
        self.file = SegmentJournal(tmp / "segments.journal")
        self.registry = RoomRegistry(stream_factory=factory, metrics=self.metrics,
                                     record_segment=service.record_segment, record_revision=service.record_revision,
                                     last_seq=service.last_segment_seq, journal=self.file,
                                     stored_finals=self._stored_finals,
                                     shared_journal=SharedJournal(bus, None, metrics=self.metrics),
                                     store_delay_s=store_delay_s)
        self.registry.start()
        self.signer = TokenSigner(SECRET)
        self.service = service

    async def _stored_finals(self, iid: str) -> list[str]:  # as server.py gives the backlog the store's finals
        return [to_json(s) for s in await self.service.store.list_segments(iid)]

    async def join(self, iid: str, role: str, name: str, pid: str) -> Participant:
        _, claims = self.signer.issue(iid, role, name, participant_id=pid)
        return (await self.registry.join(claims, f"s-{pid}"))[0]


async def _stored(service: InterviewService, iid: str) -> list[tuple[int, str]]:
    return [(s["seq"], s.get("originalText", s["text"])) for s in (await service.get_transcript(iid))["segments"]]


async def _stored_is(service: InterviewService, iid: str, expected: list[tuple[int, str]]) -> bool:
    return await _stored(service, iid) == expected


async def _has_entries(shared: SharedJournal, iid: str) -> bool:
    return bool(await shared.entries(iid))


async def _node_with_a_journaled_final(service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path, iid: str,
                                       text: str) -> tuple[_Node, Any, SharedJournal]:
    """Node A (its store writes held back) with the candidate joined and final 0 in the shared journal."""
    node_a = _Node(service, journal_bus, tmp_path / "a", store_delay_s=3600)
    cand = await node_a.join(iid, "candidate", "Cat", "cand-j")
    cand._on_event(_final(0, text))
    shared = node_a.registry.writer.shared
    assert shared is not None
    await until(lambda: _has_entries(shared, iid), within_s=5, every_s=0.01)  # the write is under way on A's loop
    return node_a, cand, shared


async def _disconnected(bus: JetStreamBus) -> bool:
    return not bus.connected


async def test_a_node_taking_a_room_over_stores_the_journaled_finals_first_and_numbers_after_them(
        service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path) -> None:
    iid = await new_interview(service)
    # node A sends finals but its store writes are held back: it "dies" with them journaled only
    node_a = _Node(service, journal_bus, tmp_path / "a", store_delay_s=3600)
    viewer = MemoryChannel()
    node_a.registry.add_viewer(await node_a.join(iid, "interviewer", "Ivy", "ivy"), viewer)
    cand = await node_a.join(iid, "candidate", "Cat", "cand-j")
    cand._on_event(_final(0, "I built lighthouses."))
    cand._on_event(SentimentEvent(cand.speaker, 0, 0.1, 0.1, 0.0, 0.5))
    # the final waits for the journal's acknowledgement, and what follows it waits behind it
    assert viewer.of_type("segment.final") == [] and viewer.of_type("sentiment") == []
    await viewer.wait_for(lambda ch: len(ch.of_type("sentiment")) == 1, within_s=5)
    assert [m["type"] for m in viewer.messages][-2:] == ["segment.final", "sentiment"]
    cand._on_event(_final(1, "In Iceland, mostly."))
    await viewer.wait_for(lambda ch: len(ch.of_type("segment.final")) == 2, within_s=5)
    assert await _stored(service, iid) == []
    assert node_a.file.pending() == []  # in the stream, not in A's DATA_DIR
    assert node_a.registry.writer._task is not None
    node_a.registry.writer._task.cancel()  # A is gone: nothing more of it runs (kill -9 in tests/test_placement.py)
    node_a.file.close()

    node_b = _Node(service, journal_bus, tmp_path / "b")
    late = MemoryChannel()
    node_b.registry.add_viewer(await node_b.join(iid, "interviewer", "Ivy", "ivy"), late)
    assert await _stored(service, iid) == [(0, "I built lighthouses."), (1, "In Iceland, mostly.")]
    assert [(m["seq"], m["text"]) for m in late.of_type("segment.final")] == [
        (0, "I built lighthouses."), (1, "In Iceland, mostly.")]  # the backlog holds them
    cand_b = await node_b.join(iid, "candidate", "Cat", "cand-j")
    assert cand_b.seq_base == 2
    cand_b._on_event(_final(0, "Then I came back."))  # the new stream's first final: seq 2
    await node_b.registry.aclose()
    assert await _stored(service, iid) == [(0, "I built lighthouses."), (1, "In Iceland, mostly."),
                                           (2, "Then I came back.")]
    assert node_b.registry.writer.shared is not None
    assert await node_b.registry.writer.shared.entries(iid) == []  # deleted once stored
    assert node_b.metrics.registry.get_sample_value("segments_persisted_total", {"result": "created"}) == 3


async def test_a_room_open_nowhere_is_swept_and_nats_down_falls_back_to_the_file_journal(
        service: InterviewService, journal_bus: JetStreamBus, nats_server: NatsServer, tmp_path: Path) -> None:
    iid = await new_interview(service)
    node_a, cand, shared = await _node_with_a_journaled_final(service, journal_bus, tmp_path, iid, "Nobody comes back to this room.")
    assert node_a.registry.writer._task is not None
    node_a.registry.writer._task.cancel()
    node_a.file.close()

    node_b = _Node(service, journal_bus, tmp_path / "b")
    held: list[str] = []

    async def held_elsewhere(interview_id: str) -> bool:
        held.append(interview_id)
        return False  # A's placement aged out

    assert await node_b.registry.sweep_journal(held_elsewhere) >= 1 and iid in held
    await until(lambda: _stored_is(service, iid, [(0, "Nobody comes back to this room.")]), within_s=10)

    # NATS down: the room journals to DATA_DIR at once and viewers get the final without waiting; its numbering
    # leaves room below for what a dead node may have journaled in the stream it cannot read
    from adapters.rooms import UNREAD_JOURNAL_SEQ_GAP as GAP

    nats_server.stop()
    await until(lambda: _disconnected(journal_bus), within_s=10)
    node_c = _Node(service, journal_bus, tmp_path / "c", store_delay_s=3600)
    viewer = MemoryChannel()
    node_c.registry.add_viewer(await node_c.join(iid, "interviewer", "Ivy", "ivy"), viewer)
    cand_c = await node_c.join(iid, "candidate", "Cat", "cand-j")
    assert cand_c.seq_base == 1 + GAP
    assert [m["seq"] for m in viewer.of_type("segment.final")] == [0]  # the backlog
    cand_c._on_event(_final(0, "Said during the outage."))
    assert [m["seq"] for m in viewer.of_type("segment.final")] == [0, 1 + GAP]  # sent before _on_event returned
    assert [(i, s.seq) for i, s in node_c.file.pending()] == [(iid, 1 + GAP)]
    assert node_c.registry.writer._task is not None
    node_c.registry.writer._task.cancel()
    node_c.file.close()
    await node_b.registry.aclose()


async def test_a_final_jetstream_refuses_goes_to_the_file_and_the_next_ones_skip_the_stream_for_a_while(
        service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path) -> None:
    """NATS connected but the journal's stream refusing writes (here: a full stream that discards new messages in its
    place): the final is journaled in the file and sent; the next finals go to the file at once (the breaker)."""
    from nats.js.api import DiscardPolicy, StreamConfig

    from adapters.shared_journal import STREAM

    iid = await new_interview(service)
    node = _Node(service, journal_bus, tmp_path / "a", store_delay_s=3600)
    viewer = MemoryChannel()
    node.registry.add_viewer(await node.join(iid, "interviewer", "Ivy", "ivy"), viewer)
    cand = await node.join(iid, "candidate", "Cat", "cand-j")
    cand._on_event(_final(0, "journaled in the stream"))
    await viewer.wait_for(lambda ch: len(ch.of_type("segment.final")) == 1, within_s=5)
    js = journal_bus.jetstream()
    await js.delete_stream(STREAM)
    await js.add_stream(StreamConfig(name="JOURNAL_FULL", subjects=["journal.>"], max_msgs=1,
                                     discard=DiscardPolicy.NEW))
    await js.publish("journal.full", b"x")
    shared = node.registry.writer.shared
    assert shared is not None and shared.available
    cand._on_event(_final(1, "refused by the stream"))
    await viewer.wait_for(lambda ch: len(ch.of_type("segment.final")) == 2, within_s=5)
    assert not shared.available  # for RETRY_AFTER_S
    cand._on_event(_final(2, "straight to the file"))
    assert [m["seq"] for m in viewer.of_type("segment.final")] == [0, 1, 2]  # the last one without waiting
    assert [s.seq for _, s in node.file.pending()] == [1, 2]
    assert node.registry.writer._task is not None
    node.registry.writer._task.cancel()
    node.file.close()
    await js.delete_stream("JOURNAL_FULL")


async def test_a_restart_stores_the_file_journal_in_seq_order_revisions_after_their_finals(
        service: InterviewService, tmp_path: Path) -> None:
    """A final whose stream write timed out reaches the file after the segments that followed it: at restart the
    journal is stored in (speaker, seq, revision) order, so the revision finds its final and seq order holds."""
    from adapters.rooms import SegmentJournal

    iid = await new_interview(service)
    file = SegmentJournal(tmp_path / "segments.journal")
    file.append(iid, _final(1, "second answer"))
    file.append(iid, _final(0, "first answer, revised", revision=1))
    file.append(iid, _final(0, "first answer"))
    file.close()

    def factory(*_: Any) -> Any:
        raise AssertionError("no audio in this test")

    registry = RoomRegistry(stream_factory=factory, metrics=Metrics(), record_segment=service.record_segment,
                            record_revision=service.record_revision, last_seq=service.last_segment_seq,
                            journal=SegmentJournal(file.path))
    registry.start()
    await registry.aclose()
    assert await _stored(service, iid) == [(0, "first answer"), (1, "second answer")]
    transcript = await service.get_transcript(iid)
    assert [s["text"] for s in transcript["segments"]] == ["first answer, revised", "second answer"]


async def _connected(bus: JetStreamBus) -> bool:
    return bus.connected


async def _nowhere(_: str) -> bool:
    return False


async def test_a_room_opened_while_the_journal_is_unreadable_numbers_above_the_finals_a_dead_node_journaled(
        service: InterviewService, journal_bus: JetStreamBus, nats_server: NatsServer, tmp_path: Path) -> None:
    """The takeover cannot read the shared journal (NATS down): the room numbers its finals far above what the store
    knows, so the sweep that reads the dead node's finals later stores them with their own seq, not as duplicates of
    the new node's finals."""
    from adapters.rooms import UNREAD_JOURNAL_SEQ_GAP as GAP

    iid = await new_interview(service)
    node_a, cand, shared = await _node_with_a_journaled_final(service, journal_bus, tmp_path, iid, "Sent just before the node died.")
    assert node_a.registry.writer._task is not None
    node_a.registry.writer._task.cancel()
    node_a.file.close()

    nats_server.stop()
    await until(lambda: _disconnected(journal_bus), within_s=10)
    node_b = _Node(service, journal_bus, tmp_path / "b")
    cand_b = await node_b.join(iid, "candidate", "Cat", "cand-j")
    assert cand_b.seq_base == GAP
    cand_b._on_event(_final(0, "Said on the new node."))
    await until(lambda: _stored_is(service, iid, [(GAP, "Said on the new node.")]), within_s=10)
    ivy = await node_b.join(iid, "interviewer", "Ivy", "ivy")  # into the room open unread: numbered above too
    assert ivy.seq_base == GAP

    nats_server.start()
    await until(lambda: _connected(journal_bus), within_s=15)
    # the room is open here, but its journal was not read when it opened: the sweep stores the dead node's finals
    # (the transcript lists segments in the order they were stored: the dead node's final comes after)
    assert await node_b.registry.sweep_journal(_nowhere) == 1
    await until(lambda: _stored_is(service, iid, [(GAP, "Said on the new node."),
                                                  (0, "Sent just before the node died.")]), within_s=10)
    cand_b._on_event(_final(1, "And on."))
    await node_b.registry.aclose()
    assert await _stored(service, iid) == [(GAP, "Said on the new node."), (0, "Sent just before the node died."),
                                           (GAP + 1, "And on.")]
    assert await shared.entries(iid) == []


async def test_shutdown_lets_a_sweeps_replay_under_way_queue_and_store_its_entries(
        service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path) -> None:
    """A shutdown while the sweep is replaying an interview's entries: the replay is awaited, so what it read is
    stored before the writer drains, not cut after the read (its entries left for another node, its task destroyed)."""
    iid = await new_interview(service)
    node_a = _Node(service, journal_bus, tmp_path / "a", store_delay_s=3600)
    cand = await node_a.join(iid, "candidate", "Cat", "cand-j")
    for seq in range(3):
        cand._on_event(_final(seq, f"answer {seq}"))
    shared = node_a.registry.writer.shared
    assert shared is not None
    await until(lambda: _len_entries_is(shared, iid, 3), within_s=5, every_s=0.01)
    assert node_a.registry.writer._task is not None
    node_a.registry.writer._task.cancel()
    node_a.file.close()

    node_b = _Node(service, journal_bus, tmp_path / "b")
    asked = asyncio.Event()

    async def held_elsewhere(interview_id: str) -> bool:
        if interview_id == iid:
            asked.set()  # the sweep replays it next, before this answer reaches it
        return interview_id != iid

    sweep = asyncio.create_task(node_b.registry.sweep_journal(held_elsewhere))
    await asked.wait()
    await node_b.registry.aclose()  # the server cancels its sweep loop first: the replay it started runs on
    sweep.cancel()
    await asyncio.gather(sweep, return_exceptions=True)
    assert await _stored(service, iid) == [(0, "answer 0"), (1, "answer 1"), (2, "answer 2")]


async def _len_entries_is(shared: SharedJournal, iid: str, n: int) -> bool:
    return len(await shared.entries(iid)) == n


async def test_unreadable_journal_entries_are_logged_once_counted_and_corrupt_ones_deleted(
        service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt entry can never be stored: the first read logs, counts and deletes it. One sealed with another master
    key may be stored by a node that has that key: it is logged and counted once, and kept. The readable entry beside
    them is stored."""
    import nats.js.errors

    from adapters.crypto import MasterKeys
    from adapters.shared_journal import STREAM

    caplog.set_level("WARNING", logger="adapters.shared_journal")
    iid = await new_interview(service)
    js = journal_bus.jetstream()
    node = _Node(service, journal_bus, tmp_path / "a")
    shared = node.registry.writer.shared
    assert shared is not None
    key = MasterKeys.generate().journal_key()
    sealed = await SharedJournal(journal_bus, key).append(iid, _final(0, "another key"))
    corrupt = await js.publish(SharedJournal.subject(iid), b"{not json")
    await shared.append(iid, _final(1, "readable"))

    assert await node.registry.sweep_journal(_nowhere) == 1
    assert await node.registry.sweep_journal(_nowhere) == 0  # the readable one is queued (or stored) already
    await until(lambda: _stored_is(service, iid, [(1, "readable")]), within_s=10)
    assert await node.registry.sweep_journal(_nowhere) == 0
    await node.registry.aclose()  # the deletes under way end
    logged = [r.getMessage() for r in caplog.records if SharedJournal.subject(iid) in r.getMessage()]
    assert len(logged) == 2
    assert sum("corrupt" in m for m in logged) == 1 and sum("journal key" in m for m in logged) == 1
    for reason in ("corrupt", "key"):
        assert node.metrics.registry.get_sample_value("segment_journal_unreadable_total", {"reason": reason}) == 1
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.get_msg(STREAM, corrupt.seq)
    # the one sealed with another key is all that is left: for a node with that key
    assert [n for n, _ in await SharedJournal(journal_bus, key).entries(iid)] == [sealed]


async def test_a_takeover_reads_the_journal_while_appends_skip_the_stream_after_a_refused_one(
        service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path) -> None:
    """A refused append sends this node's finals to the file for a while (NATS is connected): a room opening here
    meanwhile still reads the dead node's entries and numbers after them, not 10 000 above."""
    import dataclasses

    from adapters.shared_journal import STREAM

    taken, other = await new_interview(service), await new_interview(service)
    node_a = _Node(service, journal_bus, tmp_path / "a", store_delay_s=3600)
    (await node_a.join(taken, "candidate", "Cat", "cand-j"))._on_event(_final(0, "Sent just before the node died."))
    shared_a = node_a.registry.writer.shared
    assert shared_a is not None
    await until(lambda: _has_entries(shared_a, taken), within_s=5, every_s=0.01)
    assert node_a.registry.writer._task is not None
    node_a.registry.writer._task.cancel()
    node_a.file.close()

    node_b = _Node(service, journal_bus, tmp_path / "b")
    viewer = MemoryChannel()
    node_b.registry.add_viewer(await node_b.join(other, "interviewer", "Ivy", "ivy"), viewer)
    cand = await node_b.join(other, "candidate", "Cat", "cand-j")
    js = journal_bus.jetstream()  # the stream refuses what is larger than 4 KiB: the next final is
    config = (await js.stream_info(STREAM)).config
    await js.update_stream(dataclasses.replace(config, max_msg_size=4096))
    cand._on_event(_final(0, "long " * 1000))
    await viewer.wait_for(lambda ch: len(ch.of_type("segment.final")) == 1, within_s=5)
    shared_b = node_b.registry.writer.shared
    assert shared_b is not None and not shared_b.available and journal_bus.connected

    cand_b = await node_b.join(taken, "candidate", "Cat", "cand-j")
    assert cand_b.seq_base == 1
    await until(lambda: _stored_is(service, taken, [(0, "Sent just before the node died.")]), within_s=10)
    await node_b.registry.aclose()


async def test_a_room_reopened_while_the_journal_is_still_unread_is_not_numbered_another_gap_higher(
        service: InterviewService, journal_bus: JetStreamBus, nats_server: NatsServer, tmp_path: Path) -> None:
    """NATS down: the room opens 10 000 above what the store knows; it closes and opens again before NATS is back.
    Its finals go on from where this node numbered them (not yet stored), not another 10 000 higher."""
    from adapters.rooms import UNREAD_JOURNAL_SEQ_GAP as GAP

    iid = await new_interview(service)
    nats_server.stop()
    await until(lambda: _disconnected(journal_bus), within_s=10)
    node = _Node(service, journal_bus, tmp_path / "a", store_delay_s=3600)
    cand = await node.join(iid, "candidate", "Cat", "cand-j")
    assert cand.seq_base == GAP
    cand._on_event(_final(0, "Said during the outage."))
    assert await node.registry.leave(cand, "s-cand-j")
    assert iid not in node.registry.rooms

    again = await node.join(iid, "candidate", "Cat", "cand-j")
    assert again.seq_base == GAP + 1
    assert node.registry.writer._task is not None
    node.registry.writer._task.cancel()
    node.file.close()


async def test_a_room_back_from_another_node_numbers_after_what_that_node_stored(
        service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path) -> None:
    """The room was here, moved to another node that numbered more finals, and came back: this node's memory of the
    numbering is stale, the store's last seq wins (reusing a seq would drop the new final as a duplicate)."""
    iid = await new_interview(service)
    node_a, node_b = _Node(service, journal_bus, tmp_path / "a"), _Node(service, journal_bus, tmp_path / "b")
    cand = await node_a.join(iid, "candidate", "Cat", "cand-j")
    cand._on_event(_final(0, "Said on A."))
    await until(lambda: _stored_is(service, iid, [(0, "Said on A.")]), within_s=10)
    assert await node_a.registry.leave(cand, "s-cand-j")

    cand = await node_b.join(iid, "candidate", "Cat", "cand-j")
    assert cand.seq_base == 1
    cand._on_event(_final(0, "Said on B."))
    await until(lambda: _stored_is(service, iid, [(0, "Said on A."), (1, "Said on B.")]), within_s=10)
    assert await node_b.registry.leave(cand, "s-cand-j")

    cand = await node_a.join(iid, "candidate", "Cat", "cand-j")
    assert cand.seq_base == 2
    cand._on_event(_final(0, "Back on A."))
    await node_a.registry.aclose()
    await node_b.registry.aclose()
    assert await _stored(service, iid) == [(0, "Said on A."), (1, "Said on B."), (2, "Back on A.")]


async def test_shutdown_sends_a_final_held_behind_its_journal_write_before_the_viewers_leave(
        service: InterviewService, journal_bus: JetStreamBus, tmp_path: Path) -> None:
    """A final spoken just before shutdown waits for its shared journal write; shutdown waits for that write, so the
    interviewer still connected receives the final before everyone leaves the room."""
    iid = await new_interview(service)
    node = _Node(service, journal_bus, tmp_path / "a")
    viewer = MemoryChannel()
    node.registry.add_viewer(await node.join(iid, "interviewer", "Ivy", "ivy"), viewer)
    cand = await node.join(iid, "candidate", "Cat", "cand-j")
    cand._on_event(_final(0, "My last words."))
    assert viewer.of_type("segment.final") == []  # held: its journal write is under way
    await node.registry.aclose()
    assert [m["text"] for m in viewer.of_type("segment.final")] == ["My last words."]
    assert node.metrics.registry.get_sample_value("analysis_messages_dropped_total", {"reason": "shutdown"}) is None
    assert await _stored(service, iid) == [(0, "My last words.")]


async def test_a_final_still_held_when_the_shutdown_deadline_passes_is_logged_and_counted_not_sent(
        service: InterviewService, journal_bus: JetStreamBus, nats_server: NatsServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """NATS takes the final's journal write and does not answer (the server is paused): shutdown's deadline passes
    first, so the final is not sent live; that is logged and counted, and the final is still journaled (the file took
    it when the stream's 0.5 s ran out)."""
    import signal

    caplog.set_level("WARNING", logger="adapters.rooms")
    iid = await new_interview(service)
    node = _Node(service, journal_bus, tmp_path / "a")
    viewer = MemoryChannel()
    node.registry.add_viewer(await node.join(iid, "interviewer", "Ivy", "ivy"), viewer)
    cand = await node.join(iid, "candidate", "Cat", "cand-j")
    assert nats_server.proc is not None
    nats_server.proc.send_signal(signal.SIGSTOP)
    try:
        cand._on_event(_final(0, "Not acknowledged in time."))
        await node.registry.aclose(persist_timeout_s=0.1)
    finally:
        nats_server.proc.send_signal(signal.SIGCONT)
    assert viewer.of_type("segment.final") == []
    assert node.metrics.registry.get_sample_value("analysis_messages_dropped_total", {"reason": "shutdown"}) == 1
    assert any("not sent to its viewers at shutdown" in r.getMessage() for r in caplog.records)
    assert [(i, s.seq) for i, s in node.file.pending()] == [(iid, 0)]
