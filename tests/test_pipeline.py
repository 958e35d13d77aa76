"""The participant pipeline end to end on real audio, and `python -m pipeline`.

In-process runs go through the CLI's own `run()` with one shared model, so the same code path as the
command is tested without paying a model load per test; a few tests run the real command as a subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.stt_whisper import LocalWhisper
from domain.events import ErrorEvent, SegmentEvent, SentimentEvent, Speaker, StreamEvent, Word
from pipeline.audio_file import read_audio
from pipeline.cli import build_parser, run
from pipeline.scheduler import SttScheduler
from pipeline.stream import Conversation, ParticipantStream, StreamConfig, prompt_tail
from pipeline.transcript import Transcript
from testing.data import JFK_TEXT as JFK
from testing.data import SHARED_DATA
from testing.data import SHARED_DIALOGUES as DIALOGUES
from testing.text import normalize, transcript_of, wer

ROOT = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA


def truth(name: str) -> dict[str, Any]:
    assert DATA.is_dir(), f"test audio missing: {DATA}"
    return json.loads((DATA / f"{name}.json").read_text())


async def transcribe(path: Path, stt: Any, *flags: str) -> list[dict[str, Any]]:
    args = build_parser().parse_args(["transcribe", str(path), *flags])
    out = io.StringIO()
    assert await run(read_audio(path), args, stt, out, path.name) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def finals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((e for e in events if e["type"] == "segment.final"), key=lambda e: e["start_s"])


transcript = transcript_of  # the streamed transcript: every final, replaced by its latest segment.revised


def overlapping(turn: dict[str, Any], segs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in segs if s["start_s"] < turn["end_s"] and s["end_s"] > turn["start_s"]]


def check_stream_invariants(events: list[dict[str, Any]]) -> None:
    by_speaker: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] in ("segment.final", "error"):
            by_speaker.setdefault(e["speaker"]["participantId"], []).append(e)
    for evs in by_speaker.values():
        seqs = [e["seq"] if e["type"] == "segment.final" else e["affected"]["seq"] for e in evs]
        assert seqs == sorted(set(seqs)) and seqs[0] >= 0, seqs  # one outcome per utterance, in seq order
    for e in events:
        if e["type"] == "segment.final":
            assert e["end_s"] >= e["start_s"] and e["engine"] == "faster-whisper"
            assert all(
                e["start_s"] - 0.5 <= w["start_s"] <= w["end_s"] <= e["end_s"] + 1.0 for w in e["words"]
            )


# ---------------------------------------------------------------------------------------------- real audio


@pytest.mark.slow
async def test_jfk_file(whisper: LocalWhisper) -> None:
    events = await transcribe(DATA / "jfk.flac", whisper)
    segs = finals(events)
    assert wer(JFK, " ".join(s["text"] for s in segs)) <= 0.10
    assert {e["type"] for e in events} >= {"segment.final", "sentiment", "keywords"}
    assert all("emitted_at_s" not in e for e in events)
    check_stream_invariants(events)


_offline: dict[str, str] = {}


def offline_text(whisper: LocalWhisper, path: Path) -> str:
    """Whole-file faster-whisper on the same model: the reference the streaming transcript is held to."""
    if str(path) not in _offline:
        segs, _ = whisper._whisper.transcribe(str(path), language="en")
        _offline[str(path)] = " ".join(s.text for s in segs)
    return _offline[str(path)]


@pytest.mark.slow
@pytest.mark.parametrize("name", DIALOGUES)
async def test_dialogue_streaming_wer_vs_offline(whisper: LocalWhisper, name: str) -> None:
    gt = truth(name)
    ref = " ".join(t["text"] for t in gt["turns"])
    events = await transcribe(DATA / f"{name}.wav", whisper)
    check_stream_invariants(events)
    assert len(finals(events)) == len(gt["turns"])  # one segment per turn
    live, revised = wer(ref, transcript(events, revised=False)), wer(ref, transcript(events))
    offline_wer = wer(ref, offline_text(whisper, DATA / f"{name}.wav"))
    # on one 80-90 word dialogue a word is 0.011: this guards against regressions; the target is asserted on the set
    assert revised <= offline_wer + 0.06 and revised <= live, (revised, live, offline_wer)


@pytest.fixture(scope="module")
def dialogue_set() -> list[tuple[str, Path]]:
    from testing.dialogues import dialogue_set

    return dialogue_set()  # fails loudly without espeak-ng or the shared generator


@pytest.mark.slow
@pytest.mark.parametrize("channels", ["mixed", "per participant"])
async def test_streamed_wer_is_within_two_points_of_whole_file_decoding(
    whisper: LocalWhisper, dialogue_set: list[tuple[str, Path]], channels: str
) -> None:
    """The issue's target, streamed WER <= offline WER + 0.02 (same model and audio), on eight dialogues (~700
    words): the mono mix as one stream, and each participant's channel as its own stream as the server runs."""
    rows = []
    for name, folder in dialogue_set:
        gt = json.loads((folder / f"{name}.json").read_text())
        ref = " ".join(t["text"] for t in gt["turns"])
        if channels == "mixed":
            events = await transcribe(folder / f"{name}.wav", whisper)
        else:
            events = await transcribe(folder / f"{name}.stereo.wav", whisper, "--channels-as-speakers")
        check_stream_invariants(events)
        offline_wer = wer(ref, offline_text(whisper, folder / f"{name}.wav"))
        rows.append((wer(ref, transcript(events, revised=False)), wer(ref, transcript(events)), offline_wer))
    live, revised, offline = (sum(r[k] for r in rows) / len(rows) for k in range(3))
    summary = f"live {live:.4f} revised {revised:.4f} offline {offline:.4f}; per dialogue {rows}"
    assert revised <= offline + 0.02, summary
    assert revised < live - 0.02, summary  # the revisions are what closes the gap (live alone: +0.045..0.056)


