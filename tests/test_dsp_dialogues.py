"""Segmentation accuracy on the shared interview dialogues (ground truth turn times in their JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from pipeline.dsp import FrontEnd, Utterance
from testing.data import SHARED_DATA

DATA = SHARED_DATA
DIALOGUES = ["mobile_mixed", "security_positive"]
TOLERANCE_S = 0.150


def _data(name: str) -> Path:
    path = DATA / name
    assert path.exists(), f"test audio missing: {path} (the shared data directory must sit at ../shared/data)"
    return path


def _turns(name: str) -> list[dict]:
    return json.loads(_data(f"{name}.json").read_text())["turns"]


def _wav(name: str) -> tuple[int, np.ndarray]:
    rate, x = wavfile.read(_data(f"{name}.wav"))
    assert x.dtype == np.int16
    return rate, x


def _segment(
    pcm: np.ndarray, rate: int, channels: int, vad: str = "hybrid"
) -> tuple[list[Utterance], FrontEnd]:
    fe = FrontEnd(rate, channels, vad=vad)
    step = rate // 50 * channels  # 20 ms WebRTC frames
    utts: list[Utterance] = []
    for i in range(0, pcm.size, step):
        utts += fe.push(np.ascontiguousarray(pcm[i : i + step]))
    utts += fe.flush()
    assert sum(len(u.audio) for u in utts) + fe.discarded_samples == fe.samples_in
    return utts, fe


def _assert_one_utterance_per_turn(utts: list[Utterance], turns: list[dict], pre_roll_s: float = 0.3) -> None:
    assert len(utts) == len(turns), [(round(u.speech_start_s, 2), round(u.speech_end_s, 2)) for u in utts]
    for u, t in zip(utts, turns, strict=True):
        assert abs(u.speech_start_s - t["start_s"]) <= TOLERANCE_S, (u, t)
        assert abs(u.speech_end_s - t["end_s"]) <= TOLERANCE_S, (u, t)
        # the first word is never clipped: the utterance starts at least 250 ms before the speech
        assert u.start_s <= t["start_s"] - 0.25 + 0.02
        assert u.end_s >= t["end_s"]
        assert u.speech_start_s - u.start_s == pytest.approx(pre_roll_s, abs=1e-9)


@pytest.mark.parametrize("name", DIALOGUES)
def test_each_turn_exactly_once_on_clean_dialogue(name: str) -> None:
    rate, x = _wav(name)
    utts, fe = _segment(x, rate, 1)
    _assert_one_utterance_per_turn(utts, _turns(name))
    assert fe.samples_in == -(-len(x) // 3)  # ceil: the flushed tail is part of the stream


@pytest.mark.parametrize("name", DIALOGUES)
def test_stereo_file_one_front_end_per_speaker(name: str) -> None:
    """Interviewer on the left, candidate on the right, as two WebRTC tracks would carry them."""
    rate, x = _wav(f"{name}.stereo")
    for ch, speaker in enumerate(("interviewer", "candidate")):
        mono = np.ascontiguousarray(x[:, ch])
        # as WebRTC delivers it: that one voice on both channels of an interleaved stereo frame
        pcm = np.ascontiguousarray(np.repeat(mono, 2))
        utts, _ = _segment(pcm, rate, 2)
        _assert_one_utterance_per_turn(utts, [t for t in _turns(name) if t["speaker"] == speaker])


@pytest.mark.parametrize("name", DIALOGUES)
def test_noisy_dialogue_finds_every_turn(name: str) -> None:
    """At 10 dB SNR white noise: every turn is covered by an utterance whose speech starts within 150 ms of
    it, and no utterance lies outside the turns."""
    rate, x = _wav(f"{name}.snr10")
    turns = _turns(f"{name}.snr10")
    utts, _ = _segment(x, rate, 1)
    for t in turns:
        assert any(u.start_s <= t["start_s"] and u.end_s >= t["start_s"] for u in utts), t
        assert any(abs(u.speech_start_s - t["start_s"]) <= TOLERANCE_S for u in utts), t
    for u in utts:
        assert any(
            u.speech_start_s < t["end_s"] + 0.5 and u.speech_end_s > t["start_s"] - 0.5 for t in turns
        ), u
    assert len(utts) <= len(turns) + 1


@pytest.mark.slow
def test_silero_mode_on_clean_dialogue() -> None:
    rate, x = _wav("mobile_mixed")
    utts, _ = _segment(x, rate, 1, vad="silero")
    turns = _turns("mobile_mixed")
    assert len(utts) == len(turns)
    for u, t in zip(utts, turns, strict=True):
        assert abs(u.speech_start_s - t["start_s"]) <= 0.25 and abs(u.speech_end_s - t["end_s"]) <= 0.25


def test_real_speech_jfk_first_word_not_clipped() -> None:
    import av

    with av.open(str(_data("jfk.flac"))) as f:
        stream = f.streams.audio[0]
        rate = stream.rate
        chunks = [fr.to_ndarray() for fr in f.decode(stream)]
    arr = np.concatenate(chunks, axis=1)  # (channels, n), planar
    if arr.dtype != np.int16:
        arr = np.clip(np.rint(arr * 32768.0), -32768, 32767).astype(np.int16)
    channels = arr.shape[0]
    pcm = np.ascontiguousarray(arr.T.reshape(-1))
    utts, fe = _segment(pcm, rate, channels)
    assert utts, "no utterance in 11 s of speech"
    audio = np.concatenate([u.audio for u in utts]).astype(np.float64)
    # the utterances hold (nearly) all of the file's energy: nothing spoken was left out
    total = fe.samples_in
    assert sum(len(u.audio) for u in utts) > 0.6 * total
    first = utts[0]
    assert first.speech_start - first.start >= 0.25 * 16000 or first.start == 0
    assert np.sqrt(np.mean(audio**2)) > 300
