"""Live guidance in a room: the real embedder and detector behind `RoomRegistry`, scripted finals (the speech-to-text
part is covered by tests/test_rooms.py), in-memory viewer channels as in tests/test_rooms.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from adapters.embeddings_onnx import OnnxSentenceEmbedder
from adapters.metrics import Metrics
from adapters.rooms import Participant, RoomRegistry
from adapters.tokens import TokenSigner
from domain.events import SegmentEvent, Speaker, StreamEvent
from pipeline.guidance import Guidance, GuideItem, default_detector
from pipeline.stream import Conversation
from tests.test_rooms import MemoryChannel

SECRET = b"guidance-test-secret-0123456789abcdef"
GUIDE = [GuideItem("q1", "Tell me about a distributed system you designed.", "system design"),
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
def embedder() -> OnnxSentenceEmbedder:
    return OnnxSentenceEmbedder(threads=1)


async def test_alert_reaches_interviewers_and_observers_never_the_candidate(embedder: OnnxSentenceEmbedder) -> None:
    detector = default_detector(embedder, "us")

    async def guidance_for(interview_id: str) -> Guidance:
        return await asyncio.to_thread(Guidance, embedder, detector, GUIDE)

    streams: dict[str, ScriptedStream] = {}

    def factory(speaker: Speaker, emit: Callable[[StreamEvent], None], rate: int, channels: int,
                conversation: Conversation) -> Any:  # fmt: skip
        streams[speaker.role] = ScriptedStream(speaker, emit)
        return streams[speaker.role]

    registry = RoomRegistry(stream_factory=factory, metrics=Metrics(), guidance_factory=guidance_for)
    registry.start()
    signer = TokenSigner(SECRET)

    async def join(role: str, name: str) -> Participant:
        _, claims = signer.issue("iv-1", role, name)
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
        pair = [p for p in channel.of_type("qa.pair") if p["question"]["seq"] == 0][-1]
        assert pair["guideItem"] == "q1" and [a["seq"] for a in pair["answer"]] == [0]
        shares = {r["role"]: r["share"] for r in channel.of_type("talk.balance")[-1]["participants"]}
        assert shares["candidate"] > shares["interviewer"] > 0
    assert sneaky.messages == []

    late = MemoryChannel()  # a viewer joining later gets the alert and the latest guidance in its backlog
    registry.add_viewer(observer, late)
    assert [a["seq"] for a in late.of_type("alert.protected_topic")] == [2]
    assert late.of_type("guide.coverage") and late.of_type("talk.balance")
    await registry.aclose()