@pytest.mark.slow
@pytest.mark.parametrize("name", DIALOGUES)
async def test_channels_as_speakers_sentiment_and_keywords(whisper: LocalWhisper, name: str) -> None:
    gt = truth(name)
    events = await transcribe(DATA / f"{name}.stereo.wav", whisper, "--channels-as-speakers")
    check_stream_invariants(events)
    segs = finals(events)
    sentiments = {(e["speaker"]["role"], e["seq"]): e for e in events if e["type"] == "sentiment"}
    for turn in gt["turns"]:
        hits = overlapping(turn, segs)
        assert hits and {h["speaker"]["role"] for h in hits} == {turn["speaker"]}, (turn, hits)
        if turn["sentiment"] in ("positive", "negative"):
            sign = 1 if turn["sentiment"] == "positive" else -1
            scores = [sentiments[(h["speaker"]["role"], h["seq"])]["score"] for h in hits]
            assert sum(scores) * sign > 0, (turn["text"], [h["text"] for h in hits], scores)
    # keywords: the latest update of each speaker, top 10; every topic word the recogniser actually heard
    # must be there (a misrecognised word cannot be a keyword), and most of them must have been heard
    latest: dict[str, list[str]] = {}
    for e in events:
        if e["type"] == "keywords":
            latest[e["speaker"]["role"]] = [k["term"] for k in e["keywords"]]
            assert len(e["keywords"]) <= 10 and all(k["seqs"] for k in e["keywords"])
    top = {t.rstrip("s") for terms in latest.values() for t in terms}
    heard = " ".join(normalize(s["text"]) for s in segs).split()
    heard_topics = [k for k in gt["keywords"] if any(w.rstrip("s") == k.rstrip("s") for w in heard)]
    assert len(heard_topics) >= len(gt["keywords"]) - 1, heard_topics
    assert all(k.rstrip("s") in top for k in heard_topics), (heard_topics, latest)


@pytest.mark.slow
async def test_telephone_rate_input(whisper: LocalWhisper, tmp_path: Path) -> None:
    narrow = read_audio(DATA / "jfk.flac", rate=8000, mono=True)
    path = tmp_path / "jfk8k.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(narrow.pcm.astype("<i2").tobytes())
    assert wer(JFK, " ".join(s["text"] for s in finals(await transcribe(path, whisper)))) <= 0.15


# ------------------------------------------------------------------------------------------- silence, noise


