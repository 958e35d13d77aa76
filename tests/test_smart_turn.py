"""Audio evidence of the end of a turn: the shipped Smart Turn model, our features for it, the rule that combines it
with the words, and a stream that holds a sentence break the words alone would close."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from adapters.stt_whisper import LocalWhisper
from domain.events import SegmentEvent, Speaker, StreamEvent
from pipeline.audio_file import read_audio
from pipeline.scheduler import SttScheduler
from pipeline.smart_turn import FRAMES, MODEL_PATH, N_MELS, SmartTurn, load, log_mel
from pipeline.stream import ParticipantStream, StreamConfig
from pipeline.transcript import SAMPLE_RATE
from pipeline.turns import TurnRule, audio_verdict, combine
from testing.data import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]

# pipecat-ai 1.14.0's extractor (pipecat/audio/turn/smart_turn/_whisper_features.py,
# compute_whisper_log_mel_features, itself checked by pipecat against transformers' WhisperFeatureExtractor) run
# once on the same inputs, 8 s windows made as its local_smart_turn_v3.py makes them: features[::16, cols]
JFK_COLS, JFK_MEAN, JFK = slice(None, None, 100), 0.5783274173736572, [
    [0.826186, 0.720748, 0.708534, 0.915211, 0.649426, 0.628923, 0.802079, 0.730839],
    [0.509260, 0.946626, 0.621291, 1.296131, 0.787559, 0.701179, 0.902019, 1.214936],
    [0.426219, 0.719155, 0.419326, 1.193886, 0.928424, 0.427751, 1.246318, 0.572416],
    [0.177671, 0.502494, 0.172666, 1.041451, 0.682933, 0.286230, 0.954319, 0.419253],
    [-0.092314, 0.096190, -0.094638, 0.553171, 0.376047, -0.019819, 0.288147, 0.131128]]  # fmt: skip
CHIRP_COLS, CHIRP_MEAN, CHIRP = slice(500, None, 40), -0.14432135224342346, [
    [1.351757, -0.187357, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424],
    [0.856145, 0.080452, 1.616438, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424],
    [0.539208, -0.215424, -0.215424, -0.215424, 0.807591, 0.447923, -0.215424, -0.215424],
    [0.281066, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424],
    [0.052548, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424, -0.215424]]  # fmt: skip


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return read_audio(SHARED_DATA / "jfk.flac", rate=SAMPLE_RATE).channel(0)


@pytest.fixture(scope="module")
def smart() -> SmartTurn:
    return SmartTurn()


def test_the_model_file_is_the_one_the_manifest_names_with_its_licence() -> None:
    entry = next(a for a in json.loads((ROOT / "models" / "manifest.json").read_text())["models"]
                 if a["name"] == "smart-turn-v3.2-cpu")  # fmt: skip
    assert ROOT / entry["file"] == MODEL_PATH
    data = MODEL_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"] == 8_679_182
    assert "BSD 2-Clause" in (ROOT / "models" / "LICENSE-smart-turn").read_text()


def test_features_match_pipecats_extractor_when_cut_and_when_padded(jfk: np.ndarray) -> None:
    cut = log_mel(jfk)  # 11 s: its last 8 s
    assert cut.shape == (N_MELS, FRAMES) and cut.dtype == np.float32
    np.testing.assert_allclose(cut[::16, JFK_COLS], JFK, atol=2e-6)
    assert cut.mean() == pytest.approx(JFK_MEAN, abs=1e-6)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    chirp = (0.3 * np.sin(2 * np.pi * (200 * t + 300 * t * t))).astype(np.float32)  # 3 s: zeros in front
    padded = log_mel(chirp)
    np.testing.assert_allclose(padded[::16, CHIRP_COLS], CHIRP, atol=2e-6)
    assert padded.mean() == pytest.approx(CHIRP_MEAN, abs=1e-6)
    np.testing.assert_array_equal(log_mel((chirp * 32768).astype(np.int16)), log_mel((chirp * 32768).astype(np.int16)
                                                                                    .astype(np.float32) / 32768))
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 100), np.int16))


def test_the_end_of_a_real_sentence_is_more_likely_a_turn_end_than_a_cut_mid_sentence(
    smart: SmartTurn, jfk: np.ndarray,
) -> None:
    # "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    pause = np.zeros(140 * SAMPLE_RATE // 1000, np.int16)  # what the stream has heard when it asks
    end = smart.probability(jfk)  # the clip ends with the sentence and its own silence
    mid = [smart.probability(np.concatenate([jfk[: int(s * SAMPLE_RATE)], pause])) for s in (4.5, 5.0, 9.0)]
    assert end >= 0.5 > max(mid), (end, mid)  # ("ask not what your | ...", "... your cou|ntry", "ask what you | ...")


async def test_the_model_answers_off_the_event_loop_and_a_setting_turns_it_off(jfk: np.ndarray) -> None:
    assert load("off") is None
    model = load(None)
    assert model is not None and model.path == MODEL_PATH
    try:
        p = await model.end_probability(jfk)
        assert p == model.probability(jfk) and model.pending == 0
    finally:
        model.close()
    with pytest.raises(FileNotFoundError):
        load("/nonexistent/smart-turn.onnx")


@pytest.mark.parametrize(("p", "verdict"), [(None, "unsure"), (0.9, "complete"), (0.5, "complete"),
                                            (0.3, "unsure"), (0.05, "incomplete")])  # fmt: skip
def test_audio_verdict(p: float | None, verdict: str) -> None:
    assert audio_verdict(p, end=0.5, hold=0.1) == verdict


def test_combined_rule_closes_early_only_when_words_and_audio_agree() -> None:
    table = {(t, a): combine(t, a) for t in ("complete", "incomplete", "unsure")
             for a in ("complete", "incomplete", "unsure")}  # type: ignore[arg-type]  # fmt: skip
    assert [k for k, v in table.items() if v == "complete"] == [("complete", "complete")]
    assert {k for k, v in table.items() if v == "incomplete"} == {
        ("complete", "incomplete"), ("incomplete", "complete"), ("incomplete", "incomplete"),
        ("incomplete", "unsure"), ("unsure", "incomplete")}  # fmt: skip
    rule = TurnRule(fixed_ms=500, complete_ms=220, incomplete_ms=800)
    assert rule.end_silence_ms(combine("complete", audio_verdict(0.2, end=rule.audio_end, hold=rule.audio_hold))) == 500
    with pytest.raises(ValueError, match="audio"):
        TurnRule(audio_end=0.2, audio_hold=0.5)
    with pytest.raises(ValueError, match="audio"):
        TurnRule(audio_end=1.5)


async def _stream(whisper: LocalWhisper, pcm: np.ndarray, smart: SmartTurn | None,
                  stats: dict[str, int] | None = None, workers: int = 1, **config: float) -> list[SegmentEvent]:
    """Stream `pcm` (16 kHz mono) in 20 ms pushes; after each, wait until speech-to-text and the audio model are
    idle, so what each pause's decode and audio query say is in before the pause goes on (they take no stream
    time). `stats`: filled with the stream's counters. The stream's clock is its own stream time, so a final's
    `emitted_at_s - end_s` is the silence after its speech when it went out."""
    sched = SttScheduler(whisper, workers=workers)
    events: list[StreamEvent] = []
    cfg = StreamConfig(emit_levels_every_s=0, partial_interval_s=0, revise=False, **config)  # type: ignore[arg-type]
    stream = ParticipantStream(Speaker("interviewer", "i", "I"), sched, events.append, in_rate=SAMPLE_RATE,
                               channels=1, config=cfg, turn_audio=smart,
                               clock=lambda: stream.stream_time_s)  # fmt: skip
    for i in range(0, pcm.size - 319, 320):
        stream.push(pcm[i : i + 320])
        idle = 0
        while idle < 3:  # a task, its future and its done callbacks each take a loop turn
            await asyncio.sleep(0.002)
            busy = sched.busy or sched.queue_depth or (smart is not None and smart.pending)
            idle = 0 if busy else idle + 1
    await stream.aclose()
    await sched.aclose()
    if smart is not None:
        assert stream.stats["turn_audio_queries"] >= 1 and stream.stats["turn_audio_failed"] == 0
    if stats is not None:
        stats.update(stream.stats)
    return [e for e in events if isinstance(e, SegmentEvent) and e.final]


@pytest.mark.slow
async def test_the_audio_model_is_asked_only_for_pauses_whose_words_would_close_and_decides_the_same(
    whisper: LocalWhisper, smart: SmartTurn,
) -> None:
    """With the default `turn_audio_hold` 0 the audio can only veto an early close the words propose, so it is asked
    only then; asked for every pause (a hold > 0 makes its "incomplete" count, and 1e-6 never says it here) the
    finals are the same."""
    pcm = read_audio(SHARED_DATA / "mobile_mixed.stereo.wav", rate=SAMPLE_RATE).channel(1)
    every: dict[str, int] = {}
    only_complete: dict[str, int] = {}
    asked_always = await _stream(whisper, pcm, smart, every, turn_audio_hold=1e-6)
    asked_lazily = await _stream(whisper, pcm, smart, only_complete)
    assert [(f.seq, f.text, f.continues) for f in asked_lazily] == [(f.seq, f.text, f.continues) for f in asked_always]
    pauses = every["speculative_used"] + every["speculative_wasted"]
    assert every["turn_audio_queries"] == pauses
    assert only_complete["turn_audio_queries"] < pauses and only_complete["turns_closed_early"] >= 1


@pytest.mark.slow
async def test_a_sentence_break_the_words_would_close_is_held_by_the_audio(
    whisper: LocalWhisper, smart: SmartTurn,
) -> None:
    # mobile_mixed, interviewer: "Welcome, and thank you for your time." 360 ms "What have you been building
    # recently?": a complete sentence, but said as the start of a turn (P(turn ended) ~0.2)
    pcm = read_audio(SHARED_DATA / "mobile_mixed.stereo.wav", rate=SAMPLE_RATE).channel(0)[: int(6.5 * SAMPLE_RATE)]
    words_only = await _stream(whisper, pcm, None)
    assert len(words_only) == 2 and words_only[1].continues == words_only[0].seq, [f.text for f in words_only]
    both = await _stream(whisper, pcm, smart)
    assert len(both) == 1 and both[0].continues is None, [f.text for f in both]
    assert both[0].text.rstrip().endswith("recently?")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 1])
async def test_a_complete_sentence_then_silence_closes_at_turn_complete_ms_with_the_audio_asked_beside_or_after(
    whisper: LocalWhisper, smart: SmartTurn, jfk: np.ndarray, workers: int,
) -> None:
    """jfk ends "... what you can do for your country." (real speech; P(turn ended) ~0.7). When the pause's decode
    and the audio model's answer are in before the pause reaches `turn_complete_ms` (the harness lets them take no
    stream time), the final goes out 220 ms of stream time after the speech ends, and it is the pause's decode.
    With a worker idle beside the decode the model is asked at the same time as the decode (so on a real clock
    both are in by ~220 ms); with the only worker busy, after the decode reads complete."""
    pcm = np.concatenate([jfk, np.zeros(SAMPLE_RATE, np.int16)])
    stats: dict[str, int] = {}
    finals = await _stream(whisper, pcm, smart, stats, workers=workers)
    last = finals[-1]
    assert last.text.rstrip().endswith("country."), last.text
    assert last.timing is not None and last.timing["close"] == 220 and last.timing["speculative"] == 1
    assert last.emitted_at_s is not None
    # the segmenter closes on the 20 ms frame that completes the silence: 220-240 ms after the speech end
    assert 0.22 <= last.emitted_at_s - last.end_s < 0.24 + 0.02, (last.emitted_at_s, last.end_s)
    assert stats["turns_closed_early"] >= 1
    if workers == 2:
        assert stats["turn_audio_beside"] >= 1 and stats["turn_audio_queries"] == stats["turn_audio_beside"]
    else:
        assert stats["turn_audio_beside"] == 0
