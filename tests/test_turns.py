"""Semantic end of turn: the words decide how long a pause may last; an early close never splits the turn for the
reader (`continues`) and loses no words."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from adapters.stt_whisper import LocalWhisper
from domain.events import SegmentEvent, Speaker, StreamEvent
from pipeline.audio_file import read_audio
from pipeline.dsp import FrontEnd
from pipeline.scheduler import SttScheduler
from pipeline.stream import ParticipantStream, StreamConfig
from pipeline.turns import TurnRule, text_verdict
from testing.data import SHARED_DATA
from testing.text import wer


@pytest.mark.parametrize(("text", "verdict"), [
    ("Thank you.", "complete"),
    ("What about data at rest?", "complete"),
    ("I work on an iOS app written in Swift.", "complete"),
    ("I love it!", "complete"),
    ("We moved to Postgres and", "incomplete"),
    ("We moved to Postgres, and.", "incomplete"),  # a full stop the decoder put after a cut
    ("So, um", "incomplete"),
    ("because", "incomplete"),
    ("Last quarter,", "incomplete"),
    ("It was great...", "incomplete"),
    ("we added crash analytics", "unsure"),  # no punctuation: the fixed silence decides
    ("", "unsure"),
])  # fmt: skip
def test_text_verdict(text: str, verdict: str) -> None:
    assert text_verdict(text) == verdict


def test_doubted_last_word_does_not_close_early_and_rule_maps_verdicts() -> None:
    assert text_verdict("Thank you.", 0.3) == "unsure"
    rule = TurnRule(fixed_ms=500, complete_ms=220, incomplete_ms=800)
    assert [rule.end_silence_ms(v) for v in ("complete", "incomplete", "unsure")] == [220, 800, 500]
    with pytest.raises(ValueError, match="positive"):
        TurnRule(complete_ms=0)
    fe = FrontEnd(16000, 1)
    with pytest.raises(ValueError, match="positive"):
        fe.end_silence_samples = 0


def test_continues_is_on_the_wire_only_when_set() -> None:
    seg = SegmentEvent(Speaker("candidate", "c", "C"), 3, 0.0, 1.0, "Last quarter.", True)
    assert "continues" not in seg.to_dict()
    seg.continues = 2
    assert seg.to_dict()["continues"] == 2


async def _stream_turn(whisper: LocalWhisper, pcm: np.ndarray, semantic: bool) -> list[SegmentEvent]:
    """Stream `pcm` (16 kHz mono) in 20 ms pushes; after each, wait until speech-to-text is idle, so each pause's
    speculative decode is done before the pause goes on (decoding takes no stream time: the outcome depends on the
    audio only)."""
    sched = SttScheduler(whisper, workers=1)
    events: list[StreamEvent] = []
    cfg = StreamConfig(emit_levels_every_s=0, partial_interval_s=0, revise=False, semantic_turns=semantic)
    stream = ParticipantStream(Speaker("candidate", "c", "C"), sched, events.append, in_rate=16000, channels=1,
                               config=cfg)  # fmt: skip
    for i in range(0, pcm.size - 319, 320):
        stream.push(pcm[i : i + 320])
        idle = 0
        while idle < 3:  # the decode task, its future and its done callbacks each take a loop turn
            await asyncio.sleep(0.002)
            idle = idle + 1 if sched.busy == 0 and sched.queue_depth == 0 else 0
    await stream.aclose()
    await sched.aclose()
    return [e for e in events if isinstance(e, SegmentEvent) and e.final]


@pytest.mark.slow
async def test_a_complete_sentence_closes_on_a_short_pause_and_the_next_final_continues_the_turn(
    whisper: LocalWhisper,
) -> None:
    # mobile_mixed, candidate: "I work on an iOS app written in Swift." then a 340 ms pause, then the rest of the turn
    gt = "I work on an iOS app written in Swift. Last quarter I shipped offline mode, and I am really proud of how smooth it feels."
    pcm = read_audio(SHARED_DATA / "mobile_mixed.stereo.wav", rate=16000).channel(1)[6 * 16000 : int(15.5 * 16000)]
    fixed = await _stream_turn(whisper, pcm, semantic=False)
    assert len(fixed) == 1 and fixed[0].continues is None
    finals = await _stream_turn(whisper, pcm, semantic=True)
    assert len(finals) >= 2, [f.text for f in finals]
    assert finals[0].text.endswith("Swift.") and finals[0].continues is None
    assert [f.continues for f in finals[1:]] == [f.seq for f in finals[:-1]]  # each joins the one before
    joined = " ".join(f.text for f in finals)
    assert wer(gt, joined) <= wer(gt, fixed[0].text) + 0.1, (joined, fixed[0].text)  # no words lost