async def _feed(stream: ParticipantStream, pcm: np.ndarray, chunk: int) -> None:
    for i in range(0, pcm.size, chunk):
        stream.push(pcm[i : i + chunk])
        if i % (chunk * 50) == 0:
            await asyncio.sleep(0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["silence", "white noise"])
async def test_ten_minutes_of_silence_or_noise_give_no_segments(whisper: LocalWhisper, kind: str) -> None:
    rate, seconds = 16000, 600
    rng = np.random.default_rng(3)
    if kind == "silence":
        pcm = np.zeros(rate * seconds, np.int16)
    else:  # rising level: -50 dBFS to -10 dBFS over the ten minutes
        gain = np.geomspace(0.003, 0.3, rate * seconds)
        pcm = np.clip(rng.standard_normal(rate * seconds) * gain * 32767, -32768, 32767).astype(np.int16)
    events: list[StreamEvent] = []
    sched = SttScheduler(whisper)
    stream = ParticipantStream(Speaker("candidate", "N", "n"), sched, events.append, in_rate=rate, channels=1)
    await _feed(stream, pcm, rate // 50)
    await stream.aclose()
    await sched.aclose()
    assert [e for e in events if isinstance(e, SegmentEvent)] == []
    assert not [e for e in events if isinstance(e, ErrorEvent)]
    levels = [e for e in events if e.type == "level"]
    assert 5000 <= len(levels) <= 6100  # throttled to ~10 per second of audio


# ------------------------------------------------------------------------------------ contract with a fake STT


class ScriptedStt:
    """A SpeechToText that answers instantly from a script (or raises), to test the stream's contract."""

    engine = "scripted"
    model = "v1"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript:
        self.calls += 1
        if self.fail:
            raise ConnectionError("provider down")
        return Transcript(text=f"great answer number {self.calls}", confidence=0.9)


def _tone_bursts(rate: int, bursts: int) -> np.ndarray:
    """Speech-like bursts (harmonic tone with syllable-rate amplitude modulation) separated by silence."""
    t = np.arange(int(rate * 1.5)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / rate) / k for k in range(1, 8))
    burst = (0.25 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2) * 32767).astype(np.int16)
    gap = np.zeros(rate, np.int16)
    return np.concatenate([gap] + [np.concatenate([burst, gap]) for _ in range(bursts)])


async def _run_scripted(stt: Any, pcm: np.ndarray, rate: int, **cfg: Any) -> list[StreamEvent]:
    return (await _run_scripted_stream(stt, pcm, rate, **cfg))[0]


async def _run_scripted_stream(
    stt: Any, pcm: np.ndarray, rate: int, **cfg: Any
) -> tuple[list[StreamEvent], ParticipantStream]:
    events: list[StreamEvent] = []
    sched = SttScheduler(stt)
    stream = ParticipantStream(Speaker("candidate", "C", "c"), sched, events.append, in_rate=rate, channels=1,
                               config=StreamConfig(emit_levels_every_s=0, **cfg), clock=lambda: 1.5)  # fmt: skip
    chunk = rate // 50
    for i in range(0, pcm.size, chunk):
        stream.push(pcm[i : i + chunk])
        partial = stream._partial_task  # as if decoding kept up with real time: let a started partial finish
        if partial is not None and not partial.done():
            await partial
        if stream._spec is not None and not stream._spec[3].done():  # and a speculative final
            await asyncio.wait({stream._spec[3]})
    await stream.aclose()
    await sched.aclose()
    return events, stream


@pytest.mark.parametrize("speculative", [False, True])
async def test_every_utterance_ends_as_final_then_analysis(speculative: bool) -> None:
    stt = ScriptedStt()
    events, stream = await _run_scripted_stream(
        stt, _tone_bursts(48000, 3), 48000, partial_interval_s=0, speculative_final=speculative
    )
    segs = [e for e in events if isinstance(e, SegmentEvent)]
    assert [s.seq for s in segs] == [0, 1, 2] and all(s.final for s in segs)
    assert len({s.text for s in segs}) == 3 and all(s.text.startswith("great answer number") for s in segs)
    if speculative:  # the decode started at the pause became the final: no second decode
        assert stream.stats["speculative_used"] == 3 and stt.calls >= 3
    else:
        assert stream.stats["speculative_used"] == 0 and stt.calls == 3
    assert all(s.engine == "scripted" and s.model == "v1" and s.emitted_at_s == 1.5 for s in segs)
    kinds = [e.type for e in events]
    assert kinds == ["segment.final", "sentiment", "keywords"] * 3
    assert all(e.to_dict()["emitted_at_s"] == 1.5 for e in events)


class RecordingStt(ScriptedStt):
    """ScriptedStt that remembers the length of every piece of audio it decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript:
        self.sizes.append(int(audio.size))
        return super().transcribe(audio, prompt=prompt)


class PromptRecordingStt(ScriptedStt):
    """ScriptedStt that remembers the prompt of every decode."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str | None] = []

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript:
        self.prompts.append(prompt)
        return super().transcribe(audio, prompt=prompt)


async def test_finals_are_prompted_with_the_conversation_so_far() -> None:
    stt = PromptRecordingStt()
    await _run_scripted(stt, _tone_bursts(16000, 3), 16000, partial_interval_s=0, speculative_final=False,
                        prompt_max_chars=45)  # fmt: skip
    assert stt.prompts == [
        None,
        "great answer number 1",
        "great answer number 1 great answer number 2",
    ]
    # bounded to the last whole words within prompt_max_chars
    assert prompt_tail("great answer number 1 great answer number 2", "great answer number 3", 43) == (
        "great answer number 2 great answer number 3"
    )
    assert prompt_tail("great answer number 1", "great answer number 2", 30) == "number 1 great answer number 2"
    assert prompt_tail("great answer number 1", "great answer number 2", 28) == "1 great answer number 2"
    assert prompt_tail(None, "word", 200) == "word"
    stt = PromptRecordingStt()
    await _run_scripted(stt, _tone_bursts(16000, 2), 16000, partial_interval_s=0, prompt_previous=False)
    assert set(stt.prompts) == {None}


async def test_streams_of_one_conversation_prompt_with_each_others_finals() -> None:
    """An answer decodes after the question: the streams of one room (or one stereo file) share the prompt."""
    for shared in (True, False):
        stt = PromptRecordingStt()
        sched = SttScheduler(stt)
        conversation = Conversation(200) if shared else None
        cfg = StreamConfig(emit_levels_every_s=0, partial_interval_s=0, speculative_final=False)
        streams = [ParticipantStream(Speaker(role, role, role), sched, lambda e: None, in_rate=16000, channels=1,
                                     config=cfg, conversation=conversation)
                   for role in ("interviewer", "candidate")]  # fmt: skip
        burst = _tone_bursts(16000, 1)
        for turn in (0, 1):  # the interviewer speaks, then the candidate; each stream hears silence meanwhile
            for i in range(0, burst.size, 320):
                for k, stream in enumerate(streams):
                    stream.push(burst[i : i + 320] if k == turn else np.zeros(320, np.int16))
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)
        for stream in streams:
            await stream.aclose()
        await sched.aclose()
        assert stt.prompts == ([None, "great answer number 1"] if shared else [None, None])


class RevisingStt(ScriptedStt):
    """ScriptedStt that can revise: finals' words have probability `final_p`, revisions' `revised_p`."""

    def __init__(self, final_p: float = 0.5, revised_p: float = 0.9, same_text: bool = False) -> None:
        super().__init__()
        self.final_p, self.revised_p, self.same_text = final_p, revised_p, same_text
        self.revisions: list[tuple[int, str, int | None]] = []  # (audio samples, context text, after samples)

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript:
        tr = super().transcribe(audio, prompt=prompt)
        tr.words = [Word(w, 0.1 * i, 0.1 * i + 0.1, self.final_p) for i, w in enumerate(tr.text.split())]
        return tr

    def revise(self, audio: np.ndarray, *, context: np.ndarray, context_text: str,
               after: np.ndarray | None = None) -> Transcript:
        self.revisions.append((audio.size, context_text, None if after is None else after.size))
        number = context_text.count("number") + 1
        text = f"great answer number {number}" if self.same_text else f"revised answer number {number}"
        audio_s = audio.size / 16000
        step = (audio_s - 0.8) / 4  # words over the speech (pre-roll and trailing silence excluded)
        words = [Word(w, 0.3 + step * i, 0.3 + step * (i + 1), self.revised_p) for i, w in enumerate(text.split())]
        return Transcript(text=text, words=words, confidence=self.revised_p, audio_s=audio_s)


async def test_finals_are_revised_with_the_conversation_around_them() -> None:
    stt = RevisingStt()
    events = await _run_scripted(stt, _tone_bursts(16000, 3), 16000, partial_interval_s=0, speculative_final=False)
    # the first final has nothing before it; the others are decoded again after the finals before them (their
    # text forced as context) and before the next one (the last has none)
    assert [(ctx, after is not None) for _, ctx, after in stt.revisions] == [
        ("great answer number 1", True),
        ("great answer number 1 revised answer number 2", False),  # the context holds the revised text
    ]
    revised = [e for e in events if isinstance(e, SegmentEvent) and e.revision]
    assert [(e.seq, e.text, e.type) for e in revised] == [
        (1, "revised answer number 2", "segment.revised"), (2, "revised answer number 3", "segment.revised")
    ]
    finals = {e.seq: e for e in events if isinstance(e, SegmentEvent) and e.final and not e.revision}
    for e in revised:  # same utterance, better text, same wire contract
        assert (e.start_s, e.end_s) == (finals[e.seq].start_s, finals[e.seq].end_s) and e.to_dict()["revision"] == 1
    # each revision is followed by its segment's new sentiment and the speaker's new keywords
    after_rev = [events[events.index(e) + 1 : events.index(e) + 3] for e in revised]
    assert all([a.type, b.type] == ["sentiment", "keywords"] and a.seq == b.seq == r.seq
               for (a, b), r in zip(after_rev, revised, strict=True))  # fmt: skip
    latest = [e for e in events if e.type == "keywords"][-1]
    assert "revised" in {k.term for k in latest.keywords}


async def test_a_consumer_renumbering_events_does_not_misplace_revisions() -> None:
    # the room renumbers a resumed participant's events in place (seq + offset): the revision must still name
    # its own final, renumbered once
    stt = RevisingStt()
    events: list[StreamEvent] = []

    def renumber(e: StreamEvent) -> None:
        if isinstance(e, SegmentEvent | SentimentEvent):
            e.seq += 5
        events.append(e)

    sched = SttScheduler(stt)
    stream = ParticipantStream(Speaker("candidate", "C", "c"), sched, renumber, in_rate=16000, channels=1,
                               config=StreamConfig(emit_levels_every_s=0, partial_interval_s=0,
                                                   speculative_final=False))  # fmt: skip
    pcm = _tone_bursts(16000, 3)
    for i in range(0, pcm.size, 320):
        stream.push(pcm[i : i + 320])
        await asyncio.sleep(0)
    await stream.aclose()
    await sched.aclose()
    finals = [e.seq for e in events if isinstance(e, SegmentEvent) and not e.revision]
    revised = [e.seq for e in events if isinstance(e, SegmentEvent) and e.revision]
    assert finals == [5, 6, 7] and revised == [6, 7]
    assert [e.seq for e in events if isinstance(e, SentimentEvent)] == [5, 6, 7, 6, 7]  # rescored, not skipped


class BlockedRevisions(RevisingStt):
    """Revisions never get CPU (a saturated machine)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def revise(self, audio: np.ndarray, **kw: Any) -> Transcript:
        self.release.wait(30)
        return super().revise(audio, **kw)


async def test_a_leaving_participant_does_not_wait_for_revisions_and_they_stay_bounded() -> None:
    stt = BlockedRevisions()
    events: list[StreamEvent] = []
    sched = SttScheduler(stt, workers=2)  # one worker keeps serving finals while the other is stuck revising
    cfg = StreamConfig(emit_levels_every_s=0, partial_interval_s=0, speculative_final=False, await_revisions=False,
                       revise_max_pending=2)  # fmt: skip
    stream = ParticipantStream(Speaker("candidate", "C", "c"), sched, events.append, in_rate=16000, channels=1,
                               config=cfg)  # fmt: skip
    pcm = _tone_bursts(16000, 5)
    for i in range(0, pcm.size, 320):
        stream.push(pcm[i : i + 320])
        await asyncio.sleep(0)
    t0 = time.monotonic()
    await asyncio.wait_for(stream.aclose(), 5)
    assert time.monotonic() - t0 < 2  # the finals were out; their improvements are not waited for
    assert [e.type for e in events].count("segment.final") == 5 and not any(
        isinstance(e, SegmentEvent) and e.revision for e in events
    )
    # at most `revise_max_pending` pending at once (the first final's, with no context, may be over already)
    assert stream.stats["revisions_dropped"] in (2, 3)
    assert stream.conversation.revisions_pending == 0  # the cancelled ones are accounted for
    stt.release.set()
    await sched.aclose()


@pytest.mark.parametrize("case", ["less confident", "same text", "revise off"])
async def test_a_revision_that_is_no_better_changes_nothing(case: str) -> None:
    stt = RevisingStt(revised_p=0.3 if case == "less confident" else 0.9, same_text=case == "same text")
    events = await _run_scripted(stt, _tone_bursts(16000, 3), 16000, partial_interval_s=0, speculative_final=False,
                                 revise=case != "revise off")  # fmt: skip
    assert len(stt.revisions) == (0 if case == "revise off" else 2)
    assert not [e for e in events if isinstance(e, SegmentEvent) and e.revision]
    assert [e.type for e in events] == ["segment.final", "sentiment", "keywords"] * 3


class TextRevisingStt(RevisingStt):
    """RevisingStt with given texts: every final says `final`, every revision `revised`."""

    def __init__(self, final: str, revised: str, final_p: float, revised_p: float) -> None:
        super().__init__(final_p=final_p, revised_p=revised_p)
        self.final, self.revised = final, revised

    def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript:
        tr = super().transcribe(audio, prompt=prompt)
        tr.text = self.final
        tr.words = [Word(w, 0.1 * i, 0.1 * i + 0.1, self.final_p) for i, w in enumerate(self.final.split())]
        return tr

    def revise(self, audio: np.ndarray, *, context: np.ndarray, context_text: str,
               after: np.ndarray | None = None) -> Transcript:
        tr = super().revise(audio, context=context, context_text=context_text, after=after)
        step = (tr.audio_s - 0.8) / len(self.revised.split())
        tr.text = self.revised
        tr.words = [Word(w, 0.3 + step * i, 0.3 + step * (i + 1), self.revised_p)
                    for i, w in enumerate(self.revised.split())]  # fmt: skip
        return tr


@pytest.mark.parametrize(("final", "revised", "revised_p", "accepted"), [
    # spoken digits: the context cannot tell which digits were said, however sure the decoder is
    ("1-0-0-0-1, 9 oh 2 1 oh", "1-0-0-0-0-1, 9-2-1-0", 0.95, False),
    ("one zero zero zero one", "1 0 0 0 1.", 0.95, True),  # the same digits, written as digits
    ("one zero zero zero one", "1 0 0 0 1.", 0.65, False),  # ... but not clearly more probable
    ("Sounds good.", "Sounds great.", 0.65, False),  # short: clearly more probable or nothing
    ("Sounds good.", "Sounds great.", 0.9, True),
    ("We moved the service to three regions last year", "We moved the service to three regions last spring", 0.65,
     True),  # a sentence: no less probable is enough
])  # fmt: skip
async def test_revisions_of_numbers_and_short_utterances_need_clearly_better_and_the_same_digits(
    final: str, revised: str, revised_p: float, accepted: bool
) -> None:
    stt = TextRevisingStt(final, revised, final_p=0.6, revised_p=revised_p)
    events = await _run_scripted(stt, _tone_bursts(16000, 3), 16000, partial_interval_s=0, speculative_final=False)
    assert len(stt.revisions) == 2
    assert [e.text for e in events if isinstance(e, SegmentEvent) and e.revision] == [revised] * 2 * accepted


@pytest.mark.slow
async def test_revisions_of_spoken_digits_are_never_worse_than_the_live_final(whisper: LocalWhisper) -> None:
    """Dialogues of digit strings and short answers (espeak-ng), each participant's channel its own stream: every
    revision is at least as close to what was said as the final it replaces (WER with every digit a word)."""
    from testing.dialogues import digit_dialogue_set

    def digit_words(text: str) -> str:
        return " ".join(" ".join(w) if w.isdigit() else w for w in normalize(text).split())

    revised = 0
    for name, folder in digit_dialogue_set():
        turns = json.loads((folder / f"{name}.json").read_text())["turns"]
        events = await transcribe(folder / f"{name}.stereo.wav", whisper, "--channels-as-speakers")
        check_stream_invariants(events)
        live = {(e["speaker"]["role"], e["seq"]): e for e in events if e["type"] == "segment.final" and e["text"]}
        for e in events:
            if e["type"] != "segment.revised":
                continue
            final = live[(e["speaker"]["role"], e["seq"])]
            said = max((t for t in turns if t["speaker"] == e["speaker"]["role"]),
                       key=lambda t: min(t["end_s"], e["end_s"]) - max(t["start_s"], e["start_s"]))["text"]
            before, after = wer(digit_words(said), digit_words(final["text"])), wer(digit_words(said),
                                                                                   digit_words(e["text"]))
            assert after <= before, (name, said, final["text"], e["text"])
            revised += 1
    print(f"{revised} revisions, none worse than its final")


async def test_speculation_starts_on_raw_silence_and_decodes_what_the_final_holds() -> None:
    pcm = _tone_bursts(16000, 3)
    plain, spec = RecordingStt(), RecordingStt()
    await _run_scripted_stream(plain, pcm, 16000, partial_interval_s=0, speculative_final=False)
    events: list[StreamEvent] = []
    sched = SttScheduler(spec)
    stream = ParticipantStream(Speaker("candidate", "C", "c"), sched, events.append, in_rate=16000, channels=1,
                               config=StreamConfig(emit_levels_every_s=0, partial_interval_s=0))  # fmt: skip
    started_while_speaking = []
    for i in range(0, pcm.size, 320):
        before = stream._spec
        stream.push(pcm[i : i + 320])
        if stream._spec is not before and stream._spec is not None:
            # raw VAD silence triggers it, before the 240 ms hangover of `speaking` runs out
            started_while_speaking.append(stream.frontend.speaking)
            await asyncio.wait({stream._spec[3]})  # decoding keeps up with real time
    await stream.aclose()
    await sched.aclose()
    assert started_while_speaking == [True, True, True]
    assert stream.stats["speculative_used"] == 3 and stream.stats["speculative_wasted"] == 0
    # the snapshot is padded with silence up to where the utterance closes: same audio length as the final
    assert spec.sizes == plain.sizes and len(spec.sizes) == 3


async def test_speculation_is_discarded_when_speech_resumes_and_shown_as_partial() -> None:
    rate = 16000
    burst = _tone_bursts(rate, 1)[rate : rate + int(1.5 * rate)]
    pause = np.zeros(int(0.3 * rate), np.int16)  # longer than speculate_after_ms, shorter than end_silence_ms
    pcm = np.concatenate([np.zeros(rate, np.int16), burst, pause, burst, np.zeros(rate, np.int16)])
    stt = RecordingStt()
    events: list[StreamEvent] = []
    sched = SttScheduler(stt)
    stream = ParticipantStream(Speaker("candidate", "C", "c"), sched, events.append, in_rate=rate, channels=1,
                               config=StreamConfig(emit_levels_every_s=0, partial_interval_s=0))  # fmt: skip
    for i in range(0, pcm.size, 320):
        stream.push(pcm[i : i + 320])
        spec = stream._spec
        if spec is not None and not spec[3].done():  # as if decoding kept up with real time
            await asyncio.wait({spec[3]})
    await stream.aclose()
    await sched.aclose()
    segs = [e for e in events if isinstance(e, SegmentEvent)]
    finals = [s for s in segs if s.final]
    assert len(finals) == 1 and finals[0].seq == 0
    assert stream.stats["speculative_wasted"] >= 1  # the decode of the pause missed the second burst
    # the final is a decode of the whole utterance, not the pause's snapshot
    assert stt.sizes[-1] > stt.sizes[0] and finals[0].text == f"great answer number {stt.calls}"
    partials = [s for s in segs if not s.final]
    assert partials and partials[0].text == "great answer number 1" and partials[0].seq == 0
    assert segs.index(partials[-1]) < segs.index(finals[0])


async def test_failing_engine_gives_one_error_per_utterance() -> None:
    events = await _run_scripted(ScriptedStt(fail=True), _tone_bursts(16000, 3), 16000, partial_interval_s=0)
    assert [type(e) for e in events] == [ErrorEvent] * 3
    assert [e.affected["seq"] for e in events] == [0, 1, 2]  # type: ignore[union-attr]
    assert all(e.code == "stt_failed" and "provider down" in e.message for e in events)  # type: ignore[union-attr]


async def test_close_without_drain_reports_every_pending_utterance() -> None:
    class StuckStt(ScriptedStt):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcript:
            assert self.release.wait(30)
            return super().transcribe(audio, prompt=prompt)

    stt = StuckStt()
    events: list[StreamEvent] = []
    sched = SttScheduler(stt)
    cfg = StreamConfig(emit_levels_every_s=0, partial_interval_s=0)
    stream = ParticipantStream(Speaker("candidate", "C", "c"), sched, events.append, in_rate=16000, channels=1,
                               config=cfg)  # fmt: skip
    pcm = _tone_bursts(16000, 3)
    for i in range(0, pcm.size, 320):
        stream.push(pcm[i : i + 320])
    assert stream.lag_s > 3.0  # three closed utterances, none transcribed
    await stream.aclose(drain=False)
    stt.release.set()
    await sched.aclose()
    assert [(e.type, e.affected["seq"], e.code) for e in events] == [  # type: ignore[union-attr]
        ("error", 0, "stream_closed"), ("error", 1, "stream_closed"), ("error", 2, "stream_closed")
    ]  # fmt: skip
    assert stream.lag_s == 0


async def test_partials_carry_the_seq_of_their_final() -> None:
    events = await _run_scripted(ScriptedStt(), _tone_bursts(16000, 2), 16000, partial_interval_s=0.3)
    segs = [e for e in events if isinstance(e, SegmentEvent)]
    partials = [s for s in segs if not s.final]
    assert partials, "no partial was emitted"
    for p in partials:
        final = next(s for s in segs if s.final and s.seq == p.seq)
        assert segs.index(p) < segs.index(final)
        assert final.start_s <= p.start_s + 0.5


async def test_push_validates_input() -> None:
    sched = SttScheduler(ScriptedStt())
    stream = ParticipantStream(
        Speaker("candidate", "C", "c"), sched, lambda e: None, in_rate=16000, channels=1
    )
    with pytest.raises(ValueError):
        stream.push(np.zeros(320, np.float64))
    stream.push(np.zeros(320, np.int16))  # still usable after bad input
    await stream.aclose()
    with pytest.raises(ValueError):
        stream.push(np.zeros(320, np.int16))
    await sched.aclose()


# ------------------------------------------------------------------------------------------------ the command


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00garbage" * 50, b"not audio at all"])
def test_cli_rejects_corrupt_input(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    r = _cli("transcribe", str(bad))
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")


def test_cli_missing_file_and_mono_channels_as_speakers(tmp_path: Path) -> None:
    r = _cli("transcribe", str(tmp_path / "nope.wav"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = _cli("transcribe", str(DATA / "jfk.flac"), "--channels-as-speakers")  # jfk.flac is stereo: accepted
    assert r.returncode == 0
    r = _cli("transcribe", str(DATA / "mobile_mixed.wav"), "--channels-as-speakers")
    assert r.returncode == 2 and "stereo" in r.stderr


@pytest.mark.slow
def test_cli_realtime_stamps_emitted_at(tmp_path: Path) -> None:
    clip = read_audio(DATA / "jfk.flac")
    path = tmp_path / "clip.wav"
    frames = clip.rate * 4
    with wave.open(str(path), "wb") as w:
        w.setnchannels(clip.channels)
        w.setsampwidth(2)
        w.setframerate(clip.rate)
        w.writeframes(clip.pcm[: frames * clip.channels].astype("<i2").tobytes())
    r = _cli("transcribe", str(path), "--realtime", "--levels")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    segs = [e for e in events if e["type"] == "segment.final"]
    assert segs and all(e["emitted_at_s"] >= e["end_s"] for e in segs)
    assert all("emitted_at_s" in e for e in events if e["type"] != "level")
    assert any(e["type"] == "level" for e in events)
